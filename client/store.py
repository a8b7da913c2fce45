"""Where a device keeps its private state between rounds.

:class:`StateStore` is the small interface the client code depends on. In simulation it is
backed by Flower's per-node ``context.state`` (memory only); a real device backs the same
interface with its encrypted on-disk store, so the training code does not change.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedrec.common.records import array_record, numpy_arrays

__all__ = [
    "JSON_FIELD",
    "ContextStateStore",
    "MemoryStateStore",
    "StateStore",
]

JSON_FIELD = "json"


class StateStore(Protocol):
    """Arrays (private model state, NumPy) and small JSON documents (a privacy ledger) by key."""

    def load(self, key: str) -> dict[str, np.ndarray] | None: ...
    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None: ...
    def load_json(self, key: str) -> dict[str, Any] | None: ...
    def save_json(self, key: str, document: dict[str, Any]) -> None: ...


class ContextStateStore:
    """A :class:`StateStore` over ``context.state`` (a RecordDict kept per node by Flower)."""

    def __init__(self, state: RecordDict) -> None:
        self._state = state

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        if key not in self._state:
            return None
        record = self._state[key]
        if not isinstance(record, ArrayRecord):
            raise TypeError(f"node state '{key}' holds a {type(record).__name__}, not arrays")
        return numpy_arrays(record)  # copies

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self._state[key] = array_record(arrays)

    def load_json(self, key: str) -> dict[str, Any] | None:
        if key not in self._state:
            return None
        record = self._state[key]
        if not isinstance(record, ConfigRecord) or JSON_FIELD not in record:
            raise TypeError(f"node state '{key}' holds a {type(record).__name__}, not JSON")
        return dict(json.loads(str(record[JSON_FIELD])))

    def save_json(self, key: str, document: dict[str, Any]) -> None:
        self._state[key] = ConfigRecord({JSON_FIELD: json.dumps(document)})


class MemoryStateStore:
    """A plain-dict :class:`StateStore` for tests and offline use."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, np.ndarray]] = {}
        self._documents: dict[str, str] = {}

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        stored = self._data.get(key)
        return None if stored is None else {k: v.copy() for k, v in stored.items()}

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self._data[key] = {k: np.array(v) for k, v in arrays.items()}

    def load_json(self, key: str) -> dict[str, Any] | None:
        stored = self._documents.get(key)
        return None if stored is None else dict(json.loads(stored))

    def save_json(self, key: str, document: dict[str, Any]) -> None:
        self._documents[key] = json.dumps(document)
