"""Tests for fedrec.server.aggregate: one aggregate type, whoever summed it, and the round's
traffic report as rounds.jsonl states it."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common import keys
from fedrec.server.aggregate import Aggregate, TrainReport, weighted_means


def test_an_aggregate_of_a_sum_averages_it_onto_its_start() -> None:
    start = {"w": np.array([1.0, 2.0]), "b": np.array([0.5])}
    total = {"w": np.array([4.0, -2.0]), "b": np.array([3.0])}
    aggregate = Aggregate.of_sum(start, total, 2, {keys.TRAIN_LOSS: 0.3})
    # mean = start + total / count: (1 + 2, 2 − 1), 0.5 + 1.5
    np.testing.assert_array_equal(aggregate.mean["w"], [3.0, 1.0])
    np.testing.assert_array_equal(aggregate.mean["b"], [2.0])
    assert (aggregate.count, aggregate.weight) == (2, 2.0)
    assert aggregate.metrics == {keys.TRAIN_LOSS: 0.3} and aggregate.total is not total
    assert aggregate.start is start  # every update is relative to it


@pytest.mark.parametrize("count", [0, -1])
def test_an_aggregate_of_nobody_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match=f"at least one contribution, got {count}"):
        Aggregate.of_sum({"w": np.zeros(2)}, {"w": np.zeros(2)}, count, {})


def test_a_plain_report_records_its_train_fields() -> None:
    received = {"arrays/head.bias": {"kind": "array", "shape": [1], "messages": 2}}
    report = TrainReport(
        sampled=4, contributed=2, failed=1, unanswered=1, errors=["a", "b", "c", "d"],
        bytes_down=300, bytes_up=180, bytes_down_per_client=100.0, bytes_up_per_client=90.0,
        received=received, rejected={"shape": 1}, bounded={"updates": 1, "rows": 4},
        clipped=1, node_metrics=[(1, {keys.TRAIN_LOSS: 0.5})],
    )  # fmt: skip
    assert report.record() == {
        "clients_sampled": 4,
        "bytes_down_per_client": 100.0,
        "clients_replied": 2,
        "clients_failed": 1,
        "clients_unanswered": 1,
        "errors": ["a", "b", "c"],  # three at most
        "bytes_up_per_client": 90.0,
        "bytes_up_total": 180,
        "bytes_down_total": 300,
        "bounded": {"updates": 1, "rows": 4},
        "received": {"train": received},  # per purpose
        "rejected": {"train": {"shape": 1}},
    }  # the DP clip count and each node's metrics are not the record's: nothing per user


def test_a_secure_report_records_its_stages() -> None:
    secagg = {"status": "ok", "clients": 5, "survivors": 4, "dropped": {"setup": 1}}
    received = {"setup": {}, "collect_masked_vectors": {}}  # already per stage
    report = TrainReport(sampled=5, contributed=4, failed=1, secagg=secagg, received=received)
    record = report.record()
    assert record["secagg"] == secagg and record["secagg"] is not secagg
    assert record["received"] == received
    assert "rejected" not in record and "bounded" not in record
    assert (record["clients_sampled"], record["clients_replied"]) == (5, 4)


def test_weighted_means_refuse_a_metric_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="metric 'train-loss' holds 'x', not a number"):
        weighted_means([{keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: "x"}], keys.UNIT_WEIGHT)
