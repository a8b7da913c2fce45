"""Tests for fedrec.common.colr: the low-rank form of the item table's update."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common import keys
from fedrec.common.colr import FACTOR, TABLE, LowRank, basis, expand, factor, factored_shapes

SHAPES = {"head.bias": (1,), TABLE: (6, 8), "item_tower.weight": (8, 8)}


def test_the_basis_has_orthonormal_rows_and_comes_from_the_seed_alone() -> None:
    b = basis(11, 3, 8)
    assert b.shape == (3, 8)
    np.testing.assert_allclose(b @ b.T, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(b, basis(11, 3, 8))
    assert not np.allclose(b, basis(12, 3, 8))
    assert not b.flags.writeable  # cached and shared: nobody may change it


@pytest.mark.parametrize("rank", [0, 8, 9])
def test_a_rank_outside_one_to_the_width_is_refused(rank: int) -> None:
    with pytest.raises(ValueError, match=r"colr-rank .* must be in \[1, 8\)"):
        basis(0, rank, 8)


def test_a_factor_of_an_update_in_the_span_is_exact_and_keeps_the_norm() -> None:
    b = basis(5, 3, 8)
    a = np.random.default_rng(0).normal(size=(6, 3))
    delta = {"head.bias": np.array([0.5]), TABLE: a @ b}
    factored = factor(delta, b)
    assert list(factored) == ["head.bias", FACTOR]  # in place: the order both ends flatten
    np.testing.assert_allclose(factored[FACTOR], a, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(factored[FACTOR]), np.linalg.norm(a @ b))
    back = expand(factored, b)
    assert list(back) == ["head.bias", TABLE]
    np.testing.assert_allclose(back[TABLE], a @ b, atol=1e-12)


def test_the_factor_of_any_update_is_its_projection_and_never_longer() -> None:
    """A device whose ΔE is not in the span (a bug, an attacker) sends its projection:
    under user-level DP the clip still holds."""
    b = basis(5, 3, 8)
    delta = np.random.default_rng(1).normal(size=(6, 8))
    projected = expand(factor({TABLE: delta}, b), b)[TABLE]
    np.testing.assert_allclose(projected, delta @ b.T @ b, atol=1e-12)
    assert np.linalg.norm(projected) < np.linalg.norm(delta)


def test_the_training_basis_makes_the_expected_step_the_full_one() -> None:
    """E[BᵀB] = (r/d)·I for an orthonormal B uniform over its subspace, so the training
    basis B·√(d/r) has E[BᵀB] = I: checked over 4,000 seeds (Monte Carlo sd ≈ 0.01)."""
    rank, width = 2, 8
    mean = np.mean(
        [LowRank(rank, s).training_basis(width).T @ LowRank(rank, s).training_basis(width)
         for s in range(4000)], axis=0,
    )  # fmt: skip
    np.testing.assert_allclose(mean, np.eye(width), atol=0.06)
    b = LowRank(rank, 0).basis(width)
    np.testing.assert_allclose(b.T @ b, (b.T @ b) @ (b.T @ b), atol=1e-12)  # a projection


def test_factored_shapes_replace_the_table_in_place() -> None:
    assert factored_shapes(SHAPES, 3) == {"head.bias": (1,), FACTOR: (6, 3),
                                          "item_tower.weight": (8, 8)}  # fmt: skip
    assert list(factored_shapes(SHAPES, 3)) == ["head.bias", FACTOR, "item_tower.weight"]
    with pytest.raises(ValueError, match="needs the item table"):
        factored_shapes({"head.bias": (1,)}, 3)


def test_each_round_gets_a_fresh_basis_drawn_from_the_run_seed() -> None:
    first = LowRank.for_round(8, run_seed=0, server_round=1)
    assert first == LowRank.for_round(8, run_seed=0, server_round=1)  # reproducible
    seeds = {LowRank.for_round(8, 0, r).seed for r in range(1, 50)}
    assert len(seeds) == 49  # fresh each round
    assert LowRank.for_round(8, 1, 1).seed != first.seed


def test_a_messages_low_rank_form_round_trips_and_bad_values_are_named() -> None:
    form = LowRank(4, 123)
    assert LowRank.of(form.config()) == form
    assert LowRank.of({}) is None  # a dense round
    with pytest.raises(ValueError, match="colr-rank is 0"):
        LowRank.of({keys.COLR_RANK: 0, keys.COLR_SEED: 1})
    with pytest.raises(ValueError, match="colr-seed is None"):
        LowRank.of({keys.COLR_RANK: 4})
    with pytest.raises(ValueError, match="colr-rank is '4'"):
        LowRank.of({keys.COLR_RANK: "4", keys.COLR_SEED: 1})
