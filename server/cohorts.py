"""Who takes part in a round: the cohort samplers, and the wait for connected nodes.

A round's cohort is chosen here, once, by a :class:`CohortSampler` — an exact count, a
fraction, or DP-FedAvg's Poisson sample — and the round loop (``server/rounds.py``) sends one
message to each node of it, in the order drawn; the evaluation panel is the same users at
every evaluation.

Deployment semantics: a round starts once at least ``min-clients`` nodes are connected
(:func:`connected_nodes`, which gives up with a clear error after the round timeout) and
samples from the nodes connected at that moment; nothing waits for every device to be online.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.serverapp import Grid

__all__ = [
    "CohortSampler",
    "EvaluationPanel",
    "FractionCohort",
    "PoissonCohort",
    "UniformCohort",
    "connected_nodes",
]


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
                f" {minimum} needed (min-clients; a simulation waits for every user)"
            )
        time.sleep(poll)
