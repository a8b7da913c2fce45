"""Privacy accounting for the subsampled Gaussian mechanism, and a ledger of its uses.

Every ε fedrec reports comes from here, and here comes from Opacus's accountants (RDP by
default, PRV on request), never from hand-rolled bounds. The same math serves both levels of
differential privacy:
  * record level — DP-SGD on a device: ``sample_rate`` = batch / local examples, one use per
    optimizer step;
  * user level — DP-FedAvg on the server: ``sample_rate`` = clients per round / users, one use
    per round.

:class:`PrivacyLedger` accumulates uses across rounds and serializes to plain numbers, so a
device can keep it in its (encrypted) state store and the server in its checkpoint: ε must
keep growing across rounds and restarts, never start again from zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")
# RDP orders: Opacus's defaults (1.1 … 63) plus larger ones, so that few, weakly noised uses
# (large ε) are not cut off at the largest order with a looser bound.
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(12, 64)),
    128.0,
    256.0,
    512.0,
)


def _check(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def _epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    if accountant == "rdp":  # what Opacus's RDPAccountant.get_privacy_spent computes
        rdp = sum(np.asarray(_rdp_per_step(z, q)) * steps for z, q, steps in history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
        return float(eps)
    prv = PRVAccountant()
    prv.history = list(history)
    return float(prv.get_epsilon(delta))


@lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one use at each order (Opacus's ``compute_rdp``; composition is ``× steps``).

    Memoized because it is pure and dominates a device's round: ~0.2 s for a large sample
    rate at the fractional orders, recomputed twice per round (budget check, report) with the
    same (z, q) every time a device trains, and many times by the server's budget search.
    """
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    return tuple(float(r) for r in rdp)


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """ε after ``steps`` uses of the Gaussian mechanism with Poisson rate ``sample_rate``."""
    _check(noise_multiplier, sample_rate, steps)
    _check_delta(delta)
    _check_accountant(accountant)
    return _epsilon([(noise_multiplier, sample_rate, steps)], delta, accountant)


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier z (to Opacus's tolerance) whose ε stays within target."""
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise ValueError(f"target epsilon must be a positive finite number, got {target_epsilon}")
    _check(1.0, sample_rate, steps)
    _check_delta(delta)
    _check_accountant(accountant)
    if steps == 0:
        raise ValueError("steps must be >= 1 to calibrate noise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus's order-range hint; its grid is checked below
        z = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    spent = epsilon(z, sample_rate, steps, delta, accountant)
    if spent > target_epsilon:  # our order grid contains Opacus's, so this cannot be looser
        raise RuntimeError(f"calibrated z={z} gives epsilon {spent} > target {target_epsilon}")
    return z


class NonFiniteUpdate(ValueError):
    """An update with NaN/inf values: it cannot be clipped, so it must not be aggregated."""


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """‖x‖₂ over all arrays taken as one vector (float64)."""
    return float(
        np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values()))
    )


def clip_update(
    update: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """(update scaled to ‖·‖ ≤ ``clip_norm``, its norm before clipping), in float64.

    A non-finite update (NaN or inf anywhere) raises :class:`NonFiniteUpdate`: its norm is
    NaN, ``min(1, C/NaN)`` would leave it unscaled and the sensitivity bound would be gone.
    """
    norm = global_norm(update)
    if not math.isfinite(norm):
        raise NonFiniteUpdate(f"the update has a non-finite value (norm {norm}): not clippable")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in update.items()}, norm


@dataclass
class PrivacyLedger:
    """The uses of one Gaussian mechanism so far: (noise multiplier, sample rate, steps)."""

    accountant: str = "rdp"
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_accountant(self.accountant)
        for z, q, steps in self.history:
            _check(z, q, steps)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` uses; consecutive uses with the same (z, q) share one entry."""
        _check(noise_multiplier, sample_rate, steps)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            z, q, done = self.history[-1]
            self.history[-1] = (z, q, done + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def epsilon(self, delta: float) -> float:
        _check_delta(delta)
        return _epsilon(self.history, delta, self.accountant)

    def epsilon_after(
        self, delta: float, noise_multiplier: float, sample_rate: float, steps: int = 1
    ) -> float:
        """ε if ``steps`` more uses were made: to stop *before* a budget would be exceeded."""
        _check(noise_multiplier, sample_rate, steps)
        _check_delta(delta)
        planned = PrivacyLedger(self.accountant, list(self.history))
        planned.record(noise_multiplier, sample_rate, steps)  # merged exactly as it would be
        return _epsilon(planned.history, delta, self.accountant)

    def to_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant, "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        history = [(float(z), float(q), int(s)) for z, q, s in data["history"]]
        return cls(accountant=str(data["accountant"]), history=history)
