"""Tests for fedrec.server.checkpoint: model, optimizer state and ledger survive a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.model import ITEM_TABLE
from fedrec.common.privacy import PrivacyLedger
from fedrec.server.checkpoint import Checkpointer, grow_item_rows, read_checkpoint
from fedrec.server.optimizer import FedAdam
from fedrec.server.runs import CHECKPOINT, CHECKPOINT_META, write_arrays, write_json

MODEL = {
    ITEM_TABLE: np.arange(12, dtype=np.float32).reshape(3, 4) * 2.0,
    "head.bias": np.array([1.0], np.float32),
}
IDENTITY = {"catalog_sha256": "ab" * 32, "catalog_items": 3, "dim": 4, "seed": 0}


def test_a_checkpoint_round_trips_the_model_and_its_record(tmp_path: Path) -> None:
    Checkpointer(tmp_path, model=IDENTITY).write(MODEL, 7, {}, None)
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / CHECKPOINT_META).exists()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    for where in (tmp_path, tmp_path / CHECKPOINT):  # a run folder or the file itself
        checkpoint = read_checkpoint(where)
        assert checkpoint.round == 7 and list(checkpoint.model) == list(MODEL)
        for key, array in MODEL.items():
            assert checkpoint.model[key].dtype == np.float32
            np.testing.assert_array_equal(checkpoint.model[key], array)
        assert checkpoint.optimizer == {}  # FedAvg has no optimizer state
        assert checkpoint.meta == {"round": 7, **IDENTITY}  # no ledger without DP
    assert json.loads((tmp_path / CHECKPOINT_META).read_text()) == {"round": 7, **IDENTITY}


def test_the_optimizer_state_and_the_ledger_are_checkpointed(tmp_path: Path) -> None:
    adam = FedAdam()
    current = {k: v.astype(np.float64) for k, v in MODEL.items()}
    adam.step(current, {k: v + 0.5 for k, v in current.items()}, 1)  # moments of Δ = 0.5
    state = adam.state_dict(list(MODEL))
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.1, 3)
    Checkpointer(tmp_path).write(MODEL, 3, state, ledger.to_dict())
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.round == 3
    assert set(checkpoint.optimizer) == {f"{n}/{k}" for n in ("m_t", "v_t") for k in MODEL}
    # m_1 = (1 − β₁)·Δ = 0.1 · 0.5 and v_1 = (1 − β₂)·Δ² = 0.01 · 0.25, every coordinate
    np.testing.assert_allclose(checkpoint.optimizer["m_t/head.bias"], [0.05])
    np.testing.assert_allclose(checkpoint.optimizer[f"v_t/{ITEM_TABLE}"], np.full((3, 4), 0.0025))
    assert PrivacyLedger.from_dict(checkpoint.meta["user_level_ledger"]) == ledger


def test_the_record_inside_the_checkpoint_file_wins_over_the_readable_copy(
    tmp_path: Path,
) -> None:
    """The round and ledger ride inside the one atomically replaced .npz: a checkpoint.json
    left from another round cannot pair that round with this model."""
    Checkpointer(tmp_path).write(MODEL, 5, {})
    write_json(tmp_path / CHECKPOINT_META, {"round": 2})  # stale
    assert read_checkpoint(tmp_path).round == 5


def test_a_checkpoint_from_before_the_record_moved_inside_reads_the_json(tmp_path: Path) -> None:
    write_arrays(tmp_path / CHECKPOINT, {f"model/{k}": v for k, v in MODEL.items()})
    write_json(tmp_path / CHECKPOINT_META, {"round": 4, "dim": 4})
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.meta == {"round": 4, "dim": 4} and set(checkpoint.model) == set(MODEL)


def test_reading_a_folder_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(tmp_path)


def test_a_grown_catalog_appends_zero_rows_to_the_table_and_its_moments() -> None:
    optimizer = {f"m_t/{ITEM_TABLE}": np.ones((3, 4)), "m_t/head.bias": np.ones(1)}
    model, state = grow_item_rows(MODEL, optimizer, 5)
    assert model[ITEM_TABLE].shape == (5, 4) and model[ITEM_TABLE].dtype == np.float32
    np.testing.assert_array_equal(model[ITEM_TABLE][:3], MODEL[ITEM_TABLE])
    np.testing.assert_array_equal(model[ITEM_TABLE][3:], np.zeros((2, 4)))
    np.testing.assert_array_equal(
        state[f"m_t/{ITEM_TABLE}"], np.r_[np.ones((3, 4)), np.zeros((2, 4))]
    )
    assert model["head.bias"] is MODEL["head.bias"] and state["m_t/head.bias"].shape == (1,)
    with pytest.raises(ValueError, match="a catalog of 2 items cannot hold 3 rows"):
        grow_item_rows(MODEL, optimizer, 2)


def test_a_model_without_item_ids_has_nothing_to_grow() -> None:
    tableless = {"head.bias": np.ones(1, np.float32)}
    model, state = grow_item_rows(tableless, {"m_t/head.bias": np.ones(1)}, 50)
    assert list(model) == ["head.bias"] and list(state) == ["m_t/head.bias"]
