"""User story (privacy officer / researcher): SecAgg+ with user-level DP through the engine.

One `fedrec simulate` run with ``secure-aggregation = "secagg+"`` and DP-FedAvg: every train
round runs the four SecAgg+ stages as Flower messages between the ServerApp and the
ClientApps in Ray workers; the audit log of every reply shows that no train reply carries a
shared array or a metric in the clear; metrics.json records the protocol, its parameters and
its per-stage cost; training still learns (the loss falls) and the ε ledger accumulates.
"""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.common.secagg import wire

pytestmark = pytest.mark.slow

USERS, PER_ROUND, ROUNDS = 40, 20, 3
# server-lr 0.1: six engine runs of these settings lowered the loss by 0.074-0.082 over the
# three rounds (at 0.05, the settings before, by 0.014-0.050: the 0.02 bar failed one run in six)
SETTINGS = {
    "synthetic-users": USERS,
    "synthetic-items": 300,
    "num-rounds": ROUNDS,
    "clients-per-round": PER_ROUND,
    "eval-every": ROUNDS,
    "strategy": "fedadam",
    "server-lr": 0.1,
    "server-tau": 0.0001,
    "client-weighting": "uniform",
    "local-epochs": 2,
    "dp-clip-norm": 1.0,
    "dp-noise-multiplier": 0.3,
    "secure-aggregation": "secagg+",
    "secagg-threshold": 0.6,
}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("secagg-e2e")
    out, audit = root / "run", root / "audit.jsonl"
    args = ["simulate", "--data", "synthetic", "--out", str(out), "--set", f"audit-log={audit}"]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "metrics.json").read_text())
    data["_audit"] = [json.loads(line) for line in audit.read_text().splitlines()]
    return data


def test_every_train_round_was_a_complete_secure_round(metrics: dict) -> None:
    trained = [r for r in metrics["rounds"] if r["round"] > 0]
    assert len(trained) == ROUNDS
    for record in trained:
        secagg = record["secagg"]
        assert secagg["status"] == "ok"
        assert secagg["survivors"] == record["clients_replied"] == record["clients_sampled"]
        assert set(secagg["stage_seconds"]) == set(wire.REPLY_KEYS)
        assert secagg["bytes_up"] > 0 and secagg["bytes_down"] > 0
        assert record["privacy"]["user_level"]["replies"] == secagg["survivors"]
    summary = metrics["secure_aggregation"]
    assert summary["enabled"] is True and summary["rounds"] == ROUNDS
    assert summary["rounds_failed_closed"] == 0 and summary["threshold"] == 0.6


def test_no_train_reply_carries_arrays_or_metrics(metrics: dict) -> None:
    train = [r for r in metrics["_audit"] if r["type"] == "train"]
    assert train, "the audit log recorded no train replies"
    stages: dict[str, int] = {}
    for reply in train:
        assert set(reply["records"]) == {wire.SECAGG}, reply
        assert reply["records"][wire.SECAGG]["kind"] == "ConfigRecord"
        keys = set(reply["records"][wire.SECAGG]["keys"])
        stage = next(s for s, allowed in wire.REPLY_KEYS.items() if keys <= allowed)
        stages[stage] = stages.get(stage, 0) + 1
    sampled = sum(r.get("clients_sampled", 0) for r in metrics["rounds"])
    assert stages == dict.fromkeys(wire.REPLY_KEYS, sampled)
    # evaluation replies stay scalar metrics only (per-user hit/NDCG, as without SecAgg)
    evaluate = [r for r in metrics["_audit"] if r["type"] == "evaluate"]
    assert evaluate and all(set(r["records"]) == {"metrics"} for r in evaluate)


def test_training_learns_and_epsilon_accumulates(metrics: dict) -> None:
    rounds = metrics["rounds"]
    # the securely summed mean train loss (40 users: the ranking metrics of 3 noised rounds
    # are too coarse to test on; the sum's exactness is tested in tests/server)
    losses = [r["train_loss"] for r in rounds[1:]]
    assert losses[-1] < losses[0] - 0.02, losses
    eps = [r["privacy"]["user_level"]["epsilon"] for r in rounds if "privacy" in r]
    assert len(eps) == ROUNDS and all(b > a for a, b in itertools.pairwise(eps))
