"""Scaling fixes for Flower 1.42's in-memory simulation link state, applied by the runner only.

Neither belongs on a deployment's path: a SuperLink's link state is a database, and a
deployed round is sent at once and waits for whoever answers in time.

1. :class:`ChunkedGrid`. The in-memory link state scans every stored message on each poll,
   so pushing ~1000 messages at once (a federated evaluation of every user) costs O(N²)
   driver time: on ml-100k (943 nodes) round-0 evaluation did not finish in minutes. Sending
   the same messages in chunks keeps each scan short; the replies and their order are the
   same as one send_and_receive, only the waiting is split.
2. :func:`install_fast_polling`. The simulation engine polls ``get_message_ins(node_id)`` for
   **every** node every 0.1 s, and each call scans (and expiry-checks under a lock) every
   message in flight, so the driver's cost per sweep is nodes × messages: with 943 nodes (one
   per MovieLens user) the driver saturated a core. The wrapper returns early for a node that
   has no message addressed to it — the same answer the original gives — and otherwise defers
   to the original. Expired messages of other nodes are still dropped, when their own node is
   polled. That still left one call per node per sweep: with 100,000 nodes and a cohort of
   100 in flight a sweep took seconds and a round twice the 1,000-node round
   (docs/scale.md). So the engine's sweep itself (``vce_api.add_messages_to_queue``) is
   replaced by one that reads the destinations of the messages in flight once, under the
   state's lock, and polls only those nodes: O(messages) per sweep, not O(nodes), the same
   messages queued in the same 0.1 s cadence.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable
from queue import Queue
from typing import Any

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkState
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.serverapp import Grid

from fedrec.common.grids import GridWrapper

__all__ = ["DEFAULT_CHUNK", "ChunkedGrid", "install_fast_polling"]

DEFAULT_CHUNK = 32

_PATCHED = "_fedrec_fast_poll"


def install_fast_polling() -> bool:
    """Wrap ``InMemoryLinkState.get_message_ins`` once; returns whether it is installed."""
    original = InMemoryLinkState.get_message_ins
    if getattr(original, _PATCHED, False):
        return True
    if not flwr.__version__.startswith("1.42"):
        return False  # written against 1.42's link state; don't guess about other versions

    @functools.wraps(original)
    def get_message_ins(self: InMemoryLinkState, node_id: int, *args: Any, **kwargs: Any):
        with self.lock:
            pending = any(
                m.metadata.dst_node_id == node_id for m in self.message_ins_store.values()
            )
        return original(self, node_id, *args, **kwargs) if pending else []

    setattr(get_message_ins, _PATCHED, True)
    InMemoryLinkState.get_message_ins = get_message_ins  # type: ignore[method-assign]
    vce_api.add_messages_to_queue = _sweep_pending_nodes
    return True


def _sweep_pending_nodes(
    state: LinkState,
    queue: Queue[Message],
    nodes_mapping: dict[int, int],
    f_stop: threading.Event,
) -> None:
    """``vce_api.add_messages_to_queue`` (Flower 1.42) polling only the nodes that have a
    message in flight (every node when the state is not the in-memory one)."""
    while not f_stop.is_set():
        if isinstance(state, InMemoryLinkState):
            with state.lock:
                pending = {m.metadata.dst_node_id for m in state.message_ins_store.values()}
            nodes: Iterable[int] = [n for n in pending if n in nodes_mapping]
        else:
            nodes = nodes_mapping.keys()
        for node_id in nodes:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(0.1)


class ChunkedGrid(GridWrapper):
    """Delegates to ``grid``; ``send_and_receive`` pushes at most ``chunk`` messages at a time."""

    def __init__(self, grid: Grid, chunk: int = DEFAULT_CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        super().__init__(grid)
        self._chunk = chunk

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = list(messages)
        deadline = None if timeout is None else time.time() + timeout
        replies: list[Message] = []
        for start in range(0, len(pending), self._chunk):
            left = None if deadline is None else max(deadline - time.time(), 0.0)
            batch = pending[start : start + self._chunk]
            replies.extend(self.grid.send_and_receive(batch, timeout=left))
        return replies
