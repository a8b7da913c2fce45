"""How a deployed server waits for a stage's replies: promptly, and not for a lost one.

Flower 1.42's deployed grid (``flwr/superlink/grid/http_grid.py``) pushes a stage's messages
and then checks for replies every 3 s until all have come or ``timeout`` passed, so a stage
that the devices answer in 0.2 s takes 3 s, and one lost reply (a device that died, a reply
the SuperLink's SQLite lock dropped) holds the round until ``round-timeout``.
:class:`PromptGrid` waits through the same public calls (``push_messages``,
``pull_messages``) and closes a stage

* as soon as every message has its reply, checking every ``poll`` seconds (0.2 s), or
* once a quorum (``quorum``, 90 % of the stage's messages, rounded up) has replied and a grace
  period has passed since: ``min_grace`` seconds (2 s) or half the time the quorum took,
  whichever is longer (a straggler slower than half again the quorum's time is late), or
* at ``timeout``, as Flower's.

A message without a reply when the stage closes is *unanswered*; the round record counts them
(``clients_unanswered``). Secure aggregation treats them as it treats dropouts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import suppress

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import InMemoryGrid

from fedrec.common.packing import PackingError, pack, unpack

__all__ = ["GridWrapper", "PackingGrid", "PromptGrid", "deployed_grid"]


class GridWrapper(Grid):
    """Delegates every Grid method to ``grid``."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    @property
    def run(self) -> Run:
        return self.grid.run

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class PromptGrid(GridWrapper):
    """``send_and_receive`` that returns when the stage is answered (module docstring)."""

    def __init__(
        self,
        grid: Grid,
        *,
        poll: float = 0.2,
        quorum: float = 0.9,
        min_grace: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if poll <= 0 or not 0 < quorum <= 1 or min_grace < 0:
            raise ValueError(
                f"PromptGrid needs poll > 0, 0 < quorum <= 1 and min_grace >= 0, got"
                f" {poll}, {quorum}, {min_grace}"
            )
        super().__init__(grid)
        self.poll, self.quorum, self.min_grace = poll, quorum, min_grace
        self.clock, self.sleep = clock, sleep

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        needed = math.ceil(self.quorum * len(waiting))
        start = self.clock()
        deadline = math.inf if timeout is None else start + timeout
        replies: list[Message] = []
        quorum_at: float | None = None
        while waiting:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            now = self.clock()
            if not waiting or now >= deadline:
                break
            if quorum_at is None and len(replies) >= needed:
                quorum_at = now
            if quorum_at is not None:
                closes = quorum_at + max(self.min_grace, 0.5 * (quorum_at - start))
                if now >= closes:
                    break
                deadline = min(deadline, closes)
            self.sleep(max(0.0, min(self.poll, deadline - now)))
        return replies


class PackingGrid(GridWrapper):
    """Sends every message with its arrays packed as one Flower object and unpacks every
    reply (common/packing.py): a deployed message of fedrec's model is then ~6 objects, not
    ~18, each one an authenticated HTTPS request between a SuperNode and the SuperLink.
    Messages that share their content (a stage's) are packed once. A reply whose packing
    does not parse is passed on as it came: validation refuses it (its records)."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        packed: dict[int, RecordDict] = {}
        out = []
        for m in messages:
            if m.has_content():
                content = packed.setdefault(id(m.content), pack(m.content))
                meta = m.metadata
                m = Message(
                    content,
                    meta.dst_node_id,
                    meta.message_type,
                    ttl=meta.ttl,
                    group_id=meta.group_id,
                )
            out.append(m)
        return self.grid.push_messages(out)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content():
                with suppress(PackingError):  # validation refuses it, as any malformed reply
                    reply.content = unpack(reply.content)
        return replies


def deployed_grid(grid: Grid) -> Grid:
    """What a ServerApp sends through: a deployment's grid waits promptly and packs arrays;
    the simulation's in-memory grid (no HTTP, its own polling) is used as it is."""
    return grid if isinstance(grid, InMemoryGrid) else PromptGrid(PackingGrid(grid))
