"""Tests for the data set downloader, against a local HTTP server only (never the internet).

The archives are built here from a few made-up lines; they are not MovieLens files.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedrec.simulations.download import (
    DATASETS,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
)

FAKE_FILES = {
    "ml-100k/u.data": "1\t10\t4\t881250949\n2\t20\t3\t881250950\n",
    "ml-100k/u.item": "10|Made Up Film (1990)|01-Jan-1990||http://example.invalid|0|1\n",
    "ml-100k/u.user": "1|30|F|writer|12345\n2|40|M|other|54321\n",
    "ml-100k/README": "synthetic test archive\n",
}


@dataclass
class FakeServer:
    """Serves ``files[path] -> bytes``; anything else is a 404. Counts every request."""

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"


def _handler(state: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _zip(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(zipfile.ZipInfo(name), text)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _serve(server: FakeServer, members: dict[str, str]) -> tuple[str, str]:
    data = _zip(members)
    server.files["ml-100k.zip"] = data
    return server.url("ml-100k.zip"), _sha(data)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_registry_has_movielens() -> None:
    assert DATASETS["ml-100k"].folder == "ml-100k"
    assert DATASETS["ml-100k"].url.endswith("/ml-100k.zip")
    assert DATASETS["ml-1m"].folder == "ml-1m"
    assert all(len(spec.sha256) == 64 for spec in DATASETS.values())


def test_download_extracts_and_reports_progress(server: FakeServer, tmp_path: Path) -> None:
    url, sha = _serve(server, FAKE_FILES)
    progress: list[tuple[int, int | None]] = []
    folder = download_dataset(
        "ml-100k", tmp_path, url=url, sha256=sha, on_progress=lambda d, t: progress.append((d, t))
    )
    assert folder == tmp_path / "ml-100k"
    assert (folder / "u.data").read_text() == FAKE_FILES["ml-100k/u.data"]
    assert (folder / "README").is_file()
    assert _leftovers(tmp_path) == ["ml-100k"]  # no temp zip or staging folder left
    size = len(server.files["ml-100k.zip"])
    assert progress and progress[-1] == (size, size)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_second_call_does_not_download_again(server: FakeServer, tmp_path: Path) -> None:
    url, sha = _serve(server, FAKE_FILES)
    first = download_dataset("ml-100k", tmp_path, url=url, sha256=sha)
    second = download_dataset("ml-100k", tmp_path, url=url, sha256=sha)
    assert first == second
    assert len(server.requests) == 1


def test_incomplete_folder_is_completed(server: FakeServer, tmp_path: Path) -> None:
    url, sha = _serve(server, FAKE_FILES)
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("partial\n")
    (tmp_path / "ml-100k" / "notes.txt").write_text("mine\n")
    folder = download_dataset("ml-100k", tmp_path, url=url, sha256=sha)
    assert (folder / "u.data").read_text() == FAKE_FILES["ml-100k/u.data"]
    assert (folder / "u.user").is_file()
    assert (folder / "notes.txt").read_text() == "mine\n"  # never deletes the user's files
    assert len(server.requests) == 1


def test_checksum_mismatch_deletes_the_download(server: FakeServer, tmp_path: Path) -> None:
    url, sha = _serve(server, FAKE_FILES)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download_dataset("ml-100k", tmp_path, url=url, sha256=wrong)
    assert isinstance(info.value, ValueError)
    assert wrong in str(info.value) and sha in str(info.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-100k/../../evil.txt", "/tmp/evil.txt"])
def test_zip_slip_member_is_rejected(server: FakeServer, tmp_path: Path, evil: str) -> None:
    target = tmp_path / "data"
    url, sha = _serve(server, {**FAKE_FILES, evil: "gotcha\n"})
    with pytest.raises(UnsafeArchiveError, match="unsafe member path"):
        download_dataset("ml-100k", target, url=url, sha256=sha)
    assert _leftovers(target) == []  # nothing extracted, temp zip removed
    assert not (tmp_path / "evil.txt").exists()


def test_archive_without_expected_files_is_an_error(server: FakeServer, tmp_path: Path) -> None:
    url, sha = _serve(server, {"ml-100k/u.data": FAKE_FILES["ml-100k/u.data"]})
    with pytest.raises(ValueError, match=r"u\.item"):
        download_dataset("ml-100k", tmp_path, url=url, sha256=sha)
    assert _leftovers(tmp_path) == []


def test_not_a_zip_is_an_error(server: FakeServer, tmp_path: Path) -> None:
    data = b"<html>not a zip</html>"
    server.files["ml-100k.zip"] = data
    with pytest.raises(ValueError, match="not a valid zip"):
        download_dataset("ml-100k", tmp_path, url=server.url("ml-100k.zip"), sha256=_sha(data))
    assert _leftovers(tmp_path) == []


def test_http_404_is_a_clear_error(server: FakeServer, tmp_path: Path) -> None:
    url = server.url("missing.zip")
    with pytest.raises(DownloadError, match="404") as info:
        download_dataset("ml-100k", tmp_path, url=url, sha256="0" * 64)
    assert info.value.url == url and url in str(info.value)
    assert _leftovers(tmp_path) == []


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # grab a free port, then close it so nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-100k.zip"
    with pytest.raises(DownloadError, match="could not download") as info:
        download_dataset("ml-100k", tmp_path, url=url, sha256="0" * 64, timeout=5)
    assert url in str(info.value)
    assert _leftovers(tmp_path) == []


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'ml-42'") as info:
        download_dataset("ml-42", tmp_path)
    assert "ml-100k" in str(info.value) and "ml-1m" in str(info.value)
    assert _leftovers(tmp_path) == []


def test_non_http_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        download_dataset("ml-100k", tmp_path, url="file:///etc/passwd", sha256="0" * 64)
