"""User story (researcher): run a small federation through the real Flower simulation engine.

One run of `fedrec simulate` (20+ virtual nodes, 4 rounds, Ray backend) backs three claims
about the plumbing: the run folder is complete, every round trained and was evaluated, and
no message leaving a device carries anything outside the declared shared group (the privacy
invariant). The engine gives its nodes random IDs, so its cohorts are not seeded: the same
settings' quality bar lives on the seeded in-process twin
(tests/simulations/test_inprocess.py: test_the_e2e_settings_learn_over_round_zero).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.common import keys
from fedrec.common.data.catalog import load_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import PRIVATE_KEYS, shared_shapes
from fedrec.server.runs import CATALOG_FILE

pytestmark = pytest.mark.slow

SETTINGS = {  # also the in-process twin's (test_inprocess.py)
    "synthetic-users": 40,
    "synthetic-items": 300,
    "num-rounds": 4,
    "clients-per-round": 20,
    "eval-every": 1,
    "strategy": "fedadam",
    "server-lr": 0.1,
    "server-tau": 0.0001,
    "local-epochs": 2,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    out, audit = root / "run", root / "audit.jsonl"
    args = ["simulate", "--data", "synthetic", "--out", str(out), "--set", f"audit-log={audit}"]
    for key, value in SETTINGS.items():
        if key not in ("num-rounds",):
            args += ["--set", f"{key}={value}"]
    args += ["--num-rounds", str(SETTINGS["num-rounds"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "run folder" in result.output
    return out, audit


def test_run_folder_is_complete(run: tuple[Path, Path]) -> None:
    out, _ = run
    for name in (
        "config.json",
        "metrics.json",
        "rounds.jsonl",
        "catalog.npz",
        "model.npz",
        "checkpoint.npz",
        "quality.png",
        "loss.png",
    ):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(SETTINGS["num-rounds"] + 1))
    assert set(metrics["final"]) >= {"hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"}
    assert metrics["bytes_per_client_round"]["down"] > 0
    assert metrics["bytes_per_client_round"]["up"] > 0
    for record in metrics["rounds"][1:]:
        # the engine gives nodes random IDs, so each run samples other users; a heavy user's
        # update can pass the default max-update-norm (the start model's norm) and is then
        # refused and counted as refused (seen once: ‖Δ‖ 20.4 > 15.3 in round 4)
        refused = sum(record.get("rejected", {}).get("train", {}).values())
        assert record["clients_sampled"] == SETTINGS["clients-per-round"]
        assert record["clients_replied"] + refused == SETTINGS["clients-per-round"]
        assert record["clients_failed"] == refused and refused <= 1


def test_every_round_trained_and_was_evaluated(run: tuple[Path, Path]) -> None:
    out, _ = run
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(SETTINGS["num-rounds"] + 1))
    assert all(r["eval"]["users"] == SETTINGS["synthetic-users"] for r in rounds)
    losses = [r["train_loss"] for r in rounds[1:]]
    assert all(loss is not None and 0 < loss < 10 for loss in losses), losses


def test_privacy_invariant_on_every_outgoing_message(run: tuple[Path, Path]) -> None:
    out, audit = run
    config = FederationConfig.from_mapping({k: v for k, v in SETTINGS.items()})
    shared = shared_shapes(load_catalog(out / CATALOG_FILE), config.model.dim)  # the run's catalog
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    trained = sum(
        r.get("clients_replied", 0) + sum(r.get("rejected", {}).get("train", {}).values())
        for r in metrics["rounds"]
    )  # sent: accepted or refused
    evaluated = sum(r.get("clients_evaluated", 0) for r in metrics["rounds"])
    assert sum(m["type"] == "train" for m in lines) == trained
    assert sum(m["type"] == "evaluate" for m in lines) == evaluated
    for message in lines:
        assert "error" not in message, message
        for name, record in message["records"].items():
            if record["kind"] == "arrays":
                assert name == "arrays"
                got = {k: tuple(v["shape"]) for k, v in record["arrays"].items()}
                assert got == shared  # exactly the shared group, nothing else
                assert not set(got) & set(PRIVATE_KEYS)
            else:
                assert record["kind"] == "metrics", record
                for key, value in record["values"].items():
                    assert isinstance(value, int | float), (key, value)  # no id lists
        if message["type"] == "evaluate":
            assert "arrays" not in message["records"]


def test_the_server_received_only_the_shared_group_and_allowed_metrics(
    run: tuple[Path, Path],
) -> None:
    """The same invariant on the other end: the server's own record of what it received."""
    out, _ = run
    config = FederationConfig.from_mapping({k: v for k, v in SETTINGS.items()})
    shared = shared_shapes(load_catalog(out / CATALOG_FILE), config.model.dim)
    allowed = {"train": keys.TRAIN_METRICS, "evaluate": keys.EVALUATE_METRICS}
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all("received" in r for r in rounds) and len(rounds) == SETTINGS["num-rounds"] + 1
    for record in rounds:
        for kind, received in record["received"].items():
            arrays = {k.split("/", 1)[1]: tuple(v["shape"]) for k, v in received.items()
                      if v["kind"] == "array"}  # fmt: skip
            metrics = {k.split("/", 1)[1] for k, v in received.items() if v["kind"] == "metric"}
            assert arrays == (shared if kind == "train" else {}), (record["round"], kind)
            assert metrics <= allowed[kind] and metrics, (record["round"], kind, metrics)
            assert all(k.split("/", 1)[0] in ("arrays", "metrics") for k in received)
            assert not {k.split("/", 1)[1] for k in received} & set(PRIVATE_KEYS)
