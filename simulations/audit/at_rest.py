"""Encryption at rest, checked from the files themselves: no key needed, nothing decrypted.

A run that keeps data on disk names its sealed folders (``shard-dir``: each user's encrypted
shard; ``state-dir``: each device's user row and DP ledger). :func:`inspect_folder` reads the
header of every file below such a folder (``fedrec.common.crypto.read_header``: magic,
version, the header's checksum, the promised length) and reports the cipher, each KDF and
its parameters, the key fingerprints (the first 16 hex digits of the header's key-check value,
a one-way HKDF output of the key: one fingerprint per key file, one per salt for a
passphrase), rotations left unfinished (``fedrec client rotate-key``'s marker), and any file
that is not a sealed file or is damaged. :func:`inspect_key_file` checks the key file: its
mode (0600) and that it lives outside the folders it protects.
"""

from __future__ import annotations

import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.client.secure_store import ROTATION_MARKER, SUFFIX
from fedrec.common.crypto import SealedFileError, describe_kdf, read_header

__all__ = ["CIPHER", "KeyFile", "SealedFolder", "inspect_folder", "inspect_key_file"]

CIPHER = "AES-256-GCM (key from HKDF-SHA256)"
LISTED = 20  # file names listed per problem (the counts are complete)


@dataclass(frozen=True)
class SealedFolder:
    path: str
    exists: bool
    files: int = 0
    sealed: int = 0
    bytes: int = 0
    kdfs: dict[str, int] = field(default_factory=dict)  # describe_kdf(...) -> files
    key_fingerprints: dict[str, int] = field(default_factory=dict)  # fingerprint -> files
    not_sealed: tuple[str, ...] = ()  # files that are not sealed files (first LISTED)
    not_sealed_count: int = 0
    damaged: tuple[str, ...] = ()  # sealed files whose header fails its checks
    damaged_count: int = 0
    rotations_pending: tuple[str, ...] = ()  # folders with an unfinished key rotation

    @property
    def problems(self) -> list[str]:
        found = []
        if not self.exists:
            found.append(f"{self.path} does not exist")
        if self.not_sealed_count:
            found.append(
                f"{self.not_sealed_count} files are not sealed (e.g. {self.not_sealed[0]})"
            )
        if self.damaged_count:
            found.append(f"{self.damaged_count} sealed files are damaged (e.g. {self.damaged[0]})")
        return found

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.rotations_pending:
            found.append(
                f"a key rotation is unfinished in {len(self.rotations_pending)} folders"
                f" (e.g. {self.rotations_pending[0]}): rerun rotate-key"
            )
        raw = self.kdfs.get(describe_kdf(None), 0)
        if raw and len(self.key_fingerprints) > 1 and raw == self.sealed:
            found.append(f"{len(self.key_fingerprints)} different key files seal this folder")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "cipher": CIPHER,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def inspect_folder(folder: str | Path) -> SealedFolder:
    """The header of every file below ``folder`` (see the module docstring)."""
    root = Path(folder)
    if not root.is_dir():
        return SealedFolder(path=str(root), exists=False)
    kdfs: Counter[str] = Counter()
    fingerprints: Counter[str] = Counter()
    not_sealed, damaged, pending = [], [], []
    files = sealed = size = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(root))
        if path.name == ROTATION_MARKER:
            pending.append(str(path.parent.relative_to(root)))
            continue
        files += 1
        data = path.read_bytes()
        size += len(data)
        if not path.name.endswith(SUFFIX):
            not_sealed.append(name)
            continue
        try:
            header = read_header(data, path)
        except SealedFileError:
            damaged.append(name)
            continue
        sealed += 1
        kdfs[describe_kdf(header.kdf)] += 1
        fingerprints[header.key_check.hex()[:16]] += 1
    return SealedFolder(
        path=str(root),
        exists=True,
        files=files,
        sealed=sealed,
        bytes=size,
        kdfs=dict(kdfs),
        key_fingerprints=dict(fingerprints),
        not_sealed=tuple(not_sealed[:LISTED]),
        not_sealed_count=len(not_sealed),
        damaged=tuple(damaged[:LISTED]),
        damaged_count=len(damaged),
        rotations_pending=tuple(pending[:LISTED]),
    )


@dataclass(frozen=True)
class KeyFile:
    path: str
    exists: bool
    mode: str = ""
    private: bool = False  # no permission for group or others
    outside: bool = True  # not inside any folder it protects

    @property
    def problems(self) -> list[str]:
        if not self.exists:
            return [f"the key file {self.path} does not exist here"]
        found = [] if self.private else [f"the key file {self.path} has mode {self.mode}"]
        if not self.outside:
            found.append(f"the key file {self.path} lies inside a folder it protects")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "problems": self.problems}


def inspect_key_file(path: str | Path, folders: list[str]) -> KeyFile:
    key = Path(path)
    if not key.is_file():
        return KeyFile(path=str(key), exists=False)
    mode = key.stat().st_mode
    inside = any(key.resolve().is_relative_to(Path(f).resolve()) for f in folders)
    return KeyFile(
        path=str(key),
        exists=True,
        mode=f"{stat.S_IMODE(mode):04o}",
        private=not mode & (stat.S_IRWXG | stat.S_IRWXO),
        outside=not inside,
    )
