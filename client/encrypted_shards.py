"""Shards read from per-user encrypted folders: a simulation that runs as deployed devices would,
each node from its own encrypted store.

:func:`write_encrypted_shards` cuts every user's shard once, exactly as
:class:`~fedrec.client.data.DataSetPartitions` would, and seals it::

    <shard-dir>/source/fedrec.source.sealed          the data settings the shards come from
    <shard-dir>/users/user-000042/fedrec.shard.sealed

Every folder is sealed under one key file kept *outside* the shard folder; each user's folder
is bound to its pseudonym (the folder name), so a shard copied to another user's folder does
not open. :class:`EncryptedPartitions` then serves node ``partition-id`` from its folder; it
holds only two paths, so it pickles cheaply with the ClientApp on every message. The items
are the public catalog's (``fedrec catalog build``), not sealed here: nothing about them is
private.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context

from fedrec.client.data import LocalUser
from fedrec.client.partitions import (
    DataSetPartitions,
    partition_of,
    pseudonym,
    published_catalog,
    state_store,
)
from fedrec.client.secure_store import (
    ROTATION_MARKER,
    SUFFIX,
    EncryptedFileStore,
    RotationResult,
    rotate_key,
)
from fedrec.common.crypto import load_or_create_key_file, read_key_file
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.shard import user_shard
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.files import write_atomic

__all__ = [
    "SOURCE_DIR",
    "USERS_DIR",
    "EncryptedPartitions",
    "rotate_shard_keys",
    "write_encrypted_shards",
]

SOURCE_DIR = "source"
USERS_DIR = "users"
SOURCE_PSEUDONYM = "source"
SOURCE_KEY = "fedrec.source"


def write_encrypted_shards(
    config: FederationConfig, out_dir: str | Path, key_file: str | Path
) -> int:
    """Seal every user's shard of ``config``'s data set into ``out_dir``; return the user count.

    ``key_file`` is read if it exists, else created (32 random bytes, mode 0600). ``out_dir``
    must be new or empty, so that shards of two data sets or keys never mix.
    """
    out, key_path = Path(out_dir), Path(key_file)
    if config.simulation.cold_items:
        raise ValueError(
            "cold-items is a simulation's evaluation protocol: a sealed shard carries no cold"
            " items (its device would train on them as negatives); seal the shards without it"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"shard folder {out} is not empty: choose a new folder")
    if key_path.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"key file {key_path} must live outside the folder it protects ({out})")
    key, _ = load_or_create_key_file(key_path)
    data, split = DataSetPartitions().split(config)
    store = EncryptedFileStore(out / SOURCE_DIR, key, SOURCE_PSEUDONYM)
    store.save_json(SOURCE_KEY, {**config.data_settings(), "num-users": split.num_users})
    for user in range(split.num_users):
        folder = EncryptedFileStore(out / USERS_DIR / pseudonym(user), key, pseudonym(user))
        folder.save_shard(user_shard(data, split, user))
    return split.num_users


class EncryptedPartitions:
    """A :class:`~fedrec.client.data.ShardSource` over a folder of
    :func:`write_encrypted_shards`: node ``partition-id`` reads its user's sealed shard."""

    def __init__(self, shard_dir: str | Path, key_file: str | Path) -> None:
        self.shard_dir = Path(shard_dir)
        self.key_file = Path(key_file)
        if not (self.shard_dir / SOURCE_DIR).is_dir():
            raise FileNotFoundError(
                f"{self.shard_dir} holds no encrypted shards (no {SOURCE_DIR}/ folder):"
                " write them first with `fedrec data encrypt`"
            )

    def catalog(self, config: FederationConfig, context: Context) -> Catalog:
        return published_catalog(config, context)

    def num_users(self, config: FederationConfig) -> int:
        return int(self._check_source(config)["num-users"])

    def local_user(self, config: FederationConfig, context: Context) -> LocalUser:
        user = partition_of(context, self.num_users(config))
        name = pseudonym(user)
        shard = self.store_of(user).load_shard()
        return LocalUser(name, user, shard, state_store(config, context, name))

    def store_of(self, user: int) -> EncryptedFileStore:
        """User ``user``'s encrypted folder (its shard)."""
        name = pseudonym(user)
        return EncryptedFileStore(self.shard_dir / USERS_DIR / name, self._key(), name)

    def _key(self) -> bytes:
        return read_key_file(self.key_file)

    def _check_source(self, config: FederationConfig) -> dict[str, Any]:
        store = EncryptedFileStore(self.shard_dir / SOURCE_DIR, self._key(), SOURCE_PSEUDONYM)
        written = store.load_json(SOURCE_KEY)
        if written is None:
            raise FileNotFoundError(f"{store.folder} has no {SOURCE_KEY}: rewrite the shards")
        wanted = config.data_settings()
        differ = {k: (written.get(k), v) for k, v in wanted.items() if written.get(k) != v}
        if differ:
            detail = ", ".join(f"{k}: shards {a!r} vs config {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"the shards in {self.shard_dir} were cut from other data settings ({detail}):"
                " rewrite them for this config or point shard-dir at the matching folder"
            )
        return written


def rotate_shard_keys(
    root: str | Path, old_key_file: str | Path, new_key_file: str | Path
) -> RotationResult:
    """Re-encrypt every sealed folder below ``root`` under a new key file: a shard folder
    (``fedrec data encrypt``: its source record and every user) or a state folder
    (``state-dir``: one store per device); every store is the folder named by its pseudonym.

    Each folder rotates as :func:`~fedrec.client.secure_store.rotate_key` does, and a marker
    at ``root`` stays until the last one has, so a store opened halfway through says that
    the rotation of ``root`` is unfinished; a stopped call is finished by running it again.
    The new key file is created if it does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} to rotate")
    old = read_key_file(old_key_file)
    new, _ = load_or_create_key_file(new_key_file)
    folders = sorted({p.parent for p in root.rglob(f"*{SUFFIX}") if p.is_file()})
    if not folders:
        raise FileNotFoundError(f"{root} holds no sealed file: nothing to rotate")
    write_atomic(root / ROTATION_MARKER, b"key rotation in progress: rerun rotate-key\n")
    rotated = already = 0
    for folder in folders:
        result = rotate_key(folder, old, new, folder.name)
        rotated, already = rotated + result.rotated, already + result.already
    (root / ROTATION_MARKER).unlink()
    return RotationResult(rotated, already)
