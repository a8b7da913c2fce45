"""Tests for fedrec.server.optimizer: Flower's server step, its schedule, decay and state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import StaticGrid, eval_reply, model_arrays, train_reply
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.server.cohorts import CohortGrid
from fedrec.server.optimizer import (
    ServerStep,
    aggregate_user_metrics,
    flower_strategy,
    scheduled_lr,
)

pytestmark = pytest.mark.usefixtures("server_task")


def _metrics(**values: float) -> RecordDict:
    return RecordDict({keys.METRICS: MetricRecord(values)})


def step_of(config: FederationConfig) -> ServerStep:
    """The server step a run of ``config`` builds (server/factory.py)."""
    from fedrec.server.factory import ServerRandomness, make_strategy

    return make_strategy(config, randomness=ServerRandomness.seeded(0), num_rounds=1).step


def _aggregate(step: ServerStep, arrays: ArrayRecord, absolute_round: int) -> ArrayRecord:
    """One round: the model goes out to nodes 1 and 2, two fixed replies come back."""
    grid = CohortGrid(StaticGrid([1, 2]), [1, 2])  # type: ignore[arg-type]
    list(step.configure_train(absolute_round, arrays, ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = [train_reply(model_arrays(0.5 + absolute_round), 30, 0.4, 1),
               train_reply(model_arrays(1.5 + absolute_round), 10, 0.8, 2)]  # fmt: skip
    new, metrics = step.aggregate_train(absolute_round, replies)
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


def test_each_metric_is_the_mean_over_the_users_that_report_it() -> None:
    records = [
        _metrics(users=1, **{"num-examples": 1, "hr@10": 1.0, "er@5": 0.0, "er@10": 0.5}),
        _metrics(users=1, **{"num-examples": 1, "hr@10": 0.0}),  # it has seen every target
        _metrics(users=1, **{"num-examples": 1, "hr@10": 1.0, "er@5": 1.0, "er@10": 1.0}),
        _metrics(users=0, **{"num-examples": 0}),
    ]
    result = aggregate_user_metrics(records, keys.USERS)
    assert result[keys.USERS] == 3 and result["hr@10"] == pytest.approx(2 / 3)
    assert (result["er@5"], result["er@10"]) == (pytest.approx(0.5), pytest.approx(0.75))


def test_the_server_step_aggregates_evaluations_of_different_keys() -> None:
    """Flower's FedAvg refuses a round whose replies differ in keys; a device that evaluated
    nobody, or a poisoning simulation's malicious one, sends fewer."""
    step = step_of(FederationConfig())
    replies = [
        eval_reply({"users": 1, "num-examples": 1, "hr@10": 1.0, "unit-weight": 1}, 1),
        eval_reply({"users": 0, "num-examples": 0, "unit-weight": 1}, 2),
        eval_reply({"users": 1, "num-examples": 1, "hr@10": 0.0, "unit-weight": 1}, 3),
    ]
    result = step.aggregate_evaluate(1, replies)
    assert result is not None and dict(result) == {keys.USERS: 2, "hr@10": 0.5}


# --- flower_strategy ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "base"),
    [("fedavg", FedAvg), ("fedavgm", FedAvgM), ("fedadam", FedAdam), ("fedyogi", FedYogi),
     ("fedprox", FedProx)],
)  # fmt: skip
def test_flower_strategy_builds_each_strategy(name: str, base: type) -> None:
    config = FederationConfig(
        strategy=name, server_lr=0.3, server_beta1=0.8, server_beta2=0.95, server_tau=0.01,
        proximal_mu=0.7, fraction_train=0.2, min_clients=3, clients_per_round=7,
    )  # fmt: skip
    strategy = flower_strategy(config)
    assert type(strategy) is base
    # it takes every node of the grid it is given: the cohort is chosen by the recorder
    assert strategy.fraction_train == strategy.fraction_evaluate == 1.0
    assert strategy.min_train_nodes == strategy.min_evaluate_nodes == 0
    assert strategy.min_available_nodes == 0
    assert strategy.evaluate_metrics_aggr_fn is aggregate_user_metrics
    assert strategy.weighted_by_key == keys.NUM_EXAMPLES
    if name in ("fedadam", "fedyogi"):
        assert (strategy.eta, strategy.beta_1, strategy.beta_2, strategy.tau) == (
            0.3, 0.8, 0.95, 0.01)  # fmt: skip
    elif name == "fedavgm":
        assert strategy.server_learning_rate == 0.3 and strategy.server_momentum == 0.8
    elif name == "fedprox":
        assert strategy.proximal_mu == 0.7


def test_a_cohort_grid_gets_exactly_its_nodes() -> None:
    strategy = flower_strategy(FederationConfig())
    grid = CohortGrid(StaticGrid([1, 2, 3, 4, 5]), [4, 2])  # type: ignore[arg-type]
    messages = list(strategy.configure_train(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    assert sorted(m.metadata.dst_node_id for m in messages) == [2, 4]
    assert not list(strategy.configure_train(1, model_arrays(), ConfigRecord(),
                                             CohortGrid(StaticGrid([1]), [])))  # type: ignore[arg-type]  # fmt: skip


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
def test_the_schedule_sets_the_step_of_the_absolute_round(name: str, attribute: str) -> None:
    """Round 7 of a 10-round run takes the step of round 7 (the recorder passes absolute
    rounds, so a resumed run continues the schedule of the whole run)."""
    config = FederationConfig(strategy=name, server_lr=0.04, server_lr_schedule="cosine",
                              num_rounds=10)  # fmt: skip
    step = step_of(config)
    _aggregate(step, model_arrays(), 7)
    assert getattr(step.optimizer, attribute) == pytest.approx(scheduled_lr(0.04, "cosine", 7, 10))
    assert step.last_step_size == getattr(step.optimizer, attribute)


def test_the_schedule_changes_the_fedadam_step() -> None:
    """Same replies, same optimizer state: the cosine round-6 step is half the constant one."""
    moves = []
    for schedule in ("constant", "cosine"):
        config = FederationConfig(strategy="fedadam", server_lr=0.1, num_rounds=10,
                                  server_lr_schedule=schedule)  # fmt: skip
        new = _aggregate(step_of(config), model_arrays(), 6)
        moves.append(new["head.bias"].numpy() - model_arrays()["head.bias"].numpy())
    np.testing.assert_allclose(moves[1], 0.5 * moves[0], rtol=1e-5)


def test_server_weight_decay_shrinks_weight_matrices_after_the_step() -> None:
    """FedAdamW: the decayed model is the plain step × (1 − lr_t·wd); biases are not decayed."""
    results = {}
    for wd in (0.0, 2.0):
        config = FederationConfig(strategy="fedadam", server_lr=0.1, num_rounds=10,
                                  server_lr_schedule="cosine", server_weight_decay=wd)  # fmt: skip
        results[wd] = _aggregate(step_of(config), model_arrays(), 6)
    factor = 1.0 - scheduled_lr(0.1, "cosine", 6, 10) * 2.0
    np.testing.assert_allclose(results[2.0]["item_embedding.weight"].numpy(),
                               results[0.0]["item_embedding.weight"].numpy() * factor,
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(results[2.0]["head.bias"].numpy(),
                                  results[0.0]["head.bias"].numpy())  # fmt: skip
    with pytest.raises(ValueError, match="server-weight-decay needs one of"):
        FederationConfig(strategy="fedavg", server_weight_decay=0.1)
    with pytest.raises(ValueError, match="decoupled weight decay needs FedAdam"):
        ServerStep(FedAvg(), weight_decay=0.1)
    with pytest.raises(ValueError, match="no server step size to schedule"):
        ServerStep(FedProx(), step_size=lambda r: 0.1)


def test_the_step_sends_float32() -> None:
    new = _aggregate(step_of(FederationConfig(strategy="fedadam")), model_arrays(), 1)
    assert all(v.numpy().dtype == np.float32 for v in new.values())  # Flower's is float64


def test_uniform_client_weighting_counts_every_client_once() -> None:
    """Same replies (30 and 10 examples): examples weighting 3:1, uniform weighting 1:1."""
    expected = {
        "examples": 0.5 * (0.75 * 1.5 + 0.25 * 2.5),
        "uniform": 0.5 * (0.5 * 1.5 + 0.5 * 2.5),
    }
    for weighting, value in expected.items():
        new = _aggregate(step_of(FederationConfig(client_weighting=weighting)), model_arrays(), 1)
        np.testing.assert_allclose(new["head.bias"].numpy(), [value])


# --- the optimizer's state ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimizer_state_round_trips(name: str) -> None:
    config = FederationConfig(strategy=name)
    step = step_of(config)
    arrays = _aggregate(step, _aggregate(step, model_arrays(), 1), 2)
    state = step.state_dict(list(arrays.keys()))
    assert {k.split("/")[0] for k in state} == {"m_t", "v_t"}
    resumed = step_of(config)
    resumed.load_state_dict(state, list(arrays.keys()))
    # the resumed server takes the next step exactly as the uninterrupted one does
    expected = _aggregate(step, arrays, 3)
    got = _aggregate(resumed, arrays, 3)
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())


def test_fedavgm_momentum_round_trips_as_a_list() -> None:
    config = FederationConfig(strategy="fedavgm", server_lr=0.5, server_beta1=0.9)
    step = step_of(config)
    arrays = _aggregate(step, model_arrays(), 1)
    names = list(arrays.keys())
    state = step.state_dict(names)
    assert set(state) == {f"momentum_vector/{k}" for k in names}
    resumed = step_of(config)
    resumed.load_state_dict(state, names)
    assert isinstance(resumed.optimizer.momentum_vector, list)
    expected = _aggregate(step, arrays, 2)
    got = _aggregate(resumed, arrays, 2)  # FedAvgM takes its start from the first model sent
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-6)


def test_no_optimizer_state_loads_as_nothing() -> None:
    step = step_of(FederationConfig(strategy="fedadam"))
    step.load_state_dict({}, ["head.bias"])
    assert step.optimizer.m_t is None and step.optimizer.v_t is None
    assert step_of(FederationConfig()).state_dict(["head.bias"]) == {}  # FedAvg has none
