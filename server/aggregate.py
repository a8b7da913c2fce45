"""What a round's aggregation yields, whoever computed it: one :class:`Aggregate`.

A training round ends in one of two aggregators behind one interface (:class:`Aggregator`):
the plain one (``server/plain.py``) sums the decoded, validated replies; the secure one
(``server/secagg.py``, SecAgg+) unmasks the sum of updates it never saw one by one. Both
return an :class:`Aggregate` — the sum of the accepted updates, how many and what weight it
is over, their metrics' means — and a :class:`TrainReport` of what the round's traffic was.
Everything after aggregation takes the aggregate: DP-FedAvg noises its sum over a fixed
denominator (``server/dp_fedavg.py``), the server optimizer steps to its mean
(``server/optimizer.py``). No layer reads an aggregate out of a reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedrec.common.channel import Channel

__all__ = [
    "Aggregate",
    "Aggregator",
    "TrainReport",
    "TrainRound",
    "fedavg_mean",
    "weighted_means",
]

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Aggregate:
    """The sum of a round's accepted updates Δ_i = local_i − start, and what it is over.

    ``mean`` is the model the contributions average to, start + total / weight. A plain
    round without a server-side clip computes it as FedAvg always has — the weighted average
    of the float32 models the devices sent, accumulated in float32 (:func:`fedavg_mean`) —
    so that such a run is the run it was, bit for bit; every other aggregate computes it
    from the sum.
    """

    start: Arrays  # the round's model (float64): every update is relative to it
    total: Arrays  # Σ_i w_i·Δ_i (float64)
    weight: float  # Σ_i w_i (the count, with uniform weights)
    count: int  # contributions summed
    metrics: Mapping[str, float]  # their train metrics' weighted means
    mean: Arrays  # the model they average to (see above)

    @classmethod
    def of_sum(
        cls, start: Arrays, total: Arrays, count: int, metrics: Mapping[str, float]
    ) -> Aggregate:
        """An aggregate of ``count`` equally weighted updates summing to ``total``."""
        if count < 1:
            raise ValueError(f"an aggregate needs at least one contribution, got {count}")
        mean = {k: start[k] + total[k] / count for k in start}
        return cls(start, dict(total), float(count), count, dict(metrics), mean)


@dataclass
class TrainReport:
    """What a round's training traffic was: ``rounds.jsonl``'s train fields, as the
    aggregator saw them (counts, sizes, names and shapes; never a value sent)."""

    sampled: int  # nodes the round went to
    contributed: int = 0  # replies that entered the aggregate (secure: survivors)
    failed: int = 0  # replies that did not (errors, refusals, dropouts)
    unanswered: int = 0  # messages without a reply when the stage closed (server/grid.py)
    errors: list[str] = field(default_factory=list)  # up to three, shortened
    bytes_down: int = 0  # every training byte sent (secure: all four stages)
    bytes_up: int = 0
    bytes_down_per_client: float = 0.0
    bytes_up_per_client: float = 0.0
    received: dict[str, Any] = field(default_factory=dict)  # describe_received, per purpose
    rejected: dict[str, int] = field(default_factory=dict)  # refused replies by reason
    bounded: dict[str, int] | None = None  # norm bounding: updates and rows it clipped
    clipped: int = 0  # updates the server's DP clip shortened (plain rounds under DP)
    node_metrics: list[tuple[int, Mapping[str, object]]] = field(default_factory=list)
    secagg: dict[str, Any] | None = None  # a secure round's own figures
    # why the round cannot go on: every device refused it (a setting, the run stops), or
    # every reply was an error (the run stops unless DP-FedAvg releases a noise-only round)
    all_refused: str | None = None
    all_failed: str | None = None

    def record(self) -> dict[str, Any]:
        """The round record's train fields (``rounds.jsonl``)."""
        out: dict[str, Any] = {
            "clients_sampled": self.sampled,
            "bytes_down_per_client": self.bytes_down_per_client,
            "clients_replied": self.contributed,
            "clients_failed": self.failed,
            "clients_unanswered": self.unanswered,
            "errors": self.errors[:3],
            "bytes_up_per_client": self.bytes_up_per_client,
            "bytes_up_total": self.bytes_up,
            "bytes_down_total": self.bytes_down,
        }
        if self.bounded is not None:
            out["bounded"] = dict(self.bounded)
        if self.secagg is not None:
            out["secagg"] = dict(self.secagg)
        out["received"] = {"train": self.received} if self.secagg is None else self.received
        if self.rejected:
            out["rejected"] = {"train": dict(self.rejected)}
        return out


@dataclass(frozen=True)
class TrainRound:
    """One training round as the aggregator sends it: a message per cohort node (in cohort
    order), the round's exact model and channel, how long it may take."""

    number: int  # the absolute round
    messages: Sequence[Message]
    start: Arrays  # float64
    channel: Channel
    timeout: float


class Aggregator(Protocol):
    """Runs a round's training fan-out and sums what comes back (see the module docstring)."""

    def aggregate(self, grid: Grid, round_: TrainRound) -> tuple[Aggregate | None, TrainReport]:
        """The round's aggregate (``None``: nothing to aggregate) and its report."""
        ...


def weighted_means(metrics: Sequence[Mapping[str, object]], weight_key: str) -> dict[str, float]:
    """Each metric's mean over the replies, weighted by ``weight_key`` (left out itself):
    Flower's ``aggregate_metricrecords``, term by term, so the figures are the ones it gives."""
    weights = [_number(m, weight_key) for m in metrics]
    total = sum(weights)
    factors = [w / total for w in weights]
    out: dict[str, Any] = {}
    for record, factor in zip(metrics, factors, strict=True):
        for key in record:
            if key == weight_key:
                continue
            term = _number(record, key) * factor
            out[key] = term if key not in out else out[key] + term
    return out


def fedavg_mean(models: Sequence[Arrays], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Σ_i (w_i / W)·x_i over float32 models, accumulated in their dtype in reply order:
    FedAvg's average as Flower's ``aggregate_arrayrecords`` computes it (bit for bit)."""
    total = sum(weights)
    out: dict[str, np.ndarray] = {}
    for model, weight in zip(models, weights, strict=True):
        factor = weight / total
        for key, value in model.items():
            if key not in out:
                out[key] = value * factor
            else:
                out[key] += value * factor
    return out


def _number(record: Mapping[str, object], key: str) -> Any:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {key!r} holds {value!r}, not a number")
    return value
