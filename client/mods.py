"""Client mods on the real message path: enforce and record what leaves the device.

* :class:`SharedOnlyGuard` checks every reply before it leaves: arrays only under the
  ``arrays`` record and only with the declared shared names and shapes; metrics only scalar
  numbers (so no list of item ids can ride along); nothing else. A violating reply is replaced
  by an error Message, so private state cannot leak even through a bug in the handler.
* :class:`CatalogCheck` refuses a round whose model is built on another catalog than the
  device's own (the server sends the catalog's hash with every model).
* The exchange mod (``client/exchange.py``) decodes the model, clips the update for
  user-level DP and encodes it in the round channel's upload form; the guard then checks the
  reply against that form's exact layout (names, shapes, dtypes).
* Under secure aggregation (client/secagg.py) the answer to a stage request must be
  one ``secagg`` ConfigRecord of that stage, with the keys the stage declares
  (``common/secagg/wire.REPLY_KEYS``), bytes and text only, and no arrays or metrics.
* :func:`packing_mod`, outermost: a deployed message's arrays arrive packed as one Flower
  object (common/packing.py); it unpacks them first and packs the reply last.
* :class:`MessageRecorder` appends a description of every reply (record names, array
  names/shapes/dtypes, metric keys and values, bytes) to a JSON-lines file. The simulation's
  ClientApps run in Ray worker processes, so a file is the way a test sees their messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.compression import Layout, layout_problem
from fedrec.common.data.catalog import Catalog
from fedrec.common.files import append_private
from fedrec.common.keys import (
    CATALOG_MISMATCH_ERROR,
    NON_FINITE_ERROR,
    PRIVACY_GUARD_ERROR,
)
from fedrec.common.packing import is_packed, pack, unpack
from fedrec.common.records import (
    config_of,
    text,
)
from fedrec.common.secagg.wire import REPLY_KEYS, SECAGG, STAGE

__all__ = [
    "CATALOG_MISMATCH_ERROR",
    "NON_FINITE_ERROR",
    "PRIVACY_GUARD_ERROR",
    "CatalogCheck",
    "MessageRecorder",
    "SharedOnlyGuard",
    "describe",
    "packing_mod",
    "secagg_violations",
    "violations",
]


# the metric keys a reply may carry, per message type (an allow-list: a new one is added in
# fedrec.common.keys, where the server's validation reads it too)
ALLOWED_METRICS = {"train": keys.TRAIN_METRICS, "evaluate": keys.EVALUATE_METRICS}


def describe(message: Message) -> dict[str, object]:
    """A JSON-able description of what a message carries."""
    if not message.has_content():
        return {"type": message.metadata.message_type, "error": True}
    records: dict[str, object] = {}
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {
                "kind": "arrays",
                "arrays": {
                    k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in record.items()
                },
            }
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "values": dict(record)}
        else:
            records[name] = {"kind": type(record).__name__, "keys": list(record.keys())}
    return {
        "type": message.metadata.message_type,
        "bytes": sum(r.count_bytes() for r in message.content.values()),
        "records": records,
    }


def violations(
    message: Message,
    shared_shapes: Mapping[str, tuple[int, ...]],
    request: Message | None = None,
) -> list[str]:
    """Everything in ``message`` that is not a declared shared array or an allowed scalar
    metric of its message type; in answer to a secure-aggregation stage, anything but that
    stage's declared keys."""
    if not message.has_content():
        return []
    if request is not None and request.has_content() and SECAGG in request.content:
        return secagg_violations(message, str(request.content[SECAGG].get(STAGE)))
    layout = None  # names and shapes (any dtype); an encoded update: its exact layout
    if request is not None and request.has_content() and keys.CONFIG in request.content:
        layout = _update_layout(config_of(request.content), shared_shapes)
    problems: list[str] = []
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            if name != keys.ARRAYS:
                problems.append(f"array record '{name}' is not '{keys.ARRAYS}'")
            for key, array in record.items():
                if layout is not None:
                    problem = layout_problem(key, tuple(array.shape), array.dtype, layout)
                    problems += [problem] if problem else []
                elif key not in shared_shapes:
                    problems.append(f"array '{key}' is not in the shared group")
                elif tuple(array.shape) != tuple(shared_shapes[key]):
                    problems.append(f"array '{key}' has shape {array.shape}")
        elif isinstance(record, MetricRecord):
            if name != keys.METRICS:
                problems.append(f"metric record '{name}' is not '{keys.METRICS}'")
            allowed = ALLOWED_METRICS.get(message.metadata.message_type, frozenset())
            for key, value in record.items():
                if key not in allowed:
                    problems.append(f"metric '{key}' is not one a device reports")
                elif not isinstance(value, int | float) or isinstance(value, bool):
                    problems.append(f"metric '{key}' is not a scalar number")
        else:
            problems.append(f"record '{name}' of type {type(record).__name__} is not allowed")
    return problems


def _update_layout(
    config: ConfigRecord, shared_shapes: Mapping[str, tuple[int, ...]]
) -> Layout | None:
    """The exact layout of the update a round asks for (compressed or low-rank), ``None``
    for float32 weights; a round whose form does not parse allows no array at all."""
    try:
        return Channel.of(config, shared_shapes).update_layout()
    except ValueError:
        return {}


def secagg_violations(message: Message, stage: str) -> list[str]:
    """A reply to secure-aggregation stage ``stage``: one ``secagg`` ConfigRecord of that
    stage with its declared keys (``REPLY_KEYS``), bytes and text only — no arrays, no
    metrics, nothing else beside it."""
    names = set(message.content.keys())
    if names != {SECAGG}:
        return [f"a secure-aggregation reply carries records {sorted(names)}, not only '{SECAGG}'"]
    record = message.content[SECAGG]
    if not isinstance(record, ConfigRecord):
        return [f"record '{SECAGG}' is not a ConfigRecord"]
    problems = []
    if record.get(STAGE) != stage or stage not in REPLY_KEYS:
        problems.append(f"reply of stage {record.get(STAGE)!r} to a {stage!r} request")
    extra = sorted(set(record.keys()) - REPLY_KEYS.get(stage, set()))
    if extra:
        problems.append(f"secagg record carries undeclared keys {extra}")
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, bytes | str) for v in values):
            problems.append(f"secagg value '{key}' is not bytes or text")
    return problems


class SharedOnlyGuard:
    """A mod that blocks any reply carrying more than the shared group and scalar metrics.

    Mods are module-level callable classes, not closures: the simulation engine pickles the
    ClientApp with every message, and a closure is pickled by value (code and all), a cost
    paid on every message; an instance of a class is pickled by reference.
    """

    def __init__(self, shared_shapes: Callable[[Context], Mapping[str, tuple[int, ...]]]) -> None:
        self.shared_shapes = shared_shapes

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        reply = call_next(msg, context)
        problems = violations(reply, self.shared_shapes(context), request=msg)
        if problems:
            reason = "privacy guard blocked the reply: " + "; ".join(problems)
            return Message(error=Error(code=PRIVACY_GUARD_ERROR, reason=reason), reply_to=msg)
        return reply


class CatalogCheck:
    """A mod: refuse a round whose model is built on another catalog than the device's own.

    The server sends the SHA-256 of its catalog with every model it sends
    (``keys.CATALOG_HASH``); item row *i* means item *i* of that catalog. A device whose own
    copy differs (another data set, an older or newer version) would train and rank the wrong
    items, so it answers with an error naming both hashes and runs nothing. Messages without a
    model (the key stages of secure aggregation) pass through.
    """

    def __init__(self, catalog_of: Callable[[Context], Catalog]) -> None:
        self.catalog_of = catalog_of

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if not msg.has_content() or keys.ARRAYS not in msg.content:
            return call_next(msg, context)
        sent = text(config_of(msg.content), keys.CATALOG_HASH, "")
        mine = self.catalog_of(context).hash
        if sent != mine:
            server = f"catalog {sent[:12]}" if sent else "no catalog hash"
            reason = (
                f"catalog mismatch: the server's round is built on {server}, this device holds"
                f" catalog {mine[:12]}: install the catalog the server publishes"
                " (fedrec catalog build) before joining"
            )
            return Message(error=Error(code=CATALOG_MISMATCH_ERROR, reason=reason), reply_to=msg)
        return call_next(msg, context)


class MessageRecorder:
    """A mod that appends :func:`describe` of every reply to the file ``path_of(context)``."""

    def __init__(self, path_of: Callable[[Context], str]) -> None:
        self.path_of = path_of

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        reply = call_next(msg, context)
        path = self.path_of(context)
        if path:
            line = json.dumps({"node": context.node_id, "pid": os.getpid(), **describe(reply)})
            append_private(path, line + "\n")  # per-device results: 0600
        return reply


def packing_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """The outermost mod: a deployed server sends a message's arrays packed as one Flower
    object (common/packing.py); unpack them before any other layer sees the message, and
    pack the reply the same way. A message that is not packed (the simulation's) passes."""
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    msg.content = unpack(msg.content)  # a PackingError is this message's error reply
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack(reply.content)
    return reply
