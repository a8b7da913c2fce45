"""Tests for fedrec.server.dp_fedavg: DP-FedAvg's clipping, sampling, noise, ledger and stop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import StaticGrid, server_message
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger, calibrate_noise, epsilon
from fedrec.common.runs import CHECKPOINT_META
from fedrec.server.checkpoint import load_checkpoint_meta
from fedrec.server.dp_fedavg import (
    PrivacyBudgetExceeded,
    RecordLevelTally,
    UserLevelDP,
)
from fedrec.server.factory import ServerRandomness, make_strategy
from fedrec.server.recorder import RoundRecorder

DP_CONFIG = FederationConfig(
    strategy="fedavg",
    client_weighting="uniform",
    clients_per_round=10,
    dp_clip_norm=1.0,
    dp_noise_multiplier=1.0,
    eval_every=1,
)


pytestmark = pytest.mark.usefixtures("server_task")


def FakeGrid(nodes: int) -> StaticGrid:
    """A grid of nodes 1..``nodes``."""
    return StaticGrid(list(range(1, nodes + 1)))


def _dp(**changes: float) -> UserLevelDP:
    values = dict(
        clip_norm=1.0,
        noise_multiplier=1.0,
        expected_clients=10,
        num_nodes=100,
        delta=1e-4,
        target_epsilon=0.0,
    )
    return UserLevelDP(**{**values, **changes})  # type: ignore[arg-type]


def _global(size: int = 6) -> ArrayRecord:
    return ArrayRecord({
        "item_embedding.weight": Array(np.zeros((size, 4), dtype=np.float32)),
        "head.bias": Array(np.zeros(1, dtype=np.float32)),
    })  # fmt: skip


def _reply(update: dict[str, np.ndarray], node: int) -> Message:
    arrays = ArrayRecord({k: Array(v.astype(np.float32)) for k, v in update.items()})
    metrics = MetricRecord({keys.NUM_EXAMPLES: 5, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: 0.5})
    content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
    return Message(content=content, reply_to=server_message("train", None, node_id=node))


def _strategy(
    dp: UserLevelDP,
    seed: int = 0,
    config: FederationConfig = DP_CONFIG,
    run_dir: Path | None = None,
) -> RoundRecorder:
    """The run's strategy with user-level DP (RoundRecorder(DPFedAvg(ServerStep(...))))."""
    return make_strategy(
        config, randomness=ServerRandomness.seeded(seed), num_rounds=1000, user_dp=dp,
        run_dir=run_dir,
    )  # fmt: skip


def _record(strategy: RoundRecorder) -> dict:
    """The last round's ``privacy.user_level`` entry."""
    assert strategy.user_dp is not None
    return strategy.user_dp.last_record


def _round(
    strategy: RoundRecorder, start: ArrayRecord, replies: list[Message], server_round: int = 1
) -> dict:
    grid = FakeGrid(100)
    messages = list(strategy.configure_train(server_round, start, ConfigRecord(), grid))  # type: ignore[arg-type]
    assert strategy.user_dp is not None
    clip = strategy.user_dp.dp.clip_norm  # every cohort member is told C
    assert all(m.content[keys.CONFIG][keys.CLIPPING_NORM] == clip for m in messages)
    told = {m.content[keys.CONFIG][keys.USER_EPSILON] for m in messages}  # the device's status
    new, _ = strategy.aggregate_train(server_round, replies)
    assert len(told) == 1 and told.pop() == pytest.approx(_record(strategy)["epsilon"])
    assert new is not None
    return {k: v.numpy().astype(np.float64) for k, v in new.items()}


# --- pure pieces ---------------------------------------------------------------------------
def test_noise_std_is_z_c_over_m() -> None:
    assert _dp(noise_multiplier=2.0, clip_norm=0.5, expected_clients=20).noise_std == 0.05


def test_invalid_mechanisms_are_rejected() -> None:
    with pytest.raises(ValueError, match="C > 0 and z > 0"):
        _dp(noise_multiplier=0.0)
    with pytest.raises(ValueError, match="sampling rate"):
        _dp(expected_clients=101)


def test_from_config_calibrates_z_to_the_target() -> None:
    config = DP_CONFIG.replace(dp_noise_multiplier=0.0, dp_target_epsilon=2.0, num_rounds=50)
    dp = UserLevelDP.from_config(config, num_nodes=200)
    assert dp.sample_rate == 0.05
    assert dp.noise_multiplier == pytest.approx(calibrate_noise(2.0, 1e-4, 0.05, 50))
    assert epsilon(dp.noise_multiplier, 0.05, 50, 1e-4) <= 2.0
    assert dp.rounds_within_budget(PrivacyLedger(), 50) == 50


def test_rounds_within_budget_is_the_last_round_that_fits() -> None:
    dp = _dp(target_epsilon=3.0)
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.1, 7)  # already spent some
    rounds = dp.rounds_within_budget(ledger, 10_000)
    assert 0 < rounds < 10_000
    assert ledger.epsilon_after(1e-4, 1.0, 0.1, rounds) <= 3.0
    assert ledger.epsilon_after(1e-4, 1.0, 0.1, rounds + 1) > 3.0
    assert _dp().rounds_within_budget(ledger, 10_000) == 10_000  # no target: no stop


# --- the strategy layer --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "flower"),
    [("fedavg", "FedAvg"), ("fedavgm", "FedAvgM"), ("fedadam", "FedAdam"),
     ("fedyogi", "FedYogi"), ("fedprox", "FedProx")],
)  # fmt: skip
def test_dp_noises_the_average_before_every_server_optimizer(name: str, flower: str) -> None:
    strategy = _strategy(_dp(), seed=1, config=DP_CONFIG.replace(strategy=name))
    assert repr(strategy) == f"RoundRecorder(DPFedAvg(ServerStep({flower})))"
    new = _round(strategy, _global(), [])
    moved = np.concatenate([a.ravel() for a in new.values()])
    assert np.all(np.isfinite(moved)) and np.any(moved != 0)  # the noise reached the model
    assert _record(strategy)["rounds"] == 1


def test_noise_has_the_claimed_std() -> None:
    """200k coordinates: the sample std is within ~0.3% of the truth, so a 10% error in the
    noise (e.g. dividing by the replies instead of m, or σ = z·C) fails this test."""
    dp = _dp(noise_multiplier=1.3, clip_norm=0.7, expected_clients=10)
    strategy = _strategy(dp)
    start = _global(size=50_000)
    out = _round(strategy, start, [])  # no replies: the released model is pure noise
    noise = np.concatenate([v.ravel() for v in out.values()])
    assert noise.std() == pytest.approx(1.3 * 0.7 / 10, rel=0.02)
    assert abs(noise.mean()) < 5 * dp.noise_std / np.sqrt(noise.size)


def test_average_has_the_fixed_denominator_and_server_clip() -> None:
    dp = _dp(noise_multiplier=1e-9)  # noise negligible: check the mean itself
    strategy = _strategy(dp)
    start = _global()
    small = {"item_embedding.weight": np.full((6, 4), 0.1), "head.bias": np.array([0.0])}
    big = {"item_embedding.weight": np.zeros((6, 4)), "head.bias": np.array([50.0])}
    out = _round(strategy, start, [_reply(small, 1), _reply(small, 2), _reply(big, 3)])
    # (0.1 + 0.1 + 0) / m=10 on the embedding; the big update is clipped to C=1 on the bias
    np.testing.assert_allclose(out["item_embedding.weight"], 0.02, atol=1e-6)
    np.testing.assert_allclose(out["head.bias"], [0.1], atol=1e-6)
    record = _record(strategy)
    assert record["clipped_by_server"] == 1 and record["replies"] == 3
    assert record["rounds"] == 1


def test_noise_std_holds_with_some_replies() -> None:
    """3 of m = 10 replied: the average is Σ/10 and the noise std is still z·C/10."""
    dp = _dp(noise_multiplier=2.0, clip_norm=1.0)
    strategy = _strategy(dp, seed=5)
    start = _global(size=50_000)
    update = {"item_embedding.weight": np.full((50_000, 4), 0.001), "head.bias": np.zeros(1)}
    out = _round(strategy, start, [_reply(update, n) for n in (1, 2, 3)])
    residual = out["item_embedding.weight"] - 3 * 0.001 / 10  # ‖Δ‖ = 0.447 < C: unclipped
    assert residual.std() == pytest.approx(2.0 * 1.0 / 10, rel=0.02)
    assert abs(residual.mean()) < 5 * dp.noise_std / np.sqrt(residual.size)


def test_a_non_finite_update_is_dropped_not_averaged() -> None:
    """One NaN must not let a +1000 update through unclipped (review finding)."""
    dp = _dp(noise_multiplier=1e-9)
    strategy = _strategy(dp)
    bad = {"item_embedding.weight": np.full((6, 4), 1000.0), "head.bias": np.array([np.nan])}
    good = {"item_embedding.weight": np.full((6, 4), 0.1), "head.bias": np.array([0.0])}
    out = _round(strategy, _global(), [_reply(bad, 1), _reply(good, 2)])
    np.testing.assert_allclose(out["item_embedding.weight"], 0.01, atol=1e-6)  # 0.1 / m
    assert np.all(np.isfinite(out["head.bias"]))
    assert _record(strategy)["rejected_non_finite"] == 1
    assert _record(strategy)["replies"] == 1


def test_a_dp_round_where_every_client_failed_is_a_noise_only_round() -> None:
    from flwr.app import Error

    strategy = _strategy(_dp())
    list(strategy.configure_train(1, _global(), ConfigRecord(), FakeGrid(100)))  # type: ignore[arg-type]
    failed = Message(Error(code=1, reason="boom"), reply_to=server_message("train", None, 1))
    new, _ = strategy.aggregate_train(1, [failed])
    assert new is not None and _record(strategy)["rounds"] == 1
    strategy.aggregate_evaluate(1, [])  # closes the round
    assert strategy.records[-1]["clients_failed"] == 1


def test_epsilon_accumulates_over_rounds_and_the_stop_fires() -> None:
    target = epsilon(1.0, 0.1, 3, 1e-4) + 1e-6  # three rounds fit, a fourth does not
    strategy = _strategy(_dp(target_epsilon=target))
    eps = []
    for r in range(1, 4):
        _round(strategy, _global(), [], r)
        eps.append(_record(strategy)["epsilon"])
    assert eps[0] < eps[1] < eps[2] <= target
    assert eps[2] == pytest.approx(epsilon(1.0, 0.1, 3, 1e-4))
    with pytest.raises(PrivacyBudgetExceeded, match="target"):
        strategy.configure_train(4, _global(), ConfigRecord(), FakeGrid(100))  # type: ignore[arg-type]


def test_cohorts_are_poisson_samples() -> None:
    strategy = _strategy(_dp())
    sizes = [
        len(list(strategy.configure_train(r, _global(), ConfigRecord(), FakeGrid(100))))  # type: ignore[arg-type]
        for r in range(1, 201)
    ]
    assert len(set(sizes)) > 3  # not a fixed count
    assert np.mean(sizes) == pytest.approx(10, abs=1.0)  # q·N = 0.1·100


def test_fedadam_steps_on_the_noised_average() -> None:
    """The server optimizer's moment sees the DP average, not the raw one."""
    config = DP_CONFIG.replace(strategy="fedadam", server_beta1=0.9)
    dp = _dp(noise_multiplier=1.0)
    strategy = _strategy(dp, seed=4, config=config)
    update = {"item_embedding.weight": np.full((5000, 4), 0.001), "head.bias": np.array([0.0])}
    _round(strategy, _global(5000), [_reply(update, 1), _reply(update, 2)])
    clean = 0.1 * 2 * 0.001 / 10  # (1 − β1) · mean update (fixed denominator m = 10)
    m_t = strategy.step.optimizer.m_t
    assert m_t is not None
    deviation = m_t["item_embedding.weight"] - clean
    # m_1 = (1 − β1)·(clean mean + noise): the deviation is noise of std 0.1·σ
    assert deviation.std() == pytest.approx(0.1 * dp.noise_std, rel=0.05)


def test_fedadam_steps_on_the_noised_average_of_no_replies() -> None:
    config = DP_CONFIG.replace(strategy="fedadam", server_beta1=0.9)
    dp = _dp(noise_multiplier=1.0)
    strategy = _strategy(dp, seed=3, config=config)
    _round(strategy, _global(), [])
    assert strategy.step.optimizer.m_t is not None
    m_t = np.concatenate([np.ravel(v) for v in strategy.step.optimizer.m_t.values()])
    # m_1 = (1 − β1)·(noisy average − global): pure noise of std 0.1·σ
    assert m_t.std() > 0.5 * 0.1 * dp.noise_std


def test_the_ledger_is_checkpointed(tmp_path: Path) -> None:
    strategy = _strategy(_dp(), run_dir=tmp_path)
    _round(strategy, _global(), [])
    ledger = PrivacyLedger.from_dict(load_checkpoint_meta(tmp_path)["user_level_ledger"])
    assert ledger.history == [(1.0, 0.1, 1)]


# --- record level --------------------------------------------------------------------------
def _device_reply(node: int, eps: float, declined: int) -> Message:
    metrics = MetricRecord({keys.RECORD_EPSILON: eps, keys.BUDGET_EXHAUSTED: declined})
    content = RecordDict({keys.METRICS: metrics})
    return Message(content=content, reply_to=server_message("train", None, node_id=node))


def test_record_level_tally() -> None:
    tally = RecordLevelTally(delta=1e-4, budget=5.0)
    assert tally.update([_device_reply(1, 1.0, 0), _device_reply(2, 3.0, 0)]) == 0
    assert tally.update([_device_reply(1, 2.0, 0), _device_reply(3, 5.0, 1)]) == 1
    summary = tally.summary(1)
    assert (summary["epsilon_min"], summary["epsilon_median"], summary["epsilon_max"]) == (
        2.0, 3.0, 5.0,
    )  # fmt: skip
    assert summary["clients"] == 3 and summary["clients_at_budget"] == 1
    assert summary["declined_this_round"] == 1 and summary["delta"] == 1e-4
    # linear interpolation between the latest ε of the 3 nodes (2, 3, 5): 0 %, 10 %, …, 100 %
    deciles = [2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.4, 3.8, 4.2, 4.6, 5.0]
    assert summary["epsilon_deciles"] == pytest.approx(deciles)
    assert summary["rolled_back"] == 0


def test_a_ledger_that_went_down_is_counted_as_rolled_back() -> None:
    tally = RecordLevelTally(delta=1e-4, budget=5.0)
    tally.update([_device_reply(1, 3.0, 0), _device_reply(2, 1.0, 0)])
    tally.update([_device_reply(1, 1.5, 0), _device_reply(2, 1.2, 0)])  # node 1: an old copy
    summary = tally.summary(0)
    assert summary["rolled_back"] == 1 and tally.rolled_back == {1}
    assert summary["epsilon_max"] == 3.0  # what node 1 has spent, not what it now claims


# --- the run: resume and summary (server/app.py) -------------------------------------------
def test_a_resumed_run_continues_its_epsilon(tmp_path: Path) -> None:
    from fedrec.server.app import _restored_ledger

    strategy = _strategy(_dp(), run_dir=tmp_path)
    for r in (1, 2):
        _round(strategy, _global(), [], r)
    resumed = _restored_ledger(DP_CONFIG.replace(resume=str(tmp_path)), _dp())
    assert resumed.steps == 2
    assert resumed.epsilon(1e-4) == pytest.approx(epsilon(1.0, 0.1, 2, 1e-4))
    assert _restored_ledger(DP_CONFIG, _dp()).steps == 0  # a fresh run starts at zero


def test_the_ledger_is_inside_the_atomically_replaced_checkpoint(tmp_path: Path) -> None:
    """A crash after the .npz is replaced but before checkpoint.json is written must not
    pair this round's model with the last round's ledger (review finding)."""
    strategy = _strategy(_dp(), run_dir=tmp_path)
    _round(strategy, _global(), [])
    (tmp_path / CHECKPOINT_META).write_text('{"round": 0, "user_level_ledger": {}}')  # stale
    meta = load_checkpoint_meta(tmp_path)
    assert meta["round"] == 1 and meta["user_level_ledger"]["history"] == [[1.0, 0.1, 1]]


def test_resuming_with_another_accountant_is_refused(tmp_path: Path) -> None:
    from fedrec.server.app import _restored_ledger

    strategy = _strategy(_dp(), run_dir=tmp_path)
    _round(strategy, _global(), [])
    with pytest.raises(ValueError, match="one accountant"):
        _restored_ledger(DP_CONFIG.replace(resume=str(tmp_path)), _dp(accountant="prv"))


def test_resuming_a_non_dp_checkpoint_with_dp_is_refused(tmp_path: Path) -> None:
    from fedrec.server.app import _restored_ledger

    (tmp_path / CHECKPOINT_META).write_text('{"round": 3}')
    with pytest.raises(ValueError, match="no user-level privacy ledger"):
        _restored_ledger(DP_CONFIG.replace(resume=str(tmp_path)), _dp())


def test_privacy_summary_takes_the_last_round_and_the_stop() -> None:
    from fedrec.server.summary import privacy_summary

    records = [
        {"round": 1, "privacy": {"user_level": {"epsilon": 1.0}}},
        {"round": 2, "privacy": {"user_level": {"epsilon": 2.0}}},
        {"round": 2, "eval": {}},
    ]
    summary = privacy_summary(records, DP_CONFIG, budget_stop=2)
    assert summary["user_level"] == {"epsilon": 2.0}
    assert summary["stopped_by_budget"] is True and summary["stop_round"] == 2
    plain = privacy_summary([], FederationConfig(), None)
    assert plain == {"user_level": None, "record_level": None}


def test_a_reply_of_another_shape_is_a_dropout_counted_as_malformed() -> None:
    """(1, 4) would broadcast over the (6, 4) table and be averaged in six times."""
    strategy = _strategy(_dp(noise_multiplier=1e-9))
    good = {"item_embedding.weight": np.full((6, 4), 0.1), "head.bias": np.array([0.0])}
    wide = {"item_embedding.weight": np.full((1, 4), 0.1), "head.bias": np.array([0.0])}
    out = _round(strategy, _global(), [_reply(good, 1), _reply(wide, 2)])
    np.testing.assert_allclose(out["item_embedding.weight"], 0.01, atol=1e-6)  # 0.1 / m
    record = _record(strategy)
    assert record["rejected_malformed"] == 1 and record["rejected_non_finite"] == 0
    assert record["replies"] == 1


def test_a_low_rank_round_draws_the_tables_noise_in_its_basis() -> None:
    """Every decoded table update lies in the round's basis B (r = 2 of d = 4): DP-FedAvg
    releases the projection of mean + N(0, σ²I), i.e. the mean and N(0, σ²)·B (the same ε,
    by post-processing), so the table carries r/d = 1/2 of the dense noise energy, all of
    it in B's span; the bias keeps its full noise."""
    from fedrec.common.colr import FACTOR, LowRank
    from fedrec.server.exchange import Exchange

    rows, sigma = 50_000, 2.0 / 10
    dp = _dp(noise_multiplier=2.0)
    shapes = {"item_embedding.weight": (rows, 4), "head.bias": (1,)}
    exchange = Exchange("none", "none", shapes, rank=2, seed=1)
    strategy = make_strategy(
        DP_CONFIG, randomness=ServerRandomness.seeded(5), num_rounds=10, user_dp=dp,
        exchange=exchange,
    )  # fmt: skip
    a = np.full((rows, 2), 0.001)
    replies = [_reply({FACTOR: a, "head.bias": np.zeros(1)}, n) for n in (1, 2, 3)]
    out = _round(strategy, _global(size=rows), replies)
    b = LowRank.for_round(2, 1, 1).basis(4)
    noise = out["item_embedding.weight"] - 3 * (a @ b) / 10
    np.testing.assert_allclose(noise - noise @ b.T @ b, 0.0, atol=1e-6)  # all in the span
    assert (noise**2).sum() / rows == pytest.approx(2 * sigma**2, rel=0.02)  # r·σ², not d·σ²
    assert abs(float(out["head.bias"][0])) < 5 * sigma
