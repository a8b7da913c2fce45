"""Reading Flower messages: typed access to their records, and what they weigh.

A RecordDict maps names to *some* record (arrays, metrics or config) and a record maps keys to
*some* value (numbers, text, lists, bytes): every reader of a message would otherwise narrow
those types itself, or not at all. These accessors narrow once and fail with the record and
key named when a message does not carry what its reader expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrec.common import keys

__all__ = [
    "array_of",
    "array_record",
    "arrays_of",
    "config_of",
    "describe_received",
    "exchange_modes",
    "integer",
    "message_bytes",
    "metrics_of",
    "numpy_arrays",
    "round_rng",
    "scalar",
    "text",
    "to_numpy",
]


def arrays_of(content: RecordDict, name: str = keys.ARRAYS) -> ArrayRecord:
    """The ArrayRecord ``name`` of a message's content."""
    records = content.array_records
    if name not in records:
        raise KeyError(f"the message carries no array record {name!r} (records: {list(content)})")
    return records[name]


def metrics_of(content: RecordDict, name: str = keys.METRICS) -> MetricRecord:
    """The MetricRecord ``name`` of a message's content."""
    records = content.metric_records
    if name not in records:
        raise KeyError(f"the message carries no metric record {name!r} (records: {list(content)})")
    return records[name]


def config_of(content: RecordDict, name: str = keys.CONFIG) -> ConfigRecord:
    """The ConfigRecord ``name`` of a message's content, empty if it has none."""
    return content.config_records.get(name, ConfigRecord())


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays as NumPy, in its order."""
    return {k: to_numpy(v) for k, v in record.items()}


_NPY_MAGIC = b"\x93NUMPY"


def to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()`` (a writable copy) without ``np.load``, which parses each array's
    ``.npy`` header with ``ast.literal_eval``: the dtype and shape Flower keeps beside the
    bytes say what the header says. Anything unusual (another serialization, a Fortran-order
    array, bytes that do not match) goes through ``array.numpy()`` and its checks."""
    data = array.data
    if array.stype != "numpy.ndarray" or data[:6] != _NPY_MAGIC or data[6] not in (1, 2, 3):
        return array.numpy()
    width = 2 if data[6] == 1 else 4
    start = 8 + width + int.from_bytes(data[8 : 8 + width], "little")
    if b"'fortran_order': True" in data[8 + width : start]:
        return array.numpy()
    try:
        dtype, shape = np.dtype(array.dtype), tuple(int(n) for n in array.shape)
    except TypeError:
        return array.numpy()
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or len(data) - start != count * dtype.itemsize:
        return array.numpy()
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape).copy()


def array_of(value: np.ndarray) -> Array:
    """``Array(value)``, the same bytes, with the ``.npy`` header made once per dtype and
    shape rather than by ``np.save`` for every array of every message."""
    value = np.asarray(value)
    if value.dtype.hasobject:
        return Array(value)  # Flower refuses it, with its own message
    value = np.require(value, requirements="C")
    data = _npy_header(value.dtype.str, value.shape) + value.tobytes()
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype="numpy.ndarray", data=data)


def array_record(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of ``values`` in their order (:func:`array_of` each)."""
    return ArrayRecord({k: array_of(v) for k, v in values.items()})


@lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """What ``np.save`` writes before a C-order array's bytes (format 1.0, else 2.0)."""
    buffer = BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}  # fmt: skip
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header too long for format 1.0
        buffer = BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def scalar(record: Mapping[str, object], key: str, default: float | None = None) -> float:
    """A number of a metric or config record (``default`` if absent)."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"record key {key!r} holds {value!r}, not a number")
    return float(value)


def integer(record: Mapping[str, object], key: str, default: int | None = None) -> int:
    """An integral number of a metric or config record (``default`` if absent)."""
    value = scalar(record, key, None if default is None else float(default))
    if not value.is_integer():
        raise ValueError(f"record key {key!r} holds {value!r}, not an integer")
    return int(value)


def text(record: Mapping[str, object], key: str, default: str | None = None) -> str:
    """A string of a config record (``default`` if absent)."""
    value = record.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"record key {key!r} holds {value!r}, not text")
    return value


def round_rng(
    config: Mapping[str, object], seed: Sequence[int] | None, stream: int
) -> np.random.Generator:
    """A device's random stream for the round a message's config names: seeded from
    ``[*seed, round, stream]`` (a simulated node: a seeded run reproduces), or fresh OS
    entropy where ``seed`` is None (a device)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([*seed, int(scalar(config, keys.SERVER_ROUND, 0.0)), stream])


def exchange_modes(config: Mapping[str, object]) -> tuple[str, str]:
    """(download, upload) compression a message's config names, ``"none"`` where absent
    (``keys.DOWNLOAD_COMPRESSION`` / ``keys.UPLOAD_COMPRESSION``, common/compression.py)."""
    return (
        text(config, keys.DOWNLOAD_COMPRESSION, "none"),
        text(config, keys.UPLOAD_COMPRESSION, "none"),
    )


def message_bytes(message: Message) -> int:
    """Payload bytes of a message's records (what travels, without framing)."""
    return sum(r.count_bytes() for r in message.content.values()) if message.has_content() else 0


def describe_received(messages: list[Message], into: dict[str, dict[str, object]]) -> None:
    """Add what ``messages`` carry to ``into``: per ``record/key``, its kind (array, metric,
    config), shape and dtype (arrays) or value type, and how many messages carried it.

    The server's own evidence of what it received (``rounds.jsonl``, ``received``): names and
    shapes only, never a value."""
    for message in messages:
        if message.has_error() or not message.has_content():
            continue
        content = message.content
        found: list[tuple[str, dict[str, object]]] = []
        for name, arrays in content.array_records.items():
            found += [
                (f"{name}/{key}", {"kind": "array", "shape": list(a.shape), "dtype": a.dtype})
                for key, a in arrays.items()
            ]
        for kind, records in (
            ("metric", content.metric_records),
            ("config", content.config_records),
        ):
            for name, record in records.items():
                found += [
                    (f"{name}/{key}", {"kind": kind, "type": type(value).__name__})
                    for key, value in record.items()
                ]
        for key, entry in found:
            seen = into.setdefault(key, {**entry, "messages": 0})
            seen["messages"] = int(str(seen["messages"])) + 1
            for field in ("shape", "dtype", "type", "kind"):  # a second form is kept, not lost
                if field in entry and entry[field] != seen.get(field):
                    variants = seen.setdefault(f"other_{field}s", [])
                    if entry[field] not in variants:  # type: ignore[operator]
                        variants.append(entry[field])  # type: ignore[attr-defined]
