"""Checkpoints: the shared model, the server optimizer's state and the user-level ε ledger.

Written after every round into the run folder (``checkpoint.npz``, and a readable
``checkpoint.json``); ``--resume DIR`` continues from it. The round and the ledger ride
*inside* the one atomically replaced ``.npz`` (entry ``meta/json``): a crash can never pair
one round's model with another round's ledger, so no release of the model goes uncounted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrec.common.privacy import PrivacyLedger
from fedrec.common.runs import CHECKPOINT, CHECKPOINT_META, write_arrays, write_json
from fedrec.server.optimizer import ServerStep
from fedrec.server.robust import ITEM_TABLE

__all__ = ["Checkpointer", "grow_item_rows", "load_checkpoint", "load_checkpoint_meta"]

META_KEY = "meta/json"  # the round and privacy ledger, inside the checkpoint file
MODEL_PREFIX = "model/"


class Checkpointer:
    """The per-round hook: ``checkpointer(arrays, absolute_round)`` writes the checkpoint.

    ``model`` (the catalog's hash, the width) is stored with it: a resume must continue the
    model it saved, over the catalog whose rows its item table indexes.
    """

    def __init__(
        self,
        run_dir: Path,
        step: ServerStep,
        ledger: PrivacyLedger | None = None,
        model: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.step = step
        self.ledger = ledger  # DP-FedAvg: ε must survive a restart
        self.model = dict(model or {})

    def __call__(self, arrays: ArrayRecord, absolute_round: int) -> None:
        state = {MODEL_PREFIX + k: v.numpy() for k, v in arrays.items()}
        state.update(self.step.state_dict(list(arrays.keys())))
        meta: dict[str, Any] = {"round": absolute_round, **self.model}
        if self.ledger is not None:
            meta["user_level_ledger"] = self.ledger.to_dict()
        state[META_KEY] = np.array(json.dumps(meta))
        write_arrays(self.run_dir / CHECKPOINT, state)
        write_json(self.run_dir / CHECKPOINT_META, meta)  # a readable copy


def _checkpoint_file(path: Path) -> tuple[Path, Path]:
    """(the run folder, the checkpoint file) of a run folder or a checkpoint file path."""
    path = Path(path)
    return (path, path / CHECKPOINT) if path.is_dir() else (path.parent, path)


def load_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's round and, for a DP run, its user-level privacy ledger (read from
    the checkpoint file itself; checkpoint.json for checkpoints written before it was)."""
    folder, file = _checkpoint_file(path)
    if file.exists():
        with np.load(file) as data:
            if META_KEY in data.files:
                return dict(json.loads(str(data[META_KEY])))
    return dict(json.loads((folder / CHECKPOINT_META).read_text()))


def load_checkpoint(path: Path) -> tuple[ArrayRecord, dict[str, np.ndarray], int]:
    """(shared model, server-optimizer state, round) from a run folder or checkpoint file."""
    _, file = _checkpoint_file(path)
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint at {file}")
    meta = load_checkpoint_meta(path)
    with np.load(file) as data:
        state = {k: data[k] for k in data.files if k != META_KEY}
    model = {
        k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)
    }
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in model.items()})
    optimizer = {k: v for k, v in state.items() if not k.startswith(MODEL_PREFIX)}
    return arrays, optimizer, int(meta["round"])


def grow_item_rows(
    arrays: ArrayRecord, optimizer: dict[str, np.ndarray], num_items: int
) -> tuple[ArrayRecord, dict[str, np.ndarray]]:
    """The model and server-optimizer state of a checkpoint over a catalog grown to
    ``num_items`` (new items appended): the item table and its optimizer moments gain zero
    rows, so a new item starts from its features alone (a zero id row: how the model scores
    an item it never trained on), recommendable before anyone has interacted with it. A
    model without item ids has nothing that grows: its items are their features alone."""
    if ITEM_TABLE not in arrays:
        return arrays, optimizer
    table = arrays[ITEM_TABLE].numpy()
    if num_items < table.shape[0]:
        raise ValueError(f"a catalog of {num_items} items cannot hold {table.shape[0]} rows")

    def grown(value: np.ndarray) -> np.ndarray:
        pad = np.zeros((num_items - value.shape[0], *value.shape[1:]), dtype=value.dtype)
        return np.concatenate([value, pad])

    model = ArrayRecord(
        {k: Array(grown(v.numpy()) if k == ITEM_TABLE else v.numpy()) for k, v in arrays.items()}
    )
    state = {k: grown(v) if k.split("/", 1)[-1] == ITEM_TABLE else v for k, v in optimizer.items()}
    return model, state
