"""A device's encrypted on-disk store: the :class:`~fedrec.client.store.StateStore` protocol plus
the device's own shard, one sealed file per object (:mod:`fedrec.common.crypto`).

Each object ``key`` lives in ``<folder>/<key>.sealed``. Its associated data binds the store
format version, the owner's pseudonym and the object key, so a file copied into another user's
folder, or renamed to another key, fails to open (:class:`TamperedError`). Inside, an object
is a small JSON description followed by raw array bytes (never pickle)::

    u32 meta length ‖ meta JSON {"kind": ..., "arrays": [[name, dtype, shape], ...], ...} ‖ bytes

Writes are atomic and durable: a temporary file in the same folder, flushed and fsync'ed, then
``os.replace`` over the old file and an fsync of the folder. A crash at any point leaves either
the old or the new file whole, never a mix; a stray ``.<key>.sealed.*.tmp`` may remain and
is ignored.

Rollback: every object carries a version, and the store's version record
(``fedrec.versions.sealed``) holds the newest version of each key. An object older than its
record (a file restored from a backup or an older copy), one the record lists but that is
gone, or versioned objects without a record all raise :class:`RolledBackError` — the attack on
a device's DP ledger that would reset its ε. The record is written after the object, so a
crash between the two leaves the object *ahead* of the record, which is accepted. Restoring
the whole folder, record included, needs a counter outside it: ``counter_file`` names a file
the store advances with every write (put it where backups and restores of the folder do not
reach); a record older than the counter raises as well.

Passphrases: every file records its KDF cost and salt. A store derives a key once per salt and
keeps it for its lifetime, and seals what it writes with the first key it derived, so a device
pays one KDF per process (keep one store open), not one per file. Raw keys (a key file) cost
nothing to load: the simulation uses those.

:func:`rotate_key` re-encrypts a folder under a new key, one atomic file at a time; see its
docstring for what an interruption leaves and how a rerun finishes it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.crypto import (
    KEY_SIZE,
    Header,
    Passphrase,
    SealedFileError,
    SealingKey,
    TamperedError,
    TruncatedError,
    UnsupportedFormatError,
    WrongKeyError,
    describe_kdf,
    open_sealed,
    read_header,
    seal,
)
from fedrec.common.data.shard import UserShard
from fedrec.common.files import fsync_dir, write_atomic

__all__ = [
    "ROTATION_MARKER",
    "SUFFIX",
    "VERSIONS_KEY",
    "EncryptedFileStore",
    "KeyMaterial",
    "RolledBackError",
    "RotationResult",
    "StoreError",
    "TamperedError",
    "TruncatedError",
    "UnsupportedFormatError",
    "WrongKeyError",
    "rotate_key",
]

StoreError = SealedFileError  # the base of every error about a stored file's contents
KeyMaterial = bytes | Passphrase  # a raw 32-byte key (from a key file) or a passphrase

STORE_FORMAT = 1  # object layout and binding; bumped with any change to either
SUFFIX = ".sealed"
SHARD_KEY = "fedrec.shard"
VERSIONS_KEY = "fedrec.versions"  # the store's version record (see the module docstring)
ROTATION_MARKER = ".rotate-key.pending"  # present while a key rotation is unfinished
_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_U32 = struct.Struct(">I")
_ARRAYS, _JSON, _SHARD, _VERSIONS = "arrays", "json", "shard", "versions"


class RolledBackError(SealedFileError):
    """An object is older than the store's record of it, or missing: restored from an older
    copy, or deleted outside the store."""


class EncryptedFileStore:
    """A :class:`~fedrec.client.store.StateStore` of sealed files in one user's ``folder``."""

    def __init__(
        self,
        folder: str | Path,
        key_or_passphrase: KeyMaterial,
        pseudonym: str,
        *,
        counter_file: str | Path | None = None,
    ) -> None:
        if not pseudonym:
            raise ValueError("the store needs a non-empty pseudonym (whose data this is)")
        self.folder = Path(folder)
        self.pseudonym = pseudonym
        self._keys = _KeyRing(key_or_passphrase)
        self._counter: _Counter | None = None
        if counter_file is not None:
            self.use_counter(counter_file)

    def use_counter(self, counter_file: str | Path) -> None:
        """Check every read against, and advance with every write, the counter in
        ``counter_file`` (outside the folder); checks the version record against it now."""
        path = Path(counter_file).expanduser()
        if path.resolve().is_relative_to(self.folder.resolve()):
            raise ValueError(
                f"the counter file {counter_file} must lie outside the store folder: a restore"
                " of the folder would restore it too"
            )
        self._counter = _Counter(path)
        if self.folder.is_dir():
            self._versions()

    # -- the StateStore protocol ------------------------------------------------------------
    def load(self, key: str) -> dict[str, np.ndarray] | None:
        return self.load_arrays(key)

    def load_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``key`` (what :meth:`load` returns)."""
        found = self._read(key, _ARRAYS)
        return None if found is None else found[1]

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self._write(key, {"kind": _ARRAYS}, {name: np.asarray(a) for name, a in arrays.items()})

    def load_json(self, key: str) -> dict[str, Any] | None:
        found = self._read(key, _JSON)
        return None if found is None else dict(found[0]["document"])

    def save_json(self, key: str, document: dict[str, Any]) -> None:
        self._write(key, {"kind": _JSON, "document": document}, {})

    # -- any other object: a kind, a small JSON description and named arrays -----------------
    def save_object(
        self, key: str, kind: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        """Seal an object of ``kind`` (a name the reader checks) under ``key``."""
        if kind in (_ARRAYS, _JSON, _SHARD, _VERSIONS):
            raise ValueError(f"object kind {kind!r} is reserved")
        self._write(key, {**meta, "kind": kind}, arrays)

    def load_object(
        self, key: str, kind: str
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(meta, arrays) of the object of ``kind`` under ``key``, None if there is none."""
        return self._read(key, kind)

    def delete(self, key: str) -> None:
        """Remove the object ``key`` (nothing if it does not exist). The version record marks
        it deleted first, so a copy of it restored later reads as deleted, not as data."""
        path = self.path_of(key)
        record = self._versions()
        if record is not None and key in record.live:
            self._save_versions(record.deleting(key))
        path.unlink(missing_ok=True)

    # -- the device's shard -----------------------------------------------------------------
    def save_shard(self, shard: UserShard) -> None:
        meta = {
            "kind": _SHARD,
            "val_item": shard.val_item,
            "test_item": shard.test_item,
            "num_items": shard.num_items,
        }
        arrays: dict[str, np.ndarray] = {
            "user_features": np.asarray(shard.user_features, dtype=np.float32),
            "train_items": np.asarray(shard.train_items, dtype=np.int64),
            "candidates": np.asarray(shard.candidates, dtype=np.int64),
        }
        self._write(SHARD_KEY, meta, arrays)

    def load_shard(self) -> UserShard:
        found = self._read(SHARD_KEY, _SHARD)
        if found is None:
            raise FileNotFoundError(
                f"no shard in {self.folder} (expected {self.path_of(SHARD_KEY).name}):"
                " write the shards first (write_encrypted_shards)"
            )
        meta, arrays = found
        return UserShard(
            user_features=arrays["user_features"],
            train_items=arrays["train_items"],
            val_item=int(meta["val_item"]),
            test_item=int(meta["test_item"]),
            candidates=arrays["candidates"],
            num_items=int(meta["num_items"]),
        )

    # -- files ------------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(
                f"object key {key!r} must be 1-128 letters, digits, '.', '_' or '-',"
                " starting with a letter or digit (it becomes a file name)"
            )
        return self.folder / f"{key}{SUFFIX}"

    def stored_keys(self) -> list[str]:
        """The stored object keys, sorted (the version record is not an object)."""
        names = (p.name.removesuffix(SUFFIX) for p in _sealed_files(self.folder))
        return sorted(name for name in names if name != VERSIONS_KEY)

    def _read(self, key: str, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        path = self.path_of(key)
        found = self._read_file(key, kind)
        record = self._versions()
        version = None if found is None else int(found[0].get("version", 0))
        if record is None:
            if version:  # written under a record that is gone
                raise self._record_gone(key, version)
        elif key in record.deleted and (version is None or version <= record.deleted[key]):
            path.unlink(missing_ok=True)  # a copy of a deleted object (or an unfinished delete)
            return None
        elif key in record.live and (version is None or version < record.live[key]):
            seen = "missing" if version is None else f"version {version}"
            raise RolledBackError(
                path,
                f"{seen}, but the store's version record lists version {record.live[key]}:"
                " the file was restored from an older copy or deleted outside the store",
            )
        return found

    def _read_file(
        self, key: str, kind: str
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        found = self._open_file(key)
        if found is None:
            return None
        meta, arrays = found
        path = self.path_of(key)
        if meta.get("kind") != kind:
            raise TypeError(f"stored object '{key}' ({path}) holds {meta.get('kind')}, not {kind}")
        return meta, arrays

    def _open_file(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(meta, arrays) of the sealed file of ``key``, whatever its kind; None if absent."""
        path = self.path_of(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return _unpack(_open(data, self._keys, binding(self.pseudonym, key), path), path)

    def _write(self, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """The object first, then the version record: a crash between leaves the object ahead
        of its record, which reads fine (the record never runs ahead of a file)."""
        if key == VERSIONS_KEY:
            raise ValueError(f"object key {key!r} is reserved for the store's version record")
        record = self._versions()
        if record is None:
            if any(True for _ in _sealed_files(self.folder)):
                self._read_legacy_check()
            record = self._save_versions(_Versions(0, {}, {}))  # before any versioned object
        version = max(record.live.get(key, 0), record.deleted.get(key, 0)) + 1
        self._write_file(key, {**meta, "version": version}, arrays)
        self._save_versions(record.writing(key, version))

    def _write_file(self, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        path = self.path_of(key)
        plaintext = _pack(meta, arrays)
        write_atomic(path, seal(self._keys.for_writing(), plaintext, binding(self.pseudonym, key)))

    def _read_legacy_check(self) -> None:
        """A store with objects but no version record must hold only unversioned (older)
        objects; a versioned one means the record was removed."""
        for name in self.stored_keys():
            found = self._open_file(name)
            version = int(found[0].get("version", 0)) if found is not None else 0
            if version:
                raise self._record_gone(name, version)

    def _record_gone(self, key: str, version: int) -> RolledBackError:
        return RolledBackError(
            self.path_of(VERSIONS_KEY),
            f"missing, but {self.path_of(key).name} is version {version}: the store's version"
            " record was deleted or the store restored in part",
        )

    # -- the version record -----------------------------------------------------------------
    def _versions(self) -> _Versions | None:
        found = self._read_file(VERSIONS_KEY, _VERSIONS)
        if found is None:
            if self._counter is not None and self._counter.read() > 0:
                raise RolledBackError(
                    self.path_of(VERSIONS_KEY),
                    f"missing, but the counter {self._counter.path} is at"
                    f" {self._counter.read()}: the store was restored or emptied",
                )
            return None
        record = _Versions.from_meta(found[0])
        if self._counter is not None and record.generation < self._counter.read():
            raise RolledBackError(
                self.path_of(VERSIONS_KEY),
                f"generation {record.generation}, but the counter {self._counter.path} is at"
                f" {self._counter.read()}: the store was restored from an older copy",
            )
        return record

    def _save_versions(self, record: _Versions) -> _Versions:
        advanced = record.advanced()
        self._write_file(VERSIONS_KEY, {"kind": _VERSIONS, **advanced.to_meta()}, {})
        if self._counter is not None:
            self._counter.advance(advanced.generation)
        return advanced


@dataclass(frozen=True)
class _Versions:
    """The store's version record: the newest version of each live key and of each deleted
    one, and a generation that grows with every write of the record."""

    generation: int
    live: dict[str, int]
    deleted: dict[str, int]

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> _Versions:
        return cls(int(meta["generation"]), dict(meta["live"]), dict(meta["deleted"]))

    def to_meta(self) -> dict[str, Any]:
        return {"generation": self.generation, "live": self.live, "deleted": self.deleted}

    def advanced(self) -> _Versions:
        return _Versions(self.generation + 1, self.live, self.deleted)

    def writing(self, key: str, version: int) -> _Versions:
        deleted = {k: v for k, v in self.deleted.items() if k != key}
        return _Versions(self.generation, {**self.live, key: version}, deleted)

    def deleting(self, key: str) -> _Versions:
        live = {k: v for k, v in self.live.items() if k != key}
        return _Versions(self.generation, live, {**self.deleted, key: self.live[key]})


class _Counter:
    """A number in a plain file outside the store that only goes up. Its protection is where
    it lives (out of reach of the folder's backups and restores), not encryption: whoever can
    write it can also restore it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise RolledBackError(self.path, f"not a counter (holds {text[:20]!r})")
        return int(text)

    def advance(self, value: int) -> None:
        if value > self.read():
            write_atomic(self.path, f"{value}\n".encode("ascii"), mode=0o600)


@dataclass(frozen=True)
class RotationResult:
    rotated: int  # files re-encrypted by this call
    already: int  # files found under the new key (an earlier, interrupted call did them)


def rotate_key(
    folder: str | Path, old: KeyMaterial, new: KeyMaterial, pseudonym: str
) -> RotationResult:
    """Re-encrypt every sealed file in ``folder`` from ``old`` to ``new``.

    First every file is opened and authenticated (under ``old``, or ``new`` if an earlier call
    already rotated it): a wrong key or a damaged file raises before anything is written. Then
    a marker file is written, each remaining file is replaced atomically, and the marker is
    removed. If the call stops halfway, every file is whole and opens under exactly one of the
    two keys; the marker stays, so a store that meets the old key on a rotated file says so.
    Running the same call again finishes the job (and ``rotate_key(folder, new, old, …)``
    would undo it instead).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no store folder {folder} to rotate")
    old_keys, new_keys = _KeyRing(old), _KeyRing(new)
    pending: list[tuple[Path, str]] = []
    already = 0
    for path in _sealed_files(folder):
        key = path.name.removesuffix(SUFFIX)
        data = path.read_bytes()
        if _opens_with(data, new_keys, path):
            _open(data, new_keys, binding(pseudonym, key), path)  # authenticate it too
            already += 1
        else:
            _open(data, old_keys, binding(pseudonym, key), path)
            pending.append((path, key))
    if not pending:
        _remove_marker(folder)
        return RotationResult(0, already)
    write_atomic(folder / ROTATION_MARKER, b"key rotation in progress: rerun rotate_key\n")
    sealing = new_keys.for_writing()
    for path, key in pending:
        context = binding(pseudonym, key)
        plaintext = _open(path.read_bytes(), old_keys, context, path)
        write_atomic(path, seal(sealing, plaintext, context))
    _remove_marker(folder)
    return RotationResult(len(pending), already)


def binding(pseudonym: str, key: str) -> bytes:
    """The associated data that ties a sealed object to its owner and name."""
    fields = [f"fedrec-store/{STORE_FORMAT}", pseudonym, key]
    return b"".join(_U32.pack(len(b)) + b for b in (f.encode("utf-8") for f in fields))


class _KeyRing:
    """Turns a key or passphrase into the :class:`SealingKey` a file's header asks for."""

    def __init__(self, material: KeyMaterial) -> None:
        self._passphrase: Passphrase | None = None
        self._raw: SealingKey | None = None
        self._derived: dict[tuple[Any, bytes], SealingKey] = {}  # (kdf, salt) -> key
        if isinstance(material, Passphrase):
            self._passphrase = material
        elif isinstance(material, bytes | bytearray):
            if len(material) != KEY_SIZE:
                raise ValueError(f"a raw key must be {KEY_SIZE} bytes, got {len(material)}")
            self._raw = SealingKey.from_key(bytes(material))
        else:
            raise TypeError(f"expected a {KEY_SIZE}-byte key or a Passphrase, got {material!r}")

    def for_writing(self) -> SealingKey:
        if self._raw is not None:
            return self._raw
        assert self._passphrase is not None
        for key in self._derived.values():  # reuse a derivation: one KDF per store
            if key.kdf == self._passphrase.kdf:
                return key
        return self._remember(SealingKey.from_passphrase(self._passphrase))

    def for_header(self, header: Header, source: Path) -> SealingKey:
        if (header.kdf is None) != (self._passphrase is None):
            given = "a key file" if self._passphrase is None else "a passphrase"
            raise WrongKeyError(source, f"sealed with {describe_kdf(header.kdf)}, given {given}")
        if self._raw is not None:
            return self._raw
        assert self._passphrase is not None and header.kdf is not None
        found = self._derived.get((header.kdf, header.salt))
        if found is None:
            found = self._remember(
                SealingKey.from_passphrase(self._passphrase, header.salt, header.kdf)
            )
        return found

    def _remember(self, key: SealingKey) -> SealingKey:
        self._derived[(key.kdf, key.salt)] = key
        return key


def _open(data: bytes, keys: _KeyRing, context: bytes, path: Path) -> bytes:
    try:
        return open_sealed(data, keys.for_header(read_header(data, path), path), context, path)
    except WrongKeyError as err:
        # the store's own folder, or the tree a rotation of many stores started at
        for folder in [path.parent, *path.parent.parents][:4]:
            if (folder / ROTATION_MARKER).exists():
                raise WrongKeyError(
                    path, f"{err.problem} (a key rotation of {folder} is unfinished: rerun it)"
                ) from err
        raise


def _opens_with(data: bytes, keys: _KeyRing, path: Path) -> bool:
    """Whether ``keys`` match the file's key check (raises for damaged or foreign files)."""
    header = read_header(data, path)
    try:
        return keys.for_header(header, path).check == header.key_check
    except WrongKeyError:
        return False


def _pack(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    meta = {**meta, "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in contiguous.items()]}
    head = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    return b"".join([_U32.pack(len(head)), head, *(a.tobytes() for a in contiguous.values())])


def _unpack(plaintext: bytes, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of :func:`_pack`. The bytes are authenticated: a failure here is a bug or a
    newer writer, reported as an unsupported format."""
    try:
        (size,) = _U32.unpack_from(plaintext)
        meta = json.loads(plaintext[_U32.size : _U32.size + size])
        offset = _U32.size + size
        arrays: dict[str, np.ndarray] = {}
        for name, dtype_str, shape in meta["arrays"]:
            dtype = np.dtype(dtype_str)
            if dtype.hasobject:
                raise ValueError(f"array {name!r} has object dtype")
            count = int(np.prod(shape, dtype=np.int64))
            flat = np.frombuffer(plaintext, dtype=dtype, count=count, offset=offset)
            arrays[name] = flat.reshape(shape).copy()  # writable, independent of the buffer
            offset += count * dtype.itemsize
        if offset != len(plaintext):
            raise ValueError(f"{len(plaintext) - offset} bytes left over")
    except (ValueError, KeyError, TypeError, struct.error) as err:
        raise UnsupportedFormatError(path, f"object layout not understood: {err}") from err
    return meta, arrays


def _sealed_files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file())


def _remove_marker(folder: Path) -> None:
    marker = folder / ROTATION_MARKER
    if marker.exists():
        marker.unlink()
        fsync_dir(folder)
