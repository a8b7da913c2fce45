"""Every reply the server takes is checked once (server/validation.py): an honest train or
evaluate reply passes; each kind of malformed one is refused with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from builders import federation, server_message
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrec.common import keys
from fedrec.common.privacy import global_norm
from fedrec.common.records import metrics_of, numpy_arrays
from fedrec.server.aggregate import Aggregate
from fedrec.server.validation import REASONS, ReplyValidator

SHAPES = {"item_embedding.weight": (5, 4), "head.bias": (1,)}
GLOBAL = {"item_embedding.weight": np.ones((5, 4)), "head.bias": np.zeros(1)}
HONEST = {keys.NUM_EXAMPLES: 12, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: 0.6, keys.RETURNING: 0}


def _validator(**kwargs: object) -> ReplyValidator:
    return ReplyValidator(SHAPES, max_update_norm=10.0, **kwargs)  # type: ignore[arg-type]


def _arrays(delta: float = 0.1, **replace: np.ndarray) -> ArrayRecord:
    arrays = {k: (v + delta).astype(np.float32) for k, v in GLOBAL.items()}
    arrays.update(replace)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _train(
    arrays: ArrayRecord | None = None, metrics: dict | None = None, **extra: object
) -> Message:
    content = RecordDict(
        {keys.ARRAYS: arrays or _arrays(), keys.METRICS: MetricRecord(metrics or HONEST), **extra}  # type: ignore[dict-item]
    )
    return Message(content=content, reply_to=server_message("train", None, node_id=3))


def _evaluate(metrics: dict) -> Message:
    content = RecordDict({keys.METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=server_message("evaluate", None, node_id=3))


def _reason(msg: Message, validator: ReplyValidator | None = None) -> str | None:
    """Why ``msg`` is refused, checked as the plain aggregation checks a reply of a round
    whose model is GLOBAL (records, then the decoded arrays and metrics), or as an evaluate
    reply."""
    validator = validator or _validator()
    if msg.metadata.message_type == "evaluate":
        refusal = validator.evaluate(msg)
    else:
        refusal = validator.records(msg)
        if refusal is None:
            model = numpy_arrays(msg.content[keys.ARRAYS])
            refusal = validator.train(model, metrics_of(msg.content), GLOBAL)
    return None if refusal is None else refusal.reason


def test_an_honest_train_reply_passes() -> None:
    assert _reason(_train()) is None
    declined = {**HONEST, keys.NUM_EXAMPLES: 0, keys.BUDGET_EXHAUSTED: 1, keys.RECORD_EPSILON: 3.0}
    assert _reason(_train(metrics=declined)) is None  # a device at its DP budget


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        (_arrays(**{"head.bias": np.array([np.nan], np.float32)}), "non-finite"),
        (_arrays(**{"item_embedding.weight": np.full((5, 4), np.inf, np.float32)}), "non-finite"),
        (_arrays(delta=1e6), "update-norm"),  # a reply scaled far beyond any honest update
        (_arrays(**{"item_embedding.weight": np.ones((1, 4), np.float32)}), "shape"),  # broadcasts
        (_arrays(**{"item_embedding.weight": np.ones((6, 4), np.float32)}), "shape"),
        (_arrays(**{"head.bias": np.zeros(1, np.float64)}), "dtype"),
        (_arrays(**{"user_embedding.weight": np.zeros((1, 4), np.float32)}), "arrays"),
        (ArrayRecord({"head.bias": Array(np.zeros(1, np.float32))}), "arrays"),
    ],
)
def test_malformed_arrays_are_refused(arrays: ArrayRecord, reason: str) -> None:
    assert _reason(_train(arrays)) == reason
    assert reason in REASONS  # what the round's record counts refusals by


@pytest.mark.parametrize(
    "metrics",
    [
        {**HONEST, keys.NUM_EXAMPLES: -5},
        {**HONEST, keys.NUM_EXAMPLES: float("nan")},
        {**HONEST, keys.NUM_EXAMPLES: 10**9},
        {**HONEST, keys.NUM_EXAMPLES: 2.5},
        {**HONEST, keys.UNIT_WEIGHT: 1000},  # a forged weight under uniform weighting
        {**HONEST, keys.TRAIN_LOSS: float("inf")},
        {**HONEST, keys.RETURNING: 7},
        {**HONEST, keys.RECORD_EPSILON: -1.0},
        {**HONEST, "user-id": 42},  # not a key a device sends
        {**HONEST, keys.TRAIN_LOSS: [0.1, 0.2]},
        {k: v for k, v in HONEST.items() if k != keys.UNIT_WEIGHT},
    ],
)
def test_malformed_train_metrics_are_refused(metrics: dict) -> None:
    assert _reason(_train(metrics=metrics)) == "metrics"


def test_weighing_by_examples_needs_at_least_one() -> None:
    by_examples = _validator(weigh_by_examples=True)
    assert _reason(_train(), by_examples) is None
    assert _reason(_train(metrics={**HONEST, keys.NUM_EXAMPLES: 0}), by_examples) == "metrics"
    no_count = {k: v for k, v in HONEST.items() if k != keys.NUM_EXAMPLES}
    assert _reason(_train(metrics=no_count), by_examples) == "metrics"
    assert _reason(_train(metrics=no_count)) is None  # uniform: the count is not needed


def test_a_device_may_not_claim_more_examples_than_the_bound() -> None:
    validator = _validator(weigh_by_examples=True, max_examples=100)
    assert _reason(_train(metrics={**HONEST, keys.NUM_EXAMPLES: 100}), validator) is None
    assert _reason(_train(metrics={**HONEST, keys.NUM_EXAMPLES: 101}), validator) == "metrics"


def test_an_extra_record_is_refused() -> None:
    assert _reason(_train(note=ConfigRecord({"hello": "server"}))) == "records"


@pytest.mark.parametrize(
    "content",
    [
        {keys.ARRAYS: _arrays()},  # no metrics
        {keys.METRICS: MetricRecord(HONEST)},  # no arrays
        {"weights": _arrays(), keys.METRICS: MetricRecord(HONEST)},  # under another name
        {keys.ARRAYS: _arrays(), keys.METRICS: ConfigRecord({keys.NUM_EXAMPLES: 12})},
    ],
)
def test_a_train_reply_without_exactly_its_two_records_is_refused(content: dict) -> None:
    msg = Message(RecordDict(content), reply_to=server_message("train", None, node_id=3))
    refusal = _validator().records(msg)
    assert refusal is not None and refusal.reason == "records"
    assert "expected ['arrays', 'metrics']" in refusal.detail


def test_the_update_norm_is_measured_against_the_rounds_model() -> None:
    model = {k: (v + 1.0).astype(np.float32) for k, v in GLOBAL.items()}
    # Δ = 1 on 21 coordinates: ‖Δ‖ = √21 ≈ 4.583
    assert ReplyValidator(SHAPES, max_update_norm=4.6).train(model, HONEST, GLOBAL) is None
    refusal = ReplyValidator(SHAPES, max_update_norm=4.5).train(model, HONEST, GLOBAL)
    assert refusal is not None and refusal.reason == "update-norm" and "4.583" in refusal.detail
    # against another round's model (table 2, bias 0) the same reply moved its bias by 1
    # and its table not at all: ‖Δ‖ = 1
    moved = {"item_embedding.weight": np.full((5, 4), 2.0), "head.bias": np.zeros(1)}
    assert ReplyValidator(SHAPES, max_update_norm=1.01).train(model, HONEST, moved) is None
    assert global_norm({"a": np.array([3.0, 4.0]), "b": np.array([12.0])}) == 13.0
    with pytest.raises(ValueError, match="positive"):
        ReplyValidator(SHAPES, max_update_norm=float("nan"))


def _sum(total: dict[str, np.ndarray], count: int) -> Aggregate:
    """A secure round's aggregate: the unmasked sum of ``count`` updates of GLOBAL."""
    return Aggregate.of_sum(GLOBAL, total, count, {keys.TRAIN_LOSS: 0.5})


def test_a_secure_sum_is_checked_for_finite_values_and_its_mean_update() -> None:
    """Forty updates of norm √21 ≈ 4.58 each sum to ‖Σ‖ = 40·√21 ≈ 183 > 10, but their mean
    update is √21 ≤ 10: an honest sum passes; forty scaled by 3 (mean 13.7) do not."""
    ones = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    assert _validator().aggregate(_sum({k: 40 * v for k, v in ones.items()}, 40)) is None
    refusal = _validator().aggregate(_sum({k: 120 * v for k, v in ones.items()}, 40))
    assert refusal is not None and refusal.reason == "update-norm"
    assert "13.75" in refusal.detail  # 3·√21 = 13.748
    poisoned = {**ones, "head.bias": np.array([np.nan])}
    refusal = _validator().aggregate(_sum(poisoned, 4))
    assert refusal is not None and refusal.reason == "non-finite"
    infinite = {**ones, "item_embedding.weight": np.full((5, 4), np.inf)}
    assert _validator().aggregate(_sum(infinite, 4)).reason == "non-finite"  # type: ignore[union-attr]


RATES = {keys.HR: 1.0, keys.NDCG: 0.63, keys.FULL_HR: 0.0, keys.FULL_NDCG: 0.0,
         "val-hr@10": 0.0, "val-ndcg@10": 0.0, "val-full_hr@10": 0.0,
         "val-full_ndcg@10": 0.0}  # fmt: skip
EVALUATED = {keys.USERS: 1, keys.NUM_EXAMPLES: 1, keys.UNIT_WEIGHT: 1, **RATES}


def test_an_honest_evaluate_reply_passes() -> None:
    assert _reason(_evaluate(EVALUATED)) is None
    nobody = {keys.USERS: 0, keys.NUM_EXAMPLES: 0, keys.UNIT_WEIGHT: 1}
    assert _reason(_evaluate(nobody)) is None  # a device with nothing held out
    assert _reason(_evaluate({**EVALUATED, keys.ER5: 0.2, keys.ER10: 0.4})) is None
    cold = {keys.COLD_PREFIX + k: v for k, v in RATES.items() if "val-" not in k}
    assert len(cold) == 4 and _reason(_evaluate({**EVALUATED, **cold})) is None


@pytest.mark.parametrize(
    "metrics",
    [
        {**EVALUATED, keys.USERS: 10**6, keys.NUM_EXAMPLES: 10**6},  # one device as a million
        {**EVALUATED, keys.HR: 50.0},
        {**EVALUATED, keys.HR: float("nan")},
        {**EVALUATED, keys.NDCG: 1.0, keys.HR: 0.0},  # a hit's NDCG is at most 1, a miss's 0
        {keys.USERS: 0, keys.NUM_EXAMPLES: 0, keys.UNIT_WEIGHT: 1, keys.HR: 1.0},
        {**EVALUATED, keys.NUM_EXAMPLES: 5},
        {**EVALUATED, "precision": 0.5},
        {**EVALUATED, keys.UNIT_WEIGHT: 3},
        {**EVALUATED, keys.ER5: 0.6, keys.ER10: 0.4},  # more targets in the top 5 than top 10
        {**EVALUATED, keys.ER5: 0.2},  # one exposure without the other
        {**EVALUATED, keys.ER5: 0.2, keys.ER10: 1.5},
        {**EVALUATED, "cold-hr@10": 0.0, "cold-ndcg@10": 0.5},  # the cold target's, too
        {**EVALUATED, "cold-full_hr@10": 2.0},
    ],
)
def test_malformed_evaluate_replies_are_refused(metrics: dict) -> None:
    assert _reason(_evaluate(metrics)) == "metrics"


def test_an_evaluate_reply_with_arrays_is_refused() -> None:
    content = RecordDict({keys.METRICS: MetricRecord(EVALUATED), keys.ARRAYS: _arrays()})
    msg = Message(content=content, reply_to=server_message("evaluate", None, node_id=3))
    assert _reason(msg) == "records"


# --- a run with hostile devices -------------------------------------------------------------
TRAIN_KINDS = ("nan", "inf", "scaled", "broadcast", "rows", "missing", "extra", "dtype",
               "examples", "weight")  # fmt: skip
EVAL_KINDS = ("users", "rate", "nan")


class Hostile:
    """The real ClientApp, with the replies of ``bad`` nodes corrupted after its guard (as a
    modified device would send them): each bad node sends another kind every round."""

    def __init__(self, app: object, bad: list[int]) -> None:
        self.app, self.bad = app, bad

    def __call__(self, message: Message, context: object) -> Message:
        reply = self.app(message, context)  # type: ignore[operator]
        node = message.metadata.dst_node_id
        if node not in self.bad or reply.has_error():
            return reply
        index = self.bad.index(node) + int(message.content[keys.CONFIG][keys.SERVER_ROUND])
        if message.metadata.message_type == "train":
            self._train(reply, TRAIN_KINDS[index % len(TRAIN_KINDS)])
        else:
            self._evaluate(reply, EVAL_KINDS[index % len(EVAL_KINDS)])
        return reply

    @staticmethod
    def _train(reply: Message, kind: str) -> None:
        arrays = {k: v.numpy() for k, v in reply.content[keys.ARRAYS].items()}
        metrics = reply.content[keys.METRICS]
        table = "item_embedding.weight"
        if kind == "nan":
            arrays[table][0, 0] = np.nan
        elif kind == "inf":
            arrays["head.bias"][:] = np.inf
        elif kind == "scaled":
            arrays = {k: v * 1e6 for k, v in arrays.items()}
        elif kind == "broadcast":
            arrays[table] = arrays[table][:1]
        elif kind == "rows":
            arrays[table] = arrays[table][:-1]
        elif kind == "missing":
            arrays.pop("head.bias")
        elif kind == "extra":
            arrays["user_embedding.weight"] = np.zeros((1, 8), np.float32)
        elif kind == "dtype":
            arrays[table] = arrays[table].astype(np.float64)
        elif kind == "examples":
            metrics[keys.NUM_EXAMPLES] = -(10**6)
        elif kind == "weight":
            metrics[keys.UNIT_WEIGHT] = 10**6
        reply.content[keys.ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})

    @staticmethod
    def _evaluate(reply: Message, kind: str) -> None:
        metrics = reply.content[keys.METRICS]
        if kind == "users":
            metrics.update({keys.USERS: 10**6, keys.NUM_EXAMPLES: 10**6, keys.HR: 1.0})
        elif kind == "rate":
            metrics.update({keys.USERS: 1, keys.NUM_EXAMPLES: 1, keys.HR: 50.0})
        else:
            metrics.update({keys.USERS: 1, keys.NUM_EXAMPLES: 1, keys.HR: float("nan")})


HOSTILE_RUN = federation(
    data="synthetic", synthetic_users=60, synthetic_items=300, num_rounds=8,
    clients_per_round=20, eval_every=4, strategy="fedadam", server_lr=0.05, server_tau=0.0001,
    client_weighting="examples",
)  # fmt: skip
# what each kind of corruption is refused as (server/validation.py)
HOSTILE_REASONS = {"non-finite", "update-norm", "shape", "arrays", "dtype", "metrics"}


def _run(seed: int, bad: list[int]) -> tuple[dict, list[list[int]]]:
    from fedrec.simulations.inprocess import InProcessGrid, run_inprocess

    config = HOSTILE_RUN
    hostile = lambda app, n: InProcessGrid(Hostile(app, bad), n)  # type: ignore[arg-type]  # noqa: E731
    metrics, grid = run_inprocess(config, seed=seed, grid_factory=hostile)
    return metrics, grid.cohorts


@pytest.mark.research  # six seeded in-process runs of 8 rounds with an HR bar
def test_a_run_with_ten_percent_hostile_devices_learns_as_a_clean_one() -> None:
    """Three seeds, each run clean and with 6 of 60 devices sending a corrupt reply of
    another kind every round: every corrupt reply is refused and counted, the rest
    aggregate, and the hostile runs' test HR@10 is the clean runs' within their seed-to-seed
    spread (seeded: the same cohorts and the same client randomness in both arms)."""
    bad = [3, 17, 24, 38, 45, 59]  # 6 of 60 nodes
    clean, hostile = [], []
    for seed in (0, 1, 2):
        metrics, _ = _run(seed, [])
        clean.append(metrics["final"]["hr@10"])
        metrics, cohorts = _run(seed, bad)
        hostile.append(metrics["final"]["hr@10"])
        rounds = metrics["rounds"]
        for record, cohort in zip(rounds[1:], cohorts, strict=True):  # every bad reply counted
            sent = sum(node in bad for node in cohort)
            refused = record.get("rejected", {}).get("train", {})
            assert sum(refused.values()) == sent and set(refused) <= HOSTILE_REASONS, record
            assert record["clients_replied"] == len(cohort) - sent
        for record in (r for r in rounds if "eval" in r):
            assert record["rejected"]["evaluate"] == {"metrics": len(bad)}
            assert record["eval"]["users"] == 60 - len(bad) and record["eval"]["hr@10"] <= 1.0
        assert all(np.isfinite(r["train_loss"]) for r in rounds[1:])
    spread = np.std(clean)  # seed to seed
    assert abs(np.mean(hostile) - np.mean(clean)) <= max(2 * spread, 0.02), (clean, hostile)
    assert np.mean(clean) > 0.3  # it learnt: HR@10 at round 0 is about 0.1
