"""Tests for fedrec.server.strategy (and the run summary in fedrec.server.app)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from builders import server_message
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.server.app import summarize_rounds
from fedrec.server.strategy import (
    CHECKPOINT,
    CHECKPOINT_META,
    RoundRecorder,
    aggregate_user_metrics,
    load_checkpoint,
    make_strategy,
    message_bytes,
    scheduled_lr,
)


def _metrics(**values: float) -> RecordDict:
    return RecordDict({keys.METRICS: MetricRecord(values)})


def _arrays(scale: float = 1.0) -> ArrayRecord:
    return ArrayRecord({
        "item_embedding.weight": Array(np.arange(12, dtype=np.float32).reshape(3, 4) * scale),
        "head.bias": Array(np.array([0.5], dtype=np.float32) * scale),
    })  # fmt: skip


def _train_reply(arrays: ArrayRecord, examples: int, loss: float, node: int) -> Message:
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: examples, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: loss}
    )
    content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
    return Message(content=content, reply_to=server_message("train", None, node_id=node))


def _start_round(strategy: RoundRecorder, arrays: ArrayRecord, server_round: int) -> None:
    """What configure_train leaves behind (it needs a live Grid and run, so fake its state)."""
    if isinstance(strategy, FedAvgM) and strategy.current_arrays is None:
        strategy.current_arrays = arrays
    elif isinstance(strategy, FedAdam | FedYogi):
        strategy.current_arrays = {k: a.numpy() for k, a in arrays.items()}
    strategy._current = {"round": server_round + strategy.round_offset, "clients_sampled": 2,
                         "bytes_down_per_client": 100}  # fmt: skip
    strategy._t0 = 0.0


def _aggregate(strategy: RoundRecorder, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
    _start_round(strategy, arrays, server_round)
    absolute = server_round + strategy.round_offset  # clients reply the same after a resume
    replies = [_train_reply(_arrays(0.5 + absolute), 30, 0.4, 1),
               _train_reply(_arrays(1.5 + absolute), 10, 0.8, 2)]  # fmt: skip
    new, metrics = strategy.aggregate_train(server_round, replies)
    assert new is not None and metrics is not None
    return new


# --- aggregate_user_metrics ------------------------------------------------------------------
def test_aggregate_user_metrics_weights_by_users() -> None:
    records = [
        _metrics(users=1, **{"num-examples": 1, "hr@10": 1.0, "ndcg@10": 0.5}),
        _metrics(users=1, **{"num-examples": 1, "hr@10": 0.0, "ndcg@10": 0.0}),
        _metrics(users=1, **{"num-examples": 1, "hr@10": 1.0, "ndcg@10": 1.0}),
        _metrics(users=0, **{"num-examples": 0}),  # train-only: counts as nothing
        _metrics(users=0, **{"num-examples": 0, "hr@10": 0.0, "ndcg@10": 0.0}),
    ]
    result = aggregate_user_metrics(records, keys.NUM_EXAMPLES)
    assert result[keys.USERS] == 3
    assert result["hr@10"] == pytest.approx(2 / 3)
    assert result["ndcg@10"] == pytest.approx(0.5)
    assert keys.NUM_EXAMPLES not in result


def test_aggregate_user_metrics_with_no_evaluated_user() -> None:
    records = [_metrics(users=0, **{"num-examples": 0}) for _ in range(3)]
    result = aggregate_user_metrics(records, keys.NUM_EXAMPLES)
    assert dict(result) == {keys.USERS: 0}
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in result.values())
    assert dict(aggregate_user_metrics([], keys.NUM_EXAMPLES)) == {keys.USERS: 0}


# --- make_strategy ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("fedavg", FedAvg),
        ("fedavgm", FedAvgM),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("fedprox", FedProx),
    ],
)
def test_make_strategy_builds_each_strategy(name: str, base: type, tmp_path: Path) -> None:
    config = FederationConfig(
        strategy=name, server_lr=0.3, server_beta1=0.8, server_beta2=0.95, server_tau=0.01,
        proximal_mu=0.7, fraction_train=0.2, min_clients=3, clients_per_round=7, eval_every=2,
        eval_clients=5, num_rounds=9,
    )  # fmt: skip
    strategy = make_strategy(config, num_nodes=40, run_dir=tmp_path, round_offset=4)
    mro = type(strategy).__mro__
    assert mro[1] is RoundRecorder and base in mro
    assert mro.index(RoundRecorder) < mro.index(base)  # the recorder wraps the strategy
    assert strategy.fraction_train == 0.2 and strategy.min_train_nodes == 3
    assert strategy.min_available_nodes == 40 and strategy.min_evaluate_nodes == 1
    assert strategy.evaluate_metrics_aggr_fn is aggregate_user_metrics
    assert strategy.clients_per_round == 7 and strategy.eval_every == 2
    assert strategy.eval_clients == 5 and strategy.num_rounds == 9
    assert strategy.run_dir == tmp_path and strategy.round_offset == 4
    if name in ("fedadam", "fedyogi"):
        assert (strategy.eta, strategy.beta_1, strategy.beta_2, strategy.tau) == (
            0.3, 0.8, 0.95, 0.01)  # fmt: skip
    elif name == "fedavgm":
        assert strategy.server_learning_rate == 0.3 and strategy.server_momentum == 0.8
    elif name == "fedprox":
        assert strategy.proximal_mu == 0.7


# --- server step-size schedule ------------------------------------------------------------------
def test_cosine_schedule_known_values() -> None:
    assert scheduled_lr(0.02, "cosine", 1, 100) == pytest.approx(0.02)
    assert scheduled_lr(0.02, "cosine", 51, 100) == pytest.approx(0.01)
    assert scheduled_lr(0.02, "cosine", 76, 100) == pytest.approx(0.01 * (1 - math.sqrt(0.5)))
    last = 0.01 * (1 + math.cos(0.99 * math.pi))
    assert scheduled_lr(0.02, "cosine", 100, 100) == pytest.approx(last)
    assert scheduled_lr(0.02, "cosine", 500, 100) == pytest.approx(0.0)  # past the horizon: 0
    assert [scheduled_lr(0.3, "constant", r, 10) for r in (1, 5, 10)] == [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match="unknown server-lr-schedule 'step'"):
        scheduled_lr(0.1, "step", 1, 10)


@pytest.mark.parametrize(("name", "attribute"), [("fedadam", "eta"), ("fedyogi", "eta"),
                                                 ("fedavgm", "server_learning_rate")])  # fmt: skip
def test_the_schedule_sets_the_step_by_absolute_round(name: str, attribute: str) -> None:
    """A resumed run (offset 6) continues the schedule of the whole run, not a fresh one."""
    config = FederationConfig(strategy=name, server_lr=0.04, server_lr_schedule="cosine",
                              num_rounds=10)  # fmt: skip
    strategy = make_strategy(config, num_nodes=3, run_dir=None, round_offset=6)
    _aggregate(strategy, _arrays(), 1)
    assert getattr(strategy, attribute) == pytest.approx(scheduled_lr(0.04, "cosine", 7, 10))
    assert strategy._current["server_lr"] == getattr(strategy, attribute)


def test_the_schedule_changes_the_fedadam_step() -> None:
    """Same replies, same optimizer state: the cosine round-6 step is half the constant one."""
    moves = []
    for schedule in ("constant", "cosine"):
        config = FederationConfig(strategy="fedadam", server_lr=0.1, num_rounds=10,
                                  server_lr_schedule=schedule)  # fmt: skip
        strategy = make_strategy(config, num_nodes=3, run_dir=None, round_offset=5)
        new = _aggregate(strategy, _arrays(), 1)
        moves.append(new["head.bias"].numpy() - _arrays()["head.bias"].numpy())
    np.testing.assert_allclose(moves[1], 0.5 * moves[0], rtol=1e-5)


def test_server_weight_decay_shrinks_weight_matrices_after_the_step() -> None:
    """FedAdamW: the decayed model is the plain step × (1 − lr_t·wd); biases are not decayed."""
    results = {}
    for wd in (0.0, 2.0):
        config = FederationConfig(strategy="fedadam", server_lr=0.1, num_rounds=10,
                                  server_lr_schedule="cosine", server_weight_decay=wd)  # fmt: skip
        strategy = make_strategy(config, num_nodes=3, run_dir=None, round_offset=5)
        results[wd] = _aggregate(strategy, _arrays(), 1)
    factor = 1.0 - scheduled_lr(0.1, "cosine", 6, 10) * 2.0
    np.testing.assert_allclose(results[2.0]["item_embedding.weight"].numpy(),
                               results[0.0]["item_embedding.weight"].numpy() * factor,
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(results[2.0]["head.bias"].numpy(),
                                  results[0.0]["head.bias"].numpy())  # fmt: skip
    with pytest.raises(ValueError, match="server-weight-decay needs one of"):
        FederationConfig(strategy="fedavg", server_weight_decay=0.1)


def test_num_rounds_override() -> None:
    strategy = make_strategy(FederationConfig(num_rounds=20), num_nodes=5, run_dir=None,
                             num_rounds=6)  # fmt: skip
    assert strategy.num_rounds == 6 and strategy.run_dir is None


# --- one aggregation round -------------------------------------------------------------------
def test_aggregate_train_records_the_round(tmp_path: Path) -> None:
    strategy = make_strategy(FederationConfig(), num_nodes=3, run_dir=tmp_path, round_offset=2)
    _start_round(strategy, _arrays(), 1)
    failed = Message(error=Error(code=1, reason="boom"),
                     reply_to=server_message("train", None, node_id=3))  # fmt: skip
    replies = [_train_reply(_arrays(1.0), 30, 0.4, 1), _train_reply(_arrays(3.0), 10, 0.8, 2),
               failed]  # fmt: skip
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["head.bias"].numpy(), [0.5 * (0.75 * 1 + 0.25 * 3)])
    rec = strategy._current
    assert rec["round"] == 3
    assert rec["clients_replied"] == 2 and rec["clients_failed"] == 1
    assert rec["errors"] == ["boom"]
    assert rec["train_loss"] == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    assert rec["bytes_up_per_client"] == message_bytes(replies[0]) > 13 * 4
    assert rec["bytes_up_total"] == 2 * message_bytes(replies[0])
    assert rec["bytes_down_total"] == 200
    model, _, round_ = load_checkpoint(tmp_path)  # a checkpoint after every round
    assert round_ == 3
    np.testing.assert_array_equal(model["head.bias"].numpy(), arrays["head.bias"].numpy())


def test_uniform_client_weighting_counts_every_client_once() -> None:
    """Same replies (30 and 10 examples): examples weighting 3:1, uniform weighting 1:1."""
    expected = {"examples": 0.5 * (0.75 * 1 + 0.25 * 3), "uniform": 0.5 * (0.5 * 1 + 0.5 * 3)}
    for weighting, value in expected.items():
        strategy = make_strategy(FederationConfig(client_weighting=weighting), num_nodes=3,
                                 run_dir=None)  # fmt: skip
        _start_round(strategy, _arrays(), 1)
        replies = [_train_reply(_arrays(1.0), 30, 0.4, 1), _train_reply(_arrays(3.0), 10, 0.8, 2)]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        np.testing.assert_allclose(arrays["head.bias"].numpy(), [value])


def test_a_round_where_every_client_failed_stops_the_run() -> None:
    strategy = make_strategy(FederationConfig(), num_nodes=3, run_dir=None, round_offset=5)
    _start_round(strategy, _arrays(), 1)
    failed = [
        Message(
            error=Error(code=1, reason=f"node {n} broke"),
            reply_to=server_message("train", None, node_id=n),
        )
        for n in (1, 2)
    ]
    with pytest.raises(RuntimeError, match=r"round 6: all 2 clients failed.*node 1 broke"):
        strategy.aggregate_train(1, failed)


# --- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    strategy = make_strategy(FederationConfig(), num_nodes=3, run_dir=tmp_path)
    arrays = _arrays(2.0)
    strategy._checkpoint(arrays, 7)
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / CHECKPOINT_META).exists()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    for where in (tmp_path, tmp_path / CHECKPOINT):  # a run folder or the file itself
        model, state, round_ = load_checkpoint(where)
        assert isinstance(model, ArrayRecord) and round_ == 7
        assert list(model) == list(arrays)
        for key, array in arrays.items():
            np.testing.assert_array_equal(model[key].numpy(), array.numpy())
            assert model[key].numpy().dtype == np.float32
        assert set(state) == {f"model/{k}" for k in arrays}  # FedAvg has no optimizer state


def test_load_checkpoint_without_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimizer_state_survives_a_checkpoint(name: str, tmp_path: Path) -> None:
    config = FederationConfig(strategy=name)
    strategy = make_strategy(config, num_nodes=3, run_dir=tmp_path)
    arrays = _aggregate(strategy, _arrays(), 1)
    arrays = _aggregate(strategy, arrays, 2)
    assert isinstance(strategy.m_t, dict) and isinstance(strategy.v_t, dict)

    model, state, round_ = load_checkpoint(tmp_path)
    assert round_ == 2
    resumed = make_strategy(config, num_nodes=3, run_dir=None, round_offset=round_)
    resumed.restore_optimizer_state(state)
    for name_ in ("m_t", "v_t"):
        before, after = getattr(strategy, name_), getattr(resumed, name_)
        assert set(after) == set(before)
        for key in before:
            np.testing.assert_array_equal(after[key], before[key])
    # the resumed server takes the next step exactly as the uninterrupted one does (this
    # needs the absolute round in FedAdam/FedYogi's bias correction, not Flower's relative one)
    expected = _aggregate(strategy, arrays, 3)
    got = _aggregate(resumed, model, 1)  # Flower counts the rounds of a resumed run from 1
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-6)
        assert got[key].numpy().dtype == np.float32  # Flower's float64 is not sent on


def test_fedavgm_momentum_survives_a_checkpoint(tmp_path: Path) -> None:
    """FedAvgM keeps its momentum as a list: it must be checkpointed and restored too."""
    config = FederationConfig(strategy="fedavgm", server_lr=0.5, server_beta1=0.9)
    strategy = make_strategy(config, num_nodes=3, run_dir=tmp_path)
    arrays = _aggregate(strategy, _arrays(), 1)
    assert isinstance(strategy.momentum_vector, list)

    model, state, _ = load_checkpoint(tmp_path)
    assert {k for k in state if k.startswith("momentum_vector/")} == {
        f"momentum_vector/{k}" for k in arrays
    }
    resumed = make_strategy(config, num_nodes=3, run_dir=None)
    resumed.restore_optimizer_state(state)
    assert isinstance(resumed.momentum_vector, list)
    for a, b in zip(resumed.momentum_vector, strategy.momentum_vector, strict=True):
        np.testing.assert_array_equal(a, b)
    expected = _aggregate(strategy, arrays, 2)
    resumed.current_arrays = model
    got = _aggregate(resumed, model, 2)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-6)


def test_restore_without_optimizer_state_changes_nothing() -> None:
    strategy = make_strategy(FederationConfig(strategy="fedadam"), num_nodes=3, run_dir=None)
    strategy.restore_optimizer_state({"model/head.bias": np.zeros(1)})
    assert strategy.m_t is None and strategy.v_t is None


# --- summarize_rounds ------------------------------------------------------------------------
def _eval(val_hr: float, hr: float) -> dict[str, float]:
    return {"users": 50.0, "val-hr@10": val_hr, "hr@10": hr, "ndcg@10": hr / 2,
            "full_hr@10": hr / 3, "full_ndcg@10": hr / 4}  # fmt: skip


def test_summarize_rounds_picks_the_best_validation_round() -> None:
    records = [
        {"round": 0, "clients_sampled": 0, "bytes_down_per_client": 0, "eval": _eval(0.1, 0.1)},
        {"round": 1, "clients_sampled": 4, "clients_replied": 4, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 900.0},
        {"round": 2, "clients_sampled": 4, "clients_replied": 3, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 1100.0, "eval": _eval(0.6, 0.3)},
        {"round": 3, "clients_sampled": 4, "clients_replied": 0, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 0.0, "eval": {"users": 0.0}},  # no evaluated user this time
        {"round": 4, "clients_sampled": 2, "clients_replied": 2, "bytes_down_per_client": 1000,
         "bytes_up_per_client": 1000.0, "eval": _eval(0.4, 0.9)},  # best test, worse val
    ]  # fmt: skip
    summary = summarize_rounds(records)
    assert summary["best_round"] == 2
    best = _eval(0.6, 0.3)
    assert summary["final"] == {k: best[k] for k in ("hr@10", "ndcg@10", "full_hr@10",
                                                     "full_ndcg@10", "users")}  # fmt: skip
    assert summary["final_split"] == "test" and "val-hr@10" in summary["selection"]
    assert summary["last"] == _eval(0.4, 0.9)
    assert summary["rounds"] is records
    # round 0 sent nothing and round 3 got no reply: neither counts in the means
    assert summary["bytes_per_client_round"] == {"down": 1000.0, "up": 1000.0}


def test_summarize_rounds_prefers_the_later_round_on_ties() -> None:
    records = [{"round": r, "eval": _eval(0.5, r / 10)} for r in (1, 2, 3)]
    assert summarize_rounds(records)["best_round"] == 3


def test_summarize_rounds_without_evaluation() -> None:
    summary = summarize_rounds(
        [
            {
                "round": 1,
                "clients_sampled": 2,
                "clients_replied": 2,
                "bytes_down_per_client": 10,
                "bytes_up_per_client": 20.0,
            }
        ]
    )
    assert summary["best_round"] is None and summary["final"] == {} and summary["last"] == {}
    assert summary["bytes_per_client_round"] == {"down": 10.0, "up": 20.0}
    empty = summarize_rounds([])
    assert empty["best_round"] is None
    assert empty["bytes_per_client_round"] == {"down": 0.0, "up": 0.0}
