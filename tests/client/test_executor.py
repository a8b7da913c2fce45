"""Tests for fedrec.client.executor: its settings, its wake-ups and when it recycles itself.
What it does with a task is tested through a real SuperNode (tests/deploy/test_executor_e2e.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from fedrec.client.executor import RECYCLE_EXIT, Executor, ExecutorSettings, current_rss_mib


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime_api": "localhost"}, "HOST:PORT"),
        ({"poll": 2.0, "idle_poll": 1.0}, "poll <= idle-poll"),
        ({"max_tasks": -1}, "max-tasks"),
    ],
)
def test_bad_settings_say_which(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExecutorSettings(**kwargs)  # type: ignore[arg-type]


def test_the_wake_file_growing_wakes_it_at_once(tmp_path: Path) -> None:
    log = tmp_path / "supernode.log"
    log.write_text("started\n")
    executor = Executor(ExecutorSettings(idle_poll=5.0, wake_file=log))
    executor._wait(0.0)  # the first look only learns the size
    threading.Timer(0.3, lambda: log.write_text("started\nReceiving: train message\n")).start()
    started = time.monotonic()
    executor._wait(0.0)
    assert 0.25 < time.monotonic() - started < 1.0  # woken by the write (0.1 s looks), not 5 s


def test_without_news_it_claims_every_idle_poll(tmp_path: Path) -> None:
    log = tmp_path / "supernode.log"
    log.write_text("x")
    executor = Executor(ExecutorSettings(poll=0.1, idle_poll=0.3, wake_file=log))
    executor._wait(0.0)
    started = time.monotonic()
    executor._wait(0.0)
    assert 0.25 < time.monotonic() - started < 0.6


def test_it_recycles_after_its_task_count_or_its_memory() -> None:
    executor = Executor(ExecutorSettings(max_tasks=3))
    executor.tasks = 2
    assert executor._recycle_reason() == ""
    executor.tasks = 3
    assert "3 tasks" in executor._recycle_reason()
    grown = Executor(ExecutorSettings(max_rss_mib=1.0))  # any Python process is past 1 MiB
    assert "resident memory" in grown._recycle_reason() and current_rss_mib() > 1.0
    assert RECYCLE_EXIT not in (0, 1, 2)  # a code of its own, which supervisors restart at once


def test_it_ends_when_its_supervisor_is_gone() -> None:
    # a parent pid that is not this process's parent: as after the supervisor died
    executor = Executor(ExecutorSettings(parent_pid=os.getppid() + 1_000_000))
    events: list[str] = []
    executor.on_event = events.append
    started = time.monotonic()
    assert executor.serve() == 0 and time.monotonic() - started < 1.0
    assert any("supervisor" in e for e in events)


def test_it_stops_on_request_while_its_supernode_is_unreachable() -> None:
    # nothing listens on the port: each claim fails at once (no endless retry inside it)
    executor = Executor(ExecutorSettings(runtime_api="127.0.0.1:9", poll=0.1, idle_poll=0.2))
    events: list[str] = []
    executor.on_event = events.append
    threading.Timer(0.5, executor.stop).start()
    started = time.monotonic()
    assert executor.serve() == 0 and time.monotonic() - started < 3.0
    assert sum("does not answer" in e for e in events) == 1  # said once, not per retry
