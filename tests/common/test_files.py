"""Tests for fedrec.common.files: the one atomic writer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedrec.common import files
from fedrec.common.files import append_private, write_atomic


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "f.bin"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and _leftovers(path.parent) == []
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # created folders are private


def test_a_failed_rename_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.bin"
    write_atomic(path, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_exclusive_never_overwrites_and_mode_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "key"
    old_umask = os.umask(0)  # whatever the umask, the mode given is the mode written
    try:
        write_atomic(path, b"k" * 32, mode=0o600, exclusive=True)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_atomic(path, b"other", exclusive=True)
    assert path.read_bytes() == b"k" * 32 and _leftovers(tmp_path) == []


def test_a_failed_exclusive_write_gives_the_name_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "key", b"k" * 32, mode=0o600, exclusive=True)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no empty key file left to be mistaken for one


def test_a_private_append_is_owner_only_even_under_a_loose_umask(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    old = os.umask(0o022)
    try:
        append_private(log, "a\n")
        log.chmod(0o644)  # a copy someone made readable: the next append narrows it again
        append_private(log, "b\n")
    finally:
        os.umask(old)
    assert log.read_text() == "a\nb\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
