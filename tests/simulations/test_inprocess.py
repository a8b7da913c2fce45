"""The seeded in-process federation (simulations/inprocess.py) that paired comparisons use.

A paired comparison is only as good as its pairing: one seed must give the same cohorts,
client randomness and DP noise (bit for bit), a run without a seed must not be
reproducible (deployed DP noise must not be predictable), and switching SecAgg+ on must
leave the cohorts and noise draws as they were and change the result only by its
quantization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import with_catalog
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.server.app import run_federation
from fedrec.simulations.inprocess import InProcessGrid, run_inprocess, seeded_task

USERS = 40
BASE = {
    "data": "synthetic",
    "synthetic-users": USERS,
    "synthetic-items": 500,
    "num-rounds": 3,
    "clients-per-round": 6,
    "eval-every": 3,
    "strategy": "fedadam",
    "server-lr": 0.05,
    "server-tau": 0.0001,
    "client-weighting": "uniform",
}
DP = {"dp-clip-norm": 0.5, "dp-noise-multiplier": 0.8}


def _config(tmp_path: Path, name: str, **extra: object) -> FederationConfig:
    return FederationConfig.from_mapping({**BASE, **extra}).replace(out_dir=str(tmp_path / name))


def _model(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "model.npz") as f:
        return {k: f[k] for k in f.files}


def _losses(metrics: dict) -> list[float]:
    losses = [r["train_loss"] for r in metrics["rounds"] if r["round"] > 0]
    assert losses and all(loss is not None for loss in losses)
    return losses


def test_one_seed_reproduces_the_run_bit_for_bit_with_dp(tmp_path: Path) -> None:
    first, grid1 = run_inprocess(_config(tmp_path, "a", **DP), seed=5)
    second, grid2 = run_inprocess(_config(tmp_path, "b", **DP), seed=5)
    assert grid1.cohorts == grid2.cohorts and len(grid1.cohorts) == 3
    assert first["final"] == second["final"]
    assert _losses(first) == _losses(second)
    a, b = _model(tmp_path / "a"), _model(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the noise draws were the same too
    written = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert written["reproducible"]["server_seed"] == 5
    assert "no privacy claim" in written["reproducible"]["note"]


def test_another_seed_draws_other_cohorts_and_noise(tmp_path: Path) -> None:
    _, grid1 = run_inprocess(_config(tmp_path, "a", **DP), seed=5)
    _, grid2 = run_inprocess(_config(tmp_path, "b", **DP), seed=6)
    assert grid1.cohorts != grid2.cohorts
    a, b = _model(tmp_path / "a"), _model(tmp_path / "b")
    assert not np.array_equal(a["item_embedding.weight"], b["item_embedding.weight"])


def test_without_a_seed_the_server_draws_are_not_reproducible(tmp_path: Path) -> None:
    """What a deployment does (rng=None): the same config, seeded Flower sampler and all,
    still gets fresh Poisson cohorts and noise from OS entropy."""
    from fedrec.client.app import make_client_app

    config = with_catalog(_config(tmp_path, "x", **DP).replace(out_dir=""))
    models = []
    for _ in range(2):
        grid = InProcessGrid(make_client_app(config), USERS)
        with seeded_task(5):
            metrics = run_federation(grid, config)  # type: ignore[arg-type]
        models.append(metrics)
        assert grid.cohorts
    assert _losses(models[0]) != _losses(models[1])


def test_secagg_keeps_the_pairing_and_changes_only_by_quantization(tmp_path: Path) -> None:
    plain, grid_plain = run_inprocess(_config(tmp_path, "plain", **DP), seed=3)
    secure, grid_secure = run_inprocess(
        _config(tmp_path, "secure", **DP, **{"secure-aggregation": "secagg+"}), seed=3
    )
    assert grid_plain.cohorts == grid_secure.cohorts  # Poisson cohorts: same draws
    assert secure["secure_aggregation"]["rounds"] == 3
    assert all(r["secagg"]["status"] == "ok" for r in secure["rounds"] if "secagg" in r)
    a, b = _model(tmp_path / "secure"), _model(tmp_path / "plain")
    diff = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in b))
    norm = np.sqrt(sum(np.sum(b[k] ** 2) for k in b))
    assert 0 < diff / norm < 1e-3  # not identical (it is quantized), nowhere near different
    assert np.allclose(_losses(plain), _losses(secure), rtol=1e-3)


class _Echo:
    """A node handler that records what it received and raises on request."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        self.received.append(msg)
        if msg.content[keys.CONFIG]["fail"]:
            raise RuntimeError("device broke")
        msg.content[keys.CONFIG]["seen"] = context.node_config["partition-id"]  # a client write
        return Message(content=RecordDict({keys.CONFIG: ConfigRecord({"ok": 1})}), reply_to=msg)


def _messages(nodes: list[int], fail: int) -> list[Message]:
    return [
        Message(
            content=RecordDict({keys.CONFIG: ConfigRecord({"fail": int(n == fail)})}),
            dst_node_id=n,
            message_type="query",
        )
        for n in nodes
    ]


def test_grid_delivers_copies_maps_nodes_to_partitions_and_turns_exceptions_into_errors() -> None:
    handler = _Echo()
    app = ClientApp()
    app.query()(handler)
    grid = InProcessGrid(app, 4)
    assert grid.get_node_ids() == [1, 2, 3, 4]
    with seeded_task(0):
        sent = _messages([1, 3, 4], fail=3)
        replies = grid.send_and_receive(sent)
    assert [r.metadata.src_node_id for r in replies] == [1, 3, 4]
    assert not replies[0].has_error() and replies[0].content[keys.CONFIG]["ok"] == 1
    assert replies[1].has_error() and "device broke" in replies[1].error.reason
    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in sent
    ]
    assert all(m is not r for m, r in zip(sent, handler.received, strict=True))
    assert "seen" not in sent[0].content[keys.CONFIG]  # the client wrote to its own copy
    assert grid.cohorts == []  # no train round
    with pytest.raises(ValueError, match=r"nodes 1\.\.4"), seeded_task(0):
        grid.send_and_receive(_messages([9], fail=0))


def test_cli_server_seed_runs_in_process_and_pairs_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedrec.cli import app

    finals = []
    for name in ("a", "b"):
        args = ["simulate", "--data", "synthetic", "--out", str(tmp_path / name)]
        args += ["--server-seed", "11", "--set", "num-rounds=2", "--set", "eval-every=2"]
        for key, value in {**BASE, **DP}.items():
            if key not in ("data", "num-rounds", "eval-every"):
                args += ["--set", f"{key}={value}"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert "run folder" in result.output
        written = json.loads((tmp_path / name / "metrics.json").read_text())
        assert written["reproducible"]["server_seed"] == 11
        assert (tmp_path / name / "model.npz").exists()
        finals.append((written["final"], [r.get("train_loss") for r in written["rounds"]]))
    assert finals[0] == finals[1]


def test_a_resumed_runs_metrics_cover_every_round(tmp_path: Path) -> None:
    run_inprocess(_config(tmp_path, "a"), seed=5)
    resumed = _config(tmp_path, "b", **{"num-rounds": 5}).replace(resume=str(tmp_path / "a"))
    metrics, _ = run_inprocess(resumed, seed=5)
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3, 4, 5]
    assert metrics["resumed"] == {"from": str(tmp_path / "a"), "round": 3, "logged": 4}
    evaluated = [r for r in metrics["rounds"] if "eval" in r]
    assert [r["round"] for r in evaluated] == [0, 3, 5]  # the first run's evaluations too
    best = max(evaluated, key=lambda r: (r["eval"]["val-hr@10"], r["round"]))
    assert metrics["best_round"] == best["round"]


@pytest.mark.research
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_e2e_settings_learn_over_round_zero(tmp_path: Path, seed: int) -> None:
    """The engine test's settings (test_simulate_e2e.py), seeded: sampled HR@10 + NDCG@10 on
    the validation and test items of all 40 users gains over round 0. Over 20 seeded runs
    of these settings the gain was 0.545 ± 0.107 (min 0.29): the 0.2 bar fails a learning
    run about once in a thousand, and these three seeds are fixed."""
    settings = {
        "synthetic-users": 40, "synthetic-items": 300, "num-rounds": 4,
        "clients-per-round": 20, "eval-every": 1, "strategy": "fedadam", "server-lr": 0.1,
        "server-tau": 0.0001, "local-epochs": 2,
    }  # fmt: skip
    config = FederationConfig.from_mapping(settings).replace(out_dir=str(tmp_path / "run"))
    metrics, _ = run_inprocess(config, seed)
    rounds = metrics["rounds"]
    quality = lambda e: e["hr@10"] + e["ndcg@10"] + e["val-hr@10"] + e["val-ndcg@10"]  # noqa: E731
    gain = quality(rounds[-1]["eval"]) - quality(rounds[0]["eval"])
    assert gain > 0.2, [(r["round"], round(quality(r["eval"]), 3)) for r in rounds]
    assert rounds[-1]["train_loss"] < rounds[1]["train_loss"]
