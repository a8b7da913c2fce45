"""Tests for fedrec.server.cohorts: who takes part in a round."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
from builders import StaticGrid

from fedrec.server import cohorts
from fedrec.server.cohorts import (
    EvaluationPanel,
    FractionCohort,
    PoissonCohort,
    UniformCohort,
    connected_nodes,
)


def test_a_uniform_cohort_has_exactly_its_count() -> None:
    sampler = UniformCohort(7, random.Random(0))
    cohorts = [sampler.sample(range(1, 41)) for _ in range(200)]
    assert all(len(c) == 7 == len(set(c)) and set(c) <= set(range(1, 41)) for c in cohorts)
    counts = np.bincount(np.concatenate(cohorts), minlength=41)[1:]
    # 1400 draws over 40 nodes: 35 each on average, sd ≈ 5.5
    assert counts.min() > 15 and counts.max() < 55
    assert UniformCohort(7, random.Random(0)).sample([3, 1]) in ([1, 3], [3, 1])  # capped
    assert sorted(UniformCohort(None, random.Random(0)).sample(range(5))) == [0, 1, 2, 3, 4]


def test_a_uniform_cohort_draws_what_random_sample_draws() -> None:
    """The draw of the seeded stream: runs of one seed see the same cohorts."""
    rng, reference = random.Random(5), random.Random(5)
    for _ in range(10):
        assert UniformCohort(4, rng).sample(list(range(30))) == reference.sample(range(30), 4)


def test_a_fraction_cohort_follows_flowers_rule() -> None:
    """max(⌊fraction · N⌋, minimum), capped at N."""
    assert len(FractionCohort(0.1, 2, random.Random(0)).sample(range(100))) == 10
    assert len(FractionCohort(0.01, 3, random.Random(0)).sample(range(100))) == 3
    assert len(FractionCohort(0.5, 9, random.Random(0)).sample(range(4))) == 4


def test_poisson_sampling_rate() -> None:
    sampler = PoissonCohort(0.05, np.random.default_rng(0))
    sizes = [len(sampler.sample(range(1000))) for _ in range(400)]
    # Binomial(1000, 0.05): mean 50, sd 6.9; the mean of 400 rounds has sd 0.34
    assert np.mean(sizes) == pytest.approx(50, abs=1.5)
    assert np.std(sizes) == pytest.approx(np.sqrt(1000 * 0.05 * 0.95), rel=0.15)
    cohort = PoissonCohort(0.5, np.random.default_rng(1)).sample([9, 3, 7, 1])
    assert cohort == sorted(cohort)  # by id, so that seeds reproduce
    with pytest.raises(ValueError, match="Poisson sampling rate"):
        PoissonCohort(0.0)


def test_an_evaluation_panel_is_drawn_once_and_asked_again() -> None:
    """5 of 12, drawn from the sorted ids with the panel's stream; later: the same nodes in
    the same order, those still connected (a node that left is not replaced)."""
    panel = EvaluationPanel(5, random.Random(4))
    first = panel.sample([12, 3, 7, 1, 2, 4, 5, 6, 8, 9, 10, 11])
    assert first == random.Random(4).sample(list(range(1, 13)), 5)
    assert panel.sample(list(range(1, 13))) == first
    assert panel.sample([n for n in range(1, 13) if n != first[2]]) == first[:2] + first[3:]
    assert EvaluationPanel(None).sample([3, 1, 2]) == [3, 1, 2]  # None: every connected node
    assert EvaluationPanel(9).sample([3, 1, 2]) == [3, 1, 2]  # more than connected: all


class _Clock:
    """A fake monotonic clock that :func:`time.sleep` advances (no real waiting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _JoiningGrid(StaticGrid):
    """Nodes 1 and 2, then one more node each time it is asked."""

    def __init__(self) -> None:
        super().__init__([1, 2])
        self.asked = 0

    def get_node_ids(self) -> list[int]:
        self.asked += 1
        return list(range(1, 2 + self.asked))


def test_connected_nodes_waits_for_the_minimum_then_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(
        cohorts, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep)
    )
    grid = StaticGrid([1, 2])
    assert connected_nodes(grid, 2, timeout=0.1) == [1, 2]  # type: ignore[arg-type]
    assert clock.sleeps == []  # enough nodes: no wait
    with pytest.raises(RuntimeError, match=r"round 3: only 2 node\(s\) connected after 0.3 s, 5"):
        connected_nodes(grid, 5, timeout=0.3, poll=0.125, what="round 3")  # type: ignore[arg-type]
    # polled at 0, 0.125, 0.25, 0.375 (past the deadline 0.3): three sleeps of one poll each
    assert clock.sleeps == [0.125] * 3
    joining = _JoiningGrid()  # 2 nodes, then 3, then 4
    assert connected_nodes(joining, 4, timeout=10.0, poll=1.0) == [1, 2, 3, 4]  # type: ignore[arg-type]
    assert joining.asked == 3
