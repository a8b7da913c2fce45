"""Tests for fedrec.client.secure_store: the encrypted on-disk StateStore and shard store."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from fedrec.client import secure_store
from fedrec.client.secure_store import (
    ROTATION_MARKER,
    SHARD_KEY,
    VERSIONS_KEY,
    EncryptedFileStore,
    KeyMaterial,
    RolledBackError,
    RotationResult,
    StoreError,
    TamperedError,
    TruncatedError,
    UnsupportedFormatError,
    WrongKeyError,
    binding,
    rotate_key,
)
from fedrec.client.store import StateStore
from fedrec.common.crypto import (
    HEADER_SIZE,
    Argon2idParams,
    Header,
    Passphrase,
    SealingKey,
    open_sealed,
    read_header,
)
from fedrec.common.data.shard import UserShard
from fedrec.common.data.split import NO_ITEM
from fedrec.common.privacy import PrivacyLedger

FAST = Argon2idParams(iterations=1, lanes=1, memory_kib=8)  # production: Argon2idParams()
USER = "user-000007"
KEY = "fedrec.private"
LEDGER = "fedrec.record-ledger"


def _arrays() -> dict[str, np.ndarray]:
    return {
        "user_embedding.weight": np.arange(8, dtype=np.float32).reshape(1, 8) / 10,
        "user_features": np.array([[1.0, 0.0, 0.5]], np.float32),
    }


def _shard(evaluable: bool = True) -> UserShard:
    return UserShard(
        user_features=np.array([0.5, 1.0, 0.0], dtype=np.float32),
        train_items=np.array([3, 1, 4, 1, 5], dtype=np.int64),
        val_item=9 if evaluable else NO_ITEM,
        test_item=2 if evaluable else NO_ITEM,
        candidates=np.arange(10, 109, dtype=np.int64) if evaluable else np.array([], np.int64),
        num_items=400,
    )


@pytest.fixture(params=["key-file", "passphrase"])
def material(request: pytest.FixtureRequest) -> KeyMaterial:
    return os.urandom(32) if request.param == "key-file" else Passphrase("hunter2", FAST)


@pytest.fixture
def store(tmp_path: Path, material: KeyMaterial) -> EncryptedFileStore:
    return EncryptedFileStore(tmp_path / USER, material, USER)


def _filled(store: EncryptedFileStore) -> EncryptedFileStore:
    store.save(KEY, _arrays())
    store.save_json(LEDGER, {"accountant": "rdp", "history": [[1.1, 0.25, 8]]})
    store.save_shard(_shard())
    return store


# -- the StateStore protocol (the behaviours tests/client/test_store.py pins) ---------------
def test_is_a_state_store(store: EncryptedFileStore) -> None:
    typed: StateStore = store
    assert typed.load(KEY) is None and typed.load_json(LEDGER) is None


def test_round_trip_in_a_new_store(store: EncryptedFileStore, material: KeyMaterial) -> None:
    store.save(KEY, _arrays())
    loaded = EncryptedFileStore(store.folder, material, USER).load(KEY)  # the next round
    assert loaded is not None and set(loaded) == set(_arrays())
    for name, value in _arrays().items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)


def test_save_and_load_are_copies(store: EncryptedFileStore) -> None:
    arrays = _arrays()
    store.save(KEY, arrays)
    arrays["user_embedding.weight"].fill(-1.0)
    first = store.load(KEY)
    assert first is not None
    first["user_features"].fill(9.0)
    second = store.load(KEY)
    assert second is not None
    np.testing.assert_array_equal(second["user_features"], _arrays()["user_features"])
    want = _arrays()["user_embedding.weight"]
    np.testing.assert_array_equal(second["user_embedding.weight"], want)


def test_save_overwrites(store: EncryptedFileStore) -> None:
    store.save(KEY, _arrays())
    store.save(KEY, {"user_embedding.weight": np.ones((1, 4), np.float32)})
    loaded = store.load(KEY)
    assert loaded is not None and set(loaded) == {"user_embedding.weight"}


def test_json_round_trip_and_isolation(store: EncryptedFileStore) -> None:
    ledger = PrivacyLedger(history=[(1.1, 0.25, 8), (2.0, 0.5, 3)])
    store.save_json(LEDGER, ledger.to_dict())
    loaded = store.load_json(LEDGER)
    assert loaded is not None
    restored = PrivacyLedger.from_dict(loaded)
    assert restored == ledger and restored.epsilon(1e-5) == ledger.epsilon(1e-5)
    loaded["history"].append([3.0, 0.1, 1])
    assert store.load_json(LEDGER) == ledger.to_dict()


def test_kind_mismatch_is_a_type_error(store: EncryptedFileStore) -> None:
    _filled(store)
    with pytest.raises(TypeError, match="holds arrays, not json"):
        store.load_json(KEY)
    with pytest.raises(TypeError, match="holds json, not arrays"):
        store.load(LEDGER)


# -- shards and files -----------------------------------------------------------------------
@pytest.mark.parametrize("evaluable", [True, False])
def test_shard_round_trip(store: EncryptedFileStore, evaluable: bool) -> None:
    shard = _shard(evaluable)
    store.save_shard(shard)
    loaded = store.load_shard()
    assert (loaded.val_item, loaded.test_item, loaded.num_items) == (
        shard.val_item, shard.test_item, shard.num_items,
    )  # fmt: skip
    for name in ("user_features", "train_items", "candidates"):
        got, want = getattr(loaded, name), getattr(shard, name)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert loaded.evaluable == evaluable


def test_missing_shard_says_how_to_write_it(store: EncryptedFileStore) -> None:
    with pytest.raises(FileNotFoundError, match="write_encrypted_shards"):
        store.load_shard()


def test_one_private_file_per_object_without_plaintext(store: EncryptedFileStore) -> None:
    _filled(store)
    assert store.stored_keys() == sorted([KEY, LEDGER, SHARD_KEY])
    assert stat.S_IMODE(store.folder.stat().st_mode) & 0o077 == 0
    for path in store.folder.iterdir():
        assert path.name.endswith(".sealed") and stat.S_IMODE(path.stat().st_mode) == 0o600
        data = path.read_bytes()
        assert b"accountant" not in data and b"user_features" not in data


@pytest.mark.parametrize("key", ["", ".hidden", "../escape", "a/b", "x" * 129])
def test_object_keys_must_be_plain_file_names(store: EncryptedFileStore, key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        store.save_json(key, {})


# -- errors: each its own class, naming the file, never changing it ------------------------
def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "offset",
    [0, 8, 15, 40, 60, 65, HEADER_SIZE - 1, HEADER_SIZE + 3, -1],
    ids=["magic", "version", "kdf", "key-check", "length", "nonce", "digest", "body", "tag"],
)
def test_flipped_byte_is_tampering_and_file_unchanged(
    store: EncryptedFileStore, offset: int
) -> None:
    _filled(store)
    path = store.path_of(LEDGER)
    _corrupt(path, offset)
    before = path.read_bytes()
    with pytest.raises(TamperedError, match=str(path)) as err:
        store.load_json(LEDGER)
    assert isinstance(err.value, StoreError)
    assert path.read_bytes() == before
    assert store.load(KEY) is not None  # other objects are unaffected


def test_truncated_file(store: EncryptedFileStore) -> None:
    _filled(store)
    path = store.path_of(KEY)
    for keep in (0, 5, HEADER_SIZE - 1, HEADER_SIZE + 10, len(path.read_bytes()) - 1):
        data = path.read_bytes()
        path.write_bytes(data[:keep])
        with pytest.raises(TruncatedError, match=str(path)):
            store.load(KEY)
        assert path.read_bytes() == data[:keep]
        path.write_bytes(data)


def test_wrong_key_and_wrong_passphrase(store: EncryptedFileStore, tmp_path: Path) -> None:
    _filled(store)
    before = {p: p.read_bytes() for p in store.folder.iterdir()}
    for other in (os.urandom(32), Passphrase("not hunter2", FAST)):
        with pytest.raises(WrongKeyError, match=str(store.path_of(KEY))):
            EncryptedFileStore(store.folder, other, USER).load(KEY)
    assert {p: p.read_bytes() for p in store.folder.iterdir()} == before


def test_foreign_file_is_unsupported(store: EncryptedFileStore) -> None:
    store.folder.mkdir(parents=True)
    store.path_of(LEDGER).write_text('{"accountant": "rdp", "history": []}')
    with pytest.raises(UnsupportedFormatError, match="not a fedrec sealed file"):
        store.load_json(LEDGER)


def test_moved_to_another_user_or_renamed_fails(
    store: EncryptedFileStore, material: KeyMaterial, tmp_path: Path
) -> None:
    _filled(store)
    other = EncryptedFileStore(tmp_path / "user-000008", material, "user-000008")
    other.folder.mkdir()
    other.path_of(SHARD_KEY).write_bytes(store.path_of(SHARD_KEY).read_bytes())
    with pytest.raises(TamperedError, match="moved or renamed"):
        other.load_shard()  # user 8 cannot be handed user 7's data
    store.path_of(LEDGER).replace(store.path_of("fedrec.other-ledger"))
    with pytest.raises(TamperedError, match="moved or renamed"):
        store.load_json("fedrec.other-ledger")


def test_passphrase_costs_one_kdf_per_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    derive = Argon2idParams.derive

    def counting(self: Argon2idParams, secret: bytes, salt: bytes) -> bytes:
        calls.append(salt)
        return derive(self, secret, salt)

    monkeypatch.setattr(Argon2idParams, "derive", counting)
    phrase = Passphrase("hunter2", FAST)
    _filled(EncryptedFileStore(tmp_path, phrase, USER))
    assert len(calls) == 1
    reader = EncryptedFileStore(tmp_path, phrase, USER)
    assert reader.load(KEY) is not None and reader.load_json(LEDGER) is not None
    reader.save_json(LEDGER, {"accountant": "rdp", "history": []})  # reuses the file's salt
    assert len(calls) == 2 and calls[0] == calls[1]


def test_key_file_store_on_passphrase_files_says_so(tmp_path: Path) -> None:
    EncryptedFileStore(tmp_path, Passphrase("hunter2", FAST), USER).save(KEY, _arrays())
    with pytest.raises(WrongKeyError, match=r"passphrase .* given a key file"):
        EncryptedFileStore(tmp_path, os.urandom(32), USER).load(KEY)


def test_invalid_material_and_pseudonym() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptedFileStore("x", b"short", USER)
    with pytest.raises(TypeError, match="Passphrase"):
        EncryptedFileStore("x", "a str is ambiguous", USER)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pseudonym"):
        EncryptedFileStore("x", os.urandom(32), "")


# -- atomic writes --------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_before_rename_keeps_the_old_state(
    store: EncryptedFileStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store.save(KEY, _arrays())
    before = store.path_of(KEY).read_bytes()

    def crash(*args: object) -> None:
        raise OSError("simulated power loss before the rename")

    monkeypatch.setattr(os, failing, crash)  # fsync: the temp file's data; replace: the rename
    with pytest.raises(OSError, match="power loss"):
        store.save(KEY, {"user_embedding.weight": np.zeros((1, 8), np.float32)})
    monkeypatch.undo()
    assert store.path_of(KEY).read_bytes() == before
    loaded = store.load(KEY)
    assert loaded is not None
    np.testing.assert_array_equal(loaded["user_features"], _arrays()["user_features"])
    names = sorted(p.name for p in store.folder.iterdir())
    assert names == [store.path_of(KEY).name, store.path_of(VERSIONS_KEY).name]  # no temp left


def test_a_stray_temp_file_from_a_crash_is_ignored(store: EncryptedFileStore) -> None:
    _filled(store)
    (store.folder / f".{KEY}.sealed.abc123.tmp").write_bytes(b"half a file")
    assert store.stored_keys() == sorted([KEY, LEDGER, SHARD_KEY])
    assert store.load(KEY) is not None


# -- rollback: a restored or deleted object is refused, not read as data -------------------
def test_a_ledger_restored_from_an_older_copy_is_refused(
    store: EncryptedFileStore, material: KeyMaterial
) -> None:
    store.save_json(LEDGER, {"accountant": "rdp", "history": [[1.1, 0.25, 8]]})
    older = store.path_of(LEDGER).read_bytes()  # e.g. a backup taken after round 1
    spent = {"accountant": "rdp", "history": [[1.1, 0.25, 80]]}
    store.save_json(LEDGER, spent)
    current = store.path_of(LEDGER).read_bytes()
    store.path_of(LEDGER).write_bytes(older)
    for reader in (store, EncryptedFileStore(store.folder, material, USER)):
        with pytest.raises(RolledBackError, match=r"version 1, but .* lists version 2"):
            reader.load_json(LEDGER)
    assert store.path_of(LEDGER).read_bytes() == older  # the evidence is left as found
    store.path_of(LEDGER).write_bytes(current)
    assert store.load_json(LEDGER) == spent


def test_a_deleted_ledger_is_refused_not_read_as_zero(store: EncryptedFileStore) -> None:
    _filled(store)
    store.path_of(LEDGER).unlink()
    with pytest.raises(RolledBackError, match=r"missing, but .* lists version 1"):
        store.load_json(LEDGER)


def test_a_deleted_version_record_is_refused(store: EncryptedFileStore) -> None:
    _filled(store)
    store.path_of(VERSIONS_KEY).unlink()
    with pytest.raises(RolledBackError, match="version record was deleted"):
        store.load_json(LEDGER)
    with pytest.raises(RolledBackError, match="version record was deleted"):
        store.save_json("other", {})  # a write does not start a new record over the gap
    assert not store.path_of(VERSIONS_KEY).exists()


def test_a_crash_between_object_and_record_reads_fine(
    store: EncryptedFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _filled(store)
    write = secure_store.write_atomic

    def dies_before_the_record(path: Path, data: bytes) -> None:
        if path.name == f"{VERSIONS_KEY}.sealed":
            raise KeyboardInterrupt  # power lost after the object landed
        write(path, data)

    monkeypatch.setattr(secure_store, "write_atomic", dies_before_the_record)
    with pytest.raises(KeyboardInterrupt):
        store.save_json(LEDGER, {"steps": 2})
    with pytest.raises(KeyboardInterrupt):
        store.save_json("new-key", {"steps": 1})  # a key the record has never seen
    monkeypatch.undo()
    assert store.load_json(LEDGER) == {"steps": 2} and store.load_json("new-key") == {"steps": 1}
    store.save_json(LEDGER, {"steps": 3})
    assert store.load_json(LEDGER) == {"steps": 3}


def test_a_restored_copy_of_a_deleted_object_reads_as_deleted(store: EncryptedFileStore) -> None:
    _filled(store)
    copy = store.path_of(LEDGER).read_bytes()
    store.delete(LEDGER)
    assert store.load_json(LEDGER) is None
    store.path_of(LEDGER).write_bytes(copy)
    assert store.load_json(LEDGER) is None and not store.path_of(LEDGER).exists()
    store.save_json(LEDGER, {"steps": 9})  # a new object under the old key: a later version
    assert store.load_json(LEDGER) == {"steps": 9}
    store.path_of(LEDGER).write_bytes(copy)
    with pytest.raises(RolledBackError):
        store.load_json(LEDGER)


def test_a_restored_folder_needs_the_counter_to_be_caught(
    tmp_path: Path, material: KeyMaterial
) -> None:
    counter = tmp_path / "no-backup" / "fedrec.counter"
    store = EncryptedFileStore(tmp_path / USER, material, USER, counter_file=counter)
    store.save_json(LEDGER, {"steps": 1})
    backup = tmp_path / "backup"
    shutil.copytree(store.folder, backup)
    store.save_json(LEDGER, {"steps": 50})
    assert int(counter.read_text()) == 3  # the record's generation: empty, v1, v2
    shutil.rmtree(store.folder)
    shutil.copytree(backup, store.folder)  # the whole folder, record and all
    # without the counter the folder is self-consistent and the old ledger reads back
    assert EncryptedFileStore(store.folder, material, USER).load_json(LEDGER) == {"steps": 1}
    with pytest.raises(RolledBackError, match=r"generation 2, but the counter .* is at 3"):
        store.load_json(LEDGER)
    shutil.rmtree(store.folder)  # emptied: the counter remembers there was a store
    with pytest.raises(RolledBackError, match="restored or emptied"):
        store.load_json(LEDGER)
    with pytest.raises(ValueError, match="outside the store folder"):
        EncryptedFileStore(tmp_path / USER, material, USER, counter_file=tmp_path / USER / "c")


def test_a_store_written_before_versions_opens_and_starts_a_record(
    store: EncryptedFileStore, material: KeyMaterial
) -> None:
    _filled(store)
    for key in (KEY, LEDGER, SHARD_KEY):  # rewrite each object as an older fedrec did
        path = store.path_of(key)
        plaintext = secure_store._open(path.read_bytes(), store._keys, binding(USER, key), path)
        meta, arrays = secure_store._unpack(plaintext, path)
        del meta["version"]
        sealing = store._keys.for_writing()
        path.write_bytes(
            secure_store.seal(sealing, secure_store._pack(meta, arrays), binding(USER, key))
        )
    store.path_of(VERSIONS_KEY).unlink()
    old = EncryptedFileStore(store.folder, material, USER)
    expected = _contents(old)
    old.save_json(LEDGER, {"steps": 4})
    assert store.path_of(VERSIONS_KEY).exists() and old.load_json(LEDGER) == {"steps": 4}
    assert _contents(old)[0] == expected[0]


# -- key rotation ---------------------------------------------------------------------------
def _sealing_key(material: KeyMaterial, header: Header) -> SealingKey | None:
    if isinstance(material, Passphrase):
        return (
            None
            if header.kdf is None
            else SealingKey.from_passphrase(material, header.salt, header.kdf)
        )
    return None if header.kdf is not None else SealingKey.from_key(material)


def _contents(store: EncryptedFileStore) -> tuple[object, ...]:
    arrays = store.load(KEY)
    assert arrays is not None
    return (
        {k: v.tolist() for k, v in arrays.items()},
        store.load_json(LEDGER),
        store.load_shard().train_items.tolist(),
    )


@pytest.mark.parametrize("new", [os.urandom(32), Passphrase("new phrase", FAST)], ids=type)
def test_rotate_key(store: EncryptedFileStore, material: KeyMaterial, new: KeyMaterial) -> None:
    expected = _contents(_filled(store))
    assert rotate_key(store.folder, material, new, USER) == RotationResult(rotated=4, already=0)
    assert _contents(EncryptedFileStore(store.folder, new, USER)) == expected
    with pytest.raises(WrongKeyError):
        EncryptedFileStore(store.folder, material, USER).load(KEY)
    assert not (store.folder / ROTATION_MARKER).exists()
    assert rotate_key(store.folder, material, new, USER) == RotationResult(0, 4)  # idempotent


def test_interrupted_rotation_is_consistent_and_resumable(
    store: EncryptedFileStore, material: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _contents(_filled(store))
    new = os.urandom(32)
    write = secure_store.write_atomic
    written: list[str] = []

    def dies_after_one_file(path: Path, data: bytes) -> None:
        if path.name.endswith(".sealed") and written:
            raise KeyboardInterrupt  # the process stops mid-rotation
        write(path, data)
        if path.name.endswith(".sealed"):
            written.append(path.name)

    monkeypatch.setattr(secure_store, "write_atomic", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        rotate_key(store.folder, material, new, USER)
    monkeypatch.undo()

    # halfway: the marker stays; every file is whole under exactly one of the two keys, and
    # the store refuses to read (its objects and version record disagree on the key)
    assert (store.folder / ROTATION_MARKER).exists() and len(written) == 1
    rotated = EncryptedFileStore(store.folder, new, USER)
    old = EncryptedFileStore(store.folder, material, USER)
    for path in sorted(store.folder.glob("*.sealed")):
        data, context = path.read_bytes(), binding(USER, path.name.removesuffix(".sealed"))
        opened = []
        for candidate in (material, new):
            sealing = _sealing_key(candidate, read_header(data, path))
            if sealing is not None and sealing.check == read_header(data, path).key_check:
                open_sealed(data, sealing, context, path)  # authenticates: whole
                opened.append(candidate)
        assert len(opened) == 1, path
    for candidate in (old, rotated):
        with pytest.raises(WrongKeyError, match=r"rotation .* unfinished: rerun"):
            _contents(candidate)
    # a third key is refused before anything is written
    before = {p.name: p.read_bytes() for p in store.folder.iterdir()}
    with pytest.raises(WrongKeyError):
        rotate_key(store.folder, os.urandom(32), os.urandom(32), USER)
    assert {p.name: p.read_bytes() for p in store.folder.iterdir()} == before

    assert rotate_key(store.folder, material, new, USER) == RotationResult(rotated=3, already=1)
    assert not (store.folder / ROTATION_MARKER).exists()
    assert _contents(rotated) == expected


def test_rotation_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no store folder"):
        rotate_key(tmp_path / "typo", os.urandom(32), os.urandom(32), USER)


def test_rotation_refuses_a_damaged_folder_without_writing(
    store: EncryptedFileStore, material: KeyMaterial
) -> None:
    _filled(store)
    _corrupt(store.path_of(SHARD_KEY), HEADER_SIZE + 2)
    before = {p.name: p.read_bytes() for p in store.folder.iterdir()}
    with pytest.raises(TamperedError, match=SHARD_KEY):
        rotate_key(store.folder, material, os.urandom(32), USER)
    assert {p.name: p.read_bytes() for p in store.folder.iterdir()} == before
