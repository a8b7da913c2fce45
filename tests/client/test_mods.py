"""Tests for fedrec.client.mods: the shared-only guard, the reply recorder and describe (the
exchange mod's clip and compression: tests/client/test_exchange.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import model_arrays, node_context, server_message
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
    MessageRecorder,
    SharedOnlyGuard,
    describe,
    violations,
)
from fedrec.common import keys

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


@pytest.mark.usefixtures("server_task")
def test_the_packing_mod_unpacks_first_and_packs_the_reply() -> None:
    from fedrec.client.mods import packing_mod
    from fedrec.common.packing import is_packed, pack, unpack

    seen: list[RecordDict] = []

    def handler(msg: Message, context: Context) -> Message:
        seen.append(msg.content)
        return Message(RecordDict({keys.ARRAYS: msg.content[keys.ARRAYS]}), reply_to=msg)

    context = node_context(0, 1)
    packed = server_message("train", model_arrays(), 1)
    packed.content = pack(packed.content)
    reply = packing_mod(packed, context, handler)
    assert not is_packed(seen[0]) and list(seen[0][keys.ARRAYS]) == list(model_arrays())
    assert is_packed(reply.content)
    got = unpack(reply.content)[keys.ARRAYS]
    for name, value in model_arrays().items():
        np.testing.assert_array_equal(got[name].numpy(), value.numpy())
    plain = server_message("train", model_arrays(), 1)  # the simulation's: passes as it is
    assert not is_packed(packing_mod(plain, context, handler).content)
