"""Tests for fedrec.server.robust: norm bounding of each device's update before averaging."""

from __future__ import annotations

import numpy as np
import pytest
from builders import StaticGrid, server_message, train_reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message
from flwr.serverapp.strategy import FedAvg

from fedrec.common import keys
from fedrec.server.cohorts import CohortGrid
from fedrec.server.robust import (
    BOUNDED_ROWS,
    BOUNDED_UPDATES,
    ITEM_TABLE,
    Bounds,
    NormBounding,
    bound,
)

pytestmark = pytest.mark.usefixtures("server_task")


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
    with pytest.raises(ValueError, match="needs a norm bound"):
        NormBounding(FedAvg(), Bounds())


def _arrays(table: np.ndarray) -> ArrayRecord:
    return ArrayRecord(
        {ITEM_TABLE: Array(table.astype(np.float32)), "head.bias": Array(np.zeros(1, np.float32))}
    )


def _fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=0, min_train_nodes=0, weighted_by_key=keys.UNIT_WEIGHT)


def test_one_pushed_row_is_clipped_before_the_average() -> None:
    """Three devices: two honest ones move every row a little, one pushes row 2 by 30."""
    start = np.zeros((4, 2))
    strategy = NormBounding(_fedavg(), Bounds(row_norm=0.5))
    grid = CohortGrid(StaticGrid([1, 2, 3]), [1, 2, 3])  # type: ignore[arg-type]
    list(strategy.configure_train(1, _arrays(start), ConfigRecord(), grid))  # type: ignore[arg-type]
    honest = np.full((4, 2), 0.1)
    pushed = start.copy()
    pushed[2] = [30.0, 0.0]
    replies = [train_reply(_arrays(start + honest), 10, 0.5, 1),
               train_reply(_arrays(start + honest), 10, 0.5, 2),
               train_reply(_arrays(pushed), 10, 0.5, 3)]  # fmt: skip
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    table = arrays[ITEM_TABLE].numpy()
    np.testing.assert_allclose(table[2], [(0.1 + 0.1 + 0.5) / 3, 0.2 / 3], rtol=1e-6)
    np.testing.assert_allclose(table[0], [0.2 / 3, 0.2 / 3], rtol=1e-6)  # honest rows: as is
    assert (metrics[BOUNDED_UPDATES], metrics[BOUNDED_ROWS]) == (0, 1)


def test_failed_replies_pass_through() -> None:
    strategy = NormBounding(_fedavg(), Bounds(norm=1.0))
    grid = CohortGrid(StaticGrid([1]), [1])  # type: ignore[arg-type]
    list(strategy.configure_train(1, _arrays(np.zeros((2, 2))), ConfigRecord(), grid))  # type: ignore[arg-type]
    failed = Message(Error(code=1, reason="dropped"), reply_to=server_message("train", None, 1))
    arrays, metrics = strategy.aggregate_train(1, [failed])
    assert arrays is None and metrics is None
