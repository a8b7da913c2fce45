"""Starting and stopping the long-lived processes of a deployment (SuperLink, SuperNodes).

Each process starts in a session of its own, so that stopping it also stops what it spawned
(a SuperLink's SuperExec and ServerApp, a SuperNode's ClientApp): :meth:`Service.stop` sends
SIGTERM to the whole group, waits, then SIGKILL. :class:`Services` stops every service it
started when its ``with`` block ends, whichever way it ends (an error, Ctrl-C, SIGTERM through
:func:`interrupt_on_sigterm`). Output goes to a log file per process, whose last lines are what
an error message quotes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

__all__ = [
    "Service",
    "ServiceError",
    "Services",
    "deployment_env",
    "flower_command",
    "free_port",
    "interrupt_on_sigterm",
    "log_tail",
]


def flower_command(name: str) -> str:
    """The path of a Flower executable of this environment (``flower-superlink``, ``flwr``)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ServiceError(f"{name} not found beside {sys.executable} or on PATH: install flwr")
    return found


def deployment_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process fedrec starts: nothing is installed at run time
    (flwr would otherwise pull the app's dependencies with uv), no telemetry."""
    env = dict(os.environ)
    # Flower's processes start their helpers (flower-superexec, flwr-clientapp) by name
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH", "")]))
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.update(extra or {})
    return env


class ServiceError(RuntimeError):
    """A process did not start, did not get ready, or exited when it should have run."""


class Service:
    """One started process (its own session and process group) and its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.name, self.argv, self.log = name, list(argv), Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[bytes] = self.log.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as err:
            self._out.close()
            raise ServiceError(f"cannot start {name} ({self.argv[0]}): {err}") from err
        self._family: set[tuple[int, int]] = set()  # (pid, start time) of its descendants

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until(
        self, ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
    ) -> None:
        """Poll ``ready`` until it holds; ServiceError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running():
                raise ServiceError(
                    f"{self.name} exited with code {self.returncode} before {what}:\n"
                    + log_tail(self.log)
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name}: no {what} after {timeout:.0f} s:\n" + log_tail(self.log)
                )
            time.sleep(interval)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group and to every descendant, also those Flower
        starts in sessions of their own (SuperExec's ServerApp and ClientApp processes)."""
        self._family |= _descendants(self.process.pid)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
        for pid, started in self._family:
            if _start_time(pid) == started:  # still that process, not a reused pid
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds; the exit code."""
        if self.running():
            self.signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        self.signal(signal.SIGKILL)  # children that outlived their parent, too
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._out.close()
        return self.process.returncode


class Services:
    """The processes a command started; ``with Services() as s:`` stops them all on exit."""

    def __init__(self) -> None:
        self._started: list[Service] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Service:
        service = Service(name, argv, log, env=env, cwd=cwd)
        self._started.append(service)
        return service

    def forget(self, service: Service) -> None:
        """``service`` was stopped by the caller (a restart): no longer ours to stop."""
        self._started.remove(service)

    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._started))

    def stop_all(self, grace: float = 10.0) -> None:
        for service in reversed(self._started):  # devices first, then the link
            if service.running():
                service.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in reversed(self._started):
            service.stop(max(0.0, deadline - time.monotonic()))
        self._started.clear()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop_all()


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, so cleanup runs as on Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_tail(path: str | Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log (what an error message shows), indented."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"    (no log at {path})"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in tail) + f"\n    (full log: {path})"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's pick; bind it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux; None elsewhere or if gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # starttime: field 22 of stat


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``root`` (empty where /proc is not)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # ppid: field 4
    found, todo = set(), list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _start_time(pid)
        if started is not None:
            found.add((pid, started))
        todo.extend(children.get(pid, []))
    return found
