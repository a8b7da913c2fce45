"""Tests for fedrec.server.dp_fedavg: DP-FedAvg's mechanism, its release of an aggregate
(fixed denominator, noise, low-rank subspace), its ledger and stop, the devices' record-level
tally, and the ledger carried across a resumed run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import ScriptedGrid, federation, train_reply, with_catalog
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.colr import TABLE
from fedrec.common.privacy import PrivacyLedger, epsilon
from fedrec.server.aggregate import Aggregate, TrainReport, TrainRound
from fedrec.server.dp_fedavg import (
    DPFedAvg,
    PrivacyBudgetExceeded,
    RecordLevelTally,
    UserLevelDP,
)
from fedrec.server.plain import PlainAggregation
from fedrec.server.summary import privacy_summary
from fedrec.server.validation import ReplyValidator

DP_CONFIG = federation(
    strategy="fedavg",
    client_weighting="uniform",
    clients_per_round=10,
    dp_clip_norm=1.0,
    dp_noise_multiplier=1.0,
)
BIAS = "head.bias"
Model = dict[str, np.ndarray]


def _dp(**changes: object) -> UserLevelDP:
    """C = 1, z = 1, m = 10 of N = 100 (q = 0.1), δ = 1e-4, no target unless changed."""
    values: dict[str, object] = dict(
        clip_norm=1.0,
        noise_multiplier=1.0,
        expected_clients=10,
        num_nodes=100,
        delta=1e-4,
        target_epsilon=0.0,
    )
    return UserLevelDP(**{**values, **changes})  # type: ignore[arg-type]


def _start(rows: int = 6) -> Model:
    """The round's model (float64): a table of ones and a bias of 0.5."""
    return {TABLE: np.ones((rows, 4)), BIAS: np.array([0.5])}


def _sum(start: Model, total: Model, count: int) -> Aggregate:
    return Aggregate.of_sum(start, total, count, {keys.TRAIN_LOSS: 0.5})


def _flat(model: Model) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in model.values()])


# --- the mechanism -----------------------------------------------------------------------------
def test_noise_std_is_z_c_over_m() -> None:
    # σ = z·C/m = 2·0.5/20 = 0.05
    assert _dp(noise_multiplier=2.0, clip_norm=0.5, expected_clients=20).noise_std == 0.05


def test_invalid_mechanisms_are_rejected() -> None:
    with pytest.raises(ValueError, match="C > 0 and z > 0"):
        _dp(noise_multiplier=0.0)
    with pytest.raises(ValueError, match="C > 0 and z > 0"):
        _dp(clip_norm=-1.0)
    with pytest.raises(ValueError, match="sampling rate"):
        _dp(expected_clients=101)
    with pytest.raises(ValueError, match="sampling rate"):
        _dp(expected_clients=0)


def test_from_config_calibrates_z_to_the_target() -> None:
    config = DP_CONFIG.replace(dp_noise_multiplier=0.0, dp_target_epsilon=2.0, num_rounds=5)
    dp = UserLevelDP.from_config(config, num_nodes=200)
    assert dp.sample_rate == 0.05  # m / N = 10 / 200
    # calibrated: 5 rounds spend the target, to Opacus's search tolerance of 0.01, never more
    spent = epsilon(dp.noise_multiplier, 0.05, 5, 1e-4)
    assert 2.0 - 0.01 <= spent <= 2.0
    assert dp.rounds_within_budget(PrivacyLedger(), 5) == 5
    assert dp.rounds_within_budget(PrivacyLedger(), 6) == 5
    given = UserLevelDP.from_config(DP_CONFIG, num_nodes=200)  # z given: taken as it is
    assert (given.noise_multiplier, given.clip_norm, given.expected_clients) == (1.0, 1.0, 10)


def test_rounds_within_budget_is_the_last_round_that_fits() -> None:
    dp = _dp(target_epsilon=3.0)
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.1, 7)  # already spent some
    rounds = dp.rounds_within_budget(ledger, 10_000)
    assert 0 < rounds < 10_000
    assert ledger.epsilon_after(1e-4, 1.0, 0.1, rounds) <= 3.0
    assert ledger.epsilon_after(1e-4, 1.0, 0.1, rounds + 1) > 3.0
    assert dp.rounds_within_budget(ledger, rounds - 1) == rounds - 1  # the limit fits whole
    assert _dp().rounds_within_budget(ledger, 10_000) == 10_000  # no target: no stop


def test_a_ledger_of_another_accountant_is_refused() -> None:
    with pytest.raises(ValueError, match="one ε must come from one accountant"):
        DPFedAvg(_dp(), PrivacyLedger("prv"))


# --- the release -------------------------------------------------------------------------------
def test_the_release_divides_by_the_fixed_m_and_adds_the_noise_in_the_models_order() -> None:
    """Three replies of m = 10 summed to Σ = (0.1 + 0.1 + 0 on the table, 0 + 0 + 1 on the
    bias): the release is start + Σ/10 = table 1 + 0.02 = 1.02, bias 0.5 + 0.1 = 0.6 (not
    Σ/3, the replies' own mean), plus N(0, σ²) with σ = z·C/m = 0.1, drawn array by array
    in the start's order from the generator: replayed here from the same seed."""
    start = _start()
    total = {TABLE: np.full((6, 4), 0.2), BIAS: np.array([1.0])}
    released, _ = DPFedAvg(_dp(), rng=np.random.default_rng(3)).release(
        _sum(start, total, 3), start, {}
    )
    replay = np.random.default_rng(3)
    noise = {k: replay.normal(0.0, 0.1, size=v.shape) for k, v in start.items()}
    np.testing.assert_allclose(released[TABLE] - noise[TABLE], 1.02, rtol=0, atol=1e-12)
    np.testing.assert_allclose(released[BIAS] - noise[BIAS], [0.6], rtol=0, atol=1e-12)
    assert all(v.dtype == np.float64 for v in released.values())


@pytest.mark.usefixtures("server_task")
def test_the_plain_rounds_clip_and_the_fixed_denominator_make_the_release() -> None:
    """The plain aggregation re-clips each update to C = 1 (a bias moved by 50 counts 1)
    and DP-FedAvg divides the sum by m = 10: table 1 + (0.1 + 0.1 + 0)/10 = 1.02, bias
    0.5 + (0 + 0 + 1)/10 = 0.6, plus the noise (replayed from the seed); the record counts
    the three replies and the one clipped."""
    start = _start()
    moves = {1: (0.1, 0.0), 2: (0.1, 0.0), 3: (0.0, 50.0)}  # node: (table Δ, bias Δ)

    def answer(message: Message) -> Message:
        table, bias = moves[message.metadata.dst_node_id]
        arrays = {TABLE: start[TABLE] + table, BIAS: start[BIAS] + bias}
        record = ArrayRecord({k: Array(v.astype(np.float32)) for k, v in arrays.items()})
        return train_reply(record, 5, 0.5, message.metadata.dst_node_id)

    content = RecordDict({keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1})})
    messages = [Message(content, node, MessageType.TRAIN) for node in moves]
    shapes = {k: v.shape for k, v in start.items()}
    plain = PlainAggregation(
        ReplyValidator(shapes, max_update_norm=100.0), weight_key=keys.UNIT_WEIGHT, clip_norm=1.0
    )
    aggregate, report = plain.aggregate(
        ScriptedGrid(list(moves), answer), TrainRound(1, messages, start, Channel(shapes), 30.0)
    )
    assert aggregate is not None and report.clipped == 1
    released, record = DPFedAvg(_dp(), rng=np.random.default_rng(0)).release(
        aggregate, start, {}, clipped=report.clipped
    )
    replay = np.random.default_rng(0)
    noise = {k: replay.normal(0.0, 0.1, size=v.shape) for k, v in start.items()}
    # float32 replies: 1.1 and 0.5 + 50 carry float32 rounding (~1e-7) into Δ
    np.testing.assert_allclose(released[TABLE] - noise[TABLE], 1.02, atol=1e-7)
    np.testing.assert_allclose(released[BIAS] - noise[BIAS], [0.6], atol=1e-7)
    assert (record["replies"], record["clipped_by_server"], record["rounds"]) == (3, 1, 1)


def test_the_noise_has_the_claimed_std() -> None:
    """A noise-only release of 200,001 coordinates: the sample std of n normals has relative
    standard error 1/√(2n) ≈ 0.16 %, so rel=2 % is about 13 standard errors wide yet fails a
    10 % error (σ = z·C/replies, or z·C without the /m, are off by far more); the mean is
    within 5 standard errors σ/√n of 0. Seeded: the same draw every run."""
    dp = _dp(noise_multiplier=1.3, clip_norm=0.7, expected_clients=10)
    start = {TABLE: np.zeros((50_000, 4)), BIAS: np.zeros(1)}
    released, _ = DPFedAvg(dp, rng=np.random.default_rng(11)).release(None, start, {})
    noise = _flat(released)
    assert noise.std() == pytest.approx(1.3 * 0.7 / 10, rel=0.02)
    assert abs(noise.mean()) < 5 * dp.noise_std / np.sqrt(noise.size)


def test_the_noise_std_holds_with_some_replies() -> None:
    """3 of m = 10 replied, each moving the table by 0.001: the released table is
    start + 3·0.001/10 + N(0, σ²) with σ = z·C/m = 2·1/10 = 0.2, whatever the count."""
    dp = _dp(noise_multiplier=2.0)
    start = {TABLE: np.zeros((50_000, 4)), BIAS: np.zeros(1)}
    total = {TABLE: np.full((50_000, 4), 3 * 0.001), BIAS: np.zeros(1)}
    released, _ = DPFedAvg(dp, rng=np.random.default_rng(5)).release(
        _sum(start, total, 3), start, {}
    )
    residual = released[TABLE] - 3 * 0.001 / 10
    assert residual.std() == pytest.approx(0.2, rel=0.02)  # the tolerance: see the test above
    assert abs(residual.mean()) < 5 * 0.2 / np.sqrt(residual.size)


def test_a_round_nobody_contributed_to_is_released_as_noise_and_counted() -> None:
    dpfedavg = DPFedAvg(_dp(), rng=np.random.default_rng(1))
    start = _start()
    released, record = dpfedavg.release(None, start, {})
    moved = _flat(released) - _flat(start)
    assert np.all(np.isfinite(moved)) and np.all(moved != 0)  # noise on every coordinate
    assert (record["replies"], record["rounds"]) == (0, 1)
    assert dpfedavg.ledger.history == [(1.0, 0.1, 1)]  # the release cost its ε all the same


def test_the_record_describes_the_mechanism_and_the_round() -> None:
    dpfedavg = DPFedAvg(_dp(), rng=np.random.default_rng(1))
    start = _start()
    _, record = dpfedavg.release(_sum(start, {k: np.zeros_like(v) for k, v in start.items()}, 4),
                                 start, {}, clipped=2)  # fmt: skip
    assert record == {
        "epsilon": pytest.approx(epsilon(1.0, 0.1, 1, 1e-4)),
        "delta": 1e-4, "z": 1.0, "C": 1.0, "q": 0.1, "m": 10, "noise_std": 0.1,
        "rounds": 1, "accountant": "rdp", "target_epsilon": None,
        "replies": 4, "clipped_by_server": 2,
    }  # fmt: skip


def test_epsilon_accumulates_over_releases_and_the_stop_fires() -> None:
    """Each round is told the ε it will reach (round_config asks, the release records): the
    ε of r uses of (z = 1, q = 0.1); with a target between 3 and 4 uses, round 4 is refused
    before anything is sent."""
    target = epsilon(1.0, 0.1, 3, 1e-4) + 1e-6
    dpfedavg = DPFedAvg(_dp(target_epsilon=target), rng=np.random.default_rng(2))
    told, recorded = [], []
    for server_round in (1, 2, 3):
        told.append(dpfedavg.round_config(server_round)[keys.USER_EPSILON])
        recorded.append(dpfedavg.release(None, _start(), {})[1]["epsilon"])
    assert told == pytest.approx(recorded)
    assert recorded[0] < recorded[1] < recorded[2] <= target
    assert recorded == pytest.approx([epsilon(1.0, 0.1, r, 1e-4) for r in (1, 2, 3)])
    with pytest.raises(PrivacyBudgetExceeded, match="round 4 would raise user-level ε"):
        dpfedavg.round_config(4)
    assert dpfedavg.ledger.steps == 3  # asking did not spend


def test_round_config_carries_c_and_the_epsilon_after_this_round() -> None:
    dpfedavg = DPFedAvg(_dp(clip_norm=0.7), rng=np.random.default_rng(0))
    config = dpfedavg.round_config(1)
    assert config == {
        keys.CLIPPING_NORM: 0.7,
        keys.USER_EPSILON: pytest.approx(epsilon(1.0, 0.1, 1, 1e-4)),
    }
    assert dpfedavg.round_config(1) == config and dpfedavg.ledger.steps == 0


def test_cohorts_are_poisson_samples() -> None:
    """q = 0.1 of 100 nodes: cohort sizes are Binomial(100, 0.1), mean 10, std 3; the mean
    of 200 rounds has standard error 3/√200 ≈ 0.21, so ±1 is about 5 of them."""
    cohorts = DPFedAvg(_dp(), rng=np.random.default_rng(0)).cohorts
    nodes = list(range(1, 101))
    drawn = [cohorts.sample(nodes) for _ in range(200)]
    sizes = [len(c) for c in drawn]
    assert len(set(sizes)) > 3  # not a fixed count
    assert np.mean(sizes) == pytest.approx(10, abs=1.0)
    assert all(c == sorted(set(c)) and set(c) <= set(nodes) for c in drawn)


def test_a_low_rank_round_draws_the_tables_noise_in_its_basis() -> None:
    """Every table update of a low-rank round lies in the row space of the round's basis B
    (r = 2 of d = 4): DP-FedAvg releases the projection P of mean + N(0, σ²I) on it, i.e.
    P·mean + N(0, σ²)^{rows×r}·B (post-processing: the same ε). So the released table
    update lies in B's row space — a part of the sum outside it is projected away — and
    carries r·σ² of noise energy per row (r/d of the dense noise; χ²₂ per row: relative
    standard error 1/√rows ≈ 0.45 %, rel=2 % is 4.5 of them); the bias keeps its full noise."""
    rows, sigma = 50_000, 2.0 / 10
    channel = Channel.for_round({TABLE: (rows, 4), BIAS: (1,)}, "none", "none", rank=2, seed=1,
                                server_round=1)  # fmt: skip
    basis = channel.noise_subspaces()[TABLE]  # (2, 4), orthonormal rows
    assert basis.shape == (2, 4)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)
    a = np.full((rows, 2), 0.001)
    outside = np.ones(4) - np.ones(4) @ basis.T @ basis  # orthogonal to B's rows
    total = {TABLE: 3 * (a @ basis) + outside, BIAS: np.zeros(1)}
    start = {TABLE: np.zeros((rows, 4)), BIAS: np.zeros(1)}
    dpfedavg = DPFedAvg(_dp(noise_multiplier=2.0), rng=np.random.default_rng(5))
    released, _ = dpfedavg.release(_sum(start, total, 3), start, channel.noise_subspaces())
    update = released[TABLE] - start[TABLE]
    np.testing.assert_allclose(update - update @ basis.T @ basis, 0.0, atol=1e-9)  # in the span
    noise = update - 3 * (a @ basis) / 10  # the in-span part of the mean, kept as it is
    assert (noise**2).sum() / rows == pytest.approx(2 * sigma**2, rel=0.02)  # r·σ², not d·σ²
    assert 0 < abs(float(released[BIAS][0])) < 5 * sigma


# --- record level --------------------------------------------------------------------------------
def _reported(*nodes: tuple[int, float, int]) -> TrainReport:
    """A plain round's report: each node's record-level ε and whether it declined."""
    metrics = [(n, {keys.RECORD_EPSILON: eps, keys.BUDGET_EXHAUSTED: d}) for n, eps, d in nodes]
    return TrainReport(sampled=len(nodes), node_metrics=metrics)  # type: ignore[arg-type]


def test_record_level_tally_keeps_each_nodes_latest_epsilon_and_who_declined() -> None:
    tally = RecordLevelTally(delta=1e-4, budget=5.0)
    assert tally.update(_reported((1, 1.0, 0), (2, 3.0, 0)), None) == 0
    assert tally.update(_reported((1, 2.0, 0), (3, 5.0, 1)), None) == 1
    summary = tally.summary(1)
    assert (summary["epsilon_min"], summary["epsilon_median"], summary["epsilon_max"]) == (
        2.0, 3.0, 5.0,
    )  # fmt: skip
    assert summary["clients"] == 3 and summary["clients_at_budget"] == 1
    assert summary["declined_this_round"] == 1 and summary["delta"] == 1e-4
    assert summary["budget"] == 5.0
    # linear interpolation between the latest ε of the 3 nodes (2, 3, 5): 0 %, 10 %, …, 100 %
    deciles = [2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.4, 3.8, 4.2, 4.6, 5.0]
    assert summary["epsilon_deciles"] == pytest.approx(deciles)
    assert summary["rolled_back"] == 0


def test_a_ledger_that_went_down_is_counted_as_rolled_back() -> None:
    tally = RecordLevelTally(delta=1e-4, budget=5.0)
    tally.update(_reported((1, 3.0, 0), (2, 1.0, 0)), None)
    tally.update(_reported((1, 1.5, 0), (2, 1.2, 0)), None)  # node 1: an old copy
    summary = tally.summary(0)
    assert summary["rolled_back"] == 1 and tally.rolled_back == {1}
    assert summary["epsilon_max"] == 3.0  # what node 1 has spent, not what it now claims


def test_no_record_before_any_device_reported() -> None:
    tally = RecordLevelTally(delta=1e-4, budget=0.0)
    assert tally.record(TrainReport(sampled=3), None) is None
    record = tally.record(_reported((4, 0.5, 0)), None)
    assert record is not None and record["clients"] == 1 and record["budget"] is None


def test_a_secure_round_tallies_the_cohort_mean_and_its_declines() -> None:
    """SecAgg+ gives the server only the cohort's means: ε's mean, and the fraction that
    declined, from which the count is round(mean·count). 0.57 is not a binary fraction:
    0.57·100 = 56.99999999999999, so 57 of 100 declines need round, not int."""
    tally = RecordLevelTally(delta=1e-4, budget=4.0)
    secure = TrainReport(sampled=100, secagg={"status": "ok"})
    start = _start()
    zeros = {k: np.zeros_like(v) for k, v in start.items()}
    first = Aggregate.of_sum(
        start, zeros, 100, {keys.RECORD_EPSILON: 2.5, keys.BUDGET_EXHAUSTED: 0.57}
    )
    assert tally.record(secure, None) is None  # a secure round that failed closed
    record = tally.record(secure, first)
    assert record is not None
    assert (record["epsilon_cohort_mean"], record["declined_this_round"]) == (2.5, 57)
    second = Aggregate.of_sum(
        start, zeros, 10, {keys.RECORD_EPSILON: 3.0, keys.BUDGET_EXHAUSTED: 0.3}
    )
    record = tally.record(secure, second)
    assert record is not None and record["declined_total"] == 57 + 3
    assert record["epsilon_cohort_mean"] == 3.0 and "epsilon_max" not in record


# --- the run's summary and its ledger across a resume --------------------------------------------
def test_privacy_summary_takes_the_last_round_and_the_stop() -> None:
    records = [
        {"round": 1, "privacy": {"user_level": {"epsilon": 1.0}}},
        {"round": 2, "privacy": {"user_level": {"epsilon": 2.0}, "record_level": {"c": 1}}},
        {"round": 2, "eval": {}},
    ]
    summary = privacy_summary(records, DP_CONFIG, budget_stop=2)
    assert summary == {
        "user_level": {"epsilon": 2.0},
        "record_level": {"c": 1},
        "stopped_by_budget": True,
        "stop_round": 2,
    }
    assert privacy_summary(records, DP_CONFIG, None)["stopped_by_budget"] is False
    assert privacy_summary([], federation(), None) == {"user_level": None, "record_level": None}


USERS = 30
DP_RUN = with_catalog(
    federation(
        synthetic_users=USERS, synthetic_items=200, dim=8, num_rounds=2, clients_per_round=10,
        eval_every=2, client_weighting="uniform", dp_clip_norm=0.5, dp_noise_multiplier=1.0,
    )
)  # fmt: skip


def test_a_resumed_run_continues_its_epsilon_and_keeps_its_accountant(tmp_path: Path) -> None:
    """Two DP rounds (z = 1, q = m/N = 10/30) checkpointed, then resumed to four: the
    resumed run's ε is that of 4 uses, not 2; resuming with another accountant, or from the
    same checkpoint without its ledger, is refused."""
    from fedrec.client.app import make_client_app
    from fedrec.server.app import ServerRandomness, run_federation
    from fedrec.server.checkpoint import Checkpointer, read_checkpoint
    from fedrec.simulations.inprocess import InProcessGrid, seeded_task

    run, q = tmp_path / "run", 10 / USERS
    grid = InProcessGrid(make_client_app(DP_RUN), USERS)
    with seeded_task(1):
        first = run_federation(grid, DP_RUN.replace(out_dir=str(run)),
                               randomness=ServerRandomness.seeded(1))  # fmt: skip
    assert first["privacy"]["user_level"]["rounds"] == 2
    checkpoint = read_checkpoint(run)
    assert checkpoint.meta["user_level_ledger"] == {"accountant": "rdp", "history": [[1.0, q, 2]]}
    resumed_config = DP_RUN.replace(resume=str(run), num_rounds=4)
    with seeded_task(2):
        resumed = run_federation(grid, resumed_config, randomness=ServerRandomness.seeded(2))
    user_level = resumed["privacy"]["user_level"]
    assert user_level["rounds"] == 4
    assert user_level["epsilon"] == pytest.approx(epsilon(1.0, q, 4, 1e-4))
    told = [r["privacy"]["user_level"]["epsilon"] for r in resumed["rounds"] if "privacy" in r]
    assert told == pytest.approx([epsilon(1.0, q, r, 1e-4) for r in (1, 2, 3, 4)])
    with pytest.raises(ValueError, match="one ε must come from one accountant"):
        run_federation(grid, resumed_config.replace(dp_accountant="prv"))
    bare = tmp_path / "bare"  # the same checkpoint, written as a run without DP writes it
    meta = {k: v for k, v in checkpoint.meta.items() if k not in ("round", "user_level_ledger")}
    Checkpointer(bare, model=meta).write(checkpoint.model, 2, checkpoint.optimizer, None)
    with pytest.raises(ValueError, match="no user-level privacy ledger"):
        run_federation(grid, DP_RUN.replace(resume=str(bare), num_rounds=4))
