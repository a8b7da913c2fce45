"""A shard pack: every user's shard of one split, in files each process maps instead of reading.

A simulated node serves one user, but without a pack every worker process loads and splits the
whole data set for it (at 100,000 synthetic users: ~100 s and ~2.7 GB in each worker). The
runner, which owns a simulation's data, writes the split once into a folder of ``.npy`` files::

    <pack>/pack.json            format, the data settings it was cut from, counts
    <pack>/train_indptr.npy     (num_users + 1,) int64   CSR offsets of the train items
    <pack>/train_items.npy      (N_train,) int32         every user's train items, time order
    <pack>/held_out.npy         (num_users, 2) int32     validation and test item (NO_ITEM: none)
    <pack>/candidates.npy       (num_users, K) int32     evaluation negatives (NO_ITEM rows: none)
    <pack>/user_features.npy    (num_users, F_u) float32
    <pack>/cold_*.npy           the cold-start protocol's arrays, when the split holds out
                                cold items (common/data/cold.py; the manifest's "cold")

and each worker opens them memory-mapped (:func:`open_pack`): a shard reads the few pages of its
own rows, and the page cache holds one copy for every process on the machine.
:meth:`ShardPack.shard` cuts exactly the :class:`~fedrec.common.data.shard.UserShard` that
:func:`~fedrec.common.data.shard.user_shard` cuts from the data set in memory.

A pack is plain data, not sealed: it stands for the data set the runner already holds, lives
in a temporary folder for one run (``simulations/runner.py``), and is not a device's store
(``shard-dir`` is the sealed, per-device form).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.data.cold import ColdItems
from fedrec.common.data.shard import UserShard
from fedrec.common.data.split import NO_ITEM, Split

__all__ = ["FORMAT", "MANIFEST", "ShardPack", "open_pack", "write_pack"]

FORMAT = "fedrec-shard-pack/1"
MANIFEST = "pack.json"
_ARRAYS = ("train_indptr", "train_items", "held_out", "candidates", "user_features")
_COLD = ("items", "target", "candidates", "seen_indptr", "seen_items")  # cold_<name>.npy
_INDEX = np.int32  # item indices fit: a catalog of 2**31 items is not a recommender's


@dataclass(frozen=True)
class ShardPack:
    """An opened pack: memory-mapped arrays and the data settings they were cut from."""

    folder: Path
    settings: dict[str, Any]
    num_users: int
    num_items: int
    train_indptr: np.ndarray
    train_items: np.ndarray
    held_out: np.ndarray
    candidates: np.ndarray
    user_features: np.ndarray
    cold: ColdItems | None = None

    def shard(self, user: int) -> UserShard:
        """User ``user``'s shard, as :func:`~fedrec.common.data.shard.user_shard` cuts it."""
        if not 0 <= user < self.num_users:
            raise ValueError(
                f"user index {user} outside [0, {self.num_users}) of pack {self.folder}"
            )
        start, stop = int(self.train_indptr[user]), int(self.train_indptr[user + 1])
        candidates = np.asarray(self.candidates[user], dtype=np.int64)
        val_item, test_item = (int(i) for i in self.held_out[user])
        return UserShard(
            user_features=np.array(self.user_features[user], dtype=np.float32),
            train_items=np.asarray(self.train_items[start:stop], dtype=np.int64),
            val_item=val_item,
            test_item=test_item,
            candidates=candidates[candidates != NO_ITEM],
            num_items=self.num_items,
            cold=self.cold.shard(user) if self.cold is not None else None,
        )


def write_pack(
    split: Split, user_features: np.ndarray, folder: str | Path, settings: dict[str, Any]
) -> Path:
    """Write ``split`` and the users' features into the new or empty ``folder``.

    ``settings`` are the data settings the split follows from (``FederationConfig.
    data_settings()``); :func:`open_pack` hands them back so a reader can refuse a pack of
    other data. The manifest is written last: a folder without one is no pack.
    """
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"shard pack folder {out} is not empty: choose a new folder")
    if user_features.shape[0] != split.num_users:
        raise ValueError(
            f"{user_features.shape[0]} rows of user features for the {split.num_users} users"
            " of the split"
        )
    if split.num_items >= np.iinfo(_INDEX).max:
        raise ValueError(f"{split.num_items} items do not fit the pack's int32 indices")
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "train_indptr": np.asarray(split.train_indptr, dtype=np.int64),
        "train_items": split.train_items.astype(_INDEX),
        "held_out": np.stack([split.val_item, split.test_item], axis=1).astype(_INDEX),
        "candidates": split.candidates.astype(_INDEX),
        "user_features": np.asarray(user_features, dtype=np.float32),
    }
    if split.cold is not None:
        arrays |= {f"cold_{name}": getattr(split.cold, name) for name in _COLD}
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array, allow_pickle=False)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "settings": settings,
        "num-users": split.num_users,
        "num-items": split.num_items,
    }
    if split.cold is not None:
        manifest["cold"] = {
            "fraction": split.cold.fraction,
            "interactions": split.cold.interactions,
            "unranked": split.cold.unranked,
        }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def open_pack(folder: str | Path) -> ShardPack:
    """Map the pack in ``folder`` (nothing is read until a shard is cut)."""
    root = Path(folder)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{root} is no shard pack (no {MANIFEST})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{root / MANIFEST} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{root / MANIFEST}: format {found!r}, expected {FORMAT!r}")
    arrays = {
        name: np.load(root / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _ARRAYS
    }
    users, items = int(manifest["num-users"]), int(manifest["num-items"])
    expected = {
        "train_indptr": (users + 1,),
        "held_out": (users, 2),
        "candidates": (users,),
        "user_features": (users,),
    }
    for name, prefix in expected.items():
        if arrays[name].shape[: len(prefix)] != prefix:
            raise ValueError(
                f"{root / (name + '.npy')} has shape {arrays[name].shape}, expected"
                f" {prefix} leading for {users} users: the pack is damaged, write it again"
            )
    if int(arrays["train_indptr"][-1]) != len(arrays["train_items"]):
        raise ValueError(f"{root}: train_indptr does not end at the train item count: damaged")
    cold = None
    if "cold" in manifest:  # small (a few arrays of the cold items and targets): read whole
        cold = ColdItems(
            **{name: np.load(root / f"cold_{name}.npy", allow_pickle=False) for name in _COLD},
            fraction=float(manifest["cold"]["fraction"]),
            interactions=int(manifest["cold"]["interactions"]),
            unranked=int(manifest["cold"]["unranked"]),
        )
        if cold.target.shape != (users,) or cold.seen_indptr.shape != (users + 1,):
            raise ValueError(f"{root}: the cold-item arrays do not fit {users} users: damaged")
    return ShardPack(
        folder=root, settings=dict(manifest["settings"]), num_users=users, num_items=items,
        **arrays, cold=cold,
    )  # fmt: skip
