"""Sealed files: AES-256-GCM over a small authenticated header, with keys from a key file or a
passphrase. Pure helpers over the ``cryptography`` package (no hand-written primitives).

File layout (format version 1; integers big-endian)::

    offset size field
         0    8 magic          b"FEDRECSF"
         8    1 version        1
         9    1 kdf id         0 raw key (key file) | 1 Argon2id | 2 scrypt
        10   12 kdf params     3 × u32: Argon2id (iterations, lanes, memory KiB),
                               scrypt (log2 N, r, p); zeros for a raw key
        22   16 salt           random per passphrase derivation; zeros for a raw key
        38   16 key check      HKDF-SHA256(master key, info="fedrec/sealed/v1/key-check")
        54    8 body length    plaintext bytes (= ciphertext bytes; GCM adds no padding)
        62   12 nonce          os.urandom, fresh for every seal
        74   16 header digest  SHA-256(bytes 0..73)[:16]
        90    n ciphertext     AES-256-GCM under HKDF-SHA256(master, info="…/aes-256-gcm")
      90+n   16 tag            authenticates ciphertext and associated data = header ‖ context

How each failure is told apart, in this order (:func:`read_header`, then :func:`open_sealed`):

* **truncated** — shorter than its header, or than ``90 + body length + 16``;
* **tampered** — the header digest does not match (a damaged header, including its magic or
  version when the rest of the header still matches), bytes after the tag, or the GCM tag
  fails (ciphertext, tag, or the caller's context such as the file's owner or name changed);
* **unsupported** — not a sealed file (foreign magic) or another format version;
* **wrong key** — the key check stored in the header differs from the one of the key given.

AES-GCM alone cannot tell a wrong key from tampering; the key check value can, *before*
decrypting. It is a one-way 128-bit HKDF output, so it reveals nothing useful about a 256-bit
key (a passphrase stays as hard to guess as the KDF makes it). The header digest is unkeyed:
it tells accidental damage from a wrong key, while the GCM tag (which covers the whole header)
still rejects any deliberate change. A forger who rewrites the key check *and* the digest is
reported as a wrong key — never given data.

Passphrase KDFs (parameters stored in each header, so they can change without breaking files):
Argon2id, RFC 9106 §4 "second recommended option" (t=3, p=4, m=64 MiB; its cost on our
machines is in docs/results.md) by default;
scrypt with N=2^17, r=8, p=1 (128 MiB, OWASP's recommendation) as the alternative.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedrec.common.files import write_atomic

__all__ = [
    "CHECK_SIZE",
    "DIGEST_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "KDF_ARGON2ID",
    "KDF_RAW_KEY",
    "KDF_SCRYPT",
    "KEY_SIZE",
    "MAGIC",
    "MAX_KDF_ITERATIONS",
    "MAX_KDF_MEMORY_KIB",
    "NONCE_SIZE",
    "NO_SALT",
    "SALT_SIZE",
    "TAG_SIZE",
    "Argon2idParams",
    "Header",
    "InsecureKeyFileError",
    "KdfParams",
    "Passphrase",
    "ScryptParams",
    "SealedFileError",
    "SealingKey",
    "TamperedError",
    "TruncatedError",
    "UnsupportedFormatError",
    "WrongKeyError",
    "create_key_file",
    "describe_kdf",
    "kdf_from_header",
    "load_or_create_key_file",
    "open_sealed",
    "read_header",
    "read_key_file",
    "seal",
]

MAGIC = b"FEDRECSF"  # "fedrec sealed file"
FORMAT_VERSION = 1
KEY_SIZE = 32  # AES-256
NONCE_SIZE = 12  # 96-bit GCM nonce (NIST SP 800-38D's recommended length)
TAG_SIZE = 16
SALT_SIZE = 16  # RFC 9106 recommends 128 bits
CHECK_SIZE = 16
DIGEST_SIZE = 16

KDF_RAW_KEY = 0
KDF_ARGON2ID = 1
KDF_SCRYPT = 2

_PREFIX = struct.Struct(">8sB")  # magic, version
_FIELDS = struct.Struct(f">8sBB3I{SALT_SIZE}s{CHECK_SIZE}sQ{NONCE_SIZE}s")
HEADER_SIZE = _FIELDS.size + DIGEST_SIZE  # 90
NO_SALT = bytes(SALT_SIZE)

_AEAD_INFO = b"fedrec/sealed/v1/aes-256-gcm"
_CHECK_INFO = b"fedrec/sealed/v1/key-check"
# Upper bounds on what a header may ask a reader to spend (the KDF runs before anything is
# authenticated, so a crafted header must not make it allocate gigabytes).
MAX_KDF_MEMORY_KIB = 2 * 1024 * 1024  # 2 GiB
MAX_KDF_ITERATIONS = 64


class SealedFileError(ValueError):
    """A sealed file cannot be opened; ``source`` names the file, ``problem`` says why."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class TruncatedError(SealedFileError):
    """The file ends early: an interrupted copy or a full disk, not a wrong key."""


class TamperedError(SealedFileError):
    """The bytes (or the owner/name the file is bound to) are not what was sealed."""


class WrongKeyError(SealedFileError):
    """The file was sealed under another key or passphrase."""


class UnsupportedFormatError(SealedFileError):
    """Not a sealed file, or a format version this code does not read."""


@dataclass(frozen=True)
class Argon2idParams:
    """Argon2id cost (RFC 9106 §4, second recommended option: t=3, p=4, m=64 MiB)."""

    kdf_id: ClassVar[int] = KDF_ARGON2ID
    iterations: int = 3  # t: passes over memory
    lanes: int = 4  # p: parallelism
    memory_kib: int = 64 * 1024  # m: memory in KiB (>= 8 per lane)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= MAX_KDF_ITERATIONS:
            raise ValueError(f"argon2id iterations must be in [1, {MAX_KDF_ITERATIONS}]")
        if not 1 <= self.lanes <= 64:
            raise ValueError(f"argon2id lanes must be in [1, 64], got {self.lanes}")
        if not 8 * self.lanes <= self.memory_kib <= MAX_KDF_MEMORY_KIB:
            raise ValueError(
                f"argon2id memory must be in [8 × lanes, {MAX_KDF_MEMORY_KIB}] KiB,"
                f" got {self.memory_kib}"
            )

    def words(self) -> tuple[int, int, int]:
        return self.iterations, self.lanes, self.memory_kib

    def derive(self, secret: bytes, salt: bytes) -> bytes:
        kdf = Argon2id(
            salt=salt,
            length=KEY_SIZE,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(secret)


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost (OWASP Password Storage Cheat Sheet: N=2^17, r=8, p=1; 128 MiB)."""

    kdf_id: ClassVar[int] = KDF_SCRYPT
    log2_n: int = 17  # N = 2**log2_n, CPU/memory cost
    r: int = 8  # block size
    p: int = 1  # parallelism

    def __post_init__(self) -> None:
        if self.log2_n < 1 or self.r < 1 or self.p < 1:
            raise ValueError(f"scrypt needs log2_n, r, p >= 1, got {self.words()}")
        if 128 * self.r * 2**self.log2_n > MAX_KDF_MEMORY_KIB * 1024 or self.p > 16:
            raise ValueError(f"scrypt cost {self.words()} exceeds 2 GiB of memory or p > 16")

    def words(self) -> tuple[int, int, int]:
        return self.log2_n, self.r, self.p

    def derive(self, secret: bytes, salt: bytes) -> bytes:
        return Scrypt(salt=salt, length=KEY_SIZE, n=2**self.log2_n, r=self.r, p=self.p).derive(
            secret
        )


KdfParams = Argon2idParams | ScryptParams


def kdf_from_header(kdf_id: int, words: tuple[int, int, int]) -> KdfParams | None:
    """The KDF a header names (``None``: a raw key); ValueError for unknown ids or costs."""
    if kdf_id == KDF_RAW_KEY:
        return None
    if kdf_id == KDF_ARGON2ID:
        return Argon2idParams(*words)
    if kdf_id == KDF_SCRYPT:
        return ScryptParams(*words)
    raise ValueError(f"unknown key derivation id {kdf_id}")


@dataclass(frozen=True)
class Passphrase:
    """A passphrase and the KDF that turns it into a key (new salt per derivation)."""

    secret: bytes | str = field(repr=False)  # str is taken as UTF-8
    kdf: KdfParams = field(default_factory=Argon2idParams)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the passphrase is empty")

    @property
    def encoded(self) -> bytes:
        return self.secret.encode("utf-8") if isinstance(self.secret, str) else self.secret


@dataclass(frozen=True)
class SealingKey:
    """A master key made ready to seal: its AES key, its key check, and how it was derived."""

    aead_key: bytes = field(repr=False)  # HKDF(master, "…/aes-256-gcm")
    check: bytes  # HKDF(master, "…/key-check"): stored in every header
    kdf: KdfParams | None = None  # None: a raw key from a key file
    salt: bytes = NO_SALT

    @classmethod
    def from_key(cls, master: bytes) -> SealingKey:
        if len(master) != KEY_SIZE:
            raise ValueError(f"a key must be {KEY_SIZE} bytes, got {len(master)}")
        return cls(_hkdf(master, _AEAD_INFO, KEY_SIZE), _hkdf(master, _CHECK_INFO, CHECK_SIZE))

    @classmethod
    def from_passphrase(
        cls, passphrase: Passphrase, salt: bytes | None = None, kdf: KdfParams | None = None
    ) -> SealingKey:
        """Run the KDF (``kdf`` overrides the passphrase's, to open an existing file)."""
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        if len(salt) != SALT_SIZE:
            raise ValueError(f"a salt must be {SALT_SIZE} bytes, got {len(salt)}")
        kdf = kdf or passphrase.kdf
        base = cls.from_key(kdf.derive(passphrase.encoded, salt))
        return cls(base.aead_key, base.check, kdf, salt)


@dataclass(frozen=True)
class Header:
    """The authenticated header of a sealed file (format version 1)."""

    kdf: KdfParams | None
    salt: bytes
    key_check: bytes
    body_length: int
    nonce: bytes

    def to_bytes(self) -> bytes:
        kdf_id = KDF_RAW_KEY if self.kdf is None else self.kdf.kdf_id
        words = (0, 0, 0) if self.kdf is None else self.kdf.words()
        packed = _FIELDS.pack(
            MAGIC, FORMAT_VERSION, kdf_id, *words, self.salt, self.key_check,
            self.body_length, self.nonce,
        )  # fmt: skip
        return packed + _digest(packed)

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.body_length + TAG_SIZE


def seal(key: SealingKey, plaintext: bytes, context: bytes) -> bytes:
    """A complete sealed file: header ‖ AES-256-GCM(plaintext), AD = header ‖ ``context``.

    ``context`` binds the file to where it belongs (owner, name): opening it with another
    context fails as :class:`TamperedError`.
    """
    header = Header(key.kdf, key.salt, key.check, len(plaintext), os.urandom(NONCE_SIZE))
    head = header.to_bytes()
    return head + AESGCM(key.aead_key).encrypt(header.nonce, plaintext, head + context)


def read_header(data: bytes, source: str | Path) -> Header:
    """Check a sealed file's framing and header (no key needed); raise the matching error."""
    expected_prefix = MAGIC + bytes([FORMAT_VERSION])
    if len(data) < _PREFIX.size:
        if expected_prefix.startswith(data):
            raise TruncatedError(source, f"only {len(data)} bytes, the header needs {HEADER_SIZE}")
        raise UnsupportedFormatError(source, "not a fedrec sealed file (unknown magic)")
    magic, version = _PREFIX.unpack_from(data)
    ours = (magic, version) == (MAGIC, FORMAT_VERSION)
    if len(data) < HEADER_SIZE:
        if ours:
            raise TruncatedError(source, f"only {len(data)} bytes, the header needs {HEADER_SIZE}")
        _unsupported(source, magic, version)
    packed, digest = data[: _FIELDS.size], data[_FIELDS.size : HEADER_SIZE]
    if _digest(packed) != digest:
        repaired = expected_prefix + packed[_PREFIX.size :]
        if ours or _digest(repaired) == digest:  # our header, damaged (possibly its magic)
            raise TamperedError(source, "the header is damaged (its checksum does not match)")
        _unsupported(source, magic, version)
    if not ours:  # a foreign file whose bytes happen to carry a valid digest
        _unsupported(source, magic, version)
    _, _, kdf_id, w0, w1, w2, salt, check, body_length, nonce = _FIELDS.unpack(packed)
    try:
        kdf = kdf_from_header(kdf_id, (w0, w1, w2))
    except ValueError as err:
        raise UnsupportedFormatError(source, f"key derivation not supported: {err}") from err
    header = Header(kdf, salt, check, body_length, nonce)
    if len(data) < header.file_size:
        raise TruncatedError(source, f"{len(data)} bytes, the header promises {header.file_size}")
    if len(data) > header.file_size:
        extra = len(data) - header.file_size
        raise TamperedError(source, f"{extra} unexpected bytes after the authentication tag")
    return header


def open_sealed(data: bytes, key: SealingKey, context: bytes, source: str | Path) -> bytes:
    """The plaintext of a sealed file, or the error that says what is wrong with it."""
    header = read_header(data, source)
    if (header.kdf is None) != (key.kdf is None):
        raise WrongKeyError(
            source, f"sealed with {describe_kdf(header.kdf)}, opened with {describe_kdf(key.kdf)}"
        )
    if header.kdf != key.kdf or header.salt != key.salt:
        raise WrongKeyError(source, "the key was derived with another KDF cost or salt")
    if header.key_check != key.check:
        raise WrongKeyError(source, "sealed under a different key (the key check does not match)")
    try:
        return AESGCM(key.aead_key).decrypt(
            header.nonce, data[HEADER_SIZE:], data[:HEADER_SIZE] + context
        )
    except InvalidTag as err:
        raise TamperedError(
            source,
            "authentication failed: the contents were modified, or the file was moved or"
            " renamed from another owner or name",
        ) from err


def describe_kdf(kdf: KdfParams | None) -> str:
    if kdf is None:
        return "a key file"
    return f"a passphrase ({type(kdf).__name__.removesuffix('Params').lower()} {kdf.words()})"


class InsecureKeyFileError(PermissionError, ValueError):
    """A key file other users can read: refused, as ssh refuses such a private key."""


def create_key_file(path: str | Path) -> bytes:
    """Write a new random 32-byte key to ``path`` (mode 0600; never overwrites) and return it."""
    path = Path(path)
    key = os.urandom(KEY_SIZE)
    try:
        write_atomic(path, key, mode=0o600, exclusive=True)
    except FileExistsError as err:
        raise FileExistsError(
            f"refusing to overwrite the key file {path}: it may protect existing data"
        ) from err
    return key


def read_key_file(path: str | Path) -> bytes:
    """The 32-byte key in ``path``; refuse a file other users can read (like ssh does)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"key file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"key file {path} is not a regular file")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFileError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):04o}):"
            f" run chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"key file {path} holds {len(key)} bytes, expected {KEY_SIZE} random bytes as fedrec"
            " writes them: pass the right file, or a new path to create a fresh key"
        )
    return key


def load_or_create_key_file(path: str | Path) -> tuple[bytes, bool]:
    """(the key in ``path``, False), or (a new key written there, True) if it does not exist."""
    path = Path(path).expanduser()
    if path.exists():
        return read_key_file(path), False
    return create_key_file(path), True


def _digest(packed: bytes) -> bytes:
    return hashlib.sha256(packed).digest()[:DIGEST_SIZE]


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


def _unsupported(source: str | Path, magic: bytes, version: int) -> NoReturn:
    if magic != MAGIC:
        raise UnsupportedFormatError(source, "not a fedrec sealed file (unknown magic)")
    raise UnsupportedFormatError(
        source, f"format version {version}; this fedrec reads version {FORMAT_VERSION}"
    )
