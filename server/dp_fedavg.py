"""User-level differential privacy for the federation: DP-FedAvg and the server's ε ledger.

DP-FedAvg (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018) protects a whole user's participation:
  1. each round every node joins independently with probability q = m / N (Poisson
     sampling, which the subsampled-Gaussian accountant assumes);
  2. each client clips its shared-parameter update Δ_i to ‖Δ_i‖ ≤ C, less its channel's
     rounding margin (``client/exchange.py``); in a plain round the server clips again
     (``server/plain.py``), so a client that skips it cannot raise the sensitivity (with
     secure aggregation only the client can), and an update with a non-finite value is
     refused as a dropout (it cannot be clipped);
  3. the server averages with the *fixed* denominator m, not the number of replies, and
     adds Gaussian noise of std σ = z·C / m to every coordinate: a round with fewer
     replies gets exactly the noise the accountant assumed, never less;
  4. the average goes on to the server optimizer (FedAvg/FedAvgM/FedAdam/FedYogi step):
     post-processing, so ε is unchanged.
Each round is one use of the subsampled Gaussian mechanism (z, q) in a
:class:`~fedrec.common.privacy.PrivacyLedger`; a run stops before the target ε would be
exceeded.

How it composes: the round loop (``server/rounds.py``) hands :meth:`DPFedAvg.release` the
round's aggregate — the sum of clipped updates, from the plain aggregation or SecAgg+ alike
— and passes what it releases to the server optimizer (``server/optimizer.py``), which steps
to it as to any mean: the noise is applied *before* the server optimizer, so FedAdam's
moments never see an un-noised average. Its cohort sampler (:attr:`DPFedAvg.cohorts`,
Poisson at q = m/N) is the one the loop samples with.

Why not Flower's ``DifferentialPrivacyClientSideFixedClipping``: in 1.42 it wraps the
strategy and adds its noise to the *inner strategy's output*; with FedAdam that output is
already the server-optimizer step, and FedAdam's moments m_t, v_t have seen the un-noised
average. It also samples a fixed number of clients and divides by the number of replies.
The client side does what Flower's ``fixedclipping_mod`` does, in ``client/exchange.py`` (that
mod fails on a zero update).

Randomness: cohorts and noise come from a NumPy generator seeded from OS entropy, so no
one who knows the run's config can regenerate them; it is not a cryptographic generator and
the Gaussian is sampled in floating point (no protection against floating-point attacks on
the noise, Mironov 2012) — as in Opacus with ``secure_mode`` off.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger, calibrate_noise, check_accountant
from fedrec.common.records import scalar
from fedrec.server.aggregate import Aggregate, TrainReport
from fedrec.server.cohorts import PoissonCohort

__all__ = [
    "DPFedAvg",
    "PrivacyBudgetExceeded",
    "RecordLevelTally",
    "UserLevelDP",
]


class PrivacyBudgetExceeded(RuntimeError):
    """The next round would take the user-level ε past the run's target."""


@dataclass(frozen=True)
class UserLevelDP:
    """The mechanism of one run: clip C, noise multiplier z, expected cohort m of N nodes."""

    clip_norm: float  # C
    noise_multiplier: float  # z
    expected_clients: int  # m: the denominator of the average
    num_nodes: int  # N
    delta: float
    target_epsilon: float  # 0: no target (ε is reported, nothing stops)
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.clip_norm <= 0 or self.noise_multiplier <= 0:
            raise ValueError(
                f"user-level DP needs C > 0 and z > 0, got C={self.clip_norm},"
                f" z={self.noise_multiplier}"
            )
        if not 1 <= self.expected_clients <= self.num_nodes:
            raise ValueError(
                f"clients-per-round m={self.expected_clients} must be in [1, nodes"
                f" {self.num_nodes}]: q = m/N is the sampling rate"
            )

    @property
    def sample_rate(self) -> float:
        return self.expected_clients / self.num_nodes

    @property
    def noise_std(self) -> float:
        """σ = z·C / m per coordinate of the averaged update."""
        return self.noise_multiplier * self.clip_norm / self.expected_clients

    @classmethod
    def from_config(cls, config: FederationConfig, num_nodes: int) -> UserLevelDP:
        """The run's mechanism; z is calibrated to the target over ``num-rounds`` if not given."""
        m = config.rounds.clients_per_round
        z = config.user_dp.noise_multiplier
        if z <= 0:
            z = calibrate_noise(
                config.user_dp.target_epsilon,
                config.user_dp.delta,
                m / num_nodes,
                config.rounds.num_rounds,
                config.user_dp.accountant,
            )
        return cls(
            clip_norm=config.user_dp.clip_norm,
            noise_multiplier=z,
            expected_clients=m,
            num_nodes=num_nodes,
            delta=config.user_dp.delta,
            target_epsilon=config.user_dp.target_epsilon,
            accountant=config.user_dp.accountant,
        )

    def rounds_within_budget(self, ledger: PrivacyLedger, limit: int) -> int:
        """How many more rounds (≤ ``limit``) keep ε within the target; ``limit`` if none.

        ε grows with every round, so a binary search over the round count finds the last
        one that fits.
        """
        if self.target_epsilon <= 0:
            return limit
        z, q, delta = self.noise_multiplier, self.sample_rate, self.delta
        if ledger.epsilon_after(delta, z, q, limit) <= self.target_epsilon:
            return limit
        low, high = 0, limit  # fits(low), not fits(high)
        while high - low > 1:
            mid = (low + high) // 2
            if ledger.epsilon_after(delta, z, q, mid) <= self.target_epsilon:
                low = mid
            else:
                high = mid
        return low

    def describe(self, ledger: PrivacyLedger) -> dict[str, Any]:
        """The ``privacy.user_level`` entry of metrics.json."""
        return {
            "epsilon": ledger.epsilon(self.delta),
            "delta": self.delta,
            "z": self.noise_multiplier,
            "C": self.clip_norm,
            "q": self.sample_rate,
            "m": self.expected_clients,
            "noise_std": self.noise_std,
            "rounds": ledger.steps,
            "accountant": self.accountant,
            "target_epsilon": self.target_epsilon or None,
        }


class DPFedAvg:
    """DP-FedAvg's server side: Poisson cohorts, the round's clip and ε, noise on the sum.

    Each round the round loop asks :meth:`round_config` for what the devices must be told
    (C, and the ε the run reaches with this round; it refuses a round past the target), and
    hands :meth:`release` the round's :class:`~fedrec.server.aggregate.Aggregate` — the sum
    of the clipped updates, whoever summed it: the plain aggregation re-clips each to C
    (``server/plain.py``), SecAgg+'s devices clip before masking. :meth:`release` divides
    by the fixed m, adds N(0, (z·C/m)²) per coordinate, records one use of (z, q) in the
    ledger and returns the released model (global + noised mean, float64) with the round's
    ``privacy.user_level`` record; the server optimizer steps to it (post-processing).
    ``rng`` draws cohorts and noise; default: fresh OS entropy (not reproducible, on
    purpose — predictable noise protects nobody).
    """

    def __init__(
        self,
        dp: UserLevelDP,
        ledger: PrivacyLedger | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.dp = dp
        self.ledger = ledger if ledger is not None else PrivacyLedger(dp.accountant)
        check_accountant(self.ledger, dp.accountant, "the user-level ledger")
        self.rng = rng if rng is not None else np.random.default_rng()
        self.cohorts = PoissonCohort(dp.sample_rate, self.rng)  # the sampling ε assumes

    def state(self) -> dict[str, Any]:
        """The ledger, as a checkpoint keeps it (ε must survive a restart)."""
        return self.ledger.to_dict()

    def round_config(self, server_round: int) -> dict[str, float]:
        """What the round's train messages carry: C and the ε the run reaches with it."""
        dp = self.dp
        after = self.ledger.epsilon_after(dp.delta, dp.noise_multiplier, dp.sample_rate, 1)
        if 0 < dp.target_epsilon < after:
            raise PrivacyBudgetExceeded(
                f"round {server_round} would raise user-level ε to {after:.4f} >"
                f" target {dp.target_epsilon}: the run must stop before it"
            )
        return {keys.CLIPPING_NORM: dp.clip_norm, keys.USER_EPSILON: after}

    def release(
        self,
        aggregate: Aggregate | None,
        start: Mapping[str, np.ndarray],
        subspaces: Mapping[str, np.ndarray],
        *,
        clipped: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(global + Σ clip(Δ_i) / m + N(0, (zC/m)²), the round's ``privacy.user_level``).

        ``aggregate``: the round's sum (``None``: nobody contributed — the round is still
        released, noise only, and counted); ``subspaces``: per array, a basis whose row space
        holds every update of the round (a low-rank round's item table, the round's channel):
        that array's noise is drawn there, the released value being the projection of the
        same mechanism's output; ``clipped``: updates the server's re-clip shortened."""
        dp = self.dp
        out = {}
        for k, v in start.items():
            total = aggregate.total[k] if aggregate is not None else np.zeros_like(v)
            average, basis = total / dp.expected_clients, subspaces.get(k)
            if basis is None:
                noise = self.rng.normal(0.0, dp.noise_std, size=v.shape)
            else:  # released: the projection P of mean + N(0, σ²I) on the rows' span, i.e.
                # P·mean + N(0, σ²)^{n×r}·B (post-processing: the same ε), with r/d of the
                # noise; P·mean = mean for every update the channel expanded from a factor
                average = average @ basis.T @ basis
                noise = self.rng.normal(0.0, dp.noise_std, size=(v.shape[0], len(basis))) @ basis
            out[k] = v + average + noise
        self.ledger.record(dp.noise_multiplier, dp.sample_rate, 1)
        record = {
            **dp.describe(self.ledger),
            "replies": aggregate.count if aggregate is not None else 0,
            "clipped_by_server": clipped,  # counts only: no per-user value is published
        }
        return out, record


class RecordLevelTally:
    """The server's view of the devices' own DP-SGD ledgers, from their scalar metrics.

    Each device reports its record-level ε after a round (``record-epsilon``) and whether it
    declined because its local budget was spent (``budget-exhausted``); the server keeps
    the highest ε per node and the set of nodes that ever declined. A ledger only grows: a
    node that reports less than it did before has had its ledger restored from an older copy
    (a rolled-back budget), and is counted in ``rolled_back``.
    """

    def __init__(self, delta: float, budget: float) -> None:
        self.delta = delta
        self.budget = budget
        self.latest: dict[int, float] = {}
        self.exhausted: set[int] = set()
        self.rolled_back: set[int] = set()  # nodes whose reported ε went down
        self.secure_mean: float | None = None  # under SecAgg+: the last cohort's mean ε
        self.secure_declined = 0  # under SecAgg+: declines summed over rounds

    def update(self, report: TrainReport, aggregate: Aggregate | None) -> int:
        """Take this round's ε reports; returns how many devices declined this round. A
        plain round's report names each contributor's metrics; a secure round's aggregate
        carries only the cohort's means (the server sees sums, never a device's ε)."""
        if report.secagg is not None:
            if aggregate is None:
                return 0
            self.secure_mean = aggregate.metrics.get(keys.RECORD_EPSILON, 0.0)
            exhausted = aggregate.metrics.get(keys.BUDGET_EXHAUSTED, 0.0)
            return round(exhausted * aggregate.count)
        declined = 0
        for node, metrics in report.node_metrics:
            if keys.RECORD_EPSILON in metrics:
                epsilon, before = scalar(metrics, keys.RECORD_EPSILON), self.latest.get(node)
                if before is not None and epsilon < before * (1 - 1e-9):
                    self.rolled_back.add(node)
                self.latest[node] = max(epsilon, before or 0.0)
            if scalar(metrics, keys.BUDGET_EXHAUSTED, 0.0):
                declined += 1
                self.exhausted.add(node)
        return declined

    def record(self, report: TrainReport, aggregate: Aggregate | None) -> dict[str, Any] | None:
        """The round's ``privacy.record_level`` entry (``None`` before any device reported)."""
        declined = self.update(report, aggregate)
        if self.latest or declined or self.secure_mean is not None:
            return self.summary(declined)
        return None

    def summary(self, declined_this_round: int) -> dict[str, Any]:
        """The ``privacy.record_level`` entry: ε over every device that has trained so far."""
        values = sorted(self.latest.values())
        if self.secure_mean is not None:  # per-device values never reach the server
            self.secure_declined += declined_this_round
            return {
                "epsilon_cohort_mean": self.secure_mean,
                "delta": self.delta,
                "budget": self.budget or None,
                "declined_total": self.secure_declined,
                "declined_this_round": declined_this_round,
                "note": "secure aggregation: the server sees cohort sums only",
            }
        return {
            "epsilon_min": values[0] if values else None,
            "epsilon_median": statistics.median(values) if values else None,
            "epsilon_max": values[-1] if values else None,
            # the distribution over devices: ε at 0 %, 10 %, …, 100 % of them (the audit's figure)
            "epsilon_deciles": (
                [float(q) for q in np.percentile(values, np.arange(0, 101, 10))] if values else []
            ),
            "clients": len(values),
            "delta": self.delta,
            "budget": self.budget or None,
            "clients_at_budget": len(self.exhausted),
            "rolled_back": len(self.rolled_back),  # ledgers restored from an older copy
            "declined_this_round": declined_this_round,
        }
