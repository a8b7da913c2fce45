"""The device's end of the exchange: one mod that decodes what comes and encodes what goes.

Every message that carries a model names its wire forms in its config; the round's
:class:`~fedrec.common.channel.Channel` is built from that (a form that does not parse, or
that the model cannot take, is refused with ``PAYLOAD_ERROR``). Then:

* **down**: the model is decoded to float32 before anything on the device sees it (the
  handler, the device's model cache all start from the decoded model);
* **up** (a train reply): Δ = local − start, the item table's as its factor on the round's
  basis in a low-rank round; under user-level DP (the server sends C) Δ is clipped **once**,
  to the channel's bound for C — C itself for float32 weights, (C − a)/(1 + r) for a
  compressed upload (its worst-case rounding), C − Δ_q·√d under SecAgg+ (its quantization)
  — so the update the server decodes, or SecAgg+ sums, is within C however the rounding
  falls; then it is encoded in the upload's form (float32 weights start + Δ; Δ compressed,
  rounded stochastically, unbiased; under SecAgg+ Δ unrounded, for the masking mod outside
  this one, ``client/secagg.py``).

It does what Flower's ``fixedclipping_mod`` does, but that mod (1.42) divides by ‖Δ‖ and
fails on the zero update of a device that declined the round, and it fails every message
without a clipping norm. A reply whose arrays are not the model's is replaced by a refusal
(``PRIVACY_GUARD_ERROR``): nothing of it leaves unclipped; a diverged round (NaN or inf in
Δ) is refused with ``NON_FINITE_ERROR``. Messages that carry no model, and plain float32
rounds without a clip, pass through untouched.

The upload's rounding draws from ``rounding_seed(context)`` and the round (a simulated node:
a seeded run reproduces), or from fresh OS entropy where it gives ``None`` (a device).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.app import Context, Error, Message

from fedrec.common import keys
from fedrec.common.channel import Channel, SecureUpload
from fedrec.common.compression import PayloadError
from fedrec.common.keys import NON_FINITE_ERROR, PAYLOAD_ERROR, PRIVACY_GUARD_ERROR
from fedrec.common.privacy import NonFiniteUpdate, clip_delta, clip_update
from fedrec.common.records import (
    array_record,
    arrays_of,
    config_of,
    numpy_arrays,
    round_rng,
    scalar,
)
from fedrec.common.secagg import wire

__all__ = ["ROUNDING_STREAM", "ExchangeMod", "channel_of"]

ROUNDING_STREAM = 4  # the upload's rounding, apart from training's [seed, node, round]


def channel_of(msg: Message, shapes: Mapping[str, tuple[int, ...]]) -> Channel:
    """The channel a message names (``ValueError`` if it does not parse); in a secure
    round's collect stage, with SecAgg+'s quantizer as the upload's rounding."""
    secure = None
    if wire.SECAGG in msg.content.config_records:
        record = config_of(msg.content, wire.SECAGG)
        secure = SecureUpload(wire.round_config(record), len(wire.metric_bounds(record)))
    return Channel.of(config_of(msg.content), shapes, secure)


class ExchangeMod:
    """A train and evaluate mod (see the module docstring). A module-level class, not a
    closure: the simulation engine pickles the ClientApp with every message, and a closure
    is pickled by value, an instance by reference."""

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
        clip_norm = scalar(config, keys.CLIPPING_NORM) if keys.CLIPPING_NORM in config else None
        try:
            channel = channel_of(msg, self.shared_shapes(context))
        except ValueError as err:
            return _refusal(
                msg, PAYLOAD_ERROR, f"this round's exchange settings do not parse: {err}"
            )
        if not channel.sends_updates and clip_norm is None:
            return call_next(msg, context)  # float32 weights both ways, nothing to clip
        try:
            start = channel.decode_model(numpy_arrays(arrays_of(msg.content)))
        except PayloadError as err:
            reason = f"the model this round sent is not a valid {channel.download} payload: {err}"
            return _refusal(msg, PAYLOAD_ERROR, reason)
        if channel.compressed:
            msg.content[keys.ARRAYS] = array_record(start)
        reply = call_next(msg, context)
        if reply.has_error() or not reply.has_content() or keys.ARRAYS not in reply.content:
            return reply  # an error, an evaluation (metrics only)
        local = numpy_arrays(arrays_of(reply.content))
        if {k: np.shape(v) for k, v in local.items()} != {k: v.shape for k, v in start.items()}:
            # not the model's arrays: nothing of them leaves unclipped or unencoded
            names = sorted(local)
            reason = f"the reply's arrays {names} are not the model's: nothing is sent"
            return _refusal(msg, PRIVACY_GUARD_ERROR, reason)
        seed = self.rounding_seed(context) if self.rounding_seed is not None else None
        try:
            delta, _ = clip_delta(start, local, None)
            delta = channel.factor(delta)
            if clip_norm is not None:  # once, within C after the channel's rounding
                delta, _ = clip_update(delta, channel.clip_bound(clip_norm, delta))
            payload = channel.encode_update(delta, start, round_rng(config, seed, ROUNDING_STREAM))
        except (NonFiniteUpdate, PayloadError) as err:  # a diverged round: say so
            return _refusal(msg, NON_FINITE_ERROR, str(err))
        except ValueError as err:  # the clip norm is within the channel's rounding
            return _refusal(msg, PAYLOAD_ERROR, str(err))
        reply.content[keys.ARRAYS] = array_record(payload)
        return reply


def _refusal(msg: Message, code: int, reason: str) -> Message:
    return Message(error=Error(code=code, reason=reason), reply_to=msg)
