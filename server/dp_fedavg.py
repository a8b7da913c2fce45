"""User-level differential privacy for the federation: DP-FedAvg and the server's ε ledger.

DP-FedAvg (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018) protects a whole user's participation:
  1. each round every node joins independently with probability q = m / N (Poisson
     sampling, which the subsampled-Gaussian accountant assumes);
  2. each client clips its shared-parameter update Δ_i to ‖Δ_i‖ ≤ C (client/mods.py,
     ``UserLevelClipping``); the server clips again, so a client that skips it cannot raise
     the sensitivity (with secure aggregation only the client can; a plain run drops any reply
     that claims to be a secure sum, server/recorder.py), and drops an update with
     a non-finite value as a dropout (it cannot be clipped);
  3. the server averages with the *fixed* denominator m, not the number of replies, and
     adds Gaussian noise of std σ = z·C / m to every coordinate: a round with fewer
     replies gets exactly the noise the accountant assumed, never less;
  4. the average goes on to the server optimizer (FedAvg/FedAvgM/FedAdam/FedYogi step):
     post-processing, so ε is unchanged.
Each round is one use of the subsampled Gaussian mechanism (z, q) in a
:class:`~fedrec.common.privacy.PrivacyLedger`; a run stops before the target ε would be
exceeded.

How it composes: :class:`DPFedAvg` wraps the server optimizer
(:class:`~fedrec.server.optimizer.ServerStep` over Flower's FedAvg/FedAvgM/FedAdam/FedYogi/
FedProx). It replaces the replies of a round by **one** reply carrying the clipped, noised,
fixed-denominator mean, and hands that to the optimizer, which takes its step from it as from
any average: the noise is applied to the aggregate *before* the server optimizer, so FedAdam's
moments never see an un-noised average. Its cohort sampler (:attr:`DPFedAvg.cohorts`, Poisson
at q = m/N) is the one the round recorder must use (``server/factory.py`` pairs them).

Why not Flower's ``DifferentialPrivacyClientSideFixedClipping``: in 1.42 it wraps the
strategy and adds its noise to the *inner strategy's output*; with FedAdam that output is
already the server-optimizer step, and FedAdam's moments m_t, v_t have seen the un-noised
average. It also samples a fixed number of clients and divides by the number of replies.
The client side does what Flower's ``fixedclipping_mod`` does, in ``client/mods.py`` (that
mod fails on a zero update).

Randomness: cohorts and noise come from a NumPy generator seeded from OS entropy, so no
one who knows the run's config can regenerate them; it is not a cryptographic generator and
the Gaussian is sampled in floating point (no protection against floating-point attacks on
the noise, Mironov 2012) — as in Opacus with ``secure_mode`` off.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import (
    NonFiniteUpdate,
    PrivacyLedger,
    calibrate_noise,
    check_accountant,
    clip_delta,
)
from fedrec.common.records import arrays_of, metrics_of, numpy_arrays, scalar
from fedrec.common.secagg.grid import secure_sum
from fedrec.server.cohorts import PoissonCohort
from fedrec.server.wrapper import StrategyWrapper

__all__ = [
    "CLIP_TOLERANCE",
    "DPFedAvg",
    "PrivacyBudgetExceeded",
    "RecordLevelTally",
    "UserLevelDP",
]

# relative: a reply within C·(1 + tol) counts as clipped by its client (it arrives as
# float32 values global + Δ, so the server's float64 recomputation of ‖Δ‖ is off by ~1e-7)
CLIP_TOLERANCE = 1e-4


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
        m = config.clients_per_round
        z = config.dp_noise_multiplier
        if z <= 0:
            z = calibrate_noise(
                config.dp_target_epsilon,
                config.dp_delta,
                m / num_nodes,
                config.num_rounds,
                config.dp_accountant,
            )
        return cls(
            clip_norm=config.dp_clip_norm,
            noise_multiplier=z,
            expected_clients=m,
            num_nodes=num_nodes,
            delta=config.dp_delta,
            target_epsilon=config.dp_target_epsilon,
            accountant=config.dp_accountant,
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


class DPFedAvg(StrategyWrapper[Strategy]):
    """DP-FedAvg around a server optimizer: Poisson cohorts, clip, noise, fixed denominator.

    ``configure_train`` checks the budget and sends C to the clients (the cohort is
    :attr:`cohorts`' Poisson sample); ``aggregate_train`` re-clips each reply, sums, divides by
    the fixed m, adds N(0, (z·C/m)²) per coordinate, records one use of (z, q) in the ledger
    and passes the result to the wrapped optimizer as a single reply. Evaluation passes
    through unchanged. ``rng`` draws cohorts and noise; default: fresh OS entropy (not
    reproducible, on purpose — predictable noise protects nobody). ``subspaces`` names, per
    array, a basis whose row space holds every update of the round (a low-rank round's item
    table): that array's noise is drawn there, the released value being the projection of
    the same mechanism's output.
    """

    def __init__(
        self,
        optimizer: Strategy,
        dp: UserLevelDP,
        ledger: PrivacyLedger | None = None,
        rng: np.random.Generator | None = None,
        subspaces: Callable[[], Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.dp = dp
        # per array, a basis (orthonormal rows) whose row space holds every update of the
        # round (a low-rank round's item table, server/exchange.py); none: the whole space
        self.subspaces = subspaces
        self.ledger = ledger if ledger is not None else PrivacyLedger(dp.accountant)
        check_accountant(self.ledger, dp.accountant, "the user-level ledger")
        self.rng = rng if rng is not None else np.random.default_rng()
        self.cohorts = PoissonCohort(dp.sample_rate, self.rng)  # the sampling ε assumes
        self.last_record: dict[str, Any] = {}  # the round's ``privacy.user_level`` entry
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        dp = self.dp
        after = self.ledger.epsilon_after(dp.delta, dp.noise_multiplier, dp.sample_rate, 1)
        if 0 < dp.target_epsilon < after:
            raise PrivacyBudgetExceeded(
                f"round {server_round} would raise user-level ε to {after:.4f} >"
                f" target {dp.target_epsilon}: the run must stop before it"
            )
        self._global = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        config[keys.CLIPPING_NORM] = dp.clip_norm
        config[keys.USER_EPSILON] = after  # what a device in this round is covered by
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        dp, start = self.dp, self._global
        total = {k: np.zeros_like(v) for k, v in start.items()}
        used, over, rejected, malformed, contributors = [], 0, 0, 0, 0
        for msg in replies:
            if msg.has_error():
                continue
            content = msg.content
            metrics = content.metric_records.get(keys.METRICS, MetricRecord())
            if keys.ARRAYS not in content.array_records or keys.UNIT_WEIGHT not in metrics:
                malformed += 1  # not a train reply: nothing to clip or to count
                continue
            sent = numpy_arrays(arrays_of(content))
            count, summed = secure_sum(msg)
            if summed and count < 1:  # a malformed aggregate: nothing to un-average
                malformed += 1
                continue
            try:  # SecAgg+: the mean of `count` device-clipped updates; un-averaged below.
                # The server cannot re-clip inside a sum: each device clipped its own Δ so
                # that even quantized it has norm ≤ C (common/secagg/device.py).
                update, norm = clip_delta(start, sent, None if summed else dp.clip_norm)
            except NonFiniteUpdate:  # a dropout: the denominator m stays
                rejected += 1
                continue
            except ValueError:  # other arrays or shapes than the model's: a dropout too
                malformed += 1
                continue
            used.append(msg)
            contributors += count
            over += (not summed) and norm > dp.clip_norm * (1 + CLIP_TOLERANCE)
            for k in total:
                total[k] += update[k] * count if summed else update[k]
        out = {}
        subspaces = self.subspaces() if self.subspaces is not None else {}
        for k, v in start.items():  # global + Σ clip(Δ_i) / m + N(0, (zC/m)²)
            average, basis = total[k] / dp.expected_clients, subspaces.get(k)
            if basis is None:
                noise = self.rng.normal(0.0, dp.noise_std, size=v.shape)
            else:  # released: the projection P of mean + N(0, σ²I) on the rows' span, i.e.
                # P·mean + N(0, σ²)^{n×r}·B (post-processing: the same ε), with r/d of the
                # noise; P·mean = mean for every update the exchange expanded from a factor
                average = average @ basis.T @ basis
                noise = self.rng.normal(0.0, dp.noise_std, size=(v.shape[0], len(basis))) @ basis
            out[k] = Array(v + average + noise)
        self.ledger.record(dp.noise_multiplier, dp.sample_rate, 1)
        self.last_record = {
            **dp.describe(self.ledger),
            "replies": contributors,
            "clipped_by_server": over,  # counts only: no per-user value is published
            "rejected_non_finite": rejected,
            "rejected_malformed": malformed,
        }
        # the averaged metrics of the replies used (FedAvg's weighted mean, uniform weights)
        metrics = (
            aggregate_metricrecords([m.content for m in used], keys.UNIT_WEIGHT)
            if used
            else MetricRecord()
        )
        metrics[keys.UNIT_WEIGHT] = 1  # the key the optimizer weighs by (DP requires "uniform")
        mean = RecordDict({keys.ARRAYS: ArrayRecord(out), keys.METRICS: metrics})
        return self.inner.aggregate_train(
            server_round, [Message(content=mean, dst_node_id=0, message_type=MessageType.TRAIN)]
        )


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

    def update(self, replies: Iterable[Message]) -> int:
        """Take this round's replies; returns how many declined this round."""
        declined = 0
        for msg in replies:
            if msg.has_error() or keys.METRICS not in msg.content.metric_records:
                continue
            metrics = metrics_of(msg.content)
            count, summed = secure_sum(msg)
            if summed:  # SecAgg+: only the cohort's mean ε and how many declined are known
                self.secure_mean = scalar(metrics, keys.RECORD_EPSILON, 0.0)
                declined += round(scalar(metrics, keys.BUDGET_EXHAUSTED, 0.0) * count)
                continue
            node = msg.metadata.src_node_id
            if keys.RECORD_EPSILON in metrics:
                epsilon, before = scalar(metrics, keys.RECORD_EPSILON), self.latest.get(node)
                if before is not None and epsilon < before * (1 - 1e-9):
                    self.rolled_back.add(node)
                self.latest[node] = max(epsilon, before or 0.0)
            if scalar(metrics, keys.BUDGET_EXHAUSTED, 0.0):
                declined += 1
                self.exhausted.add(node)
        return declined

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
