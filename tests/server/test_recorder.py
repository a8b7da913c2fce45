"""Tests for fedrec.server.recorder: the round driver's cohorts, schedule and records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import StaticGrid, eval_reply, model_arrays, server_message, train_reply
from flwr.app import ConfigRecord, Error, Message

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.records import message_bytes
from fedrec.common.runs import ROUNDS_LOG
from fedrec.server.checkpoint import load_checkpoint
from fedrec.server.factory import ServerRandomness, make_strategy
from fedrec.server.recorder import RoundRecorder

pytestmark = pytest.mark.usefixtures("server_task")


def _recorder(
    config: FederationConfig, *, run_dir: Path | None = None, offset: int = 0, rounds: int = 5
) -> RoundRecorder:
    return make_strategy(
        config, randomness=ServerRandomness.seeded(0), num_rounds=rounds, round_offset=offset,
        run_dir=run_dir,
    )  # fmt: skip


def test_a_round_goes_to_its_cohort_in_cohort_order() -> None:
    recorder = _recorder(FederationConfig(clients_per_round=4))
    grid = StaticGrid(list(range(1, 31)))
    messages = list(recorder.configure_train(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    nodes = [m.metadata.dst_node_id for m in messages]
    # exactly the seeded cohort, in its draw order (Flower's own shuffle is undone)
    expected = make_strategy(FederationConfig(clients_per_round=4),
                             randomness=ServerRandomness.seeded(0), num_rounds=5
                             ).train_cohorts.sample(list(range(1, 31)))  # fmt: skip
    assert nodes == expected and len(set(nodes)) == 4
    assert all(m.content[keys.CONFIG][keys.SERVER_ROUND] == 1 for m in messages)


def test_rounds_are_absolute_after_a_resume(tmp_path: Path) -> None:
    recorder = _recorder(FederationConfig(clients_per_round=2), run_dir=tmp_path, offset=2)
    grid = StaticGrid([1, 2, 3])
    messages = list(recorder.configure_train(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    assert messages[0].content[keys.CONFIG][keys.SERVER_ROUND] == 3  # devices see round 3
    failed = Message(error=Error(code=1, reason="boom"),
                     reply_to=server_message("train", None, node_id=3))  # fmt: skip
    replies = [
        train_reply(model_arrays(1.0), 30, 0.4, 1),
        train_reply(model_arrays(3.0), 10, 0.8, 2),
        failed,
    ]
    arrays, metrics = recorder.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["head.bias"].numpy(), [0.5 * (0.75 * 1 + 0.25 * 3)])
    recorder.aggregate_evaluate(1, [])
    rec = recorder.records[-1]
    assert rec["round"] == 3
    assert rec["clients_sampled"] == 2
    assert rec["clients_replied"] == 2 and rec["clients_failed"] == 1
    assert rec["errors"] == ["boom"]
    assert rec["train_loss"] == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    assert rec["bytes_up_per_client"] == message_bytes(replies[0]) > 13 * 4
    assert rec["bytes_up_total"] == 2 * message_bytes(replies[0])
    assert rec["bytes_down_total"] == 2 * message_bytes(messages[0])
    model, _, round_ = load_checkpoint(tmp_path)  # a checkpoint after every round
    assert round_ == 3
    np.testing.assert_array_equal(model["head.bias"].numpy(), arrays["head.bias"].numpy())
    streamed = [json.loads(line) for line in (tmp_path / ROUNDS_LOG).read_text().splitlines()]
    assert streamed == [rec]


def test_a_round_where_every_client_failed_stops_the_run() -> None:
    recorder = _recorder(FederationConfig(clients_per_round=2), offset=5)
    list(recorder.configure_train(1, model_arrays(), ConfigRecord(), StaticGrid([1, 2])))  # type: ignore[arg-type]
    failed = [
        Message(error=Error(code=1, reason=f"node {n} broke"),
                reply_to=server_message("train", None, node_id=n))
        for n in (1, 2)
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match=r"round 6: all 2 clients failed.*node 1 broke"):
        recorder.aggregate_train(1, failed)


def test_a_round_waits_for_min_clients_then_times_out() -> None:
    """Deployment: a round samples from the connected nodes once min-clients are there."""
    config = FederationConfig(clients_per_round=10, min_clients=3, round_timeout=0.2)
    recorder = _recorder(config)
    few = list(recorder.configure_train(1, model_arrays(), ConfigRecord(), StaticGrid([1, 2, 3])))  # type: ignore[arg-type]
    assert len(few) == 3  # 10 wanted, 3 connected: the round goes ahead with them
    with pytest.raises(RuntimeError, match=r"only 2 node\(s\) connected after 0.2 s, 3 needed"):
        recorder.configure_train(2, model_arrays(), ConfigRecord(), StaticGrid([1, 2]))  # type: ignore[arg-type]


@pytest.mark.parametrize(("eval_clients", "expected"), [(0, 12), (5, 5)])
def test_evaluation_every_k_rounds_and_after_the_last(eval_clients: int, expected: int) -> None:
    config = FederationConfig(eval_every=3, eval_clients=eval_clients)
    recorder = _recorder(config, offset=1, rounds=4)  # absolute rounds 2..5
    grid = StaticGrid(list(range(1, 13)))
    sizes = {
        r + 1: len(list(recorder.configure_evaluate(r, model_arrays(), ConfigRecord(), grid)))  # type: ignore[arg-type]
        for r in range(1, 5)
    }
    # absolute round 3 is a multiple of 3; round 5 is the run's last
    assert sizes == {2: 0, 3: expected, 4: 0, 5: expected}


def test_the_evaluation_fan_out_is_counted_in_bytes() -> None:
    """Every evaluated node is sent the whole model: those bytes (and the metric replies)
    go into the round and into the run's traffic, beside the training's."""
    from fedrec.server.summary import traffic

    recorder = _recorder(FederationConfig(clients_per_round=2, eval_every=1), rounds=1)
    grid = StaticGrid(list(range(1, 13)))
    sent = list(recorder.configure_train(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    recorder.aggregate_train(1, [train_reply(model_arrays(1.0), 5, 0.1, m.metadata.dst_node_id)
                                 for m in sent])  # fmt: skip
    evaluated = list(recorder.configure_evaluate(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    assert len(evaluated) == 12
    replies = [eval_reply({keys.HR: 1.0, keys.USERS: 1.0}, m.metadata.dst_node_id)
               for m in evaluated]  # fmt: skip
    recorder.aggregate_evaluate(1, replies)
    rec = recorder.records[-1]
    model_bytes = message_bytes(evaluated[0])
    assert model_bytes > 13 * 4 and rec["eval_bytes_down_total"] == 12 * model_bytes
    assert rec["eval_bytes_up_total"] == sum(message_bytes(m) for m in replies) > 0
    totals = traffic(recorder.records)
    assert totals["evaluate"] == {"down": 12 * model_bytes, "up": rec["eval_bytes_up_total"]}
    assert totals["train"]["down"] == 2 * message_bytes(sent[0])
    assert totals["total"]["down"] == totals["train"]["down"] + 12 * model_bytes


def test_every_evaluation_asks_the_same_panel() -> None:
    """eval-clients = 5 of 12: one seeded panel for the whole run (the nodes of it still
    connected), so rounds compare the same users; a node that left is not replaced."""
    recorder = _recorder(FederationConfig(eval_every=1, eval_clients=5), rounds=3)
    grid = StaticGrid(list(range(1, 13)))
    asked = [
        [
            m.metadata.dst_node_id
            for m in recorder.configure_evaluate(r, model_arrays(), ConfigRecord(), grid)
        ]  # type: ignore[arg-type]
        for r in (1, 2)
    ]
    assert asked[0] == asked[1] and len(set(asked[0])) == 5
    left = StaticGrid([n for n in range(1, 13) if n != asked[0][0]])
    later = [
        m.metadata.dst_node_id
        for m in recorder.configure_evaluate(3, model_arrays(), ConfigRecord(), left)
    ]  # type: ignore[arg-type]
    assert later == asked[0][1:]
    again = _recorder(FederationConfig(eval_every=1, eval_clients=5), rounds=3)  # same seed
    first = again.configure_evaluate(1, model_arrays(), ConfigRecord(), grid)  # type: ignore[arg-type]
    assert [m.metadata.dst_node_id for m in first] == asked[0]
