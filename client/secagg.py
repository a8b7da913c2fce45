"""The device's half of SecAgg+ (Bell et al. 2020) on the Message API: a train mod.

A secure round is four ``train`` messages that carry a ``secagg`` record (see
:mod:`fedrec.common.secagg.wire`); the mod answers the key stages itself and, at the
collect stage, runs the rest of the train path (the exchange mod → the handler). The
exchange mod (``client/exchange.py``) hands back the update Δ = local − start in the
round channel's layout (the item table's factor in a low-rank round), clipped under
user-level DP to C less SecAgg+'s quantization margin; this mod sends only
``q(Δ) + masks mod M`` as bytes. The shared parameters never leave the device in the clear,
and neither do the scalar metrics: the metrics the server asks for ride in the masked
vector, so the server learns their sum only. The server's half is ``server/secagg.py``.

The protocol's secrets (key pairs, self-mask seed, the shares held for peers) live in the
node's ``context.state`` between stages — memory, never a message, never the disk — and are
wiped after the unmask stage. Messages without a ``secagg`` record pass through untouched.

Under user-level DP the clip (the exchange mod's, once) is ``C − Δ_q·√d`` (Δ_q the
quantization step, d the vector's length): even after stochastic rounding, which moves each
coordinate by less than Δ_q, the quantized update has norm ≤ C — the sensitivity the
server's noise is calibrated to. The server cannot re-clip a sum, so this bound is the
device's job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from fedrec.client.exchange import channel_of
from fedrec.common import keys
from fedrec.common.keys import SECAGG_ERROR
from fedrec.common.privacy import NonFiniteUpdate
from fedrec.common.records import arrays_of, config_of, numpy_arrays, round_rng, scalar
from fedrec.common.secagg import wire
from fedrec.common.secagg.primitives import SecAggConfig, SecAggError
from fedrec.common.secagg.protocol import SecAggClient, StateValue

__all__ = ["SECAGG_ERROR", "SecAggPlusMod", "update_vector"]


def update_vector(
    reply: RecordDict,
    layout: Mapping[str, tuple[int, ...]],
    metric_bounds: Mapping[str, float],
    config: SecAggConfig,
) -> list[np.ndarray]:
    """What the device masks: its update per array of the round's ``layout`` (the exchange
    mod's output, clipped), then the metrics the server asks for, scaled into the clipping
    range. ``ValueError`` for arrays off the layout: nothing else is ever masked."""
    update = numpy_arrays(arrays_of(reply))
    got = {k: tuple(np.shape(v)) for k, v in update.items()}
    if list(got.items()) != [(k, tuple(v)) for k, v in layout.items()]:
        raise ValueError(f"the update's arrays {got} are not the round's layout {dict(layout)}")
    metric_values = reply.metric_records.get(keys.METRICS, MetricRecord())
    metrics = np.array(
        [scalar(metric_values, name, 0.0) for name in metric_bounds], dtype=np.float64
    )
    vector = [np.asarray(v, dtype=np.float64) for v in update.values()]
    return [*vector, metrics * wire.metric_scales(config, metric_bounds)]


QUANTIZATION_STREAM = 2  # apart from the compressed upload's rounding stream (same seed)


class SecAggPlusMod:
    """A train mod: place it outside the exchange mod, so that it masks the clipped update.

    A module-level class, not a closure, for the reason given in client/exchange.py.
    """

    def __init__(
        self,
        shared_shapes: Callable[[Context], Mapping[str, tuple[int, ...]]],
        required: Callable[[Context], bool] | None = None,
        entropy: Callable[[int], bytes] | None = None,
        rounding_seed: Callable[[Context], Sequence[int] | None] | None = None,
    ) -> None:
        self.shared_shapes = shared_shapes  # the round's layout follows from them
        self.required = required  # the device's own setting: refuse plaintext train rounds
        self._entropy = entropy  # tests only; None: os.urandom
        # the stochastic quantization's uniforms: a simulated node's are seeded (a seeded run
        # reproduces); None (a device): fresh OS entropy. Never the protocol's secrets
        self.rounding_seed = rounding_seed

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if not msg.has_content() or wire.SECAGG not in msg.content:
            context.state.pop(wire.STATE, None)  # an abandoned secure round ends here
            if self.required is not None and self.required(context):
                reason = (
                    "secure aggregation: this device is configured for secure-aggregation and"
                    " refuses to send its update in the clear"
                )
                return Message(error=Error(code=SECAGG_ERROR, reason=reason), reply_to=msg)
            return call_next(msg, context)
        record = config_of(msg.content, wire.SECAGG)
        try:
            stage = wire.stage_of(record)
            config = wire.round_config(record)
            digest = wire.config_digest(record)
            previous = config_of(context.state, wire.STATE).get("round-digest")
            if stage != Stage.SETUP and previous not in (None, digest):
                raise SecAggError(f"client {context.node_id}: round parameters changed")
            if stage == Stage.SETUP:
                client = self._client(context.node_id, config, None)
                answer = wire.public_keys_reply(client.setup())
            elif stage == Stage.SHARE_KEYS:
                client = self._client(context.node_id, config, context)
                answer = wire.share_keys_reply(
                    client.share_keys(wire.read_share_keys_request(record))
                )
            elif stage == Stage.COLLECT_MASKED_VECTORS:
                client = self._client(context.node_id, config, context)
                request = wire.read_collect_request(record)
                reply = call_next(msg, context)
                if reply.has_error():  # e.g. non-finite update: the server sees a dropout
                    context.state.pop(wire.STATE, None)
                    return reply
                layout = channel_of(msg, self.shared_shapes(context)).update_shapes()
                vector = update_vector(reply.content, layout, wire.metric_bounds(record), config)
                masked = client.masked_input(request, vector, self._rounding(msg, context))
                answer = wire.masked_reply(masked)
            else:
                client = self._client(context.node_id, config, context)
                answer = wire.unmask_reply(client.unmask(wire.read_unmask_request(record)))
        except (SecAggError, NonFiniteUpdate, ValueError) as err:
            context.state.pop(wire.STATE, None)  # a refused round leaves no secret behind
            reason = f"secure aggregation: {type(err).__name__}: {err}"
            return Message(error=Error(code=SECAGG_ERROR, reason=reason), reply_to=msg)
        if stage == Stage.UNMASK:
            context.state.pop(wire.STATE, None)  # the round is over: wipe its secrets
        else:
            state = _ids_as_text(client.state_dict())
            context.state[wire.STATE] = ConfigRecord({**state, "round-digest": digest})
        return Message(content=RecordDict({wire.SECAGG: answer}), reply_to=msg)

    def _rounding(self, msg: Message, context: Context) -> np.random.Generator:
        seed = self.rounding_seed(context) if self.rounding_seed is not None else None
        return round_rng(config_of(msg.content), seed, QUANTIZATION_STREAM)

    def _client(self, node_id: int, config: SecAggConfig, context: Context | None) -> SecAggClient:
        extra = {} if self._entropy is None else {"entropy": self._entropy}
        if context is None:  # setup: a new round starts from nothing
            return SecAggClient(node_id, config, **extra)
        if wire.STATE not in context.state:
            raise SecAggError(f"client {node_id}: no secure round in progress")
        state = _ids_from_text(config_of(context.state, wire.STATE))
        return SecAggClient.from_state_dict(config, state, **extra)


# node ids are unsigned 64-bit, a ConfigRecord int is signed: they are kept as decimal text
_ID_FIELDS = ("node-id", "peers", "share-owners")


_LIST_FIELDS = (
    "peers",
    "peer-mask-keys",
    "peer-share-keys",
    "share-owners",
    "seed-shares",
    "key-shares",
)


def _ids_as_text(state: Mapping[str, StateValue]) -> dict[str, Any]:
    """The state as ConfigRecord values: ids as text, empty lists left out (Flower cannot
    store ``[]``; :func:`_ids_from_text` restores them)."""
    out: dict[str, Any] = dict(state)
    for key in _ID_FIELDS:
        value = out[key]
        out[key] = [str(v) for v in value] if isinstance(value, list) else str(value)
    return {k: v for k, v in out.items() if not (isinstance(v, list) and not v)}


def _ids_from_text(state: Mapping[str, Any]) -> dict[str, StateValue]:
    out: dict[str, StateValue] = {k: [] for k in _LIST_FIELDS}
    for key, value in state.items():
        if key in _ID_FIELDS:
            out[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
        else:
            out[key] = value
    return out
