"""Tests for fedrec.server.robust: the bounds of each device's update before averaging (the
plain aggregation applies them: tests/server/test_plain.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.model import ITEM_TABLE
from fedrec.server.robust import Bounds, bound


def _update(rows: list[list[float]], bias: float = 0.0) -> dict[str, np.ndarray]:
    return {ITEM_TABLE: np.array(rows), "head.bias": np.array([bias])}


def test_rows_over_the_bound_are_scaled_to_it_and_the_rest_kept() -> None:
    update = _update([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], bias=2.0)  # row norms 5, 0.5, 0
    out, whole, rows = bound(update, Bounds(row_norm=1.0))
    assert (whole, rows) == (False, 1)
    np.testing.assert_allclose(out[ITEM_TABLE], [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    assert out["head.bias"][0] == 2.0  # only item rows have a row bound


def test_the_whole_update_is_scaled_to_its_bound_after_the_rows() -> None:
    update = _update([[3.0, 4.0], [0.0, 0.0]], bias=12.0)  # rows 5, 0; with the bias 13
    out, whole, rows = bound(update, Bounds(norm=2.6, row_norm=5.0))
    assert (whole, rows) == (True, 0)
    np.testing.assert_allclose(out[ITEM_TABLE], [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(out["head.bias"], [2.4])
    out, whole, rows = bound(update, Bounds(norm=2.6, row_norm=0.5))  # rows first: 0.5, 12
    assert (whole, rows) == (True, 1)
    np.testing.assert_allclose(np.sqrt(sum(np.square(v).sum() for v in out.values())), 2.6)


def test_an_update_within_the_bounds_is_unchanged_bit_for_bit() -> None:
    update = _update([[0.1, -0.2], [0.0, 0.3]], bias=-0.05)
    out, whole, rows = bound(update, Bounds(norm=10.0, row_norm=1.0))
    assert (whole, rows) == (False, 0)
    for k in update:
        assert np.array_equal(out[k], update[k])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bounds_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="bound must be a finite number"):
        Bounds(row_norm=bad)
    with pytest.raises(ValueError, match="norm bound must be a finite number"):
        Bounds(norm=bad)


def test_no_bounds_are_off() -> None:
    """Bounds() is falsy: the plain aggregation then takes no bounding step at all."""
    assert not Bounds() and Bounds(norm=1.0) and Bounds(row_norm=0.5)


def test_a_model_without_an_item_table_has_no_rows_to_bound() -> None:
    """item-ids = none: the row bound finds no table; the whole-update bound still applies
    (‖(0, 6, 8)‖ = 10 → scaled by 5/10)."""
    update = {"item_tower.weight": np.array([0.0, 6.0]), "head.bias": np.array([8.0])}
    out, whole, rows = bound(update, Bounds(norm=5.0, row_norm=0.1))
    assert (whole, rows) == (True, 0)
    np.testing.assert_allclose(out["item_tower.weight"], [0.0, 3.0])
    np.testing.assert_allclose(out["head.bias"], [4.0])
