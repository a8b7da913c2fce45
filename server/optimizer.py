"""The server optimizer: one of Flower's strategies, with a step-size schedule and weight decay.

:func:`flower_strategy` builds the configured Flower strategy — FedAvg, FedAvgM (server
momentum), FedAdam or FedYogi (Reddi et al., 2021, adaptive server steps) or FedProx (Li et
al., 2020) — as the *aggregation and server step* of a round: it takes every node of the grid
it is given (``server/cohorts.py`` chooses the cohort) and weighs each reply by its examples
or, under ``client-weighting = "uniform"``, counts every client once.

:class:`ServerStep` wraps it and adds, around Flower's step and without touching its math:
  * a schedule of the server step size by absolute round (``server-lr-schedule = "cosine"``
    decays it towards 0 at ``num-rounds``, Loshchilov & Hutter 2017), so a resumed run
    continues the same schedule;
  * decoupled weight decay after the FedAdam/FedYogi step (as AdamW, Loshchilov & Hutter
    2019): weight matrices shrink by ``lr_t · wd`` each round. Flower's FedOpt takes the next
    round's starting point from the arrays this returns, so the decay is part of the state;
  * float32 on the wire (FedAdam/FedYogi return float64);
  * the optimizer's state (moments, momentum) as a state dict, for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from flwr.serverapp.strategy.fedopt import FedOpt

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.records import integer, metrics_of, scalar
from fedrec.server.cohorts import TAKE_EVERY_NODE
from fedrec.server.wrapper import StrategyWrapper

__all__ = [
    "STRATEGY_CLASSES",
    "WEIGHT_KEYS",
    "ServerStep",
    "aggregate_user_metrics",
    "flower_strategy",
    "scheduled_lr",
]

STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedprox": FedProx,
}

# The metric Flower's averaging weighs each client's update by. "uniform" counts every client
# once: with SGD client updates a heavy user's update already grows with its number of local
# steps, so weighting it by its examples as well counts its data about twice (and user-level
# DP needs uniform weights).
WEIGHT_KEYS = {"examples": keys.NUM_EXAMPLES, "uniform": keys.UNIT_WEIGHT}

# The server optimizer's state: Flower 1.42 keeps it in these public attributes (no state
# dict); FedAvgM's momentum is a list in the model's array order.
OPTIMIZER_STATE = ("m_t", "v_t", "momentum_vector")


def scheduled_lr(base: float, schedule: str, round_: int, total_rounds: int) -> float:
    """Server step size of round ``round_`` (1-based) of ``total_rounds``.

    ``cosine`` decays from ``base`` at round 1 towards 0 after the last round (Loshchilov &
    Hutter, 2017), as the centralized trainer does over its epochs: late rounds, whose
    averaged update is mostly sampling noise, take small steps.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(max(round_ - 1, 0), total_rounds) / max(total_rounds, 1)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown server-lr-schedule {schedule!r}: use constant or cosine")


def aggregate_user_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Mean of each evaluation metric over the evaluated users that report it (weight
    ``users``: 1 or 0 per client), so a user that cannot be evaluated counts as nothing, not
    as a zero (and one that has seen every target item adds nothing to the exposure)."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    users = 0
    for rd in records:
        metrics = metrics_of(rd)
        n = integer(metrics, keys.USERS, 0)
        users += n
        for k in metrics:
            if k not in (keys.USERS, keys.NUM_EXAMPLES, keys.UNIT_WEIGHT) and n:
                totals[k] = totals.get(k, 0.0) + scalar(metrics, k) * n
                counts[k] = counts.get(k, 0) + n
    means = {k: v / counts[k] for k, v in totals.items()}
    return MetricRecord({keys.USERS: users, **means})


def flower_strategy(config: FederationConfig) -> FedAvg:
    """The configured Flower strategy, sending to every node of the grid it is given."""
    kwargs: dict[str, Any] = {
        **TAKE_EVERY_NODE,
        "weighted_by_key": WEIGHT_KEYS[config.client_weighting],
        "evaluate_metrics_aggr_fn": aggregate_user_metrics,
    }
    if config.strategy in ("fedadam", "fedyogi"):
        kwargs.update(
            eta=config.server_lr,
            beta_1=config.server_beta1,
            beta_2=config.server_beta2,
            tau=config.server_tau,
        )
    elif config.strategy == "fedavgm":
        kwargs.update(server_learning_rate=config.server_lr, server_momentum=config.server_beta1)
    elif config.strategy == "fedprox":
        kwargs.update(proximal_mu=config.proximal_mu)
    return STRATEGY_CLASSES[config.strategy](**kwargs)


class ServerStep(StrategyWrapper[FedAvg]):
    """A Flower strategy's server step with a schedule, weight decay and float32 output."""

    def __init__(
        self,
        optimizer: FedAvg,
        *,
        step_size: Callable[[int], float] | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        """``step_size(round)``: the server step of each absolute round (FedAvgM, FedAdam,
        FedYogi); ``weight_decay``: decoupled decay of weight matrices (FedAdam, FedYogi)."""
        super().__init__(optimizer)
        # where Flower reads the step size each round (no schedule hook in 1.42)
        self._step_attribute = (
            "eta"
            if isinstance(optimizer, FedOpt)
            else "server_learning_rate"
            if isinstance(optimizer, FedAvgM)
            else None
        )
        if step_size is not None and self._step_attribute is None:
            raise ValueError(f"{type(optimizer).__name__} has no server step size to schedule")
        if weight_decay and not isinstance(optimizer, FedOpt):
            raise ValueError(f"decoupled weight decay needs FedAdam/FedYogi, not {optimizer}")
        self.step_size = step_size
        self.weight_decay = weight_decay
        self.last_step_size: float | None = None

    @property
    def optimizer(self) -> FedAvg:
        """The Flower strategy taking the step (its state lives in its attributes)."""
        return self.inner

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's step at this round's step size; ``server_round`` is absolute (FedAdam's
        bias correction must not restart on a resume)."""
        decay = 1.0
        if self.step_size is not None:
            lr = self.step_size(server_round)
            setattr(self.optimizer, str(self._step_attribute), lr)
            self.last_step_size = lr
            decay = 1.0 - lr * self.weight_decay
        arrays, metrics = self.optimizer.aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        wire = {}
        for k, v in arrays.items():
            value = v.numpy() * decay if k.endswith(".weight") else v.numpy()
            wire[k] = Array(value.astype(np.float32, copy=False))
        return ArrayRecord(wire), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The evaluated users' mean of each metric (:func:`aggregate_user_metrics`). Not
        Flower's: it refuses a whole round unless every reply has the same keys, and a device
        that evaluated nobody (``users`` = 0, no rates) or has seen every target item (no
        exposure) sends fewer. The recorder validated each reply before."""
        records = [m.content for m in replies if not m.has_error()]
        return aggregate_user_metrics(records, keys.USERS) if records else None

    def state_dict(self, array_names: list[str]) -> dict[str, np.ndarray]:
        """The optimizer's state as ``name/array`` entries (``array_names``: model order)."""
        state: dict[str, np.ndarray] = {}
        for name in OPTIMIZER_STATE:
            value = getattr(self.optimizer, name, None)
            if isinstance(value, list):  # FedAvgM: a list in the order of the model's arrays
                value = dict(zip(array_names, value, strict=True))
            if isinstance(value, dict):
                state.update({f"{name}/{k}": np.asarray(v) for k, v in value.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], array_names: list[str]) -> None:
        for name in OPTIMIZER_STATE:
            part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(name + "/")}
            if part and name == "momentum_vector":  # FedAvgM wants it as a list, model order
                setattr(self.optimizer, name, [part[k] for k in array_names])
            elif part:
                setattr(self.optimizer, name, part)
