"""The server optimizer: from the round's model and the mean it aggregated, the next model.

FedAvg moves to the mean; FedAvgM (server momentum, Hsu et al. 2019) and FedAdam / FedYogi
(Reddi et al., 2021, "Adaptive Federated Optimization") treat Δ_t = mean − x_t as a
pseudo-gradient and take an adaptive step; FedProx (Li et al., 2020) is FedAvg on the
server (its proximal term μ is the devices'). The step is a pure function of (x_t, mean, t)
and the optimizer's state, written out here term by term as Flower 1.42's strategies
compute it (``flwr/serverapp/strategy/fedavgm.py``, ``fedopt.py``, ``fedadam.py``,
``fedyogi.py``), so a run takes the same steps bit for bit (tests/server/test_optimizer.py
checks each against Flower's own); Flower's strategies take replies, fedrec's rounds an
:class:`~fedrec.server.aggregate.Aggregate`, whoever summed it.

:class:`ServerStep` adds, around the step and without touching its math:
  * a schedule of the server step size by absolute round (``server-lr-schedule = "cosine"``
    decays it towards 0 at ``num-rounds``, Loshchilov & Hutter 2017), so a resumed run
    continues the same schedule;
  * decoupled weight decay after the FedAdam/FedYogi step (as AdamW, Loshchilov & Hutter
    2019): weight matrices shrink by ``lr_t · wd`` each round;
  * float32 on the wire (the adaptive steps compute in the mean's precision);
  * the optimizer's state (moments, momentum) as a state dict, for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig

__all__ = [
    "OPTIMIZERS",
    "WEIGHT_KEYS",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "ServerOptimizer",
    "ServerStep",
    "scheduled_lr",
    "server_optimizer",
]

Arrays = dict[str, np.ndarray]

# The metric each reply's update is weighed by. "uniform" counts every client once: with SGD
# client updates a heavy user's update already grows with its number of local steps, so
# weighting it by its examples as well counts its data about twice (and user-level DP needs
# uniform weights).
WEIGHT_KEYS = {"examples": keys.NUM_EXAMPLES, "uniform": keys.UNIT_WEIGHT}


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


class ServerOptimizer:
    """FedAvg: the next model is the mean. Subclasses keep state and set ``lr``."""

    lr: float = 1.0  # the server step size (FedAvgM, FedAdam, FedYogi)
    has_step_size = False
    state_names: tuple[str, ...] = ()

    def step(self, current: Mapping[str, np.ndarray], mean: Arrays, server_round: int) -> Arrays:
        """The next model from the round's model ``current`` and the aggregate's ``mean``."""
        return mean

    def state_dict(self, array_names: list[str]) -> dict[str, np.ndarray]:
        """The optimizer's state as ``name/array`` entries (the checkpoint's keys)."""
        state: dict[str, np.ndarray] = {}
        for name in self.state_names:
            value = getattr(self, name)
            if value:
                state.update({f"{name}/{k}": np.asarray(v) for k, v in value.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        for name in self.state_names:
            part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(name + "/")}
            if part:
                setattr(self, name, part)

    def __repr__(self) -> str:
        return type(self).__name__


class FedAvg(ServerOptimizer):
    """FedAvg (McMahan et al., 2017); FedProx's server step too."""


@dataclass(repr=False)
class FedAvgM(ServerOptimizer):
    """Server momentum: x_{t+1} = x_t − lr·v_t, v_t = β·v_{t−1} + (x_t − mean). As in
    Flower, x_t is the optimizer's own previous step (the round's model before its float32
    cast), and with β = 0 and lr = 1 the step is FedAvg's."""

    lr: float = 1.0
    momentum: float = 0.0
    momentum_vector: Arrays = field(default_factory=dict)
    previous: Arrays | None = None
    has_step_size = True
    state_names = ("momentum_vector",)

    def __post_init__(self) -> None:
        # decided once, from the settings, as Flower's FedAvgM does (a schedule that later
        # reaches 1 keeps stepping)
        self.stepping = self.momentum != 0.0 or self.lr != 1.0

    def step(self, current: Mapping[str, np.ndarray], mean: Arrays, server_round: int) -> Arrays:
        if not self.stepping:
            return mean
        old = self.previous if self.previous is not None else dict(current)
        pseudo_gradient = {k: old[k] - mean[k] for k in mean}
        if self.momentum > 0.0:
            if not self.momentum_vector:
                self.momentum_vector = pseudo_gradient
            else:
                self.momentum_vector = {
                    k: self.momentum * v + pseudo_gradient[k]
                    for k, v in self.momentum_vector.items()
                }
            pseudo_gradient = self.momentum_vector
        new = {k: old[k] - self.lr * pseudo_gradient[k] for k in mean}
        self.previous = new
        return new


@dataclass(repr=False)
class FedAdam(ServerOptimizer):
    """FedAdam: Adam's moments of Δ_t = mean − x_t, with Adam's bias correction."""

    lr: float = 0.1  # η
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    m_t: Arrays = field(default_factory=dict)
    v_t: Arrays = field(default_factory=dict)
    has_step_size = True
    state_names = ("m_t", "v_t")

    def _moments(self, current: Mapping[str, np.ndarray], mean: Arrays) -> Arrays:
        delta = {k: x - current[k] for k, x in mean.items()}
        if not self.m_t:
            self.m_t = {k: np.zeros_like(v) for k, v in mean.items()}
        self.m_t = {k: self.beta_1 * v + (1 - self.beta_1) * delta[k] for k, v in self.m_t.items()}
        if not self.v_t:
            self.v_t = {k: np.zeros_like(v) for k, v in mean.items()}
        return delta

    def step(self, current: Mapping[str, np.ndarray], mean: Arrays, server_round: int) -> Arrays:
        delta = self._moments(current, mean)
        self.v_t = {
            k: self.beta_2 * v + (1 - self.beta_2) * (delta[k] ** 2) for k, v in self.v_t.items()
        }
        eta_norm = (
            self.lr
            * np.sqrt(1 - np.power(self.beta_2, server_round + 1.0))
            / (1 - np.power(self.beta_1, server_round + 1.0))
        )
        return {
            k: x + eta_norm * self.m_t[k] / (np.sqrt(self.v_t[k]) + self.tau)
            for k, x in current.items()
        }


@dataclass(repr=False)
class FedYogi(FedAdam):
    """FedYogi: Yogi's additive second moment (no bias correction)."""

    lr: float = 0.01

    def step(self, current: Mapping[str, np.ndarray], mean: Arrays, server_round: int) -> Arrays:
        delta = self._moments(current, mean)
        self.v_t = {
            k: v - (1.0 - self.beta_2) * (delta[k] ** 2) * np.sign(v - delta[k] ** 2)
            for k, v in self.v_t.items()
        }
        return {
            k: x + self.lr * self.m_t[k] / (np.sqrt(self.v_t[k]) + self.tau)
            for k, x in current.items()
        }


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedprox": FedAvg,  # FedProx's proximal term is the devices' (proximal-mu)
}


def server_optimizer(config: FederationConfig) -> ServerOptimizer:
    """The configured server optimizer (``strategy`` and ``server-*``)."""
    if config.server.strategy in ("fedadam", "fedyogi"):
        kind = FedAdam if config.server.strategy == "fedadam" else FedYogi
        return kind(
            lr=config.server.lr,
            beta_1=config.server.beta1,
            beta_2=config.server.beta2,
            tau=config.server.tau,
        )
    if config.server.strategy == "fedavgm":
        return FedAvgM(lr=config.server.lr, momentum=config.server.beta1)
    return OPTIMIZERS[config.server.strategy]()


class ServerStep:
    """A server optimizer's step with a schedule, weight decay and float32 output."""

    def __init__(
        self,
        optimizer: ServerOptimizer,
        *,
        step_size: Callable[[int], float] | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        """``step_size(round)``: the server step of each absolute round (FedAvgM, FedAdam,
        FedYogi); ``weight_decay``: decoupled decay of weight matrices (FedAdam, FedYogi)."""
        if step_size is not None and not optimizer.has_step_size:
            raise ValueError(f"{optimizer!r} has no server step size to schedule")
        if weight_decay and not isinstance(optimizer, FedAdam):
            raise ValueError(f"decoupled weight decay needs FedAdam/FedYogi, not {optimizer!r}")
        self.optimizer = optimizer
        self.step_size = step_size
        self.weight_decay = weight_decay

    def __call__(
        self, current: Mapping[str, np.ndarray], mean: Arrays, server_round: int
    ) -> tuple[dict[str, np.ndarray], float | None]:
        """(the next model in float32, the step size this round took, if scheduled);
        ``server_round`` is absolute (FedAdam's bias correction must not restart on a resume)."""
        decay, lr = 1.0, None
        if self.step_size is not None:
            lr = self.step_size(server_round)
            self.optimizer.lr = lr
        if self.weight_decay:  # AdamW's decoupled decay: lr_t · wd of each weight matrix
            decay = 1.0 - self.optimizer.lr * self.weight_decay
        new = self.optimizer.step(current, mean, server_round)
        wire = {}
        for k, v in new.items():
            value = v * decay if k.endswith(".weight") else v
            wire[k] = value.astype(np.float32, copy=False)
        return wire, lr

    def state_dict(self, array_names: list[str]) -> dict[str, np.ndarray]:
        return self.optimizer.state_dict(array_names)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        return repr(self.optimizer)
