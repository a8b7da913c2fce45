"""Tests for fedrec.server.plain: a round's replies decoded through its channel, checked,
bounded and summed in the clear (and fedrec.server.aggregate's FedAvg helpers, which must
give Flower's own figures bit for bit)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import numpy as np
import pytest
from builders import (
    ScriptedGrid,
    StaticGrid,
    eval_reply,
    federation,
    model_arrays,
    server_message,
    train_reply,
)
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.colr import FACTOR, LowRank
from fedrec.common.compression import compress, decompress, payload_layout
from fedrec.common.data.catalog import Catalog
from fedrec.common.model import ITEM_TABLE, shared_shapes
from fedrec.common.records import message_bytes
from fedrec.server.aggregate import Aggregate, TrainReport, TrainRound, fedavg_mean, weighted_means
from fedrec.server.app import ServerRandomness, compose
from fedrec.server.cohorts import EvaluationPanel, UniformCohort
from fedrec.server.evaluation import FederatedEvaluation, model_record
from fedrec.server.optimizer import FedAvg, ServerStep
from fedrec.server.plain import PlainAggregation
from fedrec.server.recorder import RoundRecorder
from fedrec.server.robust import Bounds
from fedrec.server.rounds import RoundPlan, Rounds
from fedrec.server.validation import REASONS, ReplyValidator

pytestmark = pytest.mark.usefixtures("server_task")

Arrays = dict[str, np.ndarray]
SHAPES = {ITEM_TABLE: (3, 4), "head.bias": (1,)}  # model_arrays(): a 3 × 4 table and a bias
MODEL = {k: a.numpy() for k, a in model_arrays().items()}  # float32: table 0..11, bias 0.5
START = {k: v.astype(np.float64) for k, v in MODEL.items()}


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _shifted(table: float = 0.0, bias: float = 0.0) -> ArrayRecord:
    """float32 weights: the start model with every table entry moved by ``table`` and the
    bias by ``bias``."""
    return _record({ITEM_TABLE: MODEL[ITEM_TABLE] + np.float32(table),
                    "head.bias": MODEL["head.bias"] + np.float32(bias)})  # fmt: skip


def _failed(node: int, reason: str, code: int = 1) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=server_message("train", None, node))


def _aggregate(
    replies: list[Message | None],
    *,
    channel: Channel | None = None,
    start: Arrays = START,
    weight_key: str = keys.UNIT_WEIGHT,
    bound: float = 100.0,
    bounds: Bounds | None = None,
    clip_norm: float | None = None,
) -> tuple[Aggregate | None, TrainReport]:
    """One plain round over nodes 1..n, node i answering ``replies[i - 1]`` (None: silent)."""
    shapes = {k: v.shape for k, v in start.items()}
    channel = channel or Channel(shapes)
    validator = ReplyValidator(
        shapes, max_update_norm=bound, weigh_by_examples=weight_key == keys.NUM_EXAMPLES
    )
    plain = PlainAggregation(validator, weight_key=weight_key, bounds=bounds, clip_norm=clip_norm)
    content = RecordDict({
        keys.ARRAYS: model_record({k: v.astype(np.float32) for k, v in start.items()}, channel),
        keys.CONFIG: ConfigRecord({**channel.config(train=True), keys.SERVER_ROUND: 1}),
    })  # fmt: skip
    nodes = list(range(1, len(replies) + 1))
    messages = [Message(content, node, MessageType.TRAIN) for node in nodes]
    grid = ScriptedGrid(nodes, lambda m: replies[m.metadata.dst_node_id - 1])
    return plain.aggregate(grid, TrainRound(1, messages, start, channel, 1.0))  # type: ignore[arg-type]


def _rounds(grid: ScriptedGrid, channel_for: Callable[[int], Channel]) -> Rounds:
    """The round loop over SHAPES: every connected node trains (uniform weights, FedAvg) and
    is evaluated every round."""
    validator = ReplyValidator(SHAPES, max_update_norm=100.0)
    return Rounds(
        grid=grid,  # type: ignore[arg-type]
        plan=RoundPlan(first=1, last=5, timeout=1.0),
        sampler=UniformCohort(None, random.Random(0)),
        aggregator=PlainAggregation(validator, weight_key=keys.UNIT_WEIGHT),
        step=ServerStep(FedAvg()),
        evaluation=FederatedEvaluation(EvaluationPanel(None), validator, every=1, last_round=5),
        recorder=RoundRecorder(),
        channel_for=channel_for,
        train_config={},
        evaluate_config={},
    )


def _sent(grid: ScriptedGrid, kind: str, server_round: int) -> list[Message]:
    return [
        m
        for m in grid.sent
        if m.metadata.message_type == kind
        and m.content[keys.CONFIG][keys.SERVER_ROUND] == server_round
    ]


# --- decoding through the round's channel -------------------------------------------------


def test_a_decoded_reply_is_the_servers_model_plus_the_update() -> None:
    """int8 both ways: the devices start from the int8-rounded model, but Δ goes onto the
    server's exact model, so the download's rounding never enters it."""
    channel = Channel(SHAPES, "int8", "int8")
    delta = {
        ITEM_TABLE: np.full((3, 4), 0.25, np.float32),
        "head.bias": np.array([-1.0], np.float32),
    }
    sent = decompress(compress(START, "int8"), "int8", SHAPES)
    assert np.abs(sent[ITEM_TABLE] - START[ITEM_TABLE]).max() > 0.01  # the download did round
    aggregate, report = _aggregate([train_reply(_record(compress(delta, "int8")), 10, 0.1, 1)],
                                   channel=channel)  # fmt: skip
    assert aggregate is not None and report.contributed == 1
    assert all(v.dtype == np.float32 for v in aggregate.mean.values())
    # a row of 0.25s: int8 codes 127 at scale 0.25/127, decoded to 0.25 within float32
    np.testing.assert_allclose(aggregate.mean[ITEM_TABLE], START[ITEM_TABLE] + 0.25, atol=1e-6)
    np.testing.assert_allclose(aggregate.mean["head.bias"], [0.5 - 1.0], atol=1e-6)
    np.testing.assert_allclose(aggregate.total["head.bias"], [-1.0], atol=1e-6)


def test_a_reply_off_the_upload_layout_is_refused_as_payload() -> None:
    weights = train_reply(model_arrays(2.0), 10, 0.1, 1)  # float32 weights, not int8 Δ
    aggregate, report = _aggregate([weights], channel=Channel(SHAPES, "none", "int8"))
    assert aggregate is None and report.rejected == {"payload": 1}
    assert (report.contributed, report.failed) == (0, 1)
    assert report.errors[0].startswith("refused: payload:") and "int8" in report.errors[0]


VALID_INT8 = Array(np.zeros((3, 4), np.int8)).data  # a well-formed .npy of the table's codes
DEVICE_BYTES = st.one_of(
    st.binary(max_size=64),
    # a real header cut anywhere, then anything: the header parser's paths
    st.builds(lambda cut, tail: VALID_INT8[:cut] + tail,
              st.integers(0, len(VALID_INT8) - 1), st.binary(max_size=16)),
)  # fmt: skip


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=DEVICE_BYTES, upload=st.sampled_from(["none", "int8"]))
@example(data=b"", upload="int8")
@example(data=b"junk", upload="none")
# found by this test: a header whose text has a NUL byte and an unclosed "{" makes numpy's
# header parser raise tokenize.TokenError (an Exception, not one of ARRAY_ERRORS)
@example(data=VALID_INT8[:121] + b"\x00" * 6 + b"{", upload="none")
def test_undecodable_bytes_are_a_refusal_not_a_crash(data: bytes, upload: str) -> None:
    """The bytes are the device's (``Array.numpy`` raises EOFError, ValueError … on them):
    the reply is refused or, if the bytes happen to be an array, taken, never a crash."""
    if upload == "int8":
        payload = _record(compress({k: np.zeros(s, np.float32) for k, s in SHAPES.items()}, "int8"))
    else:
        payload = model_arrays()
    dtype = "int8" if upload == "int8" else "float32"
    payload[ITEM_TABLE] = Array(dtype=dtype, shape=(3, 4), stype="numpy.ndarray", data=data)
    aggregate, report = _aggregate([train_reply(payload, 10, 0.1, 1)],
                                   channel=Channel(SHAPES, "none", upload))  # fmt: skip
    assert report.contributed + sum(report.rejected.values()) == 1
    assert set(report.rejected) <= set(REASONS) and (aggregate is None) == bool(report.rejected)
    if data in (b"", b"junk"):
        assert report.rejected == {"arrays": 1} and "undecodable" in report.errors[0]


def test_every_model_sent_is_encoded_and_the_round_averages_the_decoded_updates() -> None:
    """int8 down, fp16 up: the model goes out in the download's form to trainers and
    evaluators, the record counts the compressed bytes, and the round averages start + Δ."""
    ups = {1: 0.5, 2: 1.5}  # every coordinate's Δ, by node: mean Δ = 1

    def answer(message: Message) -> Message:
        node = message.metadata.dst_node_id
        if message.metadata.message_type == MessageType.EVALUATE:
            return eval_reply({keys.USERS: 1.0, keys.HR: 1.0}, node)
        if node == 2 and message.content[keys.CONFIG][keys.SERVER_ROUND] == 2:
            return train_reply(model_arrays(), 5, 0.1, node)  # float32 weights, fp16 Δ asked
        update = {k: np.full(s, ups[node], np.float32) for k, s in SHAPES.items()}
        return train_reply(_record(compress(update, "fp16")), 5, 0.1, node)

    grid = ScriptedGrid([1, 2], answer)
    rounds = _rounds(grid, lambda r: Channel.for_round(SHAPES, "int8", "fp16", server_round=r))
    model = rounds.round(1, MODEL)
    sent = _sent(grid, MessageType.TRAIN, 1) + _sent(grid, MessageType.EVALUATE, 1)
    assert len(sent) == 4
    for message in sent:
        arrays = message.content[keys.ARRAYS]
        layout = {k: (tuple(a.shape), np.dtype(a.dtype)) for k, a in arrays.items()}
        assert layout == payload_layout(SHAPES, "int8")
    record = rounds.recorder.records[-1]
    assert record["bytes_down_per_client"] == message_bytes(sent[0])
    codes = sum(a.numpy().nbytes for a in sent[0].content[keys.ARRAYS].values())
    assert codes == 12 + 1 + 4 * (3 + 1)  # int8 codes and a float32 scale a row, not 4 * 13
    np.testing.assert_allclose(model["head.bias"], [0.5 + 1.0])
    np.testing.assert_allclose(model[ITEM_TABLE], MODEL[ITEM_TABLE] + 1.0)
    rounds.round(2, model)
    assert rounds.recorder.records[-1]["rejected"] == {"train": {"payload": 1}}


def test_a_low_rank_round_names_its_basis_and_expands_each_factor() -> None:
    """Every train message of round 3 names the round's form (rank, basis seed); a reply's
    factor A comes back as ΔE = A·B on that basis, added to the exact model; the full table
    where A was asked is refused."""
    form = LowRank.for_round(2, 5, 3)
    a = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)

    def answer(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if message.metadata.message_type == MessageType.EVALUATE:
            return None
        if node == 2:
            return train_reply(model_arrays(2.0), 10, 0.1, node)  # dense: refused
        payload = _record({FACTOR: a, "head.bias": np.array([0.25], np.float32)})
        return train_reply(payload, 10, 0.1, node)

    grid = ScriptedGrid([1, 2], answer)
    rounds = _rounds(grid, lambda r: Channel.for_round(SHAPES, "none", "none", rank=2, seed=5,
                                                         server_round=r))  # fmt: skip
    model = rounds.round(3, MODEL)
    for message in _sent(grid, MessageType.TRAIN, 3):
        assert LowRank.of(message.content[keys.CONFIG]) == form
    expected = START[ITEM_TABLE] + a @ form.basis(4)  # (3, 2) @ (2, 4)
    np.testing.assert_allclose(model[ITEM_TABLE], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model["head.bias"], [0.5 + 0.25])
    assert rounds.recorder.records[-1]["rejected"] == {"train": {"payload": 1}}


def test_the_next_round_draws_another_basis() -> None:
    """compose's channels: each round's train messages name a basis seed of their own,
    drawn from the run seed and the round."""
    catalog = Catalog.of_features(np.eye(6, 3, dtype=np.float32), 2)
    config = federation(colr_rank=2, dim=4, seed=5, num_rounds=2, clients_per_round=2,
                        min_clients=1, eval_every=5, round_timeout=1.0)  # fmt: skip
    start = {k: np.ones(s, np.float32) for k, s in shared_shapes(catalog, 4).items()}
    grid = StaticGrid([1, 2, 3])  # nobody replies: the model stays, the messages are sent
    run = compose(grid, config, catalog, 3, ServerRandomness.seeded(0), start=start)  # type: ignore[arg-type]
    run.rounds.run(start)
    seeds: dict[int, set[int]] = {}
    for message in grid.sent:
        if message.metadata.message_type == MessageType.TRAIN:
            cfg = message.content[keys.CONFIG]
            seeds.setdefault(cfg[keys.SERVER_ROUND], set()).add(cfg[keys.COLR_SEED])
    assert seeds == {r: {LowRank.for_round(2, 5, r).seed} for r in (1, 2)}
    assert seeds[1] != seeds[2]


# --- FedAvg as Flower computes it ---------------------------------------------------------


def _flower_records(models: list[Arrays], metrics: list[dict[str, float]]) -> list[RecordDict]:
    return [
        RecordDict({keys.ARRAYS: _record(m), keys.METRICS: MetricRecord(x)})  # type: ignore[arg-type]
        for m, x in zip(models, metrics, strict=True)
    ]


def test_fedavg_mean_is_flowers_aggregate_arrayrecords_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    models = [
        {k: (MODEL[k] + rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(3)
    ]
    examples = [7, 13, 29]
    metrics = [{keys.NUM_EXAMPLES: n, keys.UNIT_WEIGHT: 1} for n in examples]
    flower = aggregate_arrayrecords(_flower_records(models, metrics), keys.NUM_EXAMPLES)
    ours = fedavg_mean(models, examples)
    for k in SHAPES:
        assert ours[k].dtype == np.float32 and np.array_equal(ours[k], flower[k].numpy())
    # and a plain round without a DP clip averages its replies exactly so
    replies = [train_reply(_record(m), n, 0.1, i + 1)
               for i, (m, n) in enumerate(zip(models, examples, strict=True))]  # fmt: skip
    aggregate, _ = _aggregate(replies, weight_key=keys.NUM_EXAMPLES)  # type: ignore[arg-type]
    assert aggregate is not None and aggregate.weight == 49
    for k in SHAPES:
        assert np.array_equal(aggregate.mean[k], flower[k].numpy())


@pytest.mark.parametrize("weight_key", [keys.NUM_EXAMPLES, keys.UNIT_WEIGHT])
def test_weighted_means_are_flowers_aggregate_metricrecords(weight_key: str) -> None:
    metrics = [
        {keys.NUM_EXAMPLES: 7, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: 0.31, keys.RETURNING: 1},
        {keys.NUM_EXAMPLES: 13, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: 0.2, keys.RETURNING: 0},
        {keys.NUM_EXAMPLES: 29, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: 0.57, keys.RETURNING: 1},
    ]
    models = [MODEL] * 3
    flower = aggregate_metricrecords(_flower_records(models, metrics), weight_key)  # type: ignore[arg-type]
    ours = weighted_means(metrics, weight_key)
    assert ours == dict(flower) and weight_key not in ours
    if weight_key == keys.UNIT_WEIGHT:  # 1/3 each: the plain means
        assert ours[keys.TRAIN_LOSS] == pytest.approx((0.31 + 0.2 + 0.57) / 3)


# --- what is refused, and what enters the sum ---------------------------------------------


def test_refused_replies_are_counted_by_reason_and_not_aggregated() -> None:
    nan = model_arrays()
    nan["head.bias"] = Array(np.array([np.nan], np.float32))
    wrong_shape = _record(
        {ITEM_TABLE: np.zeros((2, 4), np.float32), "head.bias": MODEL["head.bias"]}
    )
    bad_metrics = Message(
        RecordDict({keys.ARRAYS: model_arrays(),
                    keys.METRICS: MetricRecord({keys.UNIT_WEIGHT: 2, keys.TRAIN_LOSS: 0.1})}),
        reply_to=server_message("train", None, node_id=4),
    )  # fmt: skip
    replies = [
        train_reply(_shifted(bias=1.0), 10, 0.2, 1),  # the one good reply
        train_reply(nan, 10, 0.1, 2),
        train_reply(wrong_shape, 10, 0.1, 3),
        bad_metrics,
        _failed(5, "dropped"),
        None,  # node 6 never answers
    ]
    aggregate, report = _aggregate(replies)
    assert report.rejected == {"non-finite": 1, "shape": 1, "metrics": 1}
    assert (report.sampled, report.contributed, report.failed) == (6, 1, 4)
    assert report.errors[0] == "dropped" and report.errors[1].startswith("refused: non-finite")
    assert aggregate is not None and aggregate.count == 1
    assert np.array_equal(aggregate.mean["head.bias"], MODEL["head.bias"] + np.float32(1.0))
    assert aggregate.metrics == {keys.NUM_EXAMPLES: 10, keys.TRAIN_LOSS: 0.2}
    assert [node for node, _ in report.node_metrics] == [1]  # the contributors' metrics only
    assert report.all_failed is None and report.all_refused is None


def test_with_a_clip_norm_the_sum_is_of_clipped_updates() -> None:
    """C = 1, uniform weights, three updates of the bias alone:
    Δ₁ = 3 → clipped to 1 (counted);  Δ₂ = 0.5 → kept;
    Δ₃ = 1.00005 (float32: 1.0000500679) → clipped to 1 but within C·(1 + 1e-4), the
    float32 slack a device's own clip leaves: not counted.
    Σ = 1 + 0.5 + 1 = 2.5, mean bias = 0.5 + 2.5 / 3 = 1.3333…, the table unchanged."""
    replies = [
        train_reply(_shifted(bias=3.0), 10, 0.1, 1),
        train_reply(_shifted(bias=0.5), 10, 0.1, 2),
        train_reply(_shifted(bias=1.00005), 10, 0.1, 3),
    ]
    aggregate, report = _aggregate(replies, clip_norm=1.0)
    assert aggregate is not None and report.clipped == 1
    np.testing.assert_allclose(aggregate.total["head.bias"], [2.5], rtol=1e-12)
    np.testing.assert_array_equal(aggregate.total[ITEM_TABLE], np.zeros((3, 4)))
    assert (aggregate.weight, aggregate.count) == (3.0, 3)
    np.testing.assert_allclose(aggregate.mean["head.bias"], [0.5 + 2.5 / 3], rtol=1e-12)
    np.testing.assert_array_equal(aggregate.mean[ITEM_TABLE], START[ITEM_TABLE])
    _, unclipped = _aggregate(replies)
    assert unclipped.clipped == 0  # no clip norm: nothing counted


# --- norm bounding ------------------------------------------------------------------------

ZERO = {ITEM_TABLE: np.zeros((4, 2)), "head.bias": np.zeros(1)}  # a 4 × 2 table at 0


def _table(table: np.ndarray) -> ArrayRecord:
    return _record({ITEM_TABLE: table.astype(np.float32), "head.bias": np.zeros(1, np.float32)})


@pytest.mark.parametrize(
    ("bounds", "pushed_row", "bounded"),
    [
        # row bound 0.5: the pushed row (30, 0) → (0.5, 0); honest rows (‖(.1, .1)‖ = .14) kept
        (Bounds(row_norm=0.5), [0.5, 0.0], {"updates": 0, "rows": 1}),
        # whole bound 1: the pushed update (‖·‖ = 30) → its row (1, 0); honest ‖·‖ = .28 kept
        (Bounds(norm=1.0), [1.0, 0.0], {"updates": 1, "rows": 0}),
    ],
)
def test_one_pushed_row_is_clipped_before_the_average(
    bounds: Bounds, pushed_row: list[float], bounded: dict[str, int]
) -> None:
    """Three devices: two honest ones move every row by 0.1, one pushes row 2 by 30. The
    pushed reply's model is rewritten to start + its bounded update, then averaged."""
    honest = np.full((4, 2), 0.1)
    pushed = np.zeros((4, 2))
    pushed[2] = [30.0, 0.0]
    replies = [train_reply(_table(honest), 10, 0.5, 1), train_reply(_table(honest), 10, 0.5, 2),
               train_reply(_table(pushed), 10, 0.5, 3)]  # fmt: skip
    aggregate, report = _aggregate(replies, start=ZERO, bounds=bounds)
    assert aggregate is not None and report.bounded == bounded
    assert report.record()["bounded"] == bounded
    table = aggregate.mean[ITEM_TABLE]
    expected_row = [(0.1 + 0.1 + pushed_row[0]) / 3, (0.1 + 0.1 + pushed_row[1]) / 3]
    np.testing.assert_allclose(table[2], expected_row, rtol=1e-6)
    np.testing.assert_allclose(table[0], [0.2 / 3, 0.2 / 3], rtol=1e-6)  # honest rows: as is


def test_an_update_within_the_bounds_is_unchanged_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    models = [{k: (MODEL[k] + 0.01 * rng.normal(size=s)).astype(np.float32)
               for k, s in SHAPES.items()} for _ in range(3)]  # fmt: skip
    replies: list[Message | None] = [
        train_reply(_record(m), 5, 0.1, i + 1) for i, m in enumerate(models)
    ]
    bounded, report = _aggregate(replies, bounds=Bounds(norm=10.0, row_norm=10.0))
    plain, _ = _aggregate(replies)
    assert bounded is not None and plain is not None
    assert report.bounded == {"updates": 0, "rows": 0}
    for k in SHAPES:
        assert np.array_equal(bounded.mean[k], plain.mean[k])
        assert np.array_equal(bounded.total[k], plain.total[k])


def test_failed_replies_pass_through_the_bounds() -> None:
    aggregate, report = _aggregate([_failed(1, "dropped")], bounds=Bounds(norm=1.0))
    assert aggregate is None and report.failed == 1
    assert report.bounded == {"updates": 0, "rows": 0}
    assert report.all_failed == "all 1 clients failed; first error: dropped"


# --- a round nobody can take --------------------------------------------------------------


def test_a_round_every_device_refuses_is_reported_as_a_setting() -> None:
    """Refusals of the round itself (another catalog, a guard): the report names the first;
    one ordinary failure among them makes it bad luck instead."""
    refused = [
        _failed(n, f"node {n}: catalog differs", keys.CATALOG_MISMATCH_ERROR) for n in (1, 2)
    ]
    _, report = _aggregate(list(refused))
    assert report.all_refused == (
        "every one of the 2 clients refused the round; first refusal: node 1: catalog differs"
    )
    assert report.all_failed == "all 2 clients failed; first error: node 1: catalog differs"
    _, mixed = _aggregate([refused[0], _failed(2, "out of memory")])
    assert mixed.all_refused is None and mixed.all_failed is not None
    _, silent = _aggregate([None, None])  # nobody answered: nothing failed, nothing refused
    assert silent.all_refused is None and silent.all_failed is None and silent.failed == 0
