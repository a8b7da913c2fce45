"""Tests for fedrec.server.cohorts: who takes part in a round."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from builders import StaticGrid

from fedrec.server.cohorts import (
    CohortGrid,
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


def test_a_cohort_grid_shows_only_the_cohort() -> None:
    grid = StaticGrid([1, 2, 3, 4])
    view = CohortGrid(grid, [4, 2])  # type: ignore[arg-type]
    assert view.get_node_ids() == [4, 2]
    assert view.send_and_receive([]) == [] and view.grid is grid  # the rest is delegated


def test_connected_nodes_waits_for_the_minimum_then_gives_up() -> None:
    grid = StaticGrid([1, 2])
    assert connected_nodes(grid, 2, timeout=0.1) == [1, 2]  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"round 3: only 2 node\(s\) connected after 0.3 s, 5"):
        connected_nodes(grid, 5, timeout=0.3, poll=0.05, what="round 3")  # type: ignore[arg-type]
    assert 0.25 < time.monotonic() - started < 2.0
