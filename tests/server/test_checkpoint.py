"""Tests for fedrec.server.checkpoint: model, optimizer state and ledger survive a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import model_arrays
from flwr.app import ArrayRecord

from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.runs import CHECKPOINT, CHECKPOINT_META
from fedrec.server.checkpoint import Checkpointer, load_checkpoint, load_checkpoint_meta
from fedrec.server.optimizer import ServerStep, flower_strategy


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    step = ServerStep(flower_strategy(FederationConfig()))
    arrays = model_arrays(2.0)
    Checkpointer(tmp_path, step)(arrays, 7)
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / CHECKPOINT_META).exists()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    for where in (tmp_path, tmp_path / CHECKPOINT):  # a run folder or the file itself
        model, state, round_ = load_checkpoint(where)
        assert isinstance(model, ArrayRecord) and round_ == 7
        assert list(model) == list(arrays)
        for key, array in arrays.items():
            np.testing.assert_array_equal(model[key].numpy(), array.numpy())
            assert model[key].numpy().dtype == np.float32
        assert state == {}  # FedAvg has no optimizer state
    assert json.loads((tmp_path / CHECKPOINT_META).read_text()) == {"round": 7}


def test_the_optimizer_state_and_the_ledger_are_checkpointed(tmp_path: Path) -> None:
    step = ServerStep(flower_strategy(FederationConfig(strategy="fedadam")))
    m_t = {k: v.numpy() * 0.1 for k, v in model_arrays().items()}
    step.optimizer.m_t, step.optimizer.v_t = m_t, {k: v**2 for k, v in m_t.items()}
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.1, 3)
    Checkpointer(tmp_path, step, ledger)(model_arrays(), 3)
    _, state, round_ = load_checkpoint(tmp_path)
    assert round_ == 3 and set(state) == {f"{n}/{k}" for n in ("m_t", "v_t") for k in m_t}
    np.testing.assert_array_equal(state["m_t/head.bias"], m_t["head.bias"])
    meta = load_checkpoint_meta(tmp_path)
    assert PrivacyLedger.from_dict(meta["user_level_ledger"]) == ledger


def test_load_checkpoint_without_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)
