"""Tests for fedrec.common.records: typed access to Flower records, with the key named."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedrec.common.records import (
    arrays_of,
    config_of,
    describe_received,
    integer,
    metrics_of,
    numpy_arrays,
    scalar,
    text,
)


def _content() -> RecordDict:
    return RecordDict({
        "arrays": ArrayRecord({"w": Array(np.ones((2, 3), np.float32))}),
        "metrics": MetricRecord({"loss": 0.5, "n": 3}),
        "config": ConfigRecord({"round": 4, "name": "x", "flag": True}),
    })  # fmt: skip


def test_records_by_kind() -> None:
    content = _content()
    assert list(numpy_arrays(arrays_of(content))) == ["w"]
    assert numpy_arrays(arrays_of(content))["w"].shape == (2, 3)
    assert dict(metrics_of(content)) == {"loss": 0.5, "n": 3}
    assert config_of(content)["round"] == 4
    assert dict(config_of(RecordDict())) == {}  # no config: an empty one
    with pytest.raises(KeyError, match="no array record 'arrays'"):
        arrays_of(RecordDict({"metrics": MetricRecord({"n": 1})}))
    with pytest.raises(KeyError, match="no metric record 'metrics'"):
        metrics_of(RecordDict())


def test_values_by_type() -> None:
    content = _content()
    metrics, config = metrics_of(content), config_of(content)
    assert scalar(metrics, "loss") == 0.5 and scalar(metrics, "missing", 2.0) == 2.0
    assert integer(metrics, "n") == 3 and integer(config, "round") == 4
    assert text(config, "name") == "x" and text(config, "missing", "") == ""
    with pytest.raises(ValueError, match="'flag' holds True, not a number"):
        scalar(config, "flag")  # a bool is not a number here
    with pytest.raises(ValueError, match=r"'loss' holds 0\.5, not an integer"):
        integer(metrics, "loss")
    with pytest.raises(ValueError, match="'round' holds 4, not text"):
        text(config, "round")
    with pytest.raises(ValueError, match="'missing' holds None"):
        scalar(metrics, "missing")


@pytest.mark.usefixtures("server_task")
def test_what_was_received_is_described_by_name_shape_and_type_never_value() -> None:
    replies = [Message(_content(), dst_node_id=n, message_type="train") for n in (1, 2)]
    replies.append(Message(Error(code=1, reason="dropped"), reply_to=replies[0]))
    received: dict[str, dict[str, object]] = {}
    describe_received(replies, received)
    assert received == {
        "arrays/w": {"kind": "array", "shape": [2, 3], "dtype": "float32", "messages": 2},
        "metrics/loss": {"kind": "metric", "type": "float", "messages": 2},
        "metrics/n": {"kind": "metric", "type": "int", "messages": 2},
        "config/round": {"kind": "config", "type": "int", "messages": 2},
        "config/name": {"kind": "config", "type": "str", "messages": 2},
        "config/flag": {"kind": "config", "type": "bool", "messages": 2},
    }
    assert "0.5" not in str(received)  # no value


@pytest.mark.usefixtures("server_task")
def test_a_second_shape_of_one_key_is_kept_not_overwritten() -> None:
    odd = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((3, 3), np.float64))})})
    replies = [Message(_content(), dst_node_id=1, message_type="train"),
               Message(odd, dst_node_id=2, message_type="train"),
               Message(_content(), dst_node_id=3, message_type="train")]  # fmt: skip
    received: dict[str, dict[str, object]] = {}
    describe_received(replies, received)
    entry = received["arrays/w"]
    assert entry["shape"] == [2, 3] and entry["other_shapes"] == [[3, 3]]
    assert entry["other_dtypes"] == ["float64"] and entry["messages"] == 3


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(3.0),
        np.zeros((0, 5), np.float32),
        np.arange(5, dtype=np.int64),
        np.ones((2, 3), dtype=">f4"),
        np.arange(6, dtype=np.uint8)[::2],  # not contiguous
        np.array([True, False]),
    ],
)
def test_arrays_encode_as_flower_does_and_decode_to_writable_copies(value: np.ndarray) -> None:
    from fedrec.common.records import array_of, to_numpy

    ours, flowers = array_of(value), Array(value)
    assert (ours.data, ours.dtype, list(ours.shape)) == (
        flowers.data,
        flowers.dtype,
        list(flowers.shape),
    )  # byte for byte
    for array in (ours, flowers):
        got = to_numpy(array)
        assert got.dtype == value.dtype and got.shape == value.shape and got.flags.writeable
        np.testing.assert_array_equal(got, value)


def test_decoding_anything_unusual_goes_through_flowers_own_checks() -> None:
    from fedrec.common.records import to_numpy

    fortran = Array(np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    np.testing.assert_array_equal(to_numpy(fortran), np.arange(6.0).reshape(2, 3))
    lying = Array(
        dtype="float32", shape=(5,), stype="numpy.ndarray", data=Array(np.ones(4, np.float32)).data
    )
    # bytes that do not match the claimed shape: read as Flower reads them (their own header)
    assert to_numpy(lying).shape == lying.numpy().shape == (4,)
