"""A scaling fix for Flower 1.42's in-memory simulation link state, applied by the runner.

The simulation engine polls ``get_message_ins(node_id)`` for **every** node every 0.1 s, and
each call scans (and expiry-checks under a lock) every message in flight, so the driver's cost
per sweep is nodes × messages: with 943 nodes (one per MovieLens user) the driver saturated a
core and a 100-client round took ~10-20 s. The wrapper below returns early for a node that has
no message addressed to it — the same answer the original gives — and otherwise defers to the
original. Expired messages of other nodes are still dropped, when their own node is polled.
"""

from __future__ import annotations

import functools
from typing import Any

import flwr
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

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
    return True
