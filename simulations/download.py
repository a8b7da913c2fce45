"""Download, verify and unpack the public MovieLens archives (``fedrec data download``).

:func:`download_dataset` streams the GroupLens zip into a temporary file next to the target,
checks its SHA-256 against :data:`DATASETS`, refuses archives with absolute or ``..`` member
paths (zip-slip), extracts into a staging folder and moves the data set folder into place. A
second call finds the folder complete and returns at once, without touching the network.
Only the standard library is used (``urllib``, ``zipfile``, ``hashlib``).
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetSpec",
    "DownloadError",
    "ProgressCallback",
    "UnsafeArchiveError",
    "dataset_spec",
    "download_dataset",
    "is_complete",
]

ProgressCallback = Callable[[int, int | None], None]
"""``on_progress(bytes_done, bytes_total)``; ``bytes_total`` is None without a Content-Length."""

_CHUNK = 1 << 16


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set lives and how to recognise a complete copy of it."""

    url: str
    sha256: str
    folder: str  # top-level folder inside the zip, and the folder returned under ``to``
    expected_files: tuple[str, ...]  # files that must exist in ``folder`` once extracted


DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c9a1bc4",
        folder="ml-100k",
        expected_files=("u.data", "u.item", "u.user"),
    ),
    "ml-1m": DatasetSpec(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        folder="ml-1m",
        expected_files=("ratings.dat", "movies.dat", "users.dat"),
    ),
}


class DownloadError(RuntimeError):
    """The archive could not be fetched (network failure, HTTP error status, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"could not download {url}: {reason}")


class ChecksumError(ValueError):
    """The downloaded archive does not have the expected SHA-256 (it has been deleted)."""

    def __init__(self, url: str, expected: str, got: str) -> None:
        self.url = url
        self.expected = expected
        self.got = got
        super().__init__(
            f"checksum mismatch for {url}: expected sha256 {expected}, got {got} "
            "(the download was deleted; retry, or check the url/sha256 you passed)"
        )


class UnsafeArchiveError(ValueError):
    """The archive has a member that would be written outside the target folder."""


def download_dataset(
    name: str,
    to: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Make sure data set ``name`` is unpacked under ``to`` and return its folder.

    ``url`` and ``sha256`` override the registry entry (mirrors, tests). If the folder already
    holds the expected files nothing is downloaded. Raises :class:`ValueError` for an unknown
    name, :class:`ChecksumError` / :class:`UnsafeArchiveError` (both ``ValueError``) for a bad
    archive and :class:`DownloadError` for network trouble.
    """
    spec = dataset_spec(name)
    to = Path(to)
    target = to / spec.folder
    if is_complete(target, spec):
        return target
    source = url if url is not None else spec.url
    _check_scheme(source)
    to.mkdir(parents=True, exist_ok=True)
    archive = _temp_path(to, f".{spec.folder}-", ".zip.part")
    try:
        digest = _fetch(source, archive, timeout, on_progress)
        expected = (sha256 if sha256 is not None else spec.sha256).lower()
        if digest != expected:
            raise ChecksumError(source, expected, digest)
        _extract(archive, to, spec)
    finally:
        archive.unlink(missing_ok=True)
    return target


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; :class:`ValueError` listing the known names if absent."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def is_complete(folder: Path, spec: DatasetSpec) -> bool:
    """True when ``folder`` holds every file of ``spec.expected_files``."""
    return all((folder / f).is_file() for f in spec.expected_files)


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")


def _temp_path(folder: Path, prefix: str, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=prefix, suffix=suffix, delete=False) as f:
        return Path(f.name)


def _fetch(url: str, dest: Path, timeout: float, on_progress: ProgressCallback | None) -> str:
    """Stream ``url`` into ``dest`` and return the SHA-256 hex digest of the bytes."""
    request = urllib.request.Request(url, headers={"User-Agent": "fedrec-downloader"})
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
    except urllib.error.HTTPError as exc:
        raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(url, str(exc.reason)) from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise DownloadError(url, f"{type(exc).__name__}: {exc}") from exc
    return digest.hexdigest()


def _extract(archive: Path, to: Path, spec: DatasetSpec) -> None:
    """Check every member, unpack into a staging folder, then move ``spec.folder`` into ``to``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _check_member(member)
            staging = Path(tempfile.mkdtemp(dir=to, prefix=f".{spec.folder}-unpack-"))
            try:
                zf.extractall(staging)
                _install(staging / spec.folder, to / spec.folder, spec)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive.name} is not a valid zip archive: {exc}") from exc


def _check_member(member: str) -> None:
    """Reject absolute paths, drive letters and ``..`` components (zip-slip)."""
    path = PurePosixPath(member.replace("\\", "/"))
    drive = len(member) > 1 and member[1] == ":"
    if path.is_absolute() or drive or ".." in path.parts:
        raise UnsafeArchiveError(f"unsafe member path in archive: {member!r}")


def _install(extracted: Path, target: Path, spec: DatasetSpec) -> None:
    if not is_complete(extracted, spec):
        missing = [f for f in spec.expected_files if not (extracted / f).is_file()]
        raise ValueError(f"archive has no {spec.folder}/{', '.join(missing)}")
    if target.exists():  # a partial earlier copy: add/overwrite, never delete other files
        shutil.copytree(extracted, target, dirs_exist_ok=True)
    else:
        extracted.rename(target)
