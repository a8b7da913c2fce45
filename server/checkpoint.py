"""Checkpoints: the shared model, the server optimizer's state and the user-level ε ledger.

Written after every round into the run folder (``checkpoint.npz``, and a readable
``checkpoint.json``), before the round's model leaves the server again; ``--resume DIR``
continues from it (``server/resume.py``). The round and the ledger ride *inside* the one
atomically replaced ``.npz`` (entry ``meta/json``): a crash can never pair one round's model
with another round's ledger, so no release of the model goes uncounted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.model import ITEM_TABLE
from fedrec.server.runs import CHECKPOINT, CHECKPOINT_META, write_arrays, write_json

__all__ = ["Checkpoint", "Checkpointer", "grow_item_rows", "read_checkpoint"]

META_KEY = "meta/json"  # the round and privacy ledger, inside the checkpoint file
MODEL_PREFIX = "model/"


class Checkpointer:
    """Writes a run's checkpoint; ``model`` (the catalog's hash and size, the resume
    identity) is stored with every one: a resume must continue the model it saved, over
    the catalog whose rows its item table indexes."""

    def __init__(self, run_dir: Path, model: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.model = dict(model or {})

    def write(
        self,
        arrays: Mapping[str, np.ndarray],
        absolute_round: int,
        optimizer: Mapping[str, np.ndarray],
        ledger: Mapping[str, Any] | None = None,
    ) -> None:
        """The checkpoint of ``absolute_round``: the model, the server optimizer's state
        (``optimizer``) and, under DP-FedAvg, the user-level ledger (ε must survive a
        restart)."""
        state = {MODEL_PREFIX + k: np.asarray(v) for k, v in arrays.items()}
        state.update(optimizer)
        meta: dict[str, Any] = {"round": absolute_round, **self.model}
        if ledger is not None:
            meta["user_level_ledger"] = dict(ledger)
        state[META_KEY] = np.array(json.dumps(meta))
        write_arrays(self.run_dir / CHECKPOINT, state)
        write_json(self.run_dir / CHECKPOINT_META, meta)  # a readable copy


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds: the model, the server optimizer's state, its record."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict[str, Any]  # the round, the catalog, the resume identity, the ε ledger

    @property
    def round(self) -> int:
        return int(self.meta["round"])


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint of a run folder or checkpoint file, read once (its record from the
    file itself; from checkpoint.json for checkpoints written before it was)."""
    path = Path(path)
    folder, file = (path, path / CHECKPOINT) if path.is_dir() else (path.parent, path)
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint at {file}")
    with np.load(file) as data:
        state = {k: data[k] for k in data.files}
    if META_KEY in state:
        meta = dict(json.loads(str(state.pop(META_KEY))))
    else:
        meta = dict(json.loads((folder / CHECKPOINT_META).read_text()))
    model = {
        k.removeprefix(MODEL_PREFIX): np.asarray(v)
        for k, v in state.items()
        if k.startswith(MODEL_PREFIX)
    }
    optimizer = {k: v for k, v in state.items() if not k.startswith(MODEL_PREFIX)}
    return Checkpoint(model, optimizer, meta)


def grow_item_rows(
    arrays: Mapping[str, np.ndarray], optimizer: Mapping[str, np.ndarray], num_items: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model and server-optimizer state of a checkpoint over a catalog grown to
    ``num_items`` (new items appended): the item table and its optimizer moments gain zero
    rows, so a new item starts from its features alone (a zero id row: how the model scores
    an item it never trained on), recommendable before anyone has interacted with it. A
    model without item ids has nothing that grows: its items are their features alone."""
    if ITEM_TABLE not in arrays:
        return dict(arrays), dict(optimizer)
    table = arrays[ITEM_TABLE]
    if num_items < table.shape[0]:
        raise ValueError(f"a catalog of {num_items} items cannot hold {table.shape[0]} rows")

    def grown(value: np.ndarray) -> np.ndarray:
        pad = np.zeros((num_items - value.shape[0], *value.shape[1:]), dtype=value.dtype)
        return np.concatenate([value, pad])

    model = {k: grown(v) if k == ITEM_TABLE else v for k, v in arrays.items()}
    state = {k: grown(v) if k.split("/", 1)[-1] == ITEM_TABLE else v for k, v in optimizer.items()}
    return model, state
