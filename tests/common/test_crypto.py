"""Tests for fedrec.common.crypto: sealed files, their header, keys and passphrases."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common import crypto
from fedrec.common.crypto import (
    HEADER_SIZE,
    MAGIC,
    NONCE_SIZE,
    TAG_SIZE,
    Argon2idParams,
    Passphrase,
    ScryptParams,
    SealingKey,
    TamperedError,
    TruncatedError,
    UnsupportedFormatError,
    WrongKeyError,
    create_key_file,
    open_sealed,
    read_header,
    read_key_file,
    seal,
)

# Cheap KDF costs for tests; production defaults are pinned in test_production_kdf_defaults.
FAST_ARGON2ID = Argon2idParams(iterations=1, lanes=1, memory_kib=8)
FAST_SCRYPT = ScryptParams(log2_n=4, r=1, p=1)
KEY = SealingKey.from_key(bytes(range(32)))
CONTEXT = b"owner/object"
PLAINTEXT = b"a private embedding row, 40 bytes long.."
NONCE_AT = HEADER_SIZE - 16 - NONCE_SIZE  # 62: the nonce sits just before the header digest

# Sealed once with format version 1 (key bytes(range(32)), context b"golden"): any change to
# the format that would stop old files from opening fails this test.
GOLDEN = bytes.fromhex(
    "464544524543534601000000000000000000000000000000000000000000000000000000000021ea4c6f78d4"
    "a49a9aff4f532449eed200000000000000153f0fd5bb4b8d8b06a91f2f60e60b9a08d69888a2c35cc78499c8"
    "f44e307cf10c178c5b74493ecf5540ee9d751a138dd75f25b037bfb79910b6c5093ca1b7c02dba"
)


def test_layout_sizes() -> None:
    sealed = seal(KEY, PLAINTEXT, CONTEXT)
    # 8 magic + 1 version + 1 kdf + 12 params + 16 salt + 16 check + 8 length + 12 nonce + 16
    assert HEADER_SIZE == 90
    assert len(sealed) == HEADER_SIZE + len(PLAINTEXT) + TAG_SIZE
    assert sealed.startswith(MAGIC + b"\x01\x00")  # version 1, raw key
    assert PLAINTEXT not in sealed


def test_round_trip_and_fresh_nonce() -> None:
    first, second = seal(KEY, PLAINTEXT, CONTEXT), seal(KEY, PLAINTEXT, CONTEXT)
    assert open_sealed(first, KEY, CONTEXT, "f") == PLAINTEXT
    assert first[NONCE_AT : NONCE_AT + NONCE_SIZE] != second[NONCE_AT : NONCE_AT + NONCE_SIZE]
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


def test_golden_file_still_opens() -> None:
    assert KEY.check.hex() == "21ea4c6f78d4a49a9aff4f532449eed2"  # HKDF-SHA256, pinned
    assert open_sealed(GOLDEN, KEY, b"golden", "golden") == b"fedrec sealed file v1"


@given(plaintext=st.binary(max_size=300), context=st.binary(max_size=40))
@settings(max_examples=40, deadline=None)
def test_round_trip_any_bytes(plaintext: bytes, context: bytes) -> None:
    assert open_sealed(seal(KEY, plaintext, context), KEY, context, "f") == plaintext


def test_every_flipped_byte_is_tampering() -> None:
    sealed = seal(KEY, PLAINTEXT, CONTEXT)
    for offset in range(len(sealed)):  # magic, version, kdf, salt, check, length, nonce, ...
        damaged = bytearray(sealed)
        damaged[offset] ^= 0x01
        with pytest.raises(TamperedError, match=r"store/f\.sealed"):
            open_sealed(bytes(damaged), KEY, CONTEXT, "store/f.sealed")


def test_every_truncation_is_truncation() -> None:
    sealed = seal(KEY, PLAINTEXT, CONTEXT)
    for length in range(len(sealed)):
        with pytest.raises(TruncatedError, match=r"f\.sealed"):
            open_sealed(sealed[:length], KEY, CONTEXT, "f.sealed")


def test_trailing_bytes_are_tampering() -> None:
    with pytest.raises(TamperedError, match="1 unexpected bytes"):
        open_sealed(seal(KEY, PLAINTEXT, CONTEXT) + b"\x00", KEY, CONTEXT, "f")


def test_wrong_key_is_recognised_before_decryption() -> None:
    other = SealingKey.from_key(os.urandom(32))
    with pytest.raises(WrongKeyError, match="key check"):
        open_sealed(seal(KEY, PLAINTEXT, CONTEXT), other, CONTEXT, "f")


def test_another_context_is_tampering() -> None:
    with pytest.raises(TamperedError, match="moved or renamed"):
        open_sealed(seal(KEY, PLAINTEXT, CONTEXT), KEY, b"owner/other-object", "f")


@pytest.mark.parametrize("data", [b'{"json": 1}', b"PK\x03\x04" + bytes(200), b"x"])
def test_foreign_files_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="not a fedrec sealed file"):
        read_header(data, "f")


def _with_valid_digest(fields: bytes) -> bytes:
    return fields + crypto._digest(fields)


def test_a_newer_version_is_unsupported() -> None:
    sealed = bytearray(seal(KEY, PLAINTEXT, CONTEXT))
    sealed[8] = 2
    sealed[:HEADER_SIZE] = _with_valid_digest(bytes(sealed[: HEADER_SIZE - 16]))
    with pytest.raises(UnsupportedFormatError, match="format version 2"):
        read_header(bytes(sealed), "f")
    with pytest.raises(UnsupportedFormatError, match="format version 2"):
        read_header(bytes(sealed[:20]), "f")  # even when cut short


def test_a_header_asking_for_huge_kdf_memory_is_refused() -> None:
    sealed = bytearray(seal(SealingKey.from_passphrase(Passphrase("pw", FAST_ARGON2ID)), b"", b""))
    sealed[18:22] = (1 << 30).to_bytes(4, "big")  # memory KiB: 1 TiB
    sealed[:HEADER_SIZE] = _with_valid_digest(bytes(sealed[: HEADER_SIZE - 16]))
    with pytest.raises(UnsupportedFormatError, match="argon2id memory"):
        read_header(bytes(sealed), "f")


@pytest.mark.parametrize("kdf", [FAST_ARGON2ID, FAST_SCRYPT])
def test_passphrase_round_trip_records_kdf_and_salt(kdf: Argon2idParams | ScryptParams) -> None:
    key = SealingKey.from_passphrase(Passphrase("correct horse", kdf))
    sealed = seal(key, PLAINTEXT, CONTEXT)
    header = read_header(sealed, "f")
    assert header.kdf == kdf and header.salt == key.salt and header.salt != bytes(16)
    again = SealingKey.from_passphrase(Passphrase("correct horse", kdf), header.salt, header.kdf)
    assert open_sealed(sealed, again, CONTEXT, "f") == PLAINTEXT
    wrong = SealingKey.from_passphrase(Passphrase("wrong horse", kdf), header.salt, header.kdf)
    with pytest.raises(WrongKeyError, match="key check"):
        open_sealed(sealed, wrong, CONTEXT, "f")


def test_each_derivation_gets_a_new_salt() -> None:
    phrase = Passphrase(b"pw", FAST_ARGON2ID)
    a, b = SealingKey.from_passphrase(phrase), SealingKey.from_passphrase(phrase)
    assert a.salt != b.salt and a.check != b.check


def test_key_kind_mismatch_is_a_wrong_key() -> None:
    sealed = seal(SealingKey.from_passphrase(Passphrase("pw", FAST_ARGON2ID)), PLAINTEXT, CONTEXT)
    with pytest.raises(WrongKeyError, match=r"passphrase \(argon2id .*opened with a key file"):
        open_sealed(sealed, KEY, CONTEXT, "f")


def test_production_kdf_defaults() -> None:
    assert Argon2idParams().words() == (3, 4, 64 * 1024)  # RFC 9106 §4 second option
    assert ScryptParams().words() == (17, 8, 1)  # OWASP
    assert Passphrase("pw").kdf == Argon2idParams()
    assert "pw" not in repr(Passphrase("pw"))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Argon2idParams(iterations=0), "iterations"),
        (lambda: Argon2idParams(lanes=2, memory_kib=8), "memory"),
        (lambda: ScryptParams(log2_n=0), "log2_n"),
        (lambda: ScryptParams(log2_n=30), "2 GiB"),
        (lambda: Passphrase(""), "empty"),
        (lambda: SealingKey.from_key(b"short"), "32 bytes"),
    ],
)
def test_invalid_settings_name_the_constraint(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = create_key_file(path)
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_key_file(path)
    assert read_key_file(path) == key


def test_read_key_file_refuses_shared_or_malformed_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared.key"
    shared.write_bytes(os.urandom(32))
    shared.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_key_file(shared)
    short = tmp_path / "short.key"
    short.write_bytes(b"0" * 31)
    short.chmod(0o600)
    with pytest.raises(ValueError, match="31 bytes"):
        read_key_file(short)
