"""Tests for fedrec.common.packing: a record of arrays as one array on the wire, and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedrec.common.packing import LAYOUT_PREFIX, PACKED, PackingError, is_packed, pack, unpack

ARRAYS = {
    "item_embedding.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
    "head.bias": np.array([0.5], dtype=np.float32),
    "secagg-ints": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    "scalar": np.array(7.0, dtype=np.float64),  # 0-d
    "empty": np.zeros((0, 5), dtype=np.float32),
}


def _content() -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in ARRAYS.items()}),
            "config": ConfigRecord({"server-round": 3}),
            "one": ArrayRecord({"only": Array(np.ones(3, np.float32))}),
            "metrics": MetricRecord({"loss": 0.25}),
        }
    )


def test_a_record_of_arrays_travels_as_one_array_and_comes_back_exactly() -> None:
    content = _content()
    packed = pack(content)
    assert is_packed(packed) and not is_packed(content)  # the original is not changed
    assert list(packed["arrays"]) == [PACKED] and len(packed["arrays"]) == 1
    assert list(packed["one"]) == ["only"]  # a single array is already one object
    back = unpack(packed)
    assert list(back) == ["arrays", "config", "one", "metrics"]  # order, no layout record
    assert list(back["arrays"]) == list(ARRAYS)
    for name, value in ARRAYS.items():
        got = back["arrays"][name].numpy()
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)
    assert back["config"]["server-round"] == 3 and back["metrics"]["loss"] == 0.25


def test_the_packed_bytes_are_the_arrays_bytes() -> None:
    packed = pack(_content())
    data = packed["arrays"][PACKED].numpy()
    assert data.dtype == np.uint8
    assert data.nbytes == sum(v.nbytes for v in ARRAYS.values())  # nothing added


def test_content_that_is_not_packed_comes_back_as_it_is() -> None:
    content = _content()
    assert unpack(content) is content


def test_a_layout_that_does_not_describe_its_bytes_is_refused() -> None:
    packed = pack(_content())
    layout = json.loads(str(packed[LAYOUT_PREFIX + "arrays"]["layout"]))
    layout[0][2] = [5, 3]  # one row more than was sent
    packed[LAYOUT_PREFIX + "arrays"] = ConfigRecord({"layout": json.dumps(layout)})
    with pytest.raises(PackingError, match="more bytes"):
        unpack(packed)
    layout[0][2] = [3, 3]  # one row fewer: bytes left over
    packed[LAYOUT_PREFIX + "arrays"] = ConfigRecord({"layout": json.dumps(layout)})
    with pytest.raises(PackingError, match="beyond its layout"):
        unpack(packed)
    packed[LAYOUT_PREFIX + "arrays"] = ConfigRecord({"layout": "not json"})
    with pytest.raises(PackingError, match="does not parse"):
        unpack(packed)
