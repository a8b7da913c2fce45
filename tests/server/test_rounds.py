"""Tests for fedrec.server.rounds: the one loop of the server — cohorts, absolute rounds,
the stops, the evaluation schedule, checkpoints and records — and for the run compose()
builds from a config (fedrec.server.app)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
from flwr.app import Error, Message, MessageType
from flwr.serverapp import Grid

from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.cli import SCENARIO_DIR, load_scenario
from fedrec.common.data.catalog import Catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import ITEM_TABLE, shared_shapes
from fedrec.common.records import message_bytes
from fedrec.common.stop import STOP_REQUESTED, RunInterrupted
from fedrec.server import cohorts
from fedrec.server.aggregate import Aggregate, TrainReport, TrainRound
from fedrec.server.app import ServerRandomness, compose
from fedrec.server.checkpoint import Checkpointer, read_checkpoint
from fedrec.server.cohorts import CohortSampler, EvaluationPanel, PoissonCohort, UniformCohort
from fedrec.server.dp_fedavg import DPFedAvg, UserLevelDP
from fedrec.server.evaluation import FederatedEvaluation
from fedrec.server.optimizer import FedAvg, FedAvgM, ServerStep
from fedrec.server.plain import PlainAggregation
from fedrec.server.recorder import RoundRecorder
from fedrec.server.rounds import RoundPlan, Rounds
from fedrec.server.runs import ROUNDS_LOG, read_rounds
from fedrec.server.summary import traffic
from fedrec.server.validation import ReplyValidator

pytestmark = pytest.mark.usefixtures("server_task")

Arrays = dict[str, np.ndarray]
SHAPES = {ITEM_TABLE: (3, 4), "head.bias": (1,)}  # model_arrays(): a 3 × 4 table and a bias
MODEL = {k: a.numpy() for k, a in model_arrays().items()}  # float32: table 0..11, bias 0.5
HIT = {keys.USERS: 1.0, keys.HR: 0.5}  # an evaluated user's reply


def _device(message: Message) -> Message | None:
    """An honest device: node n trains to model_arrays(n) on 10·n examples (loss 0.1·n)
    and evaluates to one user."""
    node = message.metadata.dst_node_id
    if message.metadata.message_type == MessageType.EVALUATE:
        return eval_reply(HIT, node)
    return train_reply(model_arrays(float(node)), 10 * node, 0.1 * node, node)


def _failed(node: int, reason: str, code: int = 1) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=server_message("train", None, node))


def _rounds(
    grid: Grid | ScriptedGrid,
    *,
    first: int = 1,
    last: int = 3,
    sampler: CohortSampler | None = None,
    panel: EvaluationPanel | None = None,
    eval_every: int = 100,
    min_clients: int = 1,
    run_dir: Path | None = None,
    dp: DPFedAvg | None = None,
    weight_key: str = keys.NUM_EXAMPLES,
) -> Rounds:
    """The round loop over SHAPES, composed by hand: a cohort of every connected node (in a
    seeded order) unless ``sampler`` says otherwise, FedAvg, no compression."""
    validator = ReplyValidator(SHAPES, max_update_norm=1000.0)
    return Rounds(
        grid=grid,  # type: ignore[arg-type]
        plan=RoundPlan(first=first, last=last, min_clients=min_clients, timeout=0.2),
        sampler=sampler or UniformCohort(None, random.Random(0)),
        aggregator=PlainAggregation(
            validator, weight_key=weight_key, clip_norm=dp.dp.clip_norm if dp else None
        ),
        step=ServerStep(FedAvg()),
        evaluation=FederatedEvaluation(
            panel or EvaluationPanel(None), validator, every=eval_every, last_round=last
        ),
        recorder=RoundRecorder(run_dir),
        channel_for=lambda r: Channel(SHAPES),
        train_config={"proximal-mu": 0.0},
        evaluate_config={},
        dp=dp,
        checkpointer=Checkpointer(run_dir) if run_dir is not None else None,
    )


def _sent(
    grid: ScriptedGrid | StaticGrid, kind: str, server_round: int | None = None
) -> list[Message]:
    return [
        m
        for m in grid.sent
        if m.metadata.message_type == kind
        and server_round in (None, m.content[keys.CONFIG][keys.SERVER_ROUND])
    ]


def _nodes(messages: list[Message]) -> list[int]:
    return [m.metadata.dst_node_id for m in messages]


# --- cohorts and absolute rounds ----------------------------------------------------------


def test_a_round_goes_to_its_cohort_in_cohort_order() -> None:
    grid = ScriptedGrid(list(range(1, 31)), _device)
    _rounds(grid, sampler=UniformCohort(4, random.Random(0))).round(1, MODEL)
    sent = _sent(grid, MessageType.TRAIN)
    # exactly the seeded draw, in its order: random.sample of the 30 connected ids
    assert _nodes(sent) == random.Random(0).sample(list(range(1, 31)), 4)
    assert all(m.content[keys.CONFIG][keys.SERVER_ROUND] == 1 for m in sent)
    assert all(m.content[keys.CONFIG]["proximal-mu"] == 0.0 for m in sent)  # the train config


def test_rounds_are_absolute_after_a_resume(tmp_path: Path) -> None:
    """A run resumed from round 2's checkpoint: its plan starts at 3, no baseline, and the
    devices, the record and the checkpoint all say round 3."""

    def answer(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if message.metadata.message_type == MessageType.EVALUATE:
            return eval_reply(HIT, node)
        return {1: train_reply(model_arrays(1.0), 30, 0.4, 1),
                2: train_reply(model_arrays(3.0), 10, 0.8, 2),
                3: _failed(3, "boom")}[node]  # fmt: skip

    grid = ScriptedGrid([1, 2, 3], answer)
    rounds = _rounds(grid, first=3, last=3, run_dir=tmp_path)
    model = rounds.run(MODEL)
    assert {m.content[keys.CONFIG][keys.SERVER_ROUND] for m in grid.sent} == {3}
    # weighted by examples 30 : 10 → 0.75·model(1) + 0.25·model(3) = 1.5 × the start model
    np.testing.assert_allclose(model["head.bias"], [0.5 * (0.75 * 1 + 0.25 * 3)])
    np.testing.assert_allclose(model[ITEM_TABLE], MODEL[ITEM_TABLE] * 1.5)
    [record] = rounds.recorder.records  # round 3 only: a resumed run has no round 0
    assert record["round"] == 3
    assert (record["clients_sampled"], record["clients_replied"], record["clients_failed"]) == (
        3,
        2,
        1,
    )
    assert record["errors"] == ["boom"]
    assert record["train_loss"] == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    reply_bytes = message_bytes(train_reply(model_arrays(1.0), 30, 0.4, 1))
    assert record["bytes_up_per_client"] == reply_bytes > 13 * 4
    assert record["bytes_up_total"] == 2 * reply_bytes
    assert record["bytes_down_total"] == 3 * message_bytes(_sent(grid, MessageType.TRAIN)[0])
    assert record["clients_evaluated"] == 3  # the last round is always evaluated
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.round == 3
    np.testing.assert_array_equal(checkpoint.model["head.bias"], model["head.bias"])


def test_a_fresh_run_evaluates_the_initial_model_as_round_0() -> None:
    grid = ScriptedGrid([1, 2], _device)
    rounds = _rounds(grid, last=1)
    rounds.run(MODEL)
    baseline, first = rounds.recorder.records
    assert baseline["round"] == 0 and baseline["clients_sampled"] == 0
    assert baseline["eval"] == {keys.USERS: 2.0, keys.HR: 0.5} and first["round"] == 1
    evaluated = _sent(grid, MessageType.EVALUATE, 0)[0]  # the start model, as it was
    assert np.array_equal(evaluated.content[keys.ARRAYS]["head.bias"].numpy(), MODEL["head.bias"])


def test_a_checkpoint_after_every_round_and_rounds_jsonl_streams_the_records(
    tmp_path: Path,
) -> None:
    grid = ScriptedGrid([1, 2], _device)
    rounds = _rounds(grid, last=2, run_dir=tmp_path)
    checkpointed: list[int] = []
    rounds.recorder.on_round = lambda entry: checkpointed.append(
        read_checkpoint(tmp_path).round if entry["round"] else 0
    )
    model = rounds.run(MODEL)
    assert checkpointed == [0, 1, 2]  # each round's checkpoint is there when it is recorded
    np.testing.assert_array_equal(read_checkpoint(tmp_path).model[ITEM_TABLE], model[ITEM_TABLE])
    assert read_rounds(tmp_path) == rounds.recorder.records
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1, 2]


def test_run_stops_before_a_round_once_a_stop_is_requested() -> None:
    grid = ScriptedGrid([1, 2], _device)
    STOP_REQUESTED.set()
    try:
        with pytest.raises(RunInterrupted, match="interrupted after round 3") as stopped:
            _rounds(grid, first=4, last=5).round(4, MODEL)
    finally:
        STOP_REQUESTED.clear()
    assert stopped.value.completed_round == 3 and grid.sent == []


# --- rounds that cannot go on -------------------------------------------------------------


def test_a_round_where_every_client_failed_stops_the_run() -> None:
    grid = ScriptedGrid(
        [1, 2], lambda m: _failed(m.metadata.dst_node_id, f"node {m.metadata.dst_node_id} broke")
    )
    rounds = _rounds(grid, first=6, last=8)
    with pytest.raises(
        RuntimeError, match=r"round 6: all 2 clients failed; first error: node [12] broke"
    ):
        rounds.round(6, MODEL)
    assert rounds.recorder.records == []


def _dp(rng_seed: int = 0) -> DPFedAvg:
    """C = 0.5, z = 1, m = 2 of N = 4: noise std z·C/m = 0.25 on the average."""
    dp = UserLevelDP(clip_norm=0.5, noise_multiplier=1.0, expected_clients=2, num_nodes=4,
                     delta=1e-4, target_epsilon=0.0)  # fmt: skip
    return DPFedAvg(dp, rng=np.random.default_rng(rng_seed))


def test_a_round_every_device_refuses_stops_before_dp_spends_epsilon(tmp_path: Path) -> None:
    """The devices hold another catalog: under DP a noise-only round would still cost ε."""
    dp = _dp()
    grid = ScriptedGrid(
        [1, 2, 3, 4],
        lambda m: _failed(m.metadata.dst_node_id, "catalog differs", keys.CATALOG_MISMATCH_ERROR),
    )
    rounds = _rounds(grid, dp=dp, run_dir=tmp_path, weight_key=keys.UNIT_WEIGHT)
    with pytest.raises(
        RuntimeError, match=r"round 1: every one of the 4 clients refused the round"
    ):
        rounds.round(1, MODEL)
    assert dp.ledger.steps == 0  # no ε spent
    assert rounds.recorder.records == [] and not list(tmp_path.iterdir())  # no checkpoint


def test_under_dp_a_round_of_failures_is_released_as_noise_and_counted(tmp_path: Path) -> None:
    """Every reply an error: DP-FedAvg still releases the round (σ = z·C/m = 0.25 around the
    start, drawn per array in the model's order) and counts it, so a dropout cannot buy a
    round without noise."""
    dp = _dp(rng_seed=7)
    grid = ScriptedGrid([1, 2, 3, 4], lambda m: _failed(m.metadata.dst_node_id, "dropped"))
    rounds = _rounds(grid, dp=dp, run_dir=tmp_path, weight_key=keys.UNIT_WEIGHT)
    model = rounds.round(1, MODEL)
    rng = np.random.default_rng(7)
    for k, v in MODEL.items():
        expected = (v.astype(np.float64) + rng.normal(0.0, 0.25, size=v.shape)).astype(np.float32)
        np.testing.assert_array_equal(model[k], expected)
    assert dp.ledger.steps == 1
    [record] = rounds.recorder.records
    assert record["privacy"]["user_level"]["replies"] == 0 and record["clients_failed"] == 4
    assert read_checkpoint(tmp_path).meta["user_level_ledger"] == dp.ledger.to_dict()


@pytest.mark.parametrize("replies", ["refused", "silent"])
def test_a_round_without_an_aggregate_and_without_dp_leaves_the_model(
    replies: str, tmp_path: Path
) -> None:
    """Nothing to aggregate (every reply refused by the validator, or nobody answered) and
    no DP: the model stays as it was, no checkpoint is written, the round is recorded."""

    def answer(message: Message) -> Message | None:
        if replies == "silent":
            return None
        table = model_arrays()
        table.pop(ITEM_TABLE)  # a reply without the table: refused ("arrays")
        return train_reply(table, 10, 0.1, message.metadata.dst_node_id)

    grid = ScriptedGrid([1, 2], answer)
    rounds = _rounds(grid, last=3, run_dir=tmp_path)
    model = rounds.round(1, MODEL)
    assert all(model[k] is MODEL[k] for k in MODEL)
    assert not (tmp_path / "checkpoint.npz").exists()
    [record] = rounds.recorder.records
    assert record["clients_replied"] == 0 and "server_lr" not in record
    assert record["train_loss"] is None and record["returning"] is None
    if replies == "refused":
        assert record["rejected"] == {"train": {"arrays": 2}}


def test_a_round_waits_for_min_clients_then_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployment: a round samples from the connected nodes once min-clients are there."""
    clock = SimpleNamespace(now=0.0)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr(cohorts, "time", SimpleNamespace(monotonic=lambda: clock.now, sleep=sleep))
    grid = ScriptedGrid([1, 2, 3], _device)
    rounds = _rounds(grid, sampler=UniformCohort(10, random.Random(0)), min_clients=3)
    rounds.round(1, MODEL)
    assert sorted(_nodes(_sent(grid, MessageType.TRAIN, 1))) == [1, 2, 3]  # 10 wanted, 3 there
    grid.node_ids = [1, 2]
    with pytest.raises(
        RuntimeError, match=r"round 2: only 2 node\(s\) connected after 0.2 s, 3 needed"
    ):
        rounds.round(2, MODEL)
    assert clock.now >= 0.2  # it waited the round's timeout (on the fake clock)


# --- evaluation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("panel", "expected"), [(None, 12), (5, 5)])
def test_evaluation_every_k_rounds_and_after_the_last(panel: int | None, expected: int) -> None:
    grid = ScriptedGrid(list(range(1, 13)), _device)
    rounds = _rounds(grid, first=2, last=5, eval_every=3,
                     panel=EvaluationPanel(panel, random.Random(0)))  # fmt: skip
    rounds.run(MODEL)  # absolute rounds 2..5
    asked = {r: len(_sent(grid, MessageType.EVALUATE, r)) for r in range(0, 6)}
    # absolute round 3 is a multiple of 3; round 5 is the run's last
    assert asked == {0: 0, 1: 0, 2: 0, 3: expected, 4: 0, 5: expected}
    evaluated = {r["round"]: r.get("clients_evaluated") for r in rounds.recorder.records}
    assert evaluated == {2: None, 3: expected, 4: None, 5: expected}


def test_the_evaluation_fan_out_is_counted_in_bytes() -> None:
    """Every evaluated node is sent the whole model: those bytes (and the metric replies)
    go into the round and into the run's traffic, beside the training's."""
    replies: list[Message] = []

    def answer(message: Message) -> Message | None:
        reply = _device(message)
        if message.metadata.message_type == MessageType.EVALUATE and reply is not None:
            replies.append(reply)
        return reply

    grid = ScriptedGrid(list(range(1, 13)), answer)
    rounds = _rounds(grid, last=1, sampler=UniformCohort(2, random.Random(0)), eval_every=1)
    rounds.round(1, MODEL)
    evaluated = _sent(grid, MessageType.EVALUATE, 1)
    assert len(evaluated) == 12 == len(replies)
    record = rounds.recorder.records[-1]
    model_bytes = message_bytes(evaluated[0])
    assert model_bytes > 13 * 4 and record["eval_bytes_down_total"] == 12 * model_bytes
    assert record["eval_bytes_up_total"] == sum(message_bytes(m) for m in replies) > 0
    totals = traffic(rounds.recorder.records)
    assert totals["evaluate"] == {"down": 12 * model_bytes, "up": record["eval_bytes_up_total"]}
    train_down = message_bytes(_sent(grid, MessageType.TRAIN, 1)[0])
    assert totals["train"]["down"] == 2 * train_down
    assert totals["total"]["down"] == 2 * train_down + 12 * model_bytes


def test_every_evaluation_asks_the_same_panel() -> None:
    """eval-clients = 5 of 12: one seeded panel for the whole run (the nodes of it still
    connected), so rounds compare the same users; a node that left is not replaced."""

    def rounds_of(grid: ScriptedGrid) -> Rounds:
        return _rounds(grid, last=3, eval_every=1, sampler=UniformCohort(2, random.Random(1)),
                       panel=EvaluationPanel(5, random.Random(0)))  # fmt: skip

    grid = ScriptedGrid(list(range(1, 13)), _device)
    rounds = rounds_of(grid)
    model = rounds.round(1, MODEL)
    model = rounds.round(2, model)
    asked = [_nodes(_sent(grid, MessageType.EVALUATE, r)) for r in (1, 2)]
    # the panel: 5 drawn from the sorted ids by the panel's own stream, at the first evaluation
    assert asked[0] == asked[1] == random.Random(0).sample(list(range(1, 13)), 5)
    grid.node_ids.remove(asked[0][0])
    rounds.round(3, model)
    assert _nodes(_sent(grid, MessageType.EVALUATE, 3)) == asked[0][1:]
    again = ScriptedGrid(list(range(1, 13)), _device)
    rounds_of(again).round(1, MODEL)  # the same seed: the same panel
    assert _nodes(_sent(again, MessageType.EVALUATE, 1)) == asked[0]


# --- the record: what each layer returned ------------------------------------------------


def test_the_recorder_only_records(tmp_path: Path) -> None:
    """It keeps a copy of each entry, appends it to rounds.jsonl and hands the live view a
    copy of its own; it has no other public behaviour (it drives nothing)."""
    seen: list[dict[str, Any]] = []
    recorder = RoundRecorder(tmp_path, seen.append)
    entry = {"round": 1, "clients_sampled": 2, "eval": {keys.HR: 0.5}}
    recorder.record(entry)
    entry["round"] = 99  # the caller's dict is not the record
    seen[0]["clients_sampled"] = 0  # nor is the live view's
    assert recorder.records == [{"round": 1, "clients_sampled": 2, "eval": {keys.HR: 0.5}}]
    lines = (tmp_path / ROUNDS_LOG).read_text().splitlines()
    assert [json.loads(line) for line in lines] == recorder.records
    assert {n for n in dir(RoundRecorder) if not n.startswith("_")} == {"record"}
    RoundRecorder().record({"round": 2})  # no folder, no live view: kept only


class _FixedAggregation:
    """An aggregator that returns what it is given, and keeps the round it was handed."""

    def __init__(self, aggregate: Aggregate, report: TrainReport) -> None:
        self.result = (aggregate, report)
        self.rounds: list[TrainRound] = []

    def aggregate(self, grid: Grid, round_: TrainRound) -> tuple[Aggregate | None, TrainReport]:
        self.rounds.append(round_)
        return self.result


class _FixedEvaluation(FederatedEvaluation):
    def run(
        self, grid: Grid, server_round: int, model: Any, config: Any, timeout: float
    ) -> dict[str, Any]:
        return {
            "eval": {keys.USERS: 3.0, keys.HR: 0.25},
            "clients_evaluated": 3,
            "eval_bytes_down_total": 30,
            "eval_bytes_up_total": 9,
            "rejected": {"metrics": 1},
            "received": {"metrics/users": {"kind": "metric", "messages": 4}},
        }


def test_a_rounds_entry_is_what_each_layer_returned() -> None:
    """The entry is assembled from the aggregator's report and aggregate, the step's size
    and the evaluation's fields; the loop adds only the round and its timings."""
    start = {k: v.astype(np.float64) for k, v in MODEL.items()}
    aggregate = Aggregate.of_sum(start, {k: np.ones_like(v) for k, v in start.items()}, 2,
                                 {keys.TRAIN_LOSS: 0.25, keys.RETURNING: 0.5})  # fmt: skip
    train_received = {"arrays/head.bias": {"kind": "array", "messages": 2}}
    report = TrainReport(sampled=2, contributed=2, bytes_down=100, bytes_up=60,
                         bytes_down_per_client=50.0, bytes_up_per_client=30.0,
                         received=train_received)  # fmt: skip
    rounds = _rounds(StaticGrid([1, 2]))
    rounds.aggregator = _FixedAggregation(aggregate, report)
    rounds.step = ServerStep(FedAvgM(lr=0.5), step_size=lambda r: 0.5)
    rounds.evaluation = _FixedEvaluation(EvaluationPanel(None), rounds.evaluation.validator, 1, 3)
    model = rounds.round(2, MODEL)
    # mean = start + Σ/2 = start + 0.5; FedAvgM at lr 0.5: x − 0.5·(x − mean) = start + 0.25
    np.testing.assert_allclose(model["head.bias"], [0.75])
    [handed] = rounds.aggregator.rounds
    assert handed.number == 2 and _nodes(list(handed.messages)) in ([1, 2], [2, 1])
    entry = {k: v for k, v in rounds.recorder.records[-1].items() if not k.endswith("_seconds")}
    assert entry == {
        "round": 2,
        "server_lr": 0.5,
        **report.record(),
        "train_loss": 0.25,
        "returning": 0.5,
        "eval": {keys.USERS: 3.0, keys.HR: 0.25},
        "clients_evaluated": 3,
        "eval_bytes_down_total": 30,
        "eval_bytes_up_total": 9,
        "rejected": {"evaluate": {"metrics": 1}},
        "received": {"train": train_received,
                     "evaluate": {"metrics/users": {"kind": "metric", "messages": 4}}},
    }  # fmt: skip
    assert {"train_seconds", "round_seconds"} <= set(rounds.recorder.records[-1])


# --- compose(): the run a config describes ------------------------------------------------

CATALOG = Catalog.of_features(np.eye(6, 3, dtype=np.float32), 2)  # 6 items, 3 features


def _start(dim: int) -> Arrays:
    """A model of the shapes compose() expects over CATALOG (its values only set the
    default update-norm bound)."""
    return {k: np.ones(s, np.float32) for k, s in shared_shapes(CATALOG, dim).items()}


def _compose(
    config: FederationConfig, grid: Grid | StaticGrid, nodes: int, seed: int = 0
) -> Rounds:
    """The run of ``config`` (built with dim=4) over CATALOG and ``nodes`` connected nodes."""
    run = compose(grid, config, CATALOG, nodes, ServerRandomness.seeded(seed), start=_start(4))  # type: ignore[arg-type]
    return run.rounds


def test_seeded_randomness_repeats_and_fresh_does_not() -> None:
    a, b = ServerRandomness.seeded(3), ServerRandomness.seeded(3)
    assert a.cohorts.random() == b.cohorts.random()
    assert a.noise.random() == b.noise.random() and a.graph.random() == b.graph.random()
    assert a.noise.random() != a.graph.random()  # independent streams
    c, d = ServerRandomness.fresh(), ServerRandomness.fresh()
    assert c.noise.random() != d.noise.random() and c.cohorts.random() != d.cohorts.random()
    # the streams of one seed are those of an earlier run with that seed (pairing)
    _, graph = np.random.default_rng(3).spawn(2)
    assert ServerRandomness.seeded(3).graph.random() == graph.random()


def test_a_seeded_run_draws_the_same_cohorts_again() -> None:
    config = federation(dim=4, clients_per_round=4, num_rounds=3, eval_every=10, round_timeout=1.0)
    cohorts_of = []
    for seed in (3, 3, 4):
        grid = StaticGrid(list(range(1, 31)))  # nobody answers: the model stays
        rounds = _compose(config, grid, 30, seed)
        rounds.run(_start(4))
        cohorts_of.append([_nodes(_sent(grid, MessageType.TRAIN, r)) for r in (1, 2, 3)])
    assert cohorts_of[0] == cohorts_of[1] != cohorts_of[2]
    assert all(len(set(c)) == 4 for c in cohorts_of[0])


def test_a_secure_run_waits_for_a_cohort_a_secure_sum_can_use() -> None:
    config = federation(dim=4, min_clients=2, clients_per_round=5, secure_aggregation="secagg+",
                        client_weighting="uniform")  # fmt: skip
    grid = StaticGrid(list(range(1, 11)))
    assert _compose(config, grid, 10).plan.min_clients == 3  # 2 would be skipped, silently
    plain = _compose(config.replace(secure_aggregation="off"), grid, 10)
    assert plain.plan.min_clients == 2


def test_a_composition_names_its_norm_bounds() -> None:
    config = federation(dim=4, norm_bound=1.5, row_norm_bound=0.25, strategy="fedavgm")
    run = compose(StaticGrid([1, 2, 3]), config, CATALOG, 3, ServerRandomness.seeded(0),  # type: ignore[arg-type]
                  start=_start(4))  # fmt: skip
    assert run.describe() == "PlainAggregation(norm-bound=1.5, row-norm-bound=0.25) → FedAvgM"


SCENARIOS = sorted(p.name for p in SCENARIO_DIR.glob("*.toml"))
OPTIMIZERS = {"fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedadam": "FedAdam",
              "fedyogi": "FedYogi", "fedprox": "FedAvg"}  # fmt: skip


def test_every_scenario_is_covered() -> None:
    assert len(SCENARIOS) >= 7 and "ml100k-fedavg.toml" in SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_composes_a_named_run(scenario: str) -> None:
    values = load_scenario(SCENARIO_DIR / scenario)
    # the test's catalog and width (the composition does not depend on them), no data read
    config = FederationConfig.from_mapping({**values, "data": "synthetic", "dim": 8})
    nodes = values.get("synthetic-users", 943)  # one node per user (ml-100k: 943)
    run = compose(StaticGrid([]), config, CATALOG, nodes, ServerRandomness.seeded(0),  # type: ignore[arg-type]
                  start=_start(8))  # fmt: skip
    secure = values.get("secure-aggregation", "off") != "off"
    dp = values.get("dp-clip-norm", 0.0) > 0
    strategy = values.get("strategy", "fedavg")
    expected = ["SecureAggregation(SecAgg+)" if secure else "PlainAggregation"]
    expected += ["DPFedAvg"] if dp else []
    expected += [OPTIMIZERS[strategy]]
    assert run.describe() == " → ".join(expected)
    rounds = run.rounds
    if dp:  # DP-FedAvg's own Poisson sampler drives the rounds: the sampling ε assumes
        assert rounds.dp is not None and rounds.sampler is rounds.dp.cohorts
        assert isinstance(rounds.sampler, PoissonCohort)
        assert rounds.sampler.rate == pytest.approx(values["clients-per-round"] / nodes)
    else:
        assert rounds.dp is None and isinstance(rounds.sampler, UniformCohort)
        assert rounds.sampler.count == values["clients-per-round"]
    assert (rounds.tally is not None) == (values.get("local-dp-noise-multiplier", 0.0) > 0)
    assert (rounds.step.step_size is not None) == (strategy in ("fedavgm", "fedadam", "fedyogi"))
    assert (rounds.plan.first, rounds.plan.last) == (1, run.budget_stop or values["num-rounds"])


def test_no_class_is_assembled_at_run_time() -> None:
    """The compositions are objects of named classes (the old code built classes with type())."""
    server = Path(__file__).resolve().parents[2] / "server"
    for path in server.glob("*.py"):
        assert "type(f" not in path.read_text() and "type(name" not in path.read_text(), path
