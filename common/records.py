"""Reading Flower messages: typed access to their records, and what they weigh.

A RecordDict maps names to *some* record (arrays, metrics or config) and a record maps keys to
*some* value (numbers, text, lists, bytes): every reader of a message would otherwise narrow
those types itself, or not at all. These accessors narrow once and fail with the record and
key named when a message does not carry what its reader expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrec.common import keys

__all__ = [
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
    return {k: v.numpy() for k, v in record.items()}


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
