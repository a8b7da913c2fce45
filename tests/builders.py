"""Shared builders for fake Flower Contexts and Messages (tests call ClientApps directly)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from fedrec.common import keys


def node_context(user: int, num_users: int, run_config: dict | None = None) -> Context:
    """A node's Context as the simulation engine builds it (partition-id = user index)."""
    return Context(
        run_id=1,
        node_id=user + 1,
        node_config={"partition-id": user, "num-partitions": num_users},
        state=RecordDict(),
        run_config=run_config or {},
    )


def server_message(
    message_type: str, arrays: ArrayRecord | None, node_id: int, server_round: int = 1
) -> Message:
    """A message as the server would send it to ``node_id``."""
    content = RecordDict({keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round})})
    if arrays is not None:
        content[keys.ARRAYS] = arrays
    metadata = Metadata(
        run_id=1,
        message_id=uuid.uuid4().hex,
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=content)


# The real MovieLens 100K, read in place (never copied: its license forbids redistribution).
ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
