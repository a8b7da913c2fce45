"""Encryption at rest, checked from the files (simulations/audit/at_rest.py): every file of a
sealed folder is a sealed file under one key; a plaintext or damaged file, an unfinished
rotation, a readable key file or a key inside its folder is reported; a run with a state
folder is audited green from its files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedrec.client.secure_store import ROTATION_MARKER, EncryptedFileStore
from fedrec.common.crypto import Argon2idParams, Passphrase, create_key_file, describe_kdf
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.at_rest import inspect_folder, inspect_key_file
from fedrec.simulations.audit.report import audit_run
from fedrec.simulations.inprocess import run_inprocess

FAST = Argon2idParams(iterations=1, lanes=1, memory_kib=8)


def _store(root: Path, key: bytes | Passphrase, users: int = 3) -> None:
    for u in range(users):
        store = EncryptedFileStore(root / f"user-{u}", key, f"user-{u}")
        store.save("row", {"user_embedding.weight": np.zeros((1, 4), np.float32)})
        store.save_json("ledger", {"steps": u})


def test_a_folder_sealed_under_one_key_file(tmp_path: Path) -> None:
    key = create_key_file(tmp_path / "key")
    _store(tmp_path / "state", key)
    found = inspect_folder(tmp_path / "state")
    # 3 stores of 2 objects and each store's version record
    assert (found.files, found.sealed) == (9, 9) and found.bytes > 0
    assert found.kdfs == {describe_kdf(None): 9}
    assert len(found.key_fingerprints) == 1 and list(found.key_fingerprints.values()) == [9]
    assert found.problems == [] and found.warnings == []
    key_file = inspect_key_file(tmp_path / "key", [str(tmp_path / "state")])
    assert key_file.mode == "0600" and key_file.private and key_file.problems == []


def test_plaintext_damage_mixed_keys_and_an_unfinished_rotation_are_reported(
    tmp_path: Path,
) -> None:
    root = tmp_path / "state"
    _store(root, os.urandom(32), users=2)
    _store(root / "other", os.urandom(32), users=1)  # a second key file
    (root / "user-0" / "notes.json").write_text('{"user": 7}')
    sealed = root / "user-1" / "row.sealed"
    damaged = bytearray(sealed.read_bytes())
    damaged[20] ^= 0xFF  # inside the header: its checksum no longer matches
    sealed.write_bytes(bytes(damaged))
    (root / "user-0" / ROTATION_MARKER).write_text("pending")
    found = inspect_folder(root)
    assert found.not_sealed == ("user-0/notes.json",) and found.damaged == ("user-1/row.sealed",)
    # 3 stores × (2 objects + the version record), the plaintext file; the marker is not data
    assert found.files == 10 and found.sealed == 8
    assert len(found.problems) == 2 and "not sealed" in found.problems[0]
    assert found.rotations_pending == ("user-0",)
    assert any("unfinished" in w for w in found.warnings)
    assert any("2 different key files" in w for w in found.warnings)
    assert not inspect_folder(tmp_path / "missing").exists


def test_a_passphrase_store_shows_its_kdf_and_a_fingerprint_per_salt(tmp_path: Path) -> None:
    _store(tmp_path / "state", Passphrase("hunter2", FAST), users=2)
    found = inspect_folder(tmp_path / "state")
    assert found.kdfs == {describe_kdf(FAST): 6} and found.problems == []  # 2 × 3 files
    assert sum(found.key_fingerprints.values()) == 6


def test_a_readable_key_file_or_one_inside_its_folder_is_a_problem(tmp_path: Path) -> None:
    key = tmp_path / "state" / "key"
    key.parent.mkdir()
    create_key_file(key)
    key.chmod(0o644)
    found = inspect_key_file(key, [str(tmp_path / "state")])
    assert found.mode == "0644" and len(found.problems) == 2
    assert not inspect_key_file(tmp_path / "nope", []).exists


def test_a_run_with_a_sealed_state_folder_is_audited_green(tmp_path: Path) -> None:
    settings = {"data": "synthetic", "synthetic-users": 60, "synthetic-items": 300,
                "num-rounds": 2, "clients-per-round": 5, "eval-every": 2,
                "state-dir": str(tmp_path / "state"),
                "key-file": str(tmp_path / "key")}  # fmt: skip
    create_key_file(tmp_path / "key")
    config = FederationConfig.from_mapping(settings).replace(out_dir=str(tmp_path / "run"))
    run_inprocess(config, seed=1)
    audit = audit_run(tmp_path / "run", attacks=())
    row = next(r for r in audit["summary"] if r["name"] == "Encryption at rest")
    folder = audit["at_rest"]["folders"][0]
    assert folder["sealed"] == folder["files"] > 0 and len(folder["key_fingerprints"]) == 1
    assert row["status"] == "green", row
    (tmp_path / "state" / "leak.csv").write_text("user,item\n1,2\n")
    row = next(r for r in audit_run(tmp_path / "run", attacks=())["summary"]
               if r["name"] == "Encryption at rest")  # fmt: skip
    assert row["status"] == "red" and "not sealed" in row["evidence"]
