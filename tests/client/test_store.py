"""Tests for fedrec.client.store: where a device keeps its private state between rounds."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedrec.client.store import ContextStateStore, MemoryStateStore, StateStore

KEY = "fedrec.private"


def _arrays() -> dict[str, np.ndarray]:
    return {
        "user_embedding.weight": np.arange(8, dtype=np.float32).reshape(1, 8) / 10,
        "user_features": np.array([[1.0, 0.0, 0.5]], np.float32),
    }


@pytest.fixture(params=["context", "memory"])
def store(request: pytest.FixtureRequest) -> StateStore:
    return ContextStateStore(RecordDict()) if request.param == "context" else MemoryStateStore()


def test_round_trip(store: StateStore) -> None:
    arrays = _arrays()
    store.save(KEY, arrays)
    loaded = store.load(KEY)
    assert loaded is not None and set(loaded) == set(arrays)
    for name, value in arrays.items():
        assert isinstance(loaded[name], np.ndarray)
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)


def test_missing_key_is_none(store: StateStore) -> None:
    assert store.load(KEY) is None
    store.save("other", _arrays())
    assert store.load(KEY) is None


def test_save_and_load_are_copies(store: StateStore) -> None:
    arrays = _arrays()
    store.save(KEY, arrays)
    arrays["user_embedding.weight"].fill(-1.0)  # the caller keeps training its array
    first = store.load(KEY)
    assert first is not None
    np.testing.assert_array_equal(
        first["user_embedding.weight"], _arrays()["user_embedding.weight"]
    )
    first["user_features"].fill(9.0)  # mutating a loaded copy does not change the store
    second = store.load(KEY)
    assert second is not None
    np.testing.assert_array_equal(second["user_features"], _arrays()["user_features"])


def test_save_overwrites(store: StateStore) -> None:
    store.save(KEY, _arrays())
    store.save(KEY, {"user_embedding.weight": np.zeros((1, 2), np.float32)})
    loaded = store.load(KEY)
    assert loaded is not None and set(loaded) == {"user_embedding.weight"}


def test_context_store_writes_an_array_record_into_the_record_dict() -> None:
    state = RecordDict()
    ContextStateStore(state).save(KEY, _arrays())
    assert isinstance(state[KEY], ArrayRecord)
    assert {k: tuple(a.shape) for k, a in state[KEY].items()} == {
        "user_embedding.weight": (1, 8),
        "user_features": (1, 3),
    }
    # a new store over the same RecordDict (the next round on this node) sees the state
    loaded = ContextStateStore(state).load(KEY)
    assert loaded is not None
    np.testing.assert_array_equal(loaded["user_features"], _arrays()["user_features"])


@pytest.mark.parametrize("record", [MetricRecord({"rounds": 3}), ConfigRecord({"a": "b"})])
def test_context_store_rejects_a_non_array_record(record: object) -> None:
    state = RecordDict({KEY: record})
    with pytest.raises(TypeError, match=KEY):
        ContextStateStore(state).load(KEY)


def test_json_round_trip_and_isolation(store: StateStore) -> None:
    assert store.load_json("fedrec.record-ledger") is None
    doc = {"accountant": "rdp", "history": [[1.1, 0.25, 8]]}
    store.save_json("fedrec.record-ledger", doc)
    loaded = store.load_json("fedrec.record-ledger")
    assert loaded == doc
    assert loaded is not None
    loaded["history"].append([2.0, 0.5, 1])  # a caller's change does not reach the store
    assert store.load_json("fedrec.record-ledger") == doc


def test_json_key_holding_arrays_is_a_type_error() -> None:
    store = ContextStateStore(RecordDict())
    store.save(KEY, _arrays())
    with pytest.raises(TypeError, match="not JSON"):
        store.load_json(KEY)
