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
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

# Opacus is imported where it is used: importing it loads PyTorch, and this module is also
# imported on the torch-free recommend path of a device (fedrec.client.device)

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "NonFiniteUpdate",
    "PrivacyLedger",
    "calibrate_noise",
    "check_accountant",
    "clip_delta",
    "clip_update",
    "epsilon",
    "global_norm",
]

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
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    if accountant == "rdp":  # what Opacus's RDPAccountant.get_privacy_spent computes
        rdp = sum(np.asarray(_rdp_per_step(z, q)) * steps for z, q, steps in history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
        return float(eps)
    prv = PRVAccountant()
    prv.load_state_dict({"history": list(history), "mechanism": prv.mechanism()})
    return float(prv.get_epsilon(delta))


@lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one use at each order (Opacus's ``compute_rdp``; composition is ``× steps``).

    Memoized because it is pure and dominates a device's round at a large sample rate: the
    same (z, q) is asked for twice per round (budget check, report) every time a device
    trains, and many times by the server's budget search.
    """
    from opacus.accountants.analysis import rdp as rdp_analysis

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
    from opacus.accountants.utils import get_noise_multiplier

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


def clip_delta(
    start: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray], clip_norm: float | None
) -> tuple[dict[str, np.ndarray], float]:
    """(Δ = local − start in float64, clipped to ``clip_norm``; its norm before clipping).

    The one place where an update is formed from two models — the device's clip mod, its
    secure-aggregation mod and DP-FedAvg's server re-clip all call it. ``local`` must hold
    exactly ``start``'s arrays, each of its shape (no broadcasting); ``clip_norm`` None only
    checks that Δ is finite.
    """
    if set(local) != set(start):
        raise ValueError(f"the update's arrays {sorted(local)} are not the model's {sorted(start)}")
    shapes = {k: (np.shape(local[k]), np.shape(start[k])) for k in start}
    wrong = {k: got for k, (got, want) in shapes.items() if got != want}
    if wrong:
        raise ValueError(f"the update's arrays {wrong} do not have the model's shapes")
    update = {
        k: np.asarray(local[k], dtype=np.float64) - np.asarray(start[k], dtype=np.float64)
        for k in start
    }
    if clip_norm is None:
        norm = global_norm(update)
        if not math.isfinite(norm):
            raise NonFiniteUpdate(f"the update has a non-finite value (norm {norm})")
        return update, norm
    return clip_update(update, clip_norm)


def check_accountant(ledger: PrivacyLedger, accountant: str, what: str) -> None:
    """One run's (one device's) ε must come from one accountant: refuse to mix them."""
    if ledger.accountant != accountant:
        raise ValueError(
            f"{what} accounts with {ledger.accountant!r}, the run asks for {accountant!r}:"
            " one ε must come from one accountant"
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


class PrivacyLedger:
    """The uses of one Gaussian mechanism so far: (noise multiplier, sample rate, steps).

    Built on an Opacus accountant: the history, its merging of consecutive uses with the same
    (z, q) and its checked ``state_dict()`` / ``load_state_dict()`` are Opacus's, so a device's
    DP-SGD steps are recorded by the PrivacyEngine's own optimizer hook and carried over with
    the state dict (client/dp_sgd.py). What this class adds, and why Opacus alone does not do:
    many uses at once (one user-level round is one use of (z, q)); ε at the extended order grid
    :data:`RDP_ORDERS` with the RDP of each (z, q) memoized (Opacus's ``get_epsilon`` recomputes
    every entry on each call, and the budget checks call it every round); the ε of uses not
    yet made (:meth:`epsilon_after`); and a stored form (:meth:`to_dict`) that a later version
    keeps reading, whatever Opacus does with its own state dict.
    """

    def __init__(self, accountant: str = "rdp", history: Iterable[Sequence[float]] = ()) -> None:
        from opacus.accountants import create_accountant

        _check_accountant(accountant)
        self._opacus: IAccountant = create_accountant(accountant)
        for z, q, steps in history:  # as stored: already merged
            _check(float(z), float(q), int(steps))
            self._opacus.history.append((float(z), float(q), int(steps)))

    @property
    def accountant(self) -> str:
        return str(self._opacus.mechanism())

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(float(z), float(q), int(n)) for z, q, n in self._opacus.history]

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` uses (Opacus's accountant merges them with a preceding equal use)."""
        _check(noise_multiplier, sample_rate, steps)
        for _ in range(steps):
            self._opacus.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def epsilon(self, delta: float) -> float:
        _check_delta(delta)
        return _epsilon(self.history, delta, self.accountant)

    def epsilon_after(
        self, delta: float, noise_multiplier: float, sample_rate: float, steps: int = 1
    ) -> float:
        """ε if ``steps`` more uses were made: to stop *before* a budget would be exceeded."""
        _check(noise_multiplier, sample_rate, steps)
        _check_delta(delta)
        planned = PrivacyLedger(self.accountant, self.history)
        planned.record(noise_multiplier, sample_rate, steps)  # merged exactly as it would be
        return _epsilon(planned.history, delta, self.accountant)

    def state_dict(self) -> dict[str, Any]:
        """Opacus's accountant state (``IAccountant.state_dict``)."""
        return dict(self._opacus.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over an Opacus accountant's state (its mechanism must be this ledger's)."""
        self._opacus.load_state_dict(dict(state))
        for z, q, steps in self._opacus.history:
            _check(float(z), float(q), int(steps))

    def to_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant, "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyLedger:
        return cls(accountant=str(data["accountant"]), history=data["history"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyLedger):
            return NotImplemented
        return (self.accountant, self.history) == (other.accountant, other.history)

    def __repr__(self) -> str:
        return f"PrivacyLedger(accountant={self.accountant!r}, history={self.history!r})"
