"""User story (privacy officer / researcher): a DP federation through the real engine.

One `fedrec simulate` run with user-level DP-FedAvg and on-device DP-SGD backs the ledger
claims end to end: the run stops before its user-level target ε, ε grows every round and is
written per round and final into metrics.json, devices report their own record-level ε and
decline once their local budget would be passed, and the privacy invariant still holds.
"""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.common.privacy import epsilon

pytestmark = pytest.mark.slow

USERS, PER_ROUND, Z, DELTA = 40, 10, 1.0, 1e-4
STOP_AFTER = 4  # the target below fits 4 rounds, not 5
TARGET = epsilon(Z, PER_ROUND / USERS, STOP_AFTER, DELTA) + 1e-6
LOCAL_Z, LOCAL_EPOCHS = 2.0, 1
# With one batch per device (batch size > any device's examples) Opacus samples at q = 1,
# so every device spends the same ε per round: the budget fits one round, not two.
ONE_ROUND = epsilon(LOCAL_Z, 1.0, LOCAL_EPOCHS, DELTA)
BUDGET = (ONE_ROUND + epsilon(LOCAL_Z, 1.0, 2 * LOCAL_EPOCHS, DELTA)) / 2

SETTINGS = {
    "synthetic-users": USERS,
    "synthetic-items": 300,
    "num-rounds": 6,
    "clients-per-round": PER_ROUND,
    "eval-every": 2,
    "strategy": "fedavg",
    "client-weighting": "uniform",
    "dp-clip-norm": 1.0,
    "dp-noise-multiplier": Z,
    "dp-target-epsilon": TARGET,
    "dp-delta": DELTA,
    "local-dp-noise-multiplier": LOCAL_Z,
    "local-dp-clip-norm": 1.0,
    "local-dp-delta": DELTA,
    "local-epsilon-budget": BUDGET,
    "local-batch-size": 100_000,
    "local-epochs": LOCAL_EPOCHS,
}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dp-e2e")
    out, audit = root / "run", root / "audit.jsonl"
    args = ["simulate", "--data", "synthetic", "--out", str(out), "--set", f"audit-log={audit}"]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "user-level DP: ε" in result.output
    assert "stopped by the budget at round 4" in result.output
    data = json.loads((out / "metrics.json").read_text())
    data["_audit"] = [json.loads(line) for line in audit.read_text().splitlines()]
    return data


def test_the_central_stop_fires_before_the_target(metrics: dict) -> None:
    trained = [r for r in metrics["rounds"] if r["round"] > 0]
    assert [r["round"] for r in trained] == list(range(1, STOP_AFTER + 1))
    privacy = metrics["privacy"]
    assert privacy["stopped_by_budget"] is True and privacy["stop_round"] == STOP_AFTER
    user = privacy["user_level"]
    assert user["epsilon"] <= TARGET
    assert user["epsilon"] == pytest.approx(epsilon(Z, PER_ROUND / USERS, STOP_AFTER, DELTA))
    assert (user["z"], user["C"], user["q"], user["rounds"]) == (Z, 1.0, 0.25, STOP_AFTER)
    assert user["delta"] == DELTA and user["accountant"] == "rdp"


def test_user_level_epsilon_grows_every_round(metrics: dict) -> None:
    eps = [r["privacy"]["user_level"]["epsilon"] for r in metrics["rounds"] if r["round"] > 0]
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert eps[0] == pytest.approx(epsilon(Z, PER_ROUND / USERS, 1, DELTA))


def test_devices_report_their_record_level_epsilon_and_decline_at_budget(metrics: dict) -> None:
    record = metrics["privacy"]["record_level"]
    assert record["epsilon_max"] == pytest.approx(ONE_ROUND)  # nobody got past one round
    assert record["epsilon_min"] == pytest.approx(ONE_ROUND)
    assert record["clients_at_budget"] >= 1  # 40 nodes, 4 rounds at q = 1/4: some came back
    declined = sum(r["privacy"]["record_level"]["declined_this_round"]
                   for r in metrics["rounds"] if r["round"] > 0)  # fmt: skip
    assert declined >= record["clients_at_budget"]


def test_dp_replies_carry_only_the_shared_group(metrics: dict) -> None:
    train = [m for m in metrics["_audit"] if m["type"] == "train"]
    assert train and all("error" not in m for m in train)
    for message in train:
        assert set(message["records"]) == {"arrays", "metrics"}
        values = message["records"]["metrics"]["values"]
        # no num-examples: the weights are uniform, and the count would tell the history's length
        assert set(values) <= {
            "unit-weight", "train-loss", "returning", "record-epsilon", "budget-exhausted",
        }  # fmt: skip
