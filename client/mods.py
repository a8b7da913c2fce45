"""Client mods on the real message path: enforce and record what leaves the device.

* :class:`SharedOnlyGuard` checks every reply before it leaves: arrays only under the
  ``arrays`` record and only with the declared shared names and shapes; metrics only scalar
  numbers (so no list of item ids can ride along); nothing else. A violating reply is replaced
  by an error Message, so private state cannot leak even through a bug in the handler.
* :class:`UserLevelClipping` clips the shared-parameter update to the norm C the server
  sends when it runs DP-FedAvg (server/dp_fedavg.py).
* :class:`CatalogCheck` refuses a round whose model is built on another catalog than the
  device's own (the server sends the catalog's hash with every model).
* :class:`CompressedExchange` decodes a compressed model before anything on the device sees
  it and sends the update Δ back in the upload's compressed form; the guard then checks the
  reply against that form's exact layout (names, shapes, dtypes).
* Under secure aggregation (common/secagg/device.py) the answer to a stage request must be
  one ``secagg`` ConfigRecord of that stage, with the keys the stage declares
  (``common/secagg/wire.REPLY_KEYS``), bytes and text only, and no arrays or metrics.
* :class:`MessageRecorder` appends a description of every reply (record names, array
  names/shapes/dtypes, metric keys and values, bytes) to a JSON-lines file. The simulation's
  ClientApps run in Ray worker processes, so a file is the way a test sees their messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord

from fedrec.common import keys
from fedrec.common.colr import LowRank
from fedrec.common.compression import (
    Layout,
    PayloadError,
    compress,
    decompress,
    layout_problem,
    payload_layout,
    rounding_bound,
)
from fedrec.common.data.catalog import Catalog
from fedrec.common.files import append_private
from fedrec.common.keys import (
    CATALOG_MISMATCH_ERROR,
    NON_FINITE_ERROR,
    PAYLOAD_ERROR,
    PRIVACY_GUARD_ERROR,
)
from fedrec.common.privacy import NonFiniteUpdate, clip_delta, clip_update
from fedrec.common.records import (
    arrays_of,
    config_of,
    exchange_modes,
    numpy_arrays,
    round_rng,
    scalar,
    text,
)
from fedrec.common.secagg.wire import REPLY_KEYS, SECAGG, STAGE

__all__ = [
    "CATALOG_MISMATCH_ERROR",
    "NON_FINITE_ERROR",
    "PRIVACY_GUARD_ERROR",
    "CatalogCheck",
    "CompressedExchange",
    "MessageRecorder",
    "SharedOnlyGuard",
    "UserLevelClipping",
    "describe",
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
        down, up = exchange_modes(config)
        low_rank = LowRank.of(config)
        if (down, up) == ("none", "none") and low_rank is None:
            return None
        if low_rank is not None:
            low_rank.check(shared_shapes)
        return payload_layout(low_rank.shapes(shared_shapes) if low_rank else shared_shapes, up)
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


class UserLevelClipping:
    """A train mod: clip Δ = local − global to ‖Δ‖ ≤ C, when the server sends C.

    DP-FedAvg's sensitivity bound is this clip: it runs on the device, before the update
    leaves (and, later, before secure-aggregation masking). It does what Flower's
    ``fixedclipping_mod`` does, but that mod (1.42) divides by ‖Δ‖ and fails on the zero
    update of a device that declined the round, and it fails every message without a
    clipping norm; so the clip here is :func:`fedrec.common.privacy.clip_update` (float64,
    the same function the server re-applies), run only when the config carries
    ``keys.CLIPPING_NORM``.
    """

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        config = config_of(msg.content) if msg.has_content() else ConfigRecord()
        reply = call_next(msg, context)
        if keys.CLIPPING_NORM not in config or reply.has_error():
            return reply
        start = numpy_arrays(arrays_of(msg.content))
        local = numpy_arrays(arrays_of(reply.content))
        try:
            clipped, _ = clip_delta(start, local, scalar(config, keys.CLIPPING_NORM))
        except NonFiniteUpdate as err:  # a diverged round: say so instead of sending it
            return Message(error=Error(code=NON_FINITE_ERROR, reason=str(err)), reply_to=msg)
        reply.content[keys.ARRAYS] = ArrayRecord(
            {
                k: Array((start[k].astype(np.float64) + clipped[k]).astype(local[k].dtype))
                for k in start
            }
        )
        return reply


ROUNDING_STREAM = 4  # the upload's rounding, apart from training's [seed, node, round]


class CompressedExchange:
    """A mod: the device's end of the compressed exchange (:mod:`fedrec.common.compression`).

    When a message names a compressed direction (``keys.DOWNLOAD_COMPRESSION`` /
    ``keys.UPLOAD_COMPRESSION``), the model it carries is decoded to float32 before anything
    else on the device sees it (the handler, the user-level clip, the device's model cache
    all start from the decoded model), and the train reply's weights are turned into the
    update Δ = local − start and encoded in the upload's form, rounded stochastically
    (unbiased). Under user-level DP, Δ (clipped to C by the inner mod) is clipped again to
    (C − a) / (1 + r), the form's worst-case rounding (``rounding_bound``), so the update
    the server decodes is within C even before the server's own re-clip. The guard outside
    this mod checks the encoded reply against its layout; a reply whose arrays are not the
    model's is left as it is, for the guard to block. In a low-rank round
    (``keys.COLR_RANK``, :mod:`fedrec.common.colr`) the table's ΔE goes up as its factor
    A = ΔE·Bᵀ on the round's basis, in the upload's form (``"none"``: float32).
    Messages without a model, or with neither direction compressed nor a low rank, pass
    through untouched.
    The rounding's uniforms come from ``rounding_seed(context)`` and the round (a seeded
    simulation reproduces), or from fresh OS entropy where it gives ``None`` (a device).
    """

    def __init__(
        self,
        shared_shapes: Callable[[Context], Mapping[str, tuple[int, ...]]],
        rounding_seed: Callable[[Context], Sequence[int] | None] | None = None,
    ) -> None:
        self.shared_shapes = shared_shapes
        self.rounding_seed = rounding_seed

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if not msg.has_content() or keys.ARRAYS not in msg.content:
            return call_next(msg, context)
        config = config_of(msg.content)
        try:
            down, up = exchange_modes(config)
            low_rank = LowRank.of(config)
            if low_rank is not None:
                low_rank.check(self.shared_shapes(context))
        except ValueError as err:
            reason = f"this round's exchange settings do not parse: {err}"
            return Message(error=Error(code=PAYLOAD_ERROR, reason=reason), reply_to=msg)
        if (down, up) == ("none", "none") and low_rank is None:
            return call_next(msg, context)
        try:
            start = decompress(
                numpy_arrays(arrays_of(msg.content)), down, self.shared_shapes(context)
            )
        except PayloadError as err:
            reason = f"the model this round sent is not a valid {down} payload: {err}"
            return Message(error=Error(code=PAYLOAD_ERROR, reason=reason), reply_to=msg)
        msg.content[keys.ARRAYS] = ArrayRecord({k: Array(v) for k, v in start.items()})
        reply = call_next(msg, context)
        if reply.has_error() or not reply.has_content() or keys.ARRAYS not in reply.content:
            return reply  # an error, an evaluation (metrics only), a secure-aggregation stage
        local = numpy_arrays(arrays_of(reply.content))
        if {k: np.shape(v) for k, v in local.items()} != {k: v.shape for k, v in start.items()}:
            return reply  # not the model's arrays: left as it is, for the guard to block
        seed = self.rounding_seed(context) if self.rounding_seed is not None else None
        rng = round_rng(config, seed, ROUNDING_STREAM)
        try:
            delta, _ = clip_delta(start, local, None)
            if low_rank is not None:  # ΔE → A = ΔE·Bᵀ (exact: the table trained as A·B)
                delta = low_rank.factor(delta)
            if keys.CLIPPING_NORM in config:  # within C once rounded (rounding_bound)
                relative, absolute = rounding_bound(delta, up)
                clip = (scalar(config, keys.CLIPPING_NORM) - absolute) / (1 + relative)
                if clip <= 0:
                    reason = (
                        f"clip norm {scalar(config, keys.CLIPPING_NORM)} is below {up}'s rounding"
                    )
                    return Message(error=Error(code=PAYLOAD_ERROR, reason=reason), reply_to=msg)
                delta, _ = clip_update(delta, clip)
            payload = compress(delta, up, rng)
        except (NonFiniteUpdate, PayloadError) as err:  # a diverged round: say so
            return Message(error=Error(code=NON_FINITE_ERROR, reason=str(err)), reply_to=msg)
        reply.content[keys.ARRAYS] = ArrayRecord({k: Array(v) for k, v in payload.items()})
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
