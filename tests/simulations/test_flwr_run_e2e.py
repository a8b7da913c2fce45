"""User story (a Flower user): the repository's own app runs under ``flwr run .``.

Flower's CLI starts a local simulation SuperLink, installs the app bundle and runs the
ServerApp and ClientApps by module path (``[tool.flwr.app.components]``). With its defaults
(``data = "synthetic"``, no catalog set) the ServerApp builds the generator's catalog, and so
does each simulated node; a federation of the wrong size is a one-line error in Flower's
log, not a traceback. The SuperLink Flower launched (detached, in its own session) is
stopped at the end, with everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def flwr_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for ``flwr``: its own FLWR_HOME and ports; the local SuperLink it
    launches is killed (its whole session) at the end."""
    if shutil.which("flwr", path=str(BIN)) is None:
        pytest.skip("flwr is not installed beside this interpreter")
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    try:
        yield env
    finally:
        for pid in _processes_naming(str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _processes_naming(str(home)) and time.monotonic() < deadline:
            time.sleep(0.5)


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _flwr_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), "run", ".", *args, "--stream"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )


def test_the_app_runs_with_its_defaults_and_a_wrong_size_is_one_line(
    flwr_home: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "run"  # the ServerApp's working folder is the SuperLink's: absolute
    done = _flwr_run(
        flwr_home,
        "--run-config",
        f"num-rounds=2 synthetic-users=30 clients-per-round=10 out-dir='{out}'",
        "--federation-config",
        "num-supernodes=30",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert all(r["clients_replied"] == 10 for r in metrics["rounds"][1:])
    assert (out / "catalog.npz").exists()  # the generator's, built by the ServerApp
    # Flower's default federation has 2 SuperNodes, the synthetic population 500 users
    wrong = _flwr_run(flwr_home)
    said = wrong.stdout + wrong.stderr
    assert "fedrec: data = synthetic has 500 users" in said and "num-supernodes=500" in said
    assert "Traceback" not in said
