"""Tests for fedrec.client.exchange: the device's one exchange mod — it decodes the model,
clips the update once under user-level DP and encodes it in the round channel's form."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from builders import node_context, server_message
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedrec.client.exchange import ROUNDING_STREAM, ExchangeMod
from fedrec.client.mods import PRIVACY_GUARD_ERROR, SharedOnlyGuard, violations
from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.colr import FACTOR, TABLE, LowRank, factored_shapes
from fedrec.common.compression import compress, decompress, payload_layout
from fedrec.common.privacy import clip_update, global_norm
from fedrec.common.records import config_of, round_rng

SHAPES = {TABLE: (5, 4), "head.bias": (1,)}  # 21 coordinates
LOW = LowRank(2, 9)

Handler = Callable[[Message, Context], Message]


def _shapes(context: Context) -> dict[str, tuple[int, ...]]:
    return SHAPES


def _reply(request: Message, **records: object) -> Message:
    return Message(content=RecordDict(records), reply_to=request)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _numpy(reply: Message) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}


def _ones() -> dict[str, np.ndarray]:
    return {k: np.ones(s, np.float32) for k, s in SHAPES.items()}


def _request(
    down: str = "none",
    up: str = "none",
    clip: float | None = None,
    low_rank: LowRank | None = None,
    message_type: str = "train",
) -> Message:
    """A round whose model (all 1.0) travels in the download's form, as the server sends it."""
    channel = Channel(SHAPES, down, up, low_rank)
    model = channel.encode_model(_ones()) if channel.compressed or low_rank else _ones()
    request = server_message(message_type, _record(model), node_id=1)
    for key, value in channel.config(train=message_type == "train").items():
        request.content[keys.CONFIG][key] = value
    if clip is not None:
        request.content[keys.CONFIG][keys.CLIPPING_NORM] = clip
    return request


def _trained(msg: Message, context: Context) -> Message:
    """A handler whose local model is 4.0 everywhere: Δ = 3 on every coordinate of the
    all-ones model, ‖Δ‖ = 3·√21 = 13.748."""
    arrays = _record({k: np.full(s, 4.0, np.float32) for k, s in SHAPES.items()})
    metrics = MetricRecord({keys.NUM_EXAMPLES: 10, keys.UNIT_WEIGHT: 1})
    return _reply(msg, **{keys.ARRAYS: arrays, keys.METRICS: metrics})


def _local(local: dict[str, np.ndarray]) -> Handler:
    def handler(msg: Message, context: Context) -> Message:
        return _reply(msg, **{keys.ARRAYS: _record(local), keys.METRICS: MetricRecord({})})

    return handler


def _random(seed: int) -> Handler:
    """A handler whose Δ is off every rounding grid (N(0, 1) per coordinate)."""
    rng = np.random.default_rng(seed)
    return _local({k: (1 + rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()})


def _app(*mods: object, handler: Handler = _trained) -> Handler:
    """``handler`` behind ``mods`` (the first outermost), as Flower chains them."""
    for mod in reversed(mods):
        handler = (lambda m, inner: lambda msg, ctx: m(msg, ctx, inner))(mod, handler)  # type: ignore[operator]
    return handler


def _sent_update(reply: Message, request: Message) -> dict[str, np.ndarray]:
    """The update a reply carries, decoded in its round's form (the factor expanded)."""
    channel = Channel.of(config_of(request.content), SHAPES)
    payload = decompress(_numpy(reply), channel.upload, channel.update_shapes())
    return channel.expand(payload)


# --- the user-level clip ----------------------------------------------------------------------
def test_the_update_is_clipped_to_the_servers_c() -> None:
    reply = ExchangeMod(_shapes)(_request(clip=0.5), node_context(0, 1), _trained)
    assert not reply.has_error(), reply.error
    # Δ = 3 everywhere, scaled by 0.5 / (3·√21): each coordinate moves 0.5/√21 = 0.1091089
    # from the model's 1.0, and the reply is float32 weights start + clipped Δ
    expected = np.float32(1 + 0.5 / math.sqrt(21))
    for k, v in _numpy(reply).items():
        assert v.dtype == np.float32 and v.shape == SHAPES[k]
        np.testing.assert_array_equal(v, np.full(SHAPES[k], expected))
    moved = global_norm({k: v.astype(np.float64) - 1.0 for k, v in _numpy(reply).items()})
    assert moved == pytest.approx(0.5, rel=1e-6)


def test_a_float32_round_without_a_clip_passes_through_untouched() -> None:
    request = _request()
    reply = _trained(request, node_context(0, 1))
    out = ExchangeMod(_shapes)(request, node_context(0, 1), lambda msg, ctx: reply)
    assert out is reply and out.content[keys.ARRAYS] is reply.content[keys.ARRAYS]


def test_an_update_within_the_clip_is_left_as_it_is() -> None:
    reply = ExchangeMod(_shapes)(_request(clip=100.0), node_context(0, 1), _trained)
    for k, v in _numpy(reply).items():  # ‖Δ‖ = 13.75 < 100: the weights, bit for bit
        np.testing.assert_array_equal(v, np.full(SHAPES[k], 4.0, np.float32))


def test_messages_without_a_model_pass_through() -> None:
    request = server_message("train", None, node_id=1)  # e.g. a secure round's key stage
    reply = _reply(request, metrics=MetricRecord({keys.UNIT_WEIGHT: 1}))
    assert ExchangeMod(_shapes)(request, node_context(0, 1), lambda m, c: reply) is reply


@pytest.mark.parametrize(("up", "clip"), [("none", 0.5), ("int8", None), ("int8", 0.5)])
def test_a_non_finite_update_is_refused(up: str, clip: float | None) -> None:
    """A diverged round (NaN) is an error reply, never an unclippable or unencodable update."""
    nan = _local({k: np.full(s, np.nan, np.float32) for k, s in SHAPES.items()})
    reply = ExchangeMod(_shapes)(_request("none", up, clip), node_context(0, 1), nan)
    assert reply.has_error() and reply.error.code == keys.NON_FINITE_ERROR
    assert "non-finite" in (reply.error.reason or "")


def test_a_clip_within_the_uploads_rounding_is_refused() -> None:
    """fp16 can move Δ by 2^-25·√21 = 1.4e-7 absolute: a clip of 1e-8 cannot be kept."""
    reply = ExchangeMod(_shapes)(_request("none", "fp16", 1e-8), node_context(0, 1), _trained)
    assert reply.has_error() and reply.error.code == keys.PAYLOAD_ERROR
    assert "within fp16's rounding" in (reply.error.reason or "")


# --- the compressed exchange ------------------------------------------------------------------
def test_the_exchange_decodes_the_model_and_sends_the_compressed_update() -> None:
    seen: dict[str, np.ndarray] = {}

    def handler(msg: Message, context: Context) -> Message:
        seen.update({k: a.numpy() for k, a in msg.content[keys.ARRAYS].items()})
        return _trained(msg, context)

    request = _request("int8", "int8")
    reply = ExchangeMod(_shapes)(request, node_context(0, 1), handler)
    # the handler trained from the decoded float32 model, all ones (code 127 · scale 1/127)
    assert {k: (v.dtype, v.shape) for k, v in seen.items()} == {
        k: (np.float32, s) for k, s in SHAPES.items()
    }
    assert all(np.allclose(v, 1.0, atol=1e-6) for v in seen.values())
    payload = _numpy(reply)
    assert {k: (v.shape, v.dtype) for k, v in payload.items()} == payload_layout(SHAPES, "int8")
    delta = decompress(payload, "int8", SHAPES)  # Δ = 4 − 1 = 3: every row uniform, code 127
    assert all(np.allclose(v, 3.0, atol=1e-5) for v in delta.values())
    assert violations(reply, SHAPES, request=request) == []


def test_evaluate_messages_with_a_compressed_model_are_decoded_for_the_handler() -> None:
    seen: dict[str, np.ndarray] = {}
    request = _request("int8", "int8", message_type="evaluate")
    metrics = MetricRecord({keys.USERS: 1, keys.HR: 1.0})

    def handler(msg: Message, context: Context) -> Message:
        seen.update({k: a.numpy() for k, a in msg.content[keys.ARRAYS].items()})
        return _reply(msg, **{keys.METRICS: metrics})

    reply = ExchangeMod(_shapes)(request, node_context(0, 1), handler)
    assert set(seen) == set(SHAPES)  # no scales: the float32 model
    assert all(v.dtype == np.float32 and np.allclose(v, 1.0, atol=1e-6) for v in seen.values())
    assert dict(reply.content[keys.METRICS]) == dict(metrics)  # metrics only: left as they are


@pytest.mark.parametrize(
    ("down", "up", "low_rank"),
    [("none", "int8", None), ("int8", "fp16", None), ("none", "int8", LOW), ("int8", "none", LOW)],
    ids=["int8", "fp16", "low-rank-int8", "low-rank-float32"],
)
def test_under_dp_the_decoded_update_is_within_the_clip(
    down: str, up: str, low_rank: LowRank | None
) -> None:
    """Factored, clipped once to the channel's bound, rounded: the update the server
    decodes never exceeds C, whatever the rounding drew (ten nodes, ten draws)."""
    clip = 0.5
    for node in range(10):
        request = _request(down, up, clip, low_rank)
        exchange = ExchangeMod(_shapes, lambda ctx: [3, ctx.node_id])
        reply = exchange(request, node_context(node, 10), _random(node))
        assert not reply.has_error(), reply.error
        norm = global_norm(_sent_update(reply, request))
        assert 0.45 < norm <= clip * (1 + 1e-6)  # clipped (‖Δ‖ ≈ √21 ≫ C), not zeroed


@pytest.mark.parametrize("low_rank", [None, LOW], ids=["int8", "low-rank-int8"])
def test_the_clip_is_decided_once_on_the_update_that_is_sent(low_rank: LowRank | None) -> None:
    """Under DP with an int8 upload the reply is exactly encode(clip(factor(Δ), bound)) of
    the raw Δ, with bound = channel.clip_bound(C, factor(Δ)). In a low-rank round Δ's table
    lies mostly off the basis: its factor (‖·‖ = 0.049) is within C, so nothing is clipped —
    a clip of the full Δ (‖Δ‖ = 28.6) to C first would have shrunk it 57-fold."""
    clip, seed = 0.5, [3, 1]
    request = _request("none", "int8", clip, low_rank)
    channel = Channel.of(config_of(request.content), SHAPES)
    rng = np.random.default_rng(5)
    off_basis = rng.normal(size=(5, 4))
    if low_rank is not None:
        b = low_rank.basis(4)
        off_basis = 10 * off_basis @ (np.eye(4) - b.T @ b) + 0.02 * rng.normal(size=(5, 2)) @ b
    local = {TABLE: (1 + off_basis).astype(np.float32), "head.bias": np.float32([1.01])}
    raw = {k: v.astype(np.float64) - 1.0 for k, v in local.items()}  # Δ = local − start
    reply = ExchangeMod(_shapes, lambda ctx: seed)(request, node_context(0, 1), _local(local))
    factored = channel.factor(raw)
    once, _ = clip_update(factored, channel.clip_bound(clip, factored))
    rounding = round_rng(config_of(request.content), seed, ROUNDING_STREAM)
    expected = channel.encode_update(once, _ones(), rounding)
    payload = _numpy(reply)
    assert list(payload) == list(expected)
    for k in expected:
        np.testing.assert_array_equal(payload[k], expected[k])
    if low_rank is not None:
        sent = global_norm(_sent_update(reply, request))
        assert global_norm(factored) < 0.1 and global_norm(raw) > 20
        assert sent == pytest.approx(global_norm(factored), rel=0.05)  # unclipped, rounded
        assert sent > 10 * clip * global_norm(factored) / global_norm(raw)  # not a clip of a clip


def test_a_model_that_is_not_its_forms_payload_is_refused() -> None:
    request = _request("int8", "int8")
    request.content[keys.ARRAYS] = _record(_ones())  # float32 where int8 codes and scales were
    reply = ExchangeMod(_shapes)(request, node_context(0, 1), _trained)
    assert reply.has_error() and reply.error.code == keys.PAYLOAD_ERROR
    assert "not a valid int8 payload" in (reply.error.reason or "")


def test_the_guard_checks_a_compressed_reply_against_its_layout() -> None:
    """A round asking for int8 updates: float32 weights (no exchange on the path) are not
    the payload the round named, and the guard blocks them; encoded, they pass."""
    request = _request("int8", "int8")
    guarded = _app(SharedOnlyGuard(_shapes))(request, node_context(0, 1))
    assert guarded.has_error() and guarded.error.code == PRIVACY_GUARD_ERROR
    assert "not int8" in (guarded.error.reason or "")
    exchanged = _app(SharedOnlyGuard(_shapes), ExchangeMod(_shapes))
    assert not exchanged(request, node_context(0, 1)).has_error()


def test_a_reply_with_a_private_array_is_refused_and_nothing_of_it_leaves() -> None:
    """A reply whose arrays are not the model's (here the private user row rides along) is
    neither encoded nor clipped: the exchange replaces it by a refusal naming the arrays (the
    guard outside would block it too). Also with float32 weights under a clip, and with an
    array missing: nothing leaves unclipped."""

    def leaky(msg: Message, context: Context) -> Message:
        reply = _trained(msg, context)
        reply.content[keys.ARRAYS]["user_embedding.weight"] = Array(np.ones((1, 4), np.float32))
        return reply

    def missing(msg: Message, context: Context) -> Message:
        reply = _trained(msg, context)
        del reply.content[keys.ARRAYS]["head.bias"]
        return reply

    exchanged = ExchangeMod(_shapes)(_request("int8", "int8"), node_context(0, 1), leaky)
    assert exchanged.has_error() and exchanged.error.code == PRIVACY_GUARD_ERROR
    assert "user_embedding.weight" in (exchanged.error.reason or "")
    clipped = _request()
    clipped.content[keys.CONFIG][keys.CLIPPING_NORM] = 0.5
    for handler in (leaky, missing):
        refused = ExchangeMod(_shapes)(clipped, node_context(0, 1), handler)
        assert refused.has_error() and refused.error.code == PRIVACY_GUARD_ERROR
    reply = _app(SharedOnlyGuard(_shapes), ExchangeMod(_shapes), handler=leaky)(
        _request("int8", "int8"), node_context(0, 1)
    )
    assert reply.has_error() and reply.error.code == PRIVACY_GUARD_ERROR
    assert "user_embedding.weight" in (reply.error.reason or "")


def test_the_uploads_rounding_draws_from_the_seed_it_is_given() -> None:
    """A simulated node's rounding is seeded from [seed, round, ROUNDING_STREAM] (the same
    seed, the same payload: a seeded run reproduces) — never the training stream
    [seed, round], whose bits shaped Δ (rounding with them would not be unbiased); without
    a seed (a device) it is fresh OS entropy, different every time."""
    handler = _random(3)
    local = _numpy(handler(_request(), node_context(0, 1)))
    delta = {k: v.astype(np.float64) - 1.0 for k, v in local.items()}

    def upload(seed: list[int] | None) -> dict[str, np.ndarray]:
        exchange = ExchangeMod(_shapes, lambda _: seed)
        return _numpy(exchange(_request("none", "int8"), node_context(0, 1), handler))

    def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
        return all(np.array_equal(a[k], b[k]) for k in a)

    # server_message's round is 1
    assert same(upload([7, 0]), compress(delta, "int8", np.random.default_rng([7, 0, 1, 4])))
    assert ROUNDING_STREAM == 4
    assert not same(upload([7, 0]), compress(delta, "int8", np.random.default_rng([7, 0, 1])))
    assert same(upload([7, 0]), upload([7, 0]))
    assert not same(upload([7, 0]), upload([7, 1]))
    assert not same(upload(None), upload(None))


# --- the low-rank exchange --------------------------------------------------------------------
@pytest.mark.parametrize("up", ["none", "int8"])
def test_a_low_rank_round_sends_the_tables_factor_and_the_guard_checks_it(up: str) -> None:
    """ΔE = 3 everywhere goes up as A = ΔE·Bᵀ (5 × 2, not 5 × 4), the rest of Δ as it is,
    in the upload's form; the guard lets exactly that layout through."""
    request = _request("none", up, low_rank=LOW)
    exchange = ExchangeMod(_shapes, lambda _: [0, 0])
    reply = _app(SharedOnlyGuard(_shapes), exchange)(request, node_context(0, 1))
    assert not reply.has_error(), reply.error
    payload = _numpy(reply)
    factored = factored_shapes(SHAPES, 2)
    assert {k: (v.shape, v.dtype) for k, v in payload.items()} == payload_layout(factored, up)
    sent = decompress(payload, up, factored)
    np.testing.assert_allclose(sent[FACTOR], np.full((5, 4), 3.0) @ LOW.basis(4).T, atol=0.03)
    np.testing.assert_allclose(sent["head.bias"], [3.0], atol=0.03)


def test_a_dense_table_in_a_low_rank_round_is_blocked() -> None:
    """float32 weights of the full table where the round asked for the factor: the guard
    blocks the reply (no exchange on the path to encode it)."""
    guarded = _app(SharedOnlyGuard(_shapes))(_request(low_rank=LOW), node_context(0, 1))
    assert guarded.has_error() and guarded.error.code == PRIVACY_GUARD_ERROR
    assert TABLE in (guarded.error.reason or "")


@pytest.mark.parametrize(
    ("rank", "problem"),
    [(0, "colr-rank is 0"), (4, r"colr-rank 4 must be in [1, 4)")],  # the table is 4 wide
    ids=["does-not-parse", "table-cannot-take"],
)
def test_a_low_rank_form_the_device_cannot_take_is_a_refusal(rank: int, problem: str) -> None:
    request = _request(low_rank=LOW)
    request.content[keys.CONFIG][keys.COLR_RANK] = rank
    called: list[Message] = []

    def handler(msg: Message, context: Context) -> Message:
        called.append(msg)
        return _trained(msg, context)

    reply = ExchangeMod(_shapes)(request, node_context(0, 1), handler)
    assert reply.has_error() and reply.error.code == keys.PAYLOAD_ERROR
    assert problem in (reply.error.reason or "") and called == []  # nothing trained
