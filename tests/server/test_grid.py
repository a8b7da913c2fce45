"""Tests for fedrec.server.grid: a deployed stage closes when it is answered."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from flwr.serverapp import Grid

from fedrec.server.grid import PromptGrid


class Link:
    """A link whose node i replies ``arrivals[i]`` seconds after the push (None: never), on
    a fake clock that only the grid's sleeps advance."""

    def __init__(self, arrivals: list[float | None]) -> None:
        self.arrivals = arrivals
        self.now = 0.0
        self.pulls = 0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        ready = []
        for message_id in ids:
            at = self.arrivals[int(message_id[1:])]
            if at is not None and at <= self.now:
                ready.append(
                    SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id))
                )
        return ready


def _stage(
    arrivals: list[float | None], timeout: float | None = 600.0, **kw: Any
) -> tuple[list[str], Link]:
    link = Link(arrivals)
    grid = PromptGrid(cast(Grid, link), clock=link.clock, sleep=link.sleep, **kw)
    replies = grid.send_and_receive([object()] * len(arrivals), timeout=timeout)
    return sorted(r.metadata.reply_to_message_id for r in replies), link


def _within_a_poll(now: float, expected: float) -> bool:
    return expected - 1e-9 <= now <= expected + 0.2 + 1e-9


def test_a_stage_closes_within_one_poll_of_its_last_reply() -> None:
    replies, link = _stage([0.3, 0.5, 0.45])
    assert replies == ["m0", "m1", "m2"]
    assert link.now == pytest.approx(0.6)  # polls at 0, 0.2, 0.4, 0.6: not Flower's 3 s
    assert max(link.sleeps) <= 0.2


def test_one_lost_reply_waits_the_grace_after_the_quorum_not_the_timeout() -> None:
    # 10 messages, quorum 9: the ninth reply comes at 1.0 s, the tenth never
    replies, link = _stage([0.1 * i for i in range(1, 10)] + [None])
    assert len(replies) == 9
    # quorum reached at the 1.0 s poll; grace max(2 s, 0.5 s) -> closes at 3.0 s
    assert link.now == pytest.approx(3.0)


def test_a_straggler_within_the_grace_is_waited_for() -> None:
    # quorum seen at the 0.2 s poll, grace 2 s: a reply at 2.1 s is in, at 2.3 s it is not
    replies, link = _stage([0.1] * 9 + [2.1])
    assert len(replies) == 10 and _within_a_poll(link.now, 2.1)
    replies, link = _stage([0.1] * 9 + [2.3])
    assert len(replies) == 9 and _within_a_poll(link.now, 2.2)


def test_the_grace_grows_with_a_slow_quorum() -> None:
    # the quorum takes 10 s: a straggler is waited for until 10 + 5 s
    replies, link = _stage([10.0] * 9 + [14.0])
    assert len(replies) == 10 and _within_a_poll(link.now, 14.0)
    replies, link = _stage([10.0] * 9 + [16.0])
    assert len(replies) == 9 and 15.0 <= link.now <= 15.0 + 1.5 * 0.2 + 1e-9  # 1.5 × the quorum


def test_without_a_quorum_the_stage_waits_for_its_timeout() -> None:
    replies, link = _stage([0.1, None, None], timeout=5.0)
    assert replies == ["m0"] and link.now == pytest.approx(5.0)


def test_a_small_stage_needs_every_reply_for_its_quorum() -> None:
    # two messages: 90 % rounds up to both, so one lost reply waits for the timeout
    replies, link = _stage([0.1, None], timeout=7.0)
    assert replies == ["m0"] and link.now == pytest.approx(7.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quorum"):
        PromptGrid(cast(Grid, Link([])), quorum=0.0)


@pytest.mark.usefixtures("server_task")
def test_the_packing_grid_sends_packed_and_returns_unpacked() -> None:
    import numpy as np
    from builders import server_message
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from fedrec.common.packing import is_packed
    from fedrec.server.grid import PackingGrid

    arrays = {"a": np.ones((2, 3), np.float32), "b": np.arange(4, dtype=np.float32)}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()})})

    class Recording:
        def __init__(self) -> None:
            self.pushed: list[Message] = []

        def push_messages(self, messages: Iterable[Message]) -> list[str]:
            self.pushed = list(messages)
            return [str(i) for i, _ in enumerate(self.pushed)]

        def pull_messages(self, ids: Iterable[str]) -> list[Message]:  # each device echoes
            return [  # as a device's reply would come: packed
                Message(m.content, reply_to=server_message("train", None, node_id=n))
                for n, m in enumerate(self.pushed, start=1)
            ]

    link = Recording()
    grid = PackingGrid(cast(Grid, link))
    sent = [Message(content, node, "train") for node in (1, 2)]
    grid.push_messages(sent)
    assert all(is_packed(m.content) for m in link.pushed)
    assert link.pushed[0].content is link.pushed[1].content  # one shared content, packed once
    assert [m.metadata.dst_node_id for m in link.pushed] == [1, 2]
    assert not is_packed(sent[0].content)  # what the server keeps is not changed
    for reply in grid.pull_messages(["0", "1"]):
        assert not is_packed(reply.content)
        np.testing.assert_array_equal(reply.content["arrays"]["a"].numpy(), arrays["a"])
