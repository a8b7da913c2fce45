"""Tests for fedrec.deploy.processes: what a command starts, it stops, children included."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from fedrec.deploy.processes import Service, ServiceError, Services, interrupt_on_sigterm

# A parent that starts a child in a session of its own (as Flower's SuperExec does), prints
# the child's pid and sleeps; the child sleeps too.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"  # a zombie has exited


def _child_pid(log: Path) -> int:
    deadline = time.monotonic() + 30
    while not log.exists() or not log.read_text().strip():
        assert time.monotonic() < deadline, "the parent never printed its child's pid"
        time.sleep(0.05)
    return int(log.read_text().split()[0])


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_stop_ends_the_process_and_a_child_in_another_session(tmp_path: Path) -> None:
    service = Service("parent", [sys.executable, "-c", PARENT], tmp_path / "parent.log")
    child = _child_pid(tmp_path / "parent.log")
    assert os.getpgid(child) != os.getpgid(service.pid)  # killpg alone would miss it
    service.stop(grace=5)
    assert not service.running()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_services_stop_everything_when_the_block_fails(tmp_path: Path) -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    with pytest.raises(RuntimeError, match="boom"), Services() as services:
        started = [services.start(f"s{i}", sleep, tmp_path / f"s{i}.log") for i in range(2)]
        raise RuntimeError("boom")
    assert not any(s.running() for s in started)


def test_wait_until_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('bad config: no such port'); raise SystemExit(3)"]
    service = Service("link", argv, tmp_path / "link.log")
    with pytest.raises(ServiceError, match=r"(?s)link exited with code 3 before its port.*bad"):
        service.wait_until(lambda: False, 30, "its port")
    service.stop()
    sleeper = Service("slow", [sys.executable, "-c", "import time; time.sleep(60)"],
                      tmp_path / "slow.log")  # fmt: skip
    with pytest.raises(ServiceError, match="no readiness after 0 s"):
        sleeper.wait_until(lambda: False, 0.3, "readiness")
    sleeper.stop()


def test_sigterm_becomes_keyboard_interrupt_inside_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_missing_program_is_a_service_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="cannot start ghost"):
        Service("ghost", [str(tmp_path / "nope")], tmp_path / "ghost.log")
