"""The warm executor: one long-lived process per device runs every fedrec ClientApp task.

Flower 1.42's SuperNode starts a fresh ``flwr-clientapp`` process for every message (its
default ``--isolation subprocess``): it imports Flower's CLI and the app, runs one message and
exits, 3–5 s of CPU and ~400 MiB for work that takes 0.01–0.06 s in a running process. With
``flower-supernode --isolation process`` the SuperNode spawns nothing and waits for an
executor to claim its tasks; ``fedrec client executor`` (started by ``fedrec client join`` and
``fedrec deploy local`` beside the SuperNode) is that executor:

1. claim the next ClientApp task (``AcquireTask``): as soon as the SuperNode's log grows
   (``wake_file``: it logs each message it receives) and every ``idle_poll`` seconds, or,
   without a wake file, every ``poll`` seconds while a run is going and every ``idle_poll``
   seconds otherwise;
2. pull its input, read which ClientApp its FAB names; fedrec's own apps (``fedrec.client.*``)
   run here, imported once; a task for another app goes to a fresh process, as Flower runs it
   (the first of a FAB after its input was pulled, :func:`~fedrec.client.flower_tasks.hand_over`;
   later ones straight to Flower's ``flwr-clientapp``);
3. run the app with heartbeats, push the reply (an exception: Flower's error reply) and the
   task's status and context, exactly as Flower's runner does;
4. recycle itself (exit with :data:`RECYCLE_EXIT`, its supervisor starts a new one) after
   ``max_tasks`` tasks or when its resident memory passes ``max_rss_mib``.

The Flower calls live in client/flower_tasks.py. A crash of this process loses only the task
it was running: the SuperNode answers it with Flower's "ClientApp crashed" error once its
heartbeats stop, and the supervisor (``join``, ``deploy local``) starts a new executor.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fedrec.client.flower_tasks import (
    COMPLETED,
    FAILED,
    TaskClaimer,
    Ticket,
    check_flower_version,
    clientapp_ref,
    error_reply,
    hand_over,
    launch_flower_clientapp,
)

__all__ = ["RECYCLE_EXIT", "WARM_APPS", "Executor", "ExecutorSettings", "current_rss_mib"]

RECYCLE_EXIT = 75  # "start me again": the supervisor restarts at once, without backoff
WARM_APPS = ("fedrec.client.",)  # ClientApps this process runs in-process (module prefixes)

WAKE_CHECK = 0.1  # seconds between looks at the wake file's size

log = logging.getLogger("fedrec.executor")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


@dataclass(frozen=True)
class ExecutorSettings:
    runtime_api: str = "127.0.0.1:9094"  # the SuperNode's Runtime API (its --port)
    root_certificates: Path | None = None  # a Runtime API served over TLS (not by default)
    # Seconds between claims while a run is going (a task in the last ``busy_window``
    # seconds), and otherwise. A claim costs ~3 ms of CPU (SuperNode and executor together),
    # so polling every 0.05 s would cost a device ~0.06 s of CPU per second; every 0.25 s it
    # is ~0.012 s, and the SuperNode itself checks its SuperLink only every 3 s.
    poll: float = 0.25
    idle_poll: float = 1.0  # flower-superexec's own interval
    busy_window: float = 30.0
    # The SuperNode's log: when set, the executor claims as soon as the log grows (the
    # SuperNode logs every message it receives) and otherwise only every ``idle_poll``: a
    # file's size costs microseconds to read, a claim milliseconds (at 20 devices on two
    # cores the claims were a third of the devices' CPU)
    wake_file: Path | None = None
    # The supervisor's pid (``join``, ``deploy local``): the executor ends when it is gone,
    # as Flower's own processes do with --parent-pid (no executor outlives its device)
    parent_pid: int | None = None
    max_tasks: int = 0  # recycle after this many tasks (0: never)
    max_rss_mib: float = 0.0  # recycle when resident memory passes this (0: never)

    def __post_init__(self) -> None:
        host, sep, port = self.runtime_api.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--runtime-api must be HOST:PORT, got {self.runtime_api!r}")
        if not 0 < self.poll <= self.idle_poll:
            raise ValueError(f"poll intervals must satisfy 0 < poll <= idle-poll, got"
                             f" {self.poll} and {self.idle_poll}")  # fmt: skip
        if self.max_tasks < 0 or self.max_rss_mib < 0:
            raise ValueError("--max-tasks and --max-rss-mib must be >= 0 (0: no limit)")


def current_rss_mib() -> float:
    """This process's resident memory now (Linux /proc; the peak elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Executor:
    """Claims and runs tasks until stopped (returns 0) or due for recycling (RECYCLE_EXIT)."""

    def __init__(
        self, settings: ExecutorSettings, on_event: Callable[[str], None] = log.info
    ) -> None:
        check_flower_version()
        self.settings = settings
        self.on_event = on_event
        certificates = (
            Path(settings.root_certificates).read_bytes() if settings.root_certificates else None
        )
        self.claimer = TaskClaimer(settings.runtime_api, certificates)
        self.apps: dict[str, Any] = {}  # ref -> the imported ClientApp
        self.foreign: set[str] = set()  # FAB hashes of other apps (Flower's process runs them)
        self.children: list[Any] = []  # their processes, reaped as they end
        self.tasks = 0
        self._stop = False
        self._wake_size = -1

    def preload(self, ref: str = "fedrec.client.app:app") -> None:
        """Import fedrec's ClientApp now, before the first task waits for it."""
        self._app(ref)

    def stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop = True

    def serve(self) -> int:
        last_task, unreachable = float("-inf"), False
        self.on_event(f"executor ready on {self.settings.runtime_api}")
        while not self._stop:
            if self.settings.parent_pid is not None and os.getppid() != self.settings.parent_pid:
                self.on_event(f"its supervisor (pid {self.settings.parent_pid}) is gone: stopping")
                break
            self._reap()
            try:
                ticket = self.claimer.acquire()
                unreachable = False
            except Exception as error:  # the SuperNode restarting: keep trying, say it once
                if not unreachable:
                    self.on_event(f"the Runtime API does not answer ({type(error).__name__}):"
                                  f" {error}; retrying")  # fmt: skip
                ticket, unreachable = None, True
                time.sleep(self.settings.idle_poll)
            if ticket is None:
                self._wait(last_task)
                continue
            self.run_task(ticket)
            last_task = time.monotonic()
            self.tasks += 1
            if reason := self._recycle_reason():
                self.on_event(f"recycling: {reason}")
                self._reap(wait=True)
                return RECYCLE_EXIT
        self._reap(wait=True)
        self.claimer.close()
        return 0

    def run_task(self, ticket: Ticket) -> None:
        """One task, start to end; never raises (an error is the task's error reply)."""
        if ticket.fab_hash in self.foreign:  # another app: Flower's own per-message process
            self.children.append(
                launch_flower_clientapp(
                    self.settings.runtime_api, ticket, self.settings.root_certificates
                )
            )
            return
        task = self.claimer.session(ticket)
        started, ref = time.perf_counter(), ""
        message, context = None, None
        sub_status, details, reply = FAILED, "ClientApp task failed due to unknown reason", None
        try:
            with task.heartbeats():
                try:
                    fab, raw = task.claim_input()
                    ref = clientapp_ref(fab)
                    if not ref.startswith(WARM_APPS):
                        self.foreign.add(ticket.fab_hash)
                        self.on_event(f"task {ticket.task_id}: app {ref!r} runs in its own process")
                        self.children.append(
                            hand_over(
                                self.settings.runtime_api,
                                ticket,
                                raw,
                                self.settings.root_certificates,
                            )
                        )
                        return
                    taken = task.pull_input()
                    message, context = taken.message, taken.context
                    log.info("task %d (run %d): %s started", ticket.task_id, ticket.run_id, ref)
                    reply = self._app(ref)(message=message, context=context)
                    sub_status, details = COMPLETED, ""
                except Exception as error:
                    log.exception("ClientApp raised an exception")
                    reply, details = error_reply(message, error)
                if task.cancelled.is_set():  # stopped meanwhile (flwr stop): nothing to push
                    return
                if reply is not None and context is not None:
                    try:
                        task.push_reply(reply, context)
                    except Exception as error:
                        self.on_event(f"task {ticket.task_id}: pushing its reply failed: {error}")
                        sub_status, details = FAILED, f"pushing the reply failed: {error}"
                task.finish(context, sub_status, details)
                log.info(
                    "task %d: %s in %.3f s%s", ticket.task_id, sub_status,
                    time.perf_counter() - started, f" ({details})" if details else "",
                )  # fmt: skip
        finally:
            task.close()

    def _wait(self, last_task: float) -> None:
        """Until the next claim: the wake file's growth, else the poll interval."""
        s = self.settings
        if s.wake_file is None:
            recent = time.monotonic() - last_task < s.busy_window
            time.sleep(s.poll if recent else s.idle_poll)
            return
        until = time.monotonic() + s.idle_poll
        while not self._stop and time.monotonic() < until:
            size = _size(s.wake_file)
            if size != self._wake_size:
                self._wake_size = size
                return
            time.sleep(WAKE_CHECK)

    def _app(self, ref: str) -> Any:
        if ref not in self.apps:
            module, _, attribute = ref.partition(":")
            self.apps[ref] = getattr(importlib.import_module(module), attribute or "app")
        return self.apps[ref]

    def _recycle_reason(self) -> str:
        s = self.settings
        if s.max_tasks and self.tasks >= s.max_tasks:
            return f"{self.tasks} tasks run (--max-tasks {s.max_tasks})"
        if s.max_rss_mib and (rss := current_rss_mib()) > s.max_rss_mib:
            return f"resident memory {rss:.0f} MiB > --max-rss-mib {s.max_rss_mib:g}"
        return ""

    def _reap(self, wait: bool = False) -> None:
        for child in list(self.children):
            if wait:
                child.wait()
            if child.poll() is not None:
                self.children.remove(child)


def run_executor(settings: ExecutorSettings, on_event: Callable[[str], None] = log.info) -> int:
    """``fedrec client executor``: serve until SIGINT/SIGTERM (0) or recycling."""
    executor = Executor(settings, on_event)
    executor.preload()
    signal.signal(signal.SIGTERM, executor.stop)
    signal.signal(signal.SIGINT, executor.stop)
    return executor.serve()


def main(argv: list[str] | None = None) -> int:
    """``python -m fedrec.client.executor``: what ``join`` and ``deploy local`` start (fewer
    imports than the ``fedrec`` command line, whose ``fedrec client executor`` is the same)."""
    import argparse

    parser = argparse.ArgumentParser(prog="fedrec-executor", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api", default=ExecutorSettings.runtime_api)
    parser.add_argument("--root-certificates", type=Path, default=None)
    parser.add_argument("--max-tasks", type=int, default=0)
    parser.add_argument("--max-rss-mib", type=float, default=0.0)
    parser.add_argument("--wake-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per claim
    try:
        settings = ExecutorSettings(
            runtime_api=args.runtime_api,
            root_certificates=args.root_certificates,
            max_tasks=args.max_tasks,
            max_rss_mib=args.max_rss_mib,
            wake_file=args.wake_file,
            parent_pid=args.parent_pid,
        )
        return run_executor(settings)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
