"""Tests for fedrec.server.optimizer: the server optimizers (Flower 1.42's math, bit for bit),
the step-size schedule, decoupled weight decay, float32 on the wire and the state dict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import StaticGrid, federation, model_arrays, train_reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import strategy as flower

from fedrec.common import keys
from fedrec.common.records import metrics_of, numpy_arrays
from fedrec.server.aggregate import fedavg_mean
from fedrec.server.optimizer import (
    WEIGHT_KEYS,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    ServerOptimizer,
    ServerStep,
    scheduled_lr,
    server_optimizer,
)

Model = dict[str, np.ndarray]
NODES = [1, 2, 3]
EXAMPLES = [30, 10, 7]  # the float32 replies' weights, in reply order


def _start() -> Model:
    return {k: v.numpy() for k, v in model_arrays().items()}  # float32


def _record(model: Model) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in model.items()})


def _replies(model: Model, server_round: int, precision: str) -> list[Message]:
    """The round's replies, each the round's model moved by a seeded random step: three
    float32 devices of ``EXAMPLES`` examples, or (``float64``) one reply of weight 1 holding
    a float64 model, as DP-FedAvg releases its noised mean."""
    rng = np.random.default_rng([server_round, int(precision == "float64")])
    if precision == "float64":
        moved = {k: v.astype(np.float64) + rng.normal(0, 0.3, v.shape) for k, v in model.items()}
        return [train_reply(_record(moved), 1, 0.5, NODES[0])]
    replies = []
    for node, examples in zip(NODES, EXAMPLES, strict=True):
        moved = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in model.items()}
        replies.append(train_reply(_record(moved), examples, 0.5, node))
    return replies


def _fedrec_mean(replies: list[Message]) -> Model:
    """What the round loop steps to: FedAvg's float32 average of the replies (plain rounds,
    ``server/plain.py``), or the one released float64 model as it is (DP)."""
    models = [numpy_arrays(r.content[keys.ARRAYS]) for r in replies]
    if len(models) == 1:
        return models[0]
    weights = [float(metrics_of(r.content)[keys.NUM_EXAMPLES]) for r in replies]  # type: ignore[arg-type]
    return fedavg_mean(models, weights)


PAIRS = {  # fedrec's optimizer and Flower's strategy with the same settings
    "fedavg": (lambda: FedAvg(), lambda: flower.FedAvg()),
    "fedavgm": (
        lambda: FedAvgM(lr=0.7, momentum=0.9),
        lambda: flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    ),
    "fedadam": (
        lambda: FedAdam(lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
        lambda: flower.FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
    ),
    "fedyogi": (
        lambda: FedYogi(lr=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3),
        lambda: flower.FedYogi(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3),
    ),
}


def _state_of_flower(strategy: flower.FedAvg, names: list[str]) -> dict[str, np.ndarray]:
    """Flower's optimizer state under fedrec's state-dict keys."""
    state: dict[str, np.ndarray] = {}
    for name in ("m_t", "v_t"):
        state.update({f"{name}/{k}": v for k, v in (getattr(strategy, name, None) or {}).items()})
    momentum = getattr(strategy, "momentum_vector", None)
    if momentum is not None:  # a list, in the model's order
        state.update({f"momentum_vector/{k}": v for k, v in zip(names, momentum, strict=True)})
    return state


@pytest.mark.usefixtures("server_task")
@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_each_optimizer_takes_flowers_steps_bit_for_bit(name: str, precision: str) -> None:
    """Four rounds of the same seeded replies through fedrec's ServerStep (on fedrec's mean
    of them) and Flower's strategy (its configure_train and aggregate_train): the same
    float32 model goes out each round, and the optimizer's state is the same to the last
    bit. Each round both start from the model fedrec sends (float32); Flower's FedAdam and
    FedYogi return float64 (η_t is a NumPy float64), which fedrec sends as float32."""
    ours, theirs = PAIRS[name][0](), PAIRS[name][1]()
    step = ServerStep(ours)
    model = _start()
    names = list(model)
    for server_round in range(1, 5):
        sent = theirs.configure_train(server_round, _record(model), ConfigRecord(),
                                      StaticGrid(NODES))  # type: ignore[arg-type]  # fmt: skip
        assert sorted(m.metadata.dst_node_id for m in sent) == NODES
        replies = _replies(model, server_round, precision)
        flower_arrays, _ = theirs.aggregate_train(server_round, replies)
        assert flower_arrays is not None
        expected = {k: v.numpy() for k, v in flower_arrays.items()}
        model, lr = step(model, _fedrec_mean(replies), server_round)
        assert lr is None  # no schedule: the optimizer's own step size
        for k in names:
            assert model[k].dtype == np.float32
            assert np.array_equal(model[k], expected[k].astype(np.float32)), (server_round, k)
        state, flower_state = step.state_dict(names), _state_of_flower(theirs, names)
        assert set(state) == set(flower_state)
        for k, v in state.items():
            assert v.dtype == flower_state[k].dtype and np.array_equal(v, flower_state[k]), k
        if name == "fedavgm":  # the raw step it continues from (Flower's current_arrays)
            assert ours.previous is not None
            raw = {k: v.numpy() for k, v in theirs.current_arrays.items()}  # type: ignore[union-attr]
            assert all(np.array_equal(ours.previous[k], raw[k]) for k in names)
    assert name == "fedavg" or state  # the stateful optimizers did keep state


@pytest.mark.usefixtures("server_task")
@pytest.mark.parametrize(("base", "rates"), [(1.0, [1.0, 0.5, 0.25]), (2.0, [2.0, 1.0, 0.5])])
def test_fedavgm_decides_once_whether_it_steps_as_flower_does(
    base: float, rates: list[float]
) -> None:
    """Flower's FedAvgM decides at construction (momentum 0, server lr 1: FedAvg) whether it
    takes a server step at all, and a schedule that changes its step size later does not
    change that: at lr 1.0 it keeps moving to the mean; from 2.0 it steps every round, the
    one scheduled at exactly 1.0 included (the regression: skipping it left the step it
    continues from stale). fedrec's takes the same steps bit for bit."""
    ours = FedAvgM(lr=base, momentum=0.0)
    theirs = flower.FedAvgM(server_learning_rate=base, server_momentum=0.0)
    model = _start()
    for server_round, rate in enumerate(rates, start=1):
        theirs.configure_train(server_round, _record(model), ConfigRecord(), StaticGrid(NODES))  # type: ignore[arg-type]
        replies = _replies(model, server_round, "float32")
        theirs.server_learning_rate = rate  # what fedrec's schedule did to Flower's
        flower_arrays, _ = theirs.aggregate_train(server_round, replies)
        assert flower_arrays is not None
        ours.lr = rate
        ours_model = ours.step(model, _fedrec_mean(replies), server_round)
        expected = {k: v.numpy() for k, v in flower_arrays.items()}
        assert all(np.array_equal(ours_model[k], expected[k]) for k in model), server_round
        model = {k: np.asarray(v, np.float32) for k, v in ours_model.items()}


def test_a_float64_mean_moves_the_adaptive_moments_in_float64() -> None:
    """The DP release is float64: FedAdam's Δ, m_t and v_t keep its precision (x_t is the
    float32 model), and only the model sent is cast."""
    optimizer = FedAdam()
    start = _start()
    mean = {k: v.astype(np.float64) + 1e-9 for k, v in start.items()}  # below float32's step
    new, _ = ServerStep(optimizer)(start, mean, 1)
    assert all(v.dtype == np.float64 for v in [*optimizer.m_t.values(), *optimizer.v_t.values()])
    # Δ = 1e-9 is kept: m_1 = (1 − β1)·Δ = 1e-10 (in float32, 11 + 1e-9 is 11 and Δ is 0)
    np.testing.assert_allclose(optimizer.m_t["item_embedding.weight"][2, 3], 1e-10, rtol=1e-5)
    assert all(v.dtype == np.float32 for v in new.values())


# --- server step-size schedule ------------------------------------------------------------------
def test_cosine_schedule_known_values() -> None:
    # lr_t = base·(1 + cos(π·(t − 1)/T))/2
    assert scheduled_lr(0.02, "cosine", 1, 100) == pytest.approx(0.02)
    assert scheduled_lr(0.02, "cosine", 51, 100) == pytest.approx(0.01)  # cos(π/2) = 0
    assert scheduled_lr(0.02, "cosine", 76, 100) == pytest.approx(0.01 * (1 - math.sqrt(0.5)))
    last = 0.01 * (1 + math.cos(0.99 * math.pi))
    assert scheduled_lr(0.02, "cosine", 100, 100) == pytest.approx(last)
    assert scheduled_lr(0.02, "cosine", 500, 100) == pytest.approx(0.0)  # past the horizon: 0
    assert [scheduled_lr(0.3, "constant", r, 10) for r in (1, 5, 10)] == [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match="unknown server-lr-schedule 'step'"):
        scheduled_lr(0.1, "step", 1, 10)


def _cosine(base: float, total: int = 10):  # type: ignore[no-untyped-def]
    return lambda r: scheduled_lr(base, "cosine", r, total)


def _mean(model: Model, delta: float = 0.25) -> Model:
    return {k: v.astype(np.float64) + delta for k, v in model.items()}


@pytest.mark.parametrize("kind", [FedAvgM, FedAdam, FedYogi])
def test_the_schedule_sets_the_step_of_the_absolute_round(kind: type[ServerOptimizer]) -> None:
    """Round 7 of a 10-round run takes the step of round 7 (the loop passes absolute rounds,
    so a resumed run continues the schedule of the whole run): the same step as the
    optimizer built with lr_7 = 0.04·(1 + cos(0.6π))/2 = 0.01382."""
    lr_7 = 0.04 * (1 + math.cos(0.6 * math.pi)) / 2
    step = ServerStep(kind(lr=0.04), step_size=_cosine(0.04))  # type: ignore[call-arg]
    new, lr = step(_start(), _mean(_start()), 7)
    assert lr == pytest.approx(lr_7) and step.optimizer.lr == lr
    fixed = kind(lr=lr).step(_start(), _mean(_start()), 7)  # type: ignore[call-arg]
    for k, v in fixed.items():
        np.testing.assert_array_equal(new[k], v.astype(np.float32))


def test_the_schedule_changes_the_fedadam_step() -> None:
    """Same mean, same (empty) state: FedAdam's step is linear in η, and the cosine step of
    round 6 of 10 is η·(1 + cos(π/2))/2 = η/2, so it moves the model half as far."""
    moves = []
    for schedule in ("constant", "cosine"):
        step = ServerStep(
            FedAdam(lr=0.1), step_size=lambda r, s=schedule: scheduled_lr(0.1, s, r, 10)
        )
        new, _ = step(_start(), _mean(_start()), 6)
        moves.append(new["head.bias"].astype(np.float64) - _start()["head.bias"])
    assert moves[0][0] > 0.01  # it moved
    np.testing.assert_allclose(moves[1], 0.5 * moves[0], rtol=1e-5)


def test_server_weight_decay_shrinks_weight_matrices_after_the_step() -> None:
    """FedAdamW: after the plain FedAdam step, matrices named ``*.weight`` are multiplied by
    1 − lr_t·wd = 1 − 0.05·2 = 0.9 (lr_6 = 0.1·(1 + cos(π/2))/2 = 0.05); biases are not."""
    decayed, _ = ServerStep(FedAdam(lr=0.1), step_size=_cosine(0.1), weight_decay=2.0)(
        _start(), _mean(_start()), 6
    )
    plain = FedAdam(lr=0.05).step(_start(), _mean(_start()), 6)
    table, bias = "item_embedding.weight", "head.bias"
    np.testing.assert_array_equal(decayed[table], (plain[table] * 0.9).astype(np.float32))
    np.testing.assert_array_equal(decayed[bias], plain[bias].astype(np.float32))
    assert not np.array_equal(decayed[table], plain[table].astype(np.float32))


def test_server_step_refuses_a_schedule_or_decay_the_optimizer_has_no_use_for() -> None:
    with pytest.raises(ValueError, match="no server step size to schedule"):
        ServerStep(FedAvg(), step_size=lambda r: 0.1)  # FedAvg (and FedProx) steps to the mean
    with pytest.raises(ValueError, match="decoupled weight decay needs FedAdam"):
        ServerStep(FedAvgM(lr=0.5, momentum=0.9), weight_decay=0.1)
    with pytest.raises(ValueError, match="decoupled weight decay needs FedAdam"):
        ServerStep(FedAvg(), weight_decay=0.1)
    with pytest.raises(ValueError, match="server-weight-decay needs one of"):
        federation(strategy="fedavg", server_weight_decay=0.1)


@pytest.mark.parametrize("kind", [FedAvg, FedAvgM, FedAdam, FedYogi])
def test_the_step_sends_float32(kind: type[ServerOptimizer]) -> None:
    """A float64 mean (the DP release) and a momentum step both leave the server as float32
    (Flower's FedAdam would send float64: its η_t is a NumPy float64)."""
    optimizer = FedAvgM(lr=0.5, momentum=0.9) if kind is FedAvgM else kind()
    new, _ = ServerStep(optimizer)(_start(), _mean(_start()), 1)
    assert all(v.dtype == np.float32 for v in new.values())
    assert set(new) == set(_start())


def test_uniform_client_weighting_counts_every_client_once() -> None:
    """Two replies, biases 0.5·1.5 = 0.75 (30 examples) and 0.5·2.5 = 1.25 (10 examples):
    by examples 3:1, 0.75·0.75 + 0.25·1.25 = 0.875; uniform 1:1, (0.75 + 1.25)/2 = 1.0."""
    replies = [
        train_reply(model_arrays(1.5), 30, 0.4, 1),
        train_reply(model_arrays(2.5), 10, 0.8, 2),
    ]
    models = [numpy_arrays(r.content[keys.ARRAYS]) for r in replies]
    for weighting, bias in (("examples", 0.875), ("uniform", 1.0)):
        key = WEIGHT_KEYS[weighting]
        weights = [float(metrics_of(r.content)[key]) for r in replies]  # type: ignore[arg-type]
        new, _ = ServerStep(FedAvg())(_start(), fedavg_mean(models, weights), 1)
        np.testing.assert_allclose(new["head.bias"], [bias], rtol=1e-6)
    assert set(WEIGHT_KEYS.values()) == {keys.NUM_EXAMPLES, keys.UNIT_WEIGHT}


# --- the optimizer's state ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", [FedAdam, FedYogi])
def test_adaptive_optimizer_state_round_trips(kind: type[FedAdam]) -> None:
    names = list(_start())
    step = ServerStep(kind())
    model, _ = step(_start(), _mean(_start(), 0.2), 1)
    model, _ = step(model, _mean(model, -0.1), 2)
    state = step.state_dict(names)
    assert set(state) == {f"{m}/{k}" for m in ("m_t", "v_t") for k in names}
    resumed = ServerStep(kind())
    resumed.load_state_dict(state)
    # the resumed server takes the next step exactly as the uninterrupted one does
    expected, _ = step(model, _mean(model, 0.3), 3)
    got, _ = resumed(model, _mean(model, 0.3), 3)
    for k in names:
        np.testing.assert_array_equal(got[k], expected[k])


def test_fedavgm_momentum_round_trips() -> None:
    """The momentum vector is the state; the resumed optimizer starts from the checkpointed
    (float32) model, which, with float32 means, is the step it took bit for bit."""

    def shifted(model: Model, delta: float) -> Model:  # a float32 mean, as FedAvg's
        return {k: (v + delta).astype(np.float32) for k, v in model.items()}

    names = list(_start())
    step = ServerStep(FedAvgM(lr=0.5, momentum=0.9))
    model, _ = step(_start(), shifted(_start(), 0.2), 1)
    model, _ = step(model, shifted(model, 0.1), 2)
    state = step.state_dict(names)
    assert set(state) == {f"momentum_vector/{k}" for k in names}
    resumed = ServerStep(FedAvgM(lr=0.5, momentum=0.9))
    resumed.load_state_dict(state)
    expected, _ = step(model, shifted(model, -0.3), 3)
    got, _ = resumed(model, shifted(model, -0.3), 3)
    for k in names:
        np.testing.assert_array_equal(got[k], expected[k])
    # without the momentum the step differs: bias 0.5 + 0.2 + 0.1 moves by 0.5·0.3 = 0.15,
    # not by 0.5·(0.3 − 0.9·(…)) — the state is what made the two agree
    fresh, _ = ServerStep(FedAvgM(lr=0.5, momentum=0.9))(model, shifted(model, -0.3), 3)
    assert not np.array_equal(fresh["head.bias"], expected["head.bias"])


def test_no_optimizer_state_loads_as_nothing() -> None:
    step = ServerStep(FedAdam())
    step.load_state_dict({})
    assert not step.optimizer.m_t and not step.optimizer.v_t  # type: ignore[attr-defined]
    assert step.state_dict(["head.bias"]) == {}  # no step taken yet: nothing to save
    assert ServerStep(FedAvg()).state_dict(["head.bias"]) == {}  # FedAvg has none
    # a FedAvgM checkpoint's state means nothing to FedAdam: nothing of it is taken
    step.load_state_dict({"momentum_vector/head.bias": np.ones(1)})
    assert not step.optimizer.m_t and not step.optimizer.v_t  # type: ignore[attr-defined]


# --- server_optimizer ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kind"),
    [("fedavg", FedAvg), ("fedavgm", FedAvgM), ("fedadam", FedAdam), ("fedyogi", FedYogi),
     ("fedprox", FedAvg)],
)  # fmt: skip
def test_server_optimizer_builds_each_strategy_with_its_settings(
    name: str, kind: type[ServerOptimizer]
) -> None:
    config = federation(
        strategy=name, server_lr=0.3, server_beta1=0.8, server_beta2=0.95, server_tau=0.01,
        proximal_mu=0.7,
    )  # fmt: skip
    optimizer = server_optimizer(config)
    assert type(optimizer) is kind
    if isinstance(optimizer, FedAdam):
        settings = (optimizer.lr, optimizer.beta_1, optimizer.beta_2, optimizer.tau)
        assert settings == (0.3, 0.8, 0.95, 0.01)
    elif isinstance(optimizer, FedAvgM):
        assert (optimizer.lr, optimizer.momentum) == (0.3, 0.8)
    else:  # FedProx's μ is the devices' proximal term: the server steps as FedAvg
        assert not optimizer.has_step_size
