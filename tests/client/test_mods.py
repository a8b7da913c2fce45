"""Tests for fedrec.client.mods: the shared-only guard, the reply recorder, the user-level clip
and the compressed exchange."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from builders import node_context, server_message
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from fedrec.client.mods import (
    PRIVACY_GUARD_ERROR,
    CompressedExchange,
    MessageRecorder,
    SharedOnlyGuard,
    UserLevelClipping,
    describe,
    violations,
)
from fedrec.common import keys
from fedrec.common.colr import FACTOR, LowRank, factored_shapes
from fedrec.common.compression import compress, decompress, payload_layout

SHAPES = {"item_embedding.weight": (5, 4), "head.bias": (1,)}


def _arrays(**extra: tuple[int, ...]) -> ArrayRecord:
    shapes = {**SHAPES, **extra}
    return ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in shapes.items()})


def _reply(request: Message | None = None, **records: object) -> Message:
    request = request or server_message("train", None, node_id=1)
    return Message(content=RecordDict(records), reply_to=request)


def _clean(request: Message | None = None) -> Message:
    metrics = MetricRecord({keys.NUM_EXAMPLES: 10, keys.TRAIN_LOSS: 0.25})
    return _reply(request, **{keys.ARRAYS: _arrays(), keys.METRICS: metrics})


def test_a_clean_reply_has_no_violation() -> None:
    assert violations(_clean(), SHAPES) == []
    asked = server_message("evaluate", None, node_id=1)
    metrics = MetricRecord({keys.USERS: 1, keys.HR: 1.0, keys.NDCG: 0.5})
    assert violations(_reply(asked, metrics=metrics), SHAPES) == []


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ({keys.ARRAYS: _arrays(extra=(2,))}, "'extra' is not in the shared group"),
        ({keys.ARRAYS: _arrays(**{"user_embedding.weight": (1, 4)})}, "user_embedding.weight"),
        (
            {keys.ARRAYS: ArrayRecord({"item_embedding.weight": Array(np.zeros((6, 4)))})},
            "'item_embedding.weight' has shape",
        ),
        ({"private": _arrays()}, "array record 'private' is not 'arrays'"),
        ({keys.METRICS: MetricRecord({keys.TRAIN_LOSS: [3, 14, 15]})}, "'train-loss' is not a"),
        ({keys.METRICS: MetricRecord({"top-item": 3})}, "'top-item' is not one a device reports"),
        ({keys.METRICS: MetricRecord({keys.HR: 1.0})}, "'hr@10' is not one a device reports"),
        ({"extra": MetricRecord({keys.TRAIN_LOSS: 0.1})}, "metric record 'extra' is not"),
        ({keys.CONFIG: ConfigRecord({"note": "hello"})}, "ConfigRecord is not allowed"),
    ],
    ids=[
        "extra-key",
        "user-embedding",
        "shape",
        "record-name",
        "item-ids",
        "unknown-metric",
        "eval-metric-in-train",
        "metric-record-name",
        "config",
    ],
)
def test_each_leak_is_a_violation(records: dict[str, object], expected: str) -> None:
    problems = violations(_reply(**records), SHAPES)
    assert problems, records
    assert any(expected in p for p in problems), problems


def test_a_violation_hidden_in_an_otherwise_clean_reply_is_found() -> None:
    reply = _clean()
    reply.content["private"] = ArrayRecord({"user_features": Array(np.ones((1, 3)))})
    problems = violations(reply, SHAPES)
    assert len(problems) == 2  # wrong record name and an undeclared array


def test_an_error_reply_has_no_violation() -> None:
    request = server_message("train", None, node_id=1)
    assert violations(Message(error=Error(code=1, reason="x"), reply_to=request), SHAPES) == []


def test_guard_blocks_a_violating_reply() -> None:
    guard = SharedOnlyGuard(lambda ctx: SHAPES)
    request = server_message("train", None, node_id=1)

    def leaky_handler(msg: Message, ctx: Context) -> Message:
        reply = _clean(msg)
        reply.content[keys.ARRAYS]["user_embedding.weight"] = Array(np.ones((1, 4), np.float32))
        return reply

    out = guard(request, node_context(0, 1), leaky_handler)
    assert out.has_error() and not out.has_content()
    assert out.error.code == PRIVACY_GUARD_ERROR
    assert "privacy guard" in out.error.reason
    assert "user_embedding.weight" in out.error.reason
    assert out.metadata.reply_to_message_id == request.metadata.message_id


def test_guard_passes_a_clean_reply_through() -> None:
    guard = SharedOnlyGuard(lambda ctx: SHAPES)
    request = server_message("train", None, node_id=1)
    reply = _clean(request)
    out = guard(request, node_context(0, 1), lambda msg, ctx: reply)
    assert out is reply and not out.has_error()


def test_guard_asks_for_the_shapes_of_this_context() -> None:
    seen: list[Context] = []

    def shapes(ctx: Context) -> dict[str, tuple[int, ...]]:
        seen.append(ctx)
        return SHAPES

    guard = SharedOnlyGuard(shapes)
    request, context = server_message("train", None, node_id=1), node_context(0, 1)
    guard(request, context, lambda msg, ctx: _clean(msg))
    assert seen == [context]


def test_recorder_appends_one_json_line_per_reply(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    recorder = MessageRecorder(lambda ctx: str(path))
    context = node_context(2, 3)
    request = server_message("train", None, node_id=context.node_id)
    out = recorder(request, context, lambda msg, ctx: _clean(msg))
    assert not out.has_error()
    evaluate = server_message("evaluate", None, node_id=context.node_id)
    recorder(evaluate, context, lambda msg, ctx: _reply(msg, metrics=MetricRecord({"hr@10": 1.0})))

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["node"] == context.node_id and first["type"] == "train"
    assert first["records"][keys.ARRAYS]["kind"] == "arrays"
    assert first["records"][keys.ARRAYS]["arrays"] == {
        "item_embedding.weight": {"shape": [5, 4], "dtype": "float32"},
        "head.bias": {"shape": [1], "dtype": "float32"},
    }
    assert first["records"][keys.METRICS] == {
        "kind": "metrics",
        "values": {keys.NUM_EXAMPLES: 10, keys.TRAIN_LOSS: 0.25},
    }
    assert first["bytes"] >= (5 * 4 + 1) * 4
    assert second["type"] == "evaluate" and second["records"]["metrics"]["values"] == {"hr@10": 1.0}


def test_recorder_without_a_path_writes_nothing(tmp_path: Path) -> None:
    recorder = MessageRecorder(lambda ctx: "")
    request = server_message("train", None, node_id=1)
    reply = _clean(request)
    assert recorder(request, node_context(0, 1), lambda msg, ctx: reply) is reply
    assert list(tmp_path.iterdir()) == []


def test_describe_names_other_records_and_errors() -> None:
    request = server_message("train", None, node_id=1)
    described = describe(_reply(request, config=ConfigRecord({"a": 1})))
    assert described["records"] == {"config": {"kind": "ConfigRecord", "keys": ["a"]}}
    error = Message(error=Error(code=PRIVACY_GUARD_ERROR, reason="blocked"), reply_to=request)
    assert describe(error) == {"type": "train", "error": True}


# --- UserLevelClipping ---------------------------------------------------------------------
def _train_request(clip: float | None) -> Message:
    request = server_message("train", _arrays(), node_id=1)
    if clip is not None:
        request.content[keys.CONFIG][keys.CLIPPING_NORM] = clip
    return request


def _trained(msg: Message, context: Context) -> Message:
    """A handler whose update is 3 on every coordinate (‖Δ‖ = 3·√21 = 13.75)."""
    arrays = ArrayRecord({k: Array(np.full(s, 3.0, np.float32)) for k, s in SHAPES.items()})
    metrics = MetricRecord({keys.NUM_EXAMPLES: 10})
    return _reply(msg, **{keys.ARRAYS: arrays, keys.METRICS: metrics})


def _update_norm(reply: Message) -> float:
    arrays = reply.content[keys.ARRAYS]
    return float(np.sqrt(sum((arrays[k].numpy().astype(np.float64) ** 2).sum() for k in SHAPES)))


def test_user_level_clipping_clips_the_update_to_the_servers_norm() -> None:
    reply = UserLevelClipping()(_train_request(0.5), node_context(0, 1), _trained)
    assert not reply.has_error()
    assert _update_norm(reply) == pytest.approx(0.5, rel=1e-6)  # global is 0: Δ = reply
    # the direction is kept: every coordinate scaled alike
    values = np.concatenate([reply.content[keys.ARRAYS][k].numpy().ravel() for k in SHAPES])
    assert np.allclose(values, values[0])


def test_user_level_clipping_leaves_small_updates_and_non_dp_rounds_alone() -> None:
    unclipped = UserLevelClipping()(_train_request(None), node_context(0, 1), _trained)
    assert _update_norm(unclipped) == pytest.approx(3 * np.sqrt(21))
    within = UserLevelClipping()(_train_request(100.0), node_context(0, 1), _trained)
    assert _update_norm(within) == pytest.approx(3 * np.sqrt(21))


def test_user_level_clipping_refuses_a_non_finite_update() -> None:
    """A diverged round (NaN) is an error reply, never an unclippable update."""

    def diverged(msg: Message, context: Context) -> Message:
        arrays = ArrayRecord({k: Array(np.full(s, np.nan, np.float32)) for k, s in SHAPES.items()})
        return _reply(msg, **{keys.ARRAYS: arrays, keys.METRICS: MetricRecord({})})

    reply = UserLevelClipping()(_train_request(0.5), node_context(0, 1), diverged)
    assert reply.has_error() and "non-finite" in reply.error.reason


def _compressed_request(down: str, up: str, clip: float | None = None) -> Message:
    """A train round whose model (all 1.0, in the download's form) the device must decode."""
    model = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    sent = ArrayRecord({k: Array(v) for k, v in compress(model, down).items()})
    request = server_message("train", sent, node_id=1)
    request.content[keys.CONFIG][keys.DOWNLOAD_COMPRESSION] = down
    request.content[keys.CONFIG][keys.UPLOAD_COMPRESSION] = up
    if clip is not None:
        request.content[keys.CONFIG][keys.CLIPPING_NORM] = clip
    return request


def _app(*mods: object) -> Callable[[Message, Context], Message]:
    """``_trained`` behind ``mods`` (the first outermost), as Flower chains them."""
    handler: Callable[[Message, Context], Message] = _trained
    for mod in reversed(mods):
        handler = (lambda m, inner: lambda msg, ctx: m(msg, ctx, inner))(mod, handler)  # type: ignore[operator]
    return handler


def test_the_exchange_decodes_the_model_and_sends_the_compressed_update() -> None:
    seen: dict[str, np.ndarray] = {}

    def handler(msg: Message, context: Context) -> Message:
        seen.update({k: a.numpy() for k, a in msg.content[keys.ARRAYS].items()})
        return _trained(msg, context)

    request = _compressed_request("int8", "int8")
    reply = CompressedExchange(lambda _: SHAPES)(request, node_context(0, 1), handler)
    assert {k: (v.dtype, v.shape) for k, v in seen.items()} == {
        k: (np.float32, s) for k, s in SHAPES.items()
    }  # the handler trained from the decoded float32 model, all ones
    assert all(np.allclose(v, 1.0) for v in seen.values())
    payload = {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}
    assert {k: (v.shape, v.dtype) for k, v in payload.items()} == payload_layout(SHAPES, "int8")
    delta = decompress(payload, "int8", SHAPES)  # Δ = 3 − 1 everywhere, exactly representable
    assert all(np.allclose(v, 2.0) for v in delta.values())
    assert violations(reply, SHAPES, request=request) == []


def test_under_dp_the_decoded_update_is_within_the_clip() -> None:
    """Clip, then round: the update the server decodes never exceeds C, whatever U fell."""
    for node in range(10):
        request = _compressed_request("none", "int8", clip=0.5)
        reply = _app(CompressedExchange(lambda _: SHAPES), UserLevelClipping())(
            request, node_context(node, 10)
        )
        payload = {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}
        norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2)
                           for v in decompress(payload, "int8", SHAPES).values()))  # fmt: skip
        assert 0.45 < norm <= 0.5 * (1 + 1e-6)


def test_the_guard_checks_a_compressed_reply_against_its_layout() -> None:
    """A round asking for int8 updates: float32 weights (no exchange on the path) are not
    the payload the round named, and the guard blocks them."""
    request = _compressed_request("int8", "int8")
    guarded = _app(SharedOnlyGuard(lambda _: SHAPES))(request, node_context(0, 1))
    assert guarded.has_error() and guarded.error.code == PRIVACY_GUARD_ERROR
    assert "not int8" in (guarded.error.reason or "")
    exchanged = _app(SharedOnlyGuard(lambda _: SHAPES), CompressedExchange(lambda _: SHAPES))
    assert not exchanged(request, node_context(0, 1)).has_error()


def test_a_model_that_is_not_its_forms_payload_is_refused() -> None:
    request = _compressed_request("int8", "int8")
    request.content[keys.ARRAYS] = _arrays()  # float32 where int8 codes and scales were named
    reply = CompressedExchange(lambda _: SHAPES)(request, node_context(0, 1), _trained)
    assert reply.has_error() and reply.error.code == keys.PAYLOAD_ERROR
    assert "not a valid int8 payload" in (reply.error.reason or "")


def test_a_reply_with_a_private_array_is_left_for_the_guard_to_block() -> None:
    """The exchange does not encode a reply whose arrays are not the model's (here the
    private user row rides along): it passes it on as it is, and the guard blocks it."""

    def leaky(msg: Message, context: Context) -> Message:
        reply = _trained(msg, context)
        reply.content[keys.ARRAYS]["user_embedding.weight"] = Array(np.ones((1, 4), np.float32))
        return reply

    request = _compressed_request("int8", "int8")
    exchange = CompressedExchange(lambda _: SHAPES)
    reply = SharedOnlyGuard(lambda _: SHAPES)(
        request, node_context(0, 1), lambda m, c: exchange(m, c, leaky)
    )
    assert reply.has_error() and reply.error.code == PRIVACY_GUARD_ERROR
    assert "user_embedding.weight" in (reply.error.reason or "")


def test_the_uploads_rounding_draws_from_the_seed_it_is_given() -> None:
    """A simulated node's rounding is seeded (the same seed, the same payload: a seeded run
    reproduces); without one (a device) it is fresh OS entropy, different every time."""

    def uneven(msg: Message, context: Context) -> Message:  # Δ off the int8 grid
        rng = np.random.default_rng(3)
        arrays = {k: Array(rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items()}
        return _reply(msg, **{keys.ARRAYS: ArrayRecord(arrays)})

    def upload(seed: list[int] | None) -> dict[str, np.ndarray]:
        exchange = CompressedExchange(lambda _: SHAPES, lambda _: seed)
        reply = exchange(_compressed_request("none", "int8"), node_context(0, 1), uneven)
        return {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}

    def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
        return all(np.array_equal(a[k], b[k]) for k in a)

    assert same(upload([7, 0]), upload([7, 0]))
    assert not same(upload([7, 0]), upload([7, 1]))
    assert not same(upload(None), upload(None))


def _low_rank_request(up: str = "none", clip: float | None = None) -> Message:
    request = _compressed_request("none", up, clip)
    for key, value in LowRank(2, 9).config().items():
        request.content[keys.CONFIG][key] = value
    return request


@pytest.mark.parametrize("up", ["none", "int8"])
def test_a_low_rank_round_sends_the_tables_factor_and_the_guard_checks_it(up: str) -> None:
    """ΔE = 2 everywhere goes up as A = ΔE·Bᵀ (5 × 2, not 5 × 4), the rest of Δ as it is,
    in the upload's form; the guard lets exactly that layout through."""
    request = _low_rank_request(up)
    exchange = CompressedExchange(lambda _: SHAPES, lambda _: [0, 0])
    reply = _app(SharedOnlyGuard(lambda _: SHAPES), exchange)(request, node_context(0, 1))
    assert not reply.has_error(), reply.error
    payload = {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}
    factored = factored_shapes(SHAPES, 2)
    assert {k: (v.shape, v.dtype) for k, v in payload.items()} == payload_layout(factored, up)
    sent = decompress(payload, up, factored)
    b = LowRank(2, 9).basis(4)
    np.testing.assert_allclose(sent[FACTOR], np.full((5, 4), 2.0) @ b.T, atol=0.02)
    np.testing.assert_allclose(sent["head.bias"], [2.0], atol=0.02)


def test_a_dense_table_in_a_low_rank_round_is_blocked() -> None:
    """float32 weights of the full table where the round asked for the factor: the guard
    blocks the reply (no exchange on the path to encode it)."""
    guarded = _app(SharedOnlyGuard(lambda _: SHAPES))(_low_rank_request(), node_context(0, 1))
    assert guarded.has_error() and guarded.error.code == PRIVACY_GUARD_ERROR
    assert "item_embedding.weight" in (guarded.error.reason or "")


def test_a_round_whose_low_rank_form_does_not_parse_is_refused() -> None:
    request = _low_rank_request()
    request.content[keys.CONFIG][keys.COLR_RANK] = 0
    reply = CompressedExchange(lambda _: SHAPES)(request, node_context(0, 1), _trained)
    assert reply.has_error() and reply.error.code == keys.PAYLOAD_ERROR
    assert "colr-rank is 0" in (reply.error.reason or "")


def test_under_dp_a_low_rank_update_is_within_the_clip() -> None:
    """Clipped in full (the inner mod), factored (never longer), rounded within the bound."""
    request = _low_rank_request("int8", clip=0.5)
    reply = _app(CompressedExchange(lambda _: SHAPES), UserLevelClipping())(
        request, node_context(0, 1)
    )
    payload = {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}
    sent = decompress(payload, "int8", factored_shapes(SHAPES, 2))
    norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in sent.values()))
    assert norm <= 0.5 * (1 + 1e-6)


def test_the_uploads_rounding_is_not_the_training_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training draws from [seed, node, round]: the rounding must not reuse those bits
    (they shaped Δ, so rounding with them would not be unbiased)."""
    import fedrec.client.mods as mods

    keys_used: list[object] = []
    real = np.random.default_rng
    monkeypatch.setattr(
        mods.np.random, "default_rng", lambda key=None: keys_used.append(key) or real(key)
    )
    exchange = CompressedExchange(lambda _: SHAPES, lambda _: [7, 0])
    exchange(_compressed_request("int8", "int8"), node_context(0, 1), _trained)
    assert keys_used and all(k != [7, 0, 1] for k in keys_used), keys_used


def test_a_low_rank_form_the_table_cannot_take_is_a_refusal() -> None:
    request = _low_rank_request()
    request.content[keys.CONFIG][keys.COLR_RANK] = 4  # the table is 4 wide
    reply = CompressedExchange(lambda _: SHAPES)(request, node_context(0, 1), _trained)
    assert reply.has_error() and reply.error.code == keys.PAYLOAD_ERROR
    assert "colr-rank 4 must be in [1, 4)" in (reply.error.reason or "")
