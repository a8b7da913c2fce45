"""Who takes part in a round: cohort samplers, and the grid view that hands a cohort to Flower.

A round's cohort is chosen here, once, by a :class:`CohortSampler`, and never by the Flower
strategy underneath: :class:`~fedrec.server.recorder.RoundRecorder` passes the strategy a
:class:`CohortGrid` whose nodes *are* the cohort, and the strategy is built to take every node
it sees (:data:`TAKE_EVERY_NODE`). So one object says who trains — an exact count, a fraction,
or DP-FedAvg's Poisson sample — and no Flower attribute is changed round by round.

Deployment semantics: a round starts once at least ``min-clients`` nodes are connected
(:func:`connected_nodes`, which gives up with a clear error after the round timeout) and
samples from the nodes connected at that moment; nothing waits for every device to be online.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedrec.common.grids import GridWrapper

__all__ = [
    "TAKE_EVERY_NODE",
    "CohortGrid",
    "CohortSampler",
    "EvaluationPanel",
    "FractionCohort",
    "PoissonCohort",
    "UniformCohort",
    "connected_nodes",
    "in_cohort_order",
]

# Constructor arguments that make a Flower FedAvg-family strategy send to every node of the
# grid it is given (fraction 1, no minimum to wait for): the cohort is the grid.
TAKE_EVERY_NODE: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 0,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 0,
}


class CohortSampler(Protocol):
    def sample(self, node_ids: Sequence[int]) -> list[int]:
        """The cohort, in the order its messages go out."""
        ...


@dataclass
class UniformCohort:
    """``count`` nodes drawn uniformly without replacement (all of them if ``count`` is None
    or exceeds the connected nodes), from ``rng`` (seeded only in research runs)."""

    count: int | None
    rng: random.Random = field(default_factory=random.Random)

    def sample(self, node_ids: Sequence[int]) -> list[int]:
        nodes = list(node_ids)
        size = len(nodes) if self.count is None else min(self.count, len(nodes))
        return self.rng.sample(nodes, size)


@dataclass
class EvaluationPanel:
    """The nodes every evaluation asks: ``count`` of them, drawn once (at the run's first
    evaluation, from the nodes connected then, with ``rng``) and asked again at every later
    evaluation — those of them still connected, in the same order. Evaluations of different
    rounds then compare the same users, and the best round (picked on validation HR@10) is not
    the one whose sample happened to be easy. ``count`` None, or at least the connected
    nodes: every connected node, each time."""

    count: int | None
    rng: random.Random = field(default_factory=random.Random)
    panel: list[int] | None = None

    def sample(self, node_ids: Sequence[int]) -> list[int]:
        nodes = list(node_ids)
        if self.panel is None:
            if self.count is None or self.count >= len(nodes):
                return nodes
            self.panel = self.rng.sample(sorted(nodes), self.count)
        connected = set(nodes)
        return [node for node in self.panel if node in connected]


@dataclass
class FractionCohort:
    """``max(⌊fraction · N⌋, minimum)`` of the N connected nodes, uniformly (Flower's FedAvg
    sampling rule, stated once)."""

    fraction: float
    minimum: int
    rng: random.Random = field(default_factory=random.Random)

    def sample(self, node_ids: Sequence[int]) -> list[int]:
        nodes = list(node_ids)
        size = min(max(int(len(nodes) * self.fraction), self.minimum), len(nodes))
        return self.rng.sample(nodes, size)


@dataclass
class PoissonCohort:
    """Each node independently with probability ``rate``, sorted by id (so seeds reproduce):
    the sampling the subsampled-Gaussian accountant of DP-FedAvg assumes."""

    rate: float
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise ValueError(f"a Poisson sampling rate must be in (0, 1], got {self.rate}")

    def sample(self, node_ids: Sequence[int]) -> list[int]:
        ids = sorted(node_ids)
        keep = self.rng.random(len(ids)) < self.rate
        return [i for i, k in zip(ids, keep, strict=True) if k]


class CohortGrid(GridWrapper):
    """The grid as the strategy sees it for one fan-out: only the cohort's nodes exist.

    Everything else (sending, receiving, run metadata) is the wrapped grid's.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self._nodes = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)


def in_cohort_order(messages: Iterable[Message], cohort: Sequence[int]) -> list[Message]:
    """``messages`` in the order of ``cohort`` (Flower's strategies shuffle what they send)."""
    position = {node: i for i, node in enumerate(cohort)}
    return sorted(messages, key=lambda m: position[m.metadata.dst_node_id])


def connected_nodes(
    grid: Grid, minimum: int, timeout: float, *, poll: float = 0.5, what: str = "round"
) -> list[int]:
    """The connected node ids once at least ``minimum`` are; an error after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{what}: only {len(nodes)} node(s) connected after {timeout:g} s,"
                f" {minimum} needed (min-clients / expected-nodes)"
            )
        time.sleep(poll)
