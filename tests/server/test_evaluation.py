"""Tests for fedrec.server.evaluation: the evaluated users' mean of each rate, when the panel
is asked, what goes out and what comes back (refusals, bytes, what was received)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import ScriptedGrid, eval_reply, model_arrays, server_message
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.records import message_bytes
from fedrec.server.cohorts import EvaluationPanel
from fedrec.server.evaluation import FederatedEvaluation, aggregate_user_metrics, model_record
from fedrec.server.validation import ReplyValidator

SHAPES = {"item_embedding.weight": (3, 4), "head.bias": (1,)}
MODEL = {k: v.numpy() for k, v in model_arrays().items()}
EVALUATED = {keys.USERS: 1, keys.NUM_EXAMPLES: 1, keys.UNIT_WEIGHT: 1}
NOBODY = {keys.USERS: 0, keys.NUM_EXAMPLES: 0, keys.UNIT_WEIGHT: 1}


# --- aggregate_user_metrics ------------------------------------------------------------------
def test_aggregate_user_metrics_weights_by_users() -> None:
    records = [
        {**EVALUATED, keys.HR: 1.0, keys.NDCG: 0.5},
        {**EVALUATED, keys.HR: 0.0, keys.NDCG: 0.0},
        {**EVALUATED, keys.HR: 1.0, keys.NDCG: 1.0},
        NOBODY,  # a device with nothing held out: counts as nothing
    ]
    result = aggregate_user_metrics(records)
    # 3 users: HR (1 + 0 + 1)/3, NDCG (0.5 + 0 + 1)/3 = 0.5; the weights are not metrics
    assert result == {keys.USERS: 3, keys.HR: pytest.approx(2 / 3), keys.NDCG: pytest.approx(0.5)}


def test_aggregate_user_metrics_with_no_evaluated_user() -> None:
    result = aggregate_user_metrics([NOBODY, NOBODY, NOBODY])
    assert result == {keys.USERS: 0}
    assert not any(isinstance(v, float) and math.isnan(v) for v in result.values())
    assert aggregate_user_metrics([]) == {keys.USERS: 0}


def test_each_metric_is_the_mean_over_the_users_that_report_it() -> None:
    """A user who has seen every target item reports no exposure: ER@5 is the mean over the
    two that do, (0 + 1)/2 = 0.5, and ER@10 (0.5 + 1)/2 = 0.75, while HR@10 is over all 3."""
    records = [
        {**EVALUATED, keys.HR: 1.0, keys.ER5: 0.0, keys.ER10: 0.5},
        {**EVALUATED, keys.HR: 0.0},
        {**EVALUATED, keys.HR: 1.0, keys.ER5: 1.0, keys.ER10: 1.0},
        NOBODY,
    ]
    result = aggregate_user_metrics(records)
    assert result[keys.USERS] == 3 and result[keys.HR] == pytest.approx(2 / 3)
    assert (result[keys.ER5], result[keys.ER10]) == (pytest.approx(0.5), pytest.approx(0.75))


# --- FederatedEvaluation ---------------------------------------------------------------------
def _evaluation(every: int = 5, last_round: int = 12) -> FederatedEvaluation:
    validator = ReplyValidator(SHAPES, max_update_norm=10.0)
    return FederatedEvaluation(EvaluationPanel(None), validator, every=every, last_round=last_round)


def test_evaluation_is_due_every_k_rounds_and_after_the_last() -> None:
    evaluation = _evaluation(every=5, last_round=12)
    assert [r for r in range(0, 16) if evaluation.due(r)] == [0, 5, 10, 12, 15]


def _answers(by_node: dict[int, dict | Message | None]):  # type: ignore[no-untyped-def]
    """A ScriptedGrid answer: each node's metrics as its evaluate reply (or a given Message,
    or no reply at all)."""

    def answer(message: Message) -> Message | None:
        found = by_node[message.metadata.dst_node_id]
        return found if found is None or isinstance(found, Message) else eval_reply(found, 0)

    return answer


@pytest.mark.usefixtures("server_task")
def test_a_run_asks_the_panel_and_averages_the_replies_of_different_keys() -> None:
    """Flower's FedAvg refuses a round whose replies differ in keys; a device that evaluated
    nobody sends fewer, and the evaluation averages over the users that did."""
    replies = {
        1: {**EVALUATED, keys.HR: 1.0},
        2: NOBODY,
        3: {**EVALUATED, keys.HR: 0.0},
        4: None,  # dropped out
    }
    grid = ScriptedGrid([1, 2, 3, 4], _answers(replies))
    record = _evaluation().run(
        grid, 5, model_record(MODEL, Channel(SHAPES)), {keys.CATALOG_HASH: "c0ffee"}, 30.0
    )
    assert record["eval"] == {keys.USERS: 2.0, keys.HR: 0.5}
    assert record["clients_evaluated"] == 3  # the replies accepted, evaluated or not
    assert "rejected" not in record and "eval_errors" not in record
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 2, 3, 4]
    for sent in grid.sent:  # the round and the catalog go with every model
        assert sent.metadata.message_type == "evaluate"
        config = sent.content[keys.CONFIG]
        assert (config[keys.SERVER_ROUND], config[keys.CATALOG_HASH]) == (5, "c0ffee")
        assert list(sent.content[keys.ARRAYS].keys()) == list(SHAPES)


@pytest.mark.usefixtures("server_task")
def test_refused_replies_are_counted_by_reason_and_left_out_of_the_mean() -> None:
    with_model = RecordDict({keys.METRICS: MetricRecord(EVALUATED), keys.ARRAYS: model_arrays()})
    replies: dict[int, dict | Message | None] = {
        1: {**EVALUATED, keys.HR: 1.0},
        2: {**EVALUATED, keys.HR: 50.0},  # a rate outside [0, 1]
        3: {keys.USERS: 10**6, keys.NUM_EXAMPLES: 10**6, keys.HR: 1.0},  # a million users
        # a reply with a record an evaluate reply must not carry
        4: Message(content=with_model, reply_to=server_message("evaluate", None, node_id=4)),
        5: {**EVALUATED, keys.HR: 0.0},
    }
    grid = ScriptedGrid([1, 2, 3, 4, 5], _answers(replies))
    record = _evaluation().run(grid, 3, model_record(MODEL, Channel(SHAPES)), {}, 30.0)
    assert record["eval"] == {keys.USERS: 2.0, keys.HR: 0.5}
    assert record["clients_evaluated"] == 2
    assert record["rejected"] == {"metrics": 2, "records": 1}
    assert len(record["eval_errors"]) == 3
    assert all(e.startswith("refused: ") for e in record["eval_errors"])


@pytest.mark.usefixtures("server_task")
def test_a_run_counts_the_bytes_each_way_and_describes_what_it_received() -> None:
    """Down: each message's arrays plus its config, the config being ``server-round`` (8
    bytes + 12 for its key) and ``catalog-hash`` "abc" (3 + 12). Up: an evaluate reply of
    users, num-examples, unit-weight and hr@10 is 4 values of 8 bytes + their keys' 5 + 12 +
    11 + 5 = 65 bytes; a refused reply's bytes still came up, an error reply's did not."""
    replies = {
        1: {**EVALUATED, keys.HR: 1.0},
        2: {**EVALUATED, keys.HR: 7.0},  # refused, but received
        3: None,
    }
    grid = ScriptedGrid([1, 2, 3], _answers(replies))
    arrays = model_record(MODEL, Channel(SHAPES))
    record = _evaluation().run(grid, 2, arrays, {keys.CATALOG_HASH: "abc"}, 30.0)
    assert record["eval_bytes_down_total"] == 3 * (arrays.count_bytes() + 20 + 15)
    assert record["eval_bytes_up_total"] == 2 * 65
    received = record["received"]
    assert set(received) == {f"metrics/{k}" for k in (*EVALUATED, keys.HR)}
    assert received[f"metrics/{keys.HR}"] == {"kind": "metric", "type": "float", "messages": 2}
    assert received[f"metrics/{keys.USERS}"]["type"] == "int"


@pytest.mark.usefixtures("server_task")
def test_a_run_without_replies_records_only_what_it_sent() -> None:
    grid = ScriptedGrid([1, 2], lambda message: None)
    record = _evaluation().run(grid, 1, model_record(MODEL, Channel(SHAPES)), {}, 30.0)
    assert set(record) == {"eval_bytes_down_total", "eval_bytes_up_total", "eval_unanswered"}
    assert record["eval_bytes_up_total"] == 0 and record["eval_bytes_down_total"] > 0
    assert record["eval_unanswered"] == 2  # both messages went unanswered
    assert message_bytes(grid.sent[0]) * 2 == record["eval_bytes_down_total"]


# --- model_record ----------------------------------------------------------------------------
def test_model_record_is_the_float32_model_when_nothing_is_encoded() -> None:
    record = model_record(MODEL, Channel(SHAPES))
    assert list(record.keys()) == list(MODEL)
    for k, v in MODEL.items():
        assert record[k].numpy().dtype == np.float32
        np.testing.assert_array_equal(record[k].numpy(), v)


def test_model_record_is_the_channels_download_form_when_compressed() -> None:
    """fp16 down: each value rounded to the nearest float16 (11 = 0b1011 and 0.5 are exact);
    int8 down: codes and one scale per row, max|row| / 127, decoded within half a level."""
    fp16 = model_record(MODEL, Channel(SHAPES, download="fp16"))
    for k, v in MODEL.items():
        assert fp16[k].numpy().dtype == np.float16
        np.testing.assert_array_equal(fp16[k].numpy(), v.astype(np.float16))
    channel = Channel(SHAPES, download="int8", upload="int8")
    int8 = model_record(MODEL, channel)
    payload = {k: v.numpy() for k, v in int8.items()}
    assert set(payload) == {*SHAPES, *(k + ".scale" for k in SHAPES)}
    assert payload["item_embedding.weight"].dtype == np.int8
    # rows 0..3, 4..7, 8..11: scales 3/127, 7/127, 11/127
    np.testing.assert_allclose(payload["item_embedding.weight.scale"], [3 / 127, 7 / 127, 11 / 127],
                               rtol=1e-6)  # fmt: skip
    decoded = channel.decode_model(payload)
    np.testing.assert_allclose(decoded["item_embedding.weight"], MODEL["item_embedding.weight"],
                               atol=0.5 * 11 / 127 + 1e-6)  # fmt: skip
    # the upload alone compressed: the model still goes down in the download's form (none)
    up_only = model_record(MODEL, Channel(SHAPES, upload="int8"))
    assert {k: up_only[k].numpy().dtype for k in SHAPES} == dict.fromkeys(SHAPES, np.float32)


def test_model_record_of_a_low_rank_round_is_the_float32_model() -> None:
    from fedrec.common.colr import LowRank

    record = model_record(MODEL, Channel(SHAPES, low_rank=LowRank(rank=2, seed=1)))
    assert isinstance(record, ArrayRecord) and list(record.keys()) == list(SHAPES)
    for k, v in MODEL.items():
        assert record[k].numpy().dtype == np.float32
        np.testing.assert_array_equal(record[k].numpy(), v)
