"""Scaling fixes for Flower 1.42's in-memory simulation link state, applied by the runner only.

Neither belongs on a deployment's path: a SuperLink's link state is a database, and a
deployed round is sent at once and waits for whoever answers in time.

1. :class:`ChunkedGrid`. The in-memory link state scans every stored message on each poll,
   so pushing ~1000 messages at once (a federated evaluation of every user) costs O(N²)
   driver time: on ml-100k (943 nodes) round-0 evaluation did not finish in minutes. Sending
   the same messages in chunks keeps each scan short; the replies and their order are the
   same as one send_and_receive, only the waiting is split.
2. :func:`install_fast_polling`. The simulation engine's sweep
   (``vce_api.add_messages_to_queue``) calls ``get_message_ins(node_id)`` for **every** node
   every 0.1 s, and each call scans (and expiry-checks under a lock) every message in flight:
   nodes × messages per sweep. With 943 nodes (one per MovieLens user) the driver saturated
   a core; with 100,000 a sweep took seconds and a round twice the 1,000-node round
   (docs/scale.md). The replacement sweep reads the destinations of the messages in flight
   once, under the state's lock, and calls ``get_message_ins`` only for those nodes:
   O(messages) per sweep, not O(nodes), the same messages queued at the same 0.1 s cadence
   (a node without a message got nothing from the call anyway). Expired messages are still
   dropped when their node is polled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from queue import Queue

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkState
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.serverapp import Grid

from fedrec.server.grid import GridWrapper

__all__ = ["DEFAULT_CHUNK", "ChunkedGrid", "install_fast_polling"]

DEFAULT_CHUNK = 32


def install_fast_polling() -> bool:
    """Replace the engine's sweep once; returns whether it is installed."""
    if vce_api.add_messages_to_queue is _sweep_pending_nodes:
        return True
    if not flwr.__version__.startswith("1.42"):
        return False  # written against 1.42's engine; don't guess about other versions
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
