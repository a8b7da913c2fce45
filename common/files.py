"""Durable file writes: the one atomic writer every part of fedrec uses.

:func:`write_atomic` writes to a temporary file in the destination's folder, flushes and
fsyncs it, moves it into place and fsyncs the folder, so that a crash at any point leaves the
old file or the new one, whole, never a mix (a stray ``.<name>.*.tmp`` may remain and is
ignored). With ``exclusive=True`` the destination is first claimed with an exclusive create,
which fails if it exists: key files are created this way, so an existing key is never
overwritten (a crash in between leaves an empty file, which no reader takes for a key).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path

__all__ = ["append_private", "fsync_dir", "shred", "write_atomic"]


def write_atomic(
    path: str | Path, data: bytes, *, mode: int | None = None, exclusive: bool = False
) -> Path:
    """Replace (or, ``exclusive``, create) ``path`` with ``data``; ``mode`` sets its permissions
    whatever the umask (e.g. 0o600 for a key). Missing parent folders are created (0700)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if exclusive:  # claim the name: FileExistsError if it is taken, nothing written
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode or 0o600))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if exclusive:  # give the name back: nothing was written under it
            with suppress(FileNotFoundError):
                os.unlink(path)
        raise
    fsync_dir(path.parent)
    return path


def append_private(path: str | Path, line: str) -> None:
    """Append ``line`` to ``path``, a file only its owner may read or write (0600 whatever
    the umask, also when it already existed with wider permissions): logs that hold
    per-device results. One short write: an atomic append."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def shred(path: str | Path) -> None:
    """Overwrite a file with random bytes, sync it, and unlink it (a key, a sealed object).

    On copy-on-write or wear-levelled storage the old blocks may survive the overwrite; the
    contents are sealed, so destroying the key is what makes them unreadable."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the folder's own data)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
