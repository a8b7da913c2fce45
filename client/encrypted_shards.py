"""Shards read from per-user encrypted folders: the :class:`~fedrec.client.data.ShardSource` a
simulation uses to run as deployed devices would, from their own encrypted store.

:func:`write_encrypted_shards` cuts every user's shard once, exactly as
:class:`~fedrec.client.data.SimulationShards` would, and seals it::

    <shard-dir>/catalog/fedrec.catalog.sealed        public item features (arrays)
    <shard-dir>/catalog/fedrec.catalog-meta.sealed   item ids, user feature width (JSON)
    <shard-dir>/catalog/fedrec.source.sealed         the data settings the shards come from
    <shard-dir>/users/user-000042/fedrec.shard.sealed

Every folder is sealed under one key file kept *outside* the shard folder; each user's folder
is bound to its pseudonym (the folder name), so a shard copied to another user's folder does
not open. :class:`EncryptedShards` then serves node ``partition-id`` from its folder; it
holds only two paths, so it pickles cheaply with the ClientApp on every message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, RecordDict

from fedrec.client.data import NUM_PARTITIONS, PARTITION_ID, SimulationShards
from fedrec.client.secure_store import EncryptedFileStore, RotationResult, rotate_key
from fedrec.common.crypto import create_key_file, read_key_file
from fedrec.common.data.shard import Catalog, UserShard
from fedrec.common.data.sources import SYNTHETIC
from fedrec.common.fedconfig import FederationConfig

CATALOG_DIR = "catalog"
USERS_DIR = "users"
CATALOG_PSEUDONYM = "catalog"
CATALOG_KEY = "fedrec.catalog"
CATALOG_META_KEY = "fedrec.catalog-meta"
SOURCE_KEY = "fedrec.source"


def pseudonym(user: int) -> str:
    """The folder name (and store pseudonym) of dense user index ``user``."""
    return f"user-{user:06d}"


def write_encrypted_shards(
    config: FederationConfig, out_dir: str | Path, key_file: str | Path
) -> int:
    """Seal every user's shard of ``config``'s data set into ``out_dir``; return the user count.

    ``key_file`` is read if it exists, else created (32 random bytes, mode 0600). ``out_dir``
    must be new or empty, so that shards of two data sets or keys never mix.
    """
    out, key_path = Path(out_dir), Path(key_file)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"shard folder {out} is not empty: choose a new folder")
    if key_path.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"key file {key_path} must live outside the folder it protects ({out})")
    key = read_key_file(key_path) if key_path.exists() else create_key_file(key_path)
    source = SimulationShards()
    catalog, users = source.catalog(config), source.num_users(config)
    store = EncryptedFileStore(out / CATALOG_DIR, key, CATALOG_PSEUDONYM)
    store.save(CATALOG_KEY, {"item_features": torch.from_numpy(catalog.item_features)})
    store.save_json(
        CATALOG_META_KEY,
        {"item_ids": list(catalog.item_ids), "user_feature_dim": catalog.user_feature_dim},
    )
    store.save_json(SOURCE_KEY, {**_source_of(config), "num-users": users})
    for user in range(users):
        shard = source.shard(config, _node(user, users))
        EncryptedFileStore(out / USERS_DIR / pseudonym(user), key, pseudonym(user)).save_shard(
            shard
        )
    return users


class EncryptedShards:
    """A ShardSource over a folder written by :func:`write_encrypted_shards`."""

    def __init__(self, shard_dir: str | Path, key_file: str | Path) -> None:
        self.shard_dir = Path(shard_dir)
        self.key_file = Path(key_file)
        if not (self.shard_dir / CATALOG_DIR).is_dir():
            raise FileNotFoundError(
                f"{self.shard_dir} holds no encrypted shards (no {CATALOG_DIR}/ folder):"
                " write them first with write_encrypted_shards"
            )

    def catalog(self, config: FederationConfig) -> Catalog:
        store = self._catalog_store()
        self._check_source(store, config)
        arrays, meta = store.load(CATALOG_KEY), store.load_json(CATALOG_META_KEY)
        if arrays is None or meta is None:
            raise FileNotFoundError(f"the catalog in {store.folder} is incomplete: rewrite it")
        features = arrays["item_features"].numpy()  # (num_items, F_i) float32
        return Catalog(tuple(meta["item_ids"]), features, int(meta["user_feature_dim"]))

    def num_users(self, config: FederationConfig) -> int:
        return int(self._check_source(self._catalog_store(), config)["num-users"])

    def shard(self, config: FederationConfig, context: Context) -> UserShard:
        users = self.num_users(config)
        user = int(context.node_config[PARTITION_ID])
        partitions = int(context.node_config.get(NUM_PARTITIONS, users))
        if partitions != users:
            raise ValueError(
                f"the federation has {partitions} nodes but {self.shard_dir} holds {users}"
                " users: run one node per user (num-supernodes = number of users)"
            )
        if not 0 <= user < users:
            raise ValueError(f"partition-id {user} outside [0, {users})")
        return self.store_of(user).load_shard()

    def store_of(self, user: int) -> EncryptedFileStore:
        """User ``user``'s encrypted folder (its shard; its private state may live there too)."""
        name = pseudonym(user)
        return EncryptedFileStore(self.shard_dir / USERS_DIR / name, self._key(), name)

    def _catalog_store(self) -> EncryptedFileStore:
        return EncryptedFileStore(self.shard_dir / CATALOG_DIR, self._key(), CATALOG_PSEUDONYM)

    def _key(self) -> bytes:
        return read_key_file(self.key_file)

    def _check_source(self, store: EncryptedFileStore, config: FederationConfig) -> dict[str, Any]:
        written = store.load_json(SOURCE_KEY)
        if written is None:
            raise FileNotFoundError(f"{store.folder} has no {SOURCE_KEY}: rewrite the shards")
        wanted = _source_of(config)
        differ = {k: (written.get(k), v) for k, v in wanted.items() if written.get(k) != v}
        if differ:
            detail = ", ".join(f"{k}: shards {a!r} vs config {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"the shards in {self.shard_dir} were cut from other data settings ({detail}):"
                " rewrite them for this config or point shard-dir at the matching folder"
            )
        return written


def rotate_shard_keys(
    shard_dir: str | Path, old_key_file: str | Path, new_key_file: str | Path
) -> RotationResult:
    """Re-encrypt a whole shard folder (catalog and every user) under a new key file.

    Each folder rotates as :func:`~fedrec.client.secure_store.rotate_key` does, so a stopped
    call is finished by running it again; the new key file is created if it does not exist.
    """
    root, new_path = Path(shard_dir), Path(new_key_file)
    old = read_key_file(old_key_file)
    new = read_key_file(new_path) if new_path.exists() else create_key_file(new_path)
    folders = [(root / CATALOG_DIR, CATALOG_PSEUDONYM)]
    users = root / USERS_DIR
    if users.is_dir():
        folders += [(f, f.name) for f in sorted(users.iterdir()) if f.is_dir()]
    rotated = already = 0
    for folder, name in folders:
        result = rotate_key(folder, old, new, name)
        rotated, already = rotated + result.rotated, already + result.already
    return RotationResult(rotated, already)


def _source_of(config: FederationConfig) -> dict[str, Any]:
    """The settings that determine every shard (those SimulationShards' split depends on)."""
    source: dict[str, Any] = {
        "data": config.data,
        "threshold": config.threshold,
        "seed": config.seed,
    }
    if config.data == SYNTHETIC:
        source |= {
            "synthetic-users": config.synthetic_users,
            "synthetic-items": config.synthetic_items,
        }
    return source


def _node(user: int, users: int) -> Context:
    """The Context a simulated node ``user`` gets (what SimulationShards.shard reads)."""
    node_config = {PARTITION_ID: user, NUM_PARTITIONS: users}
    return Context(
        run_id=0, node_id=user, node_config=node_config, state=RecordDict(), run_config={}
    )
