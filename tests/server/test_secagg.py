"""SecAgg+ as Message-API rounds: the server's half (server/secagg.py, an aggregator that
returns the unmasked sum as an Aggregate) against the real ClientApp and its device half
(client/secagg.py behind the exchange mod) on every node of an in-process grid, every
message and reply through Flower's protobuf."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import pytest
from builders import (
    ScriptedGrid,
    catalog_of,
    federation,
    model_arrays,
    node_context,
    server_message,
    train_reply,
    with_catalog,
)
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from fedrec.client.app import make_client_app
from fedrec.client.exchange import ExchangeMod
from fedrec.client.mods import PRIVACY_GUARD_ERROR, SharedOnlyGuard, violations
from fedrec.client.secagg import update_vector
from fedrec.common import keys
from fedrec.common.channel import Channel
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import initial_shared_state, shared_shapes
from fedrec.common.privacy import clip_update, global_norm
from fedrec.common.secagg import wire
from fedrec.common.secagg.primitives import (
    SecAggSettings,
    decode_vector,
    dequantize_sum,
    encode_vector,
    flatten,
    quantize,
    wire_dtype,
)
from fedrec.server.aggregate import Aggregate, TrainReport, TrainRound
from fedrec.server.app import ServerRandomness, compose
from fedrec.server.dp_fedavg import DPFedAvg, UserLevelDP
from fedrec.server.evaluation import model_record
from fedrec.server.plain import PlainAggregation
from fedrec.server.rounds import Rounds
from fedrec.server.secagg import SUMMED_METRICS, SecureAggregation
from fedrec.server.validation import ReplyValidator
from fedrec.simulations.inprocess import InProcessGrid, seeded_task

pytestmark = pytest.mark.usefixtures("server_task")

USERS, DIM, SEED = 10, 8, 0  # ten devices, every one in each round's cohort
CONFIG = with_catalog(
    federation(
        synthetic_users=USERS, synthetic_items=300, dim=DIM, seed=SEED, client_weighting="uniform"
    )
)
CATALOG = catalog_of(CONFIG)
SHAPES = shared_shapes(CATALOG, DIM)
NODES = list(range(1, USERS + 1))
SETTINGS = SecAggSettings(neighbours=6, threshold=0.6)  # k = 6, t = 5 of 7 shares
# one quantization step 2c/Q = 16/2^22 (c = 8, Q = 2^22): a sum of n is exact to n steps
STEP = SETTINGS.for_round(USERS).step

Arrays = dict[str, np.ndarray]


class LocalGrid(InProcessGrid):
    """The in-process grid (each message to its node's ClientApp, through protobuf) where a
    node listed in ``drop[stage]`` stops answering from that stage on; :meth:`tamper` may
    alter a message on its way; every reply is kept with its stage."""

    def __init__(self, app: ClientApp, drop: dict[str, set[int]] | None = None) -> None:
        super().__init__(app, USERS)
        self.drop = drop or {}
        self.gone: set[int] = set()
        self.sent: list[Message] = []
        self.replies: list[tuple[str, Message]] = []

    def tamper(self, msg: Message) -> None:
        """Nothing: an honest server's messages arrive as sent."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        out = []
        for msg in messages:
            self.tamper(msg)
            self.sent.append(msg)
            node, stage = msg.metadata.dst_node_id, _stage(msg)
            self.gone |= self.drop.get(stage, set()) & {node}
            if node in self.gone:
                continue
            (reply,) = super().send_and_receive([msg], timeout=timeout)
            self.replies.append((stage, reply))
            out.append(reply)
        return out


def _stage(msg: Message) -> str:
    return str(msg.content[wire.SECAGG][wire.STAGE]) if wire.SECAGG in msg.content else "-"


@pytest.fixture(scope="module")
def app() -> ClientApp:
    return make_client_app(CONFIG)


@pytest.fixture(scope="module")
def model() -> Arrays:
    """The round's float32 model, as the server holds it."""
    return {k: v.numpy() for k, v in initial_shared_state(CATALOG, DIM, SEED).items()}


def _start(model: Arrays) -> Arrays:
    return {k: v.astype(np.float64) for k, v in model.items()}


def _round(
    model: Arrays,
    channel: Channel | None = None,
    clip: float | None = None,
    nodes: Iterable[int] = NODES,
) -> TrainRound:
    """Round 1 as the round loop sends it: one message per node, the model in the channel's
    download form, the catalog's hash (and C under DP) in the config."""
    channel = channel or Channel(SHAPES)
    config: dict[str, Any] = {keys.CATALOG_HASH: CATALOG.hash, keys.SERVER_ROUND: 1}
    config.update(channel.config(train=True))
    if clip is not None:
        config[keys.CLIPPING_NORM] = clip
    content = RecordDict(
        {keys.ARRAYS: model_record(model, channel), keys.CONFIG: ConfigRecord(config)}
    )
    messages = [Message(content, node, MessageType.TRAIN) for node in nodes]
    return TrainRound(1, messages, _start(model), channel, timeout=600.0)


def _secure(
    grid: LocalGrid, round_: TrainRound, validator: ReplyValidator | None = None
) -> tuple[Aggregate | None, TrainReport]:
    aggregator = SecureAggregation(SETTINGS, validator, rng=np.random.default_rng(0))
    return aggregator.aggregate(grid, round_)


class Plain(NamedTuple):
    """Each node's update Δ_i and train loss in a plain round: what the secure sum adds up."""

    updates: dict[int, Arrays]
    losses: dict[int, float]


def _plain(app: ClientApp, model: Arrays, download: str) -> Plain:
    """Every node's plain round (a fresh node each, float32 on the wire; devices train
    deterministically without DP, so a secure round's devices train the same updates)."""
    channel = Channel(SHAPES, download, "none")
    with seeded_task(0):  # a module fixture runs before the server_task fixture
        replies = LocalGrid(app).send_and_receive(_round(model, channel).messages)
    assert not any(r.has_error() for r in replies), replies[0].error
    start = _start(model)
    updates, losses = {}, {}
    for reply in replies:
        node, sent = reply.metadata.src_node_id, reply.content[keys.ARRAYS]
        if channel.sends_updates:  # Δ relative to the model the device decoded
            updates[node] = {k: a.numpy().astype(np.float64) for k, a in sent.items()}
        else:  # float32 weights: Δ = local − start
            updates[node] = {k: sent[k].numpy() - start[k] for k in start}
        losses[node] = float(reply.content[keys.METRICS][keys.TRAIN_LOSS])  # type: ignore[arg-type]
    return Plain(updates, losses)


@pytest.fixture(scope="module")
def plain(app: ClientApp, model: Arrays) -> Plain:
    return _plain(app, model, "none")


def _summed(plain: Plain, nodes: Iterable[int], clip: float | None = None) -> Arrays:
    chosen = [plain.updates[n] for n in nodes]
    if clip is not None:
        chosen = [clip_update(u, clip)[0] for u in chosen]
    return {k: np.sum([u[k] for u in chosen], axis=0) for k in SHAPES}


def _assert_within(got: Arrays, expected: Arrays, bound: float) -> None:
    for k in SHAPES:
        error = float(np.abs(got[k] - expected[k]).max())
        assert error <= bound, (k, error, bound)


# --- sizing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "settings", "k", "t"),
    [
        (100, SecAggSettings(), 14, 8),  # SecAgg+: k = 2⌈log2 100⌉, t a majority of 15
        (10, SecAggSettings(), 8, 5),
        (3, SecAggSettings(), 2, 2),
        (10, SecAggSettings(neighbours=50), 9, 6),  # k ≥ n − 1: every pair (SecAgg)
        (10, SecAggSettings(neighbours=5), 6, 4),  # odd k rounds up to even
        (20, SecAggSettings(neighbours=10, threshold=1.0), 10, 10),
    ],
)
def test_round_parameters_follow_the_cohort_size(
    n: int, settings: SecAggSettings, k: int, t: int
) -> None:
    config = settings.for_round(n)
    assert (config.neighbours, config.threshold) == (k, t)
    assert config.modulus > n * config.quantization_range


@pytest.mark.parametrize(("n", "bits"), [(3, 14), (20, 11), (100, 9), (655, 6)])
def test_a_compact_round_fits_its_sums_in_two_bytes(n: int, bits: int) -> None:
    """upload-compression = int8 under SecAgg+: Z_{2^16}, as many bits as n leaves."""
    config = SecAggSettings(compact=True).for_round(n)
    assert config.modulus == 2**16 and config.quantization_range == 2**bits
    assert n * 2**bits < 2**16 <= n * 2 ** (bits + 1)
    assert wire_dtype(config.modulus).itemsize == 2
    vector = np.array([0, 1, 2**16 - 1], np.uint64)
    assert decode_vector(encode_vector(vector, 2**16), 3, 2**16).tolist() == vector.tolist()
    assert SecAggSettings(compact=True, quantization_bits=4).for_round(n).quantization_range == 16
    assert wire_dtype(SecAggSettings().for_round(n).modulus).itemsize == 4  # not compact
    with pytest.raises(ValueError, match="leaves no quantization bit"):
        SecAggSettings(compact=True).for_round(40_000)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="secagg-threshold"):
        SecAggSettings(threshold=0.4)
    with pytest.raises(ValueError, match="client-weighting"):
        federation(secure_aggregation="secagg+")
    with pytest.raises(ValueError, match="secagg-clip-range"):
        federation(
            secure_aggregation="secagg+",
            client_weighting="uniform",
            dp_clip_norm=9.0,
            dp_noise_multiplier=1.0,
            clients_per_round=5,
        )


# --- the protocol through the real ClientApp ------------------------------------------------
def test_the_secure_mean_equals_the_plain_mean(app: ClientApp, model: Arrays, plain: Plain) -> None:
    expected = _summed(plain, NODES)
    mean_norm = global_norm({k: v / USERS for k, v in expected.items()})
    validator = ReplyValidator(SHAPES, max_update_norm=2 * mean_norm)  # within: accepted
    aggregate, report = _secure(LocalGrid(app), _round(model), validator)
    assert aggregate is not None and report.secagg is not None
    assert report.secagg["status"] == "ok" and report.secagg["survivors"] == USERS
    assert (report.secagg["neighbours"], report.secagg["threshold"]) == (6, 5)
    assert (aggregate.count, aggregate.weight) == (USERS, float(USERS))
    assert (report.contributed, report.failed) == (USERS, 0)
    # the mean of ten updates, each quantized to < one step: within one step a coordinate
    start = _start(model)
    plain_mean = {k: start[k] + expected[k] / USERS for k in SHAPES}
    _assert_within(aggregate.mean, plain_mean, STEP)
    moved = max(float(np.abs(expected[k] / USERS).max()) for k in SHAPES)
    assert moved > 100 * STEP  # the updates are far larger than the error: a real check
    # metrics ride in the masked vector: a loss to 2·64/Q per device, a 0/1 flag to 2/Q
    loss_step = 2 * SUMMED_METRICS[keys.TRAIN_LOSS] / SETTINGS.for_round(USERS).quantization_range
    loss = float(np.mean(list(plain.losses.values())))
    assert aggregate.metrics[keys.TRAIN_LOSS] == pytest.approx(loss, abs=loss_step)
    assert aggregate.metrics[keys.RETURNING] == pytest.approx(0.0, abs=1e-5)  # fresh nodes


@pytest.mark.parametrize("download", ["none", "int8"])
def test_the_total_is_the_survivors_updates_on_the_servers_exact_model(
    app: ClientApp, model: Arrays, plain: Plain, download: str
) -> None:
    """The aggregate sums the survivors' quantized updates, each relative to the model its
    device started from (the int8-decoded one under download compression), and sits on the
    server's own exact model: the download's rounding never enters the mean."""
    updates = plain if download == "none" else _plain(app, model, download)
    channel = Channel(SHAPES, download, "none")
    dropped = {4}  # gone at the collect stage: not in the sum
    survivors = [n for n in NODES if n not in dropped]
    grid = LocalGrid(app, {Stage.COLLECT_MASKED_VECTORS: dropped})
    aggregate, _ = _secure(grid, _round(model, channel))
    assert aggregate is not None and aggregate.count == len(survivors)
    # each of the nine quantized to < one step (+ float32 on the plain round's wire)
    n = len(survivors)
    _assert_within(aggregate.total, _summed(updates, survivors), n * STEP + 1e-7)
    start = _start(model)
    for k in SHAPES:
        np.testing.assert_array_equal(aggregate.start[k], start[k])
        np.testing.assert_allclose(aggregate.mean[k], start[k] + aggregate.total[k] / n, atol=1e-12)
    if download == "int8":
        decoded = channel.decode_model(channel.encode_model(model))  # what devices trained from
        table = "item_embedding.weight"
        off = np.abs(decoded[table] + aggregate.total[table] / n - aggregate.mean[table]).max()
        assert off > 1e-4  # the int8 rounding of the model, left out of the mean


def test_train_replies_of_a_secure_round_carry_no_arrays_or_metrics(
    app: ClientApp, model: Arrays
) -> None:
    grid = LocalGrid(app)
    _secure(grid, _round(model))
    stages = [stage for stage, _ in grid.replies]
    assert [stages.count(s) for s in Stage.all()] == [USERS] * 4
    for stage, reply in grid.replies:
        assert not reply.has_error(), reply.error
        assert set(reply.content.keys()) == {wire.SECAGG}, stage
        assert set(reply.content[wire.SECAGG].keys()) <= wire.REPLY_KEYS[stage]
    for context in grid.contexts.values():  # the round is over: its secrets are wiped
        assert wire.STATE not in context.state


@pytest.mark.parametrize("stage", Stage.all())
def test_dropouts_at_every_stage(app: ClientApp, model: Arrays, plain: Plain, stage: str) -> None:
    """Two of ten drop (t = 5 of 7 shares): the round completes; the sum covers exactly the
    clients whose masked vectors arrived (a client gone only at unmask still counts)."""
    dropped = {3, 8}
    aggregate, report = _secure(LocalGrid(app, {stage: dropped}), _round(model))
    assert report.secagg is not None and report.secagg["status"] == "ok", report.secagg
    assert report.secagg["dropped"][stage] == 2
    contributors = [n for n in NODES if stage == Stage.UNMASK or n not in dropped]
    assert report.secagg["survivors"] == len(contributors) == report.contributed
    assert aggregate is not None and aggregate.count == len(contributors)
    _assert_within(aggregate.total, _summed(plain, contributors), len(contributors) * STEP)


@pytest.mark.parametrize("stage", Stage.all())
def test_too_many_dropouts_fail_closed(app: ClientApp, model: Arrays, stage: str) -> None:
    """Six of ten gone: fewer than t = 5 live holders for some secret; no aggregate and
    nothing unmasked (the server stops before reconstructing), and no client was ever asked
    for both shares of anyone."""
    grid = LocalGrid(app, {stage: {1, 2, 3, 4, 5, 6}})
    aggregate, report = _secure(grid, _round(model))
    assert aggregate is None and report.secagg is not None
    assert report.secagg["status"].startswith("failed closed: InsufficientSharesError")
    assert report.secagg["survivors"] == 0 and report.contributed == 0
    for request in grid.sent:
        if _stage(request) == Stage.UNMASK:
            asked = wire.read_unmask_request(request.content[wire.SECAGG])
            assert not set(asked.survivors) & set(asked.dropped)


@pytest.mark.parametrize(("nodes", "status"), [([1, 2], "skipped: 2 clients sampled, a secure"
                         " sum needs 3"), ([], "skipped: no clients sampled")])  # fmt: skip
def test_a_tiny_cohort_is_skipped_not_revealed(
    app: ClientApp, model: Arrays, nodes: list[int], status: str
) -> None:
    grid = LocalGrid(app)
    aggregate, report = _secure(grid, _round(model, nodes=nodes))
    assert aggregate is None and report.secagg is not None and report.secagg["status"] == status
    assert grid.sent == []  # not one message: nothing to reveal


class _Tampering(LocalGrid):
    """Flips one bit of the first ciphertext relayed to node 4 at the collect stage."""

    def tamper(self, msg: Message) -> None:
        record = msg.content.get(wire.SECAGG)
        if _stage(msg) == Stage.COLLECT_MASKED_VECTORS and msg.metadata.dst_node_id == 4:
            assert isinstance(record, ConfigRecord)
            forged = list(record["ciphertexts"])  # type: ignore[arg-type]
            raw = bytearray(base64.urlsafe_b64decode(forged[0]))
            raw[len(raw) // 2] ^= 1  # one bit of the ciphertext body
            forged[0] = base64.urlsafe_b64encode(bytes(raw))
            record["ciphertexts"] = forged


def test_a_tampered_ciphertext_is_refused_by_the_device(app: ClientApp, model: Arrays) -> None:
    grid = _Tampering(app)
    aggregate, report = _secure(grid, _round(model))
    refused = [r for s, r in grid.replies if s == Stage.COLLECT_MASKED_VECTORS and r.has_error()]
    assert len(refused) == 1 and "TamperedShareError" in (refused[0].error.reason or "")
    assert refused[0].error.code == keys.SECAGG_ERROR
    assert report.secagg is not None
    assert report.secagg["dropped"][Stage.COLLECT_MASKED_VECTORS] == 1
    assert report.secagg["survivors"] == USERS - 1
    assert aggregate is not None and aggregate.count == USERS - 1


def test_the_guard_blocks_undeclared_secagg_keys() -> None:
    request = server_message("train", None, 1, catalog=CATALOG)
    request.content[wire.SECAGG] = ConfigRecord({wire.STAGE: Stage.UNMASK})
    reply_content = RecordDict({wire.SECAGG: ConfigRecord({wire.STAGE: "unmask", "seed": b"x"})})
    msg = Message(content=reply_content, reply_to=request)
    assert violations(msg, {}, request=request) == [
        "secagg record carries undeclared keys ['seed']"
    ]
    # not asked for a secure stage: a secagg record is not allowed at all
    assert violations(msg, {}) == ["record 'secagg' of type ConfigRecord is not allowed"]

    def leaking(msg: Message, context: Context) -> Message:
        return Message(content=reply_content, reply_to=msg)

    guard = SharedOnlyGuard(lambda context: {})
    blocked = guard(request, node_context(0, 4), leaking)
    assert blocked.has_error() and blocked.error.code == PRIVACY_GUARD_ERROR


# --- composition with user-level DP ----------------------------------------------------------
def test_the_device_clips_so_that_the_quantized_update_is_within_c() -> None:
    """The exchange mod clips once, to C − step·√(d + metrics) in a secure round: SecAgg+'s
    stochastic rounding moves each coordinate by < one step, so the quantized update's norm
    stays ≤ C (the server's sensitivity); clipping to C alone does not — the second half
    shows this test can fail."""
    config = SecAggSettings(clip_range=1.0, quantization_bits=6).for_round(5)  # step 1/32
    d, clip, shapes = 200, 1.0, {"w": (200,)}
    bound = clip - np.sqrt(d + len(SUMMED_METRICS)) / 32  # 1 − √205/32 = 0.5526
    rng = np.random.default_rng(0)
    worst_safe, worst_naive = 0.0, 0.0
    for _ in range(100):
        request = server_message("train", ArrayRecord({"w": Array(np.zeros(d, np.float32))}), 1)
        request.content[keys.CONFIG][keys.CLIPPING_NORM] = clip
        request.content[wire.SECAGG] = wire.config_record(
            Stage.COLLECT_MASKED_VECTORS, config, SUMMED_METRICS
        )
        local = rng.normal(size=d).astype(np.float32)

        def trained(msg: Message, context: Context, local: np.ndarray = local) -> Message:
            arrays = ArrayRecord({"w": Array(local)})
            metrics = MetricRecord({keys.TRAIN_LOSS: 0.7, keys.UNIT_WEIGHT: 1})
            content = RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics})
            return Message(content=content, reply_to=msg)

        reply = ExchangeMod(lambda _: shapes)(request, node_context(0, 1), trained)
        assert not reply.has_error(), reply.error
        sent = reply.content[keys.ARRAYS]["w"].numpy()
        assert sent.dtype == np.float64  # unrounded: the quantization is SecAgg+'s
        assert np.linalg.norm(sent) == pytest.approx(bound, rel=1e-9)  # ‖local‖ ≈ 14 ≫ C
        vector = flatten(update_vector(reply.content, shapes, SUMMED_METRICS, config))
        quantized = dequantize_sum(quantize(vector, config, rng), 1, config)[:d]
        worst_safe = max(worst_safe, float(np.linalg.norm(quantized)))
        naive = clip_update({"w": local}, clip)[0]["w"]
        requantized = dequantize_sum(quantize(naive, config, rng), 1, config)
        worst_naive = max(worst_naive, float(np.linalg.norm(requantized)))
    assert worst_safe <= clip
    assert worst_naive > clip


def test_dp_fedavg_noises_the_secure_sum_with_the_fixed_denominator(
    app: ClientApp, model: Arrays, plain: Plain
) -> None:
    """DP-FedAvg releases start + Σ clip(Δ_i)/m + N(0, (zC/m)²) over the fixed m = 20, not
    the ten that replied; the same noise draws over the plain sum of the ten clipped updates
    give the same release, within the quantization and the devices' margin, over m."""
    clip, m = 0.5, 20
    dp = UserLevelDP(
        clip_norm=clip, noise_multiplier=1.0, expected_clients=m, num_nodes=40, delta=1e-4,
        target_epsilon=0.0,
    )  # fmt: skip
    assert max(global_norm(u) for u in plain.updates.values()) > clip  # the clip is active
    aggregate, _ = _secure(LocalGrid(app), _round(model, clip=clip))
    assert aggregate is not None
    start = _start(model)
    released, record = DPFedAvg(dp, rng=np.random.default_rng(7)).release(aggregate, start, {})
    assert (record["replies"], record["m"], record["noise_std"]) == (USERS, m, 0.5 / m)
    noise = np.random.default_rng(7)  # per array, in the model's order, σ = z·C/m = 0.025
    for k in start:
        expected = start[k] + aggregate.total[k] / m + noise.normal(0.0, 0.025, size=start[k].shape)
        np.testing.assert_allclose(released[k], expected, rtol=0, atol=1e-12)
    plain_sum = Aggregate.of_sum(start, _summed(plain, NODES, clip=clip), USERS, {})
    unmasked, _ = DPFedAvg(dp, rng=np.random.default_rng(7)).release(plain_sum, start, {})
    # the device clips to C − step·√(d + 5) under SecAgg+, to C in the plain round
    d = sum(int(np.prod(s)) for s in SHAPES.values())
    margin = STEP * np.sqrt(d + len(SUMMED_METRICS))
    _assert_within(released, unmasked, USERS * (STEP + margin) / m + 1e-9)


# --- the round loop ---------------------------------------------------------------------------
def _rounds(
    grid: LocalGrid, catalog_config: FederationConfig | None = None
) -> tuple[Rounds, Arrays]:
    """The run's layers as server/app.py composes them for a secure run over this grid."""
    config = CONFIG.replace(
        secure_aggregation="secagg+", secagg_neighbours=6, secagg_threshold=0.6,
        clients_per_round=USERS, strategy="fedadam", server_lr=0.05, num_rounds=3, eval_every=3,
    )  # fmt: skip
    catalog = catalog_of(catalog_config) if catalog_config is not None else CATALOG
    start = {
        k: v.numpy() for k, v in initial_shared_state(catalog, DIM, SEED).items()
    }  # the run's model over the catalog the server holds
    run = compose(grid, config, catalog, USERS, ServerRandomness.seeded(0), start=start)
    return run.rounds, start


def test_a_failed_secure_round_leaves_the_model_unchanged(app: ClientApp) -> None:
    rounds, start = _rounds(LocalGrid(app, {Stage.SETUP: set(NODES[:8])}))
    after = rounds.round(1, start)
    for k in start:
        np.testing.assert_array_equal(after[k], start[k])  # no server step was taken
    record = rounds.recorder.records[-1]
    assert record["clients_replied"] == 0 and "server_lr" not in record
    assert record["secagg"]["status"].startswith("failed closed: InsufficientSharesError")
    rounds.grid = LocalGrid(app)  # every device back: the next round does change the model
    moved = rounds.round(2, after)
    assert rounds.recorder.records[-1]["secagg"]["status"] == "ok"
    assert any(not np.array_equal(moved[k], start[k]) for k in start)


def test_a_round_every_device_refuses_stops_the_run(app: ClientApp) -> None:
    """The server's round is built on another catalog (one more item): every device refuses
    it at the collect stage, where the model arrives — a setting, not bad luck."""
    other = with_catalog(CONFIG.replace(synthetic_items=301))
    rounds, start = _rounds(LocalGrid(app), other)
    with pytest.raises(
        RuntimeError,
        match=r"round 1: every client refused the secure round at stage collect_masked_vectors;"
        r" first error: .*catalog mismatch",
    ):
        rounds.round(1, start)


def test_a_secure_device_refuses_a_plaintext_train_round(model: Arrays) -> None:
    secure_app = make_client_app(CONFIG.replace(secure_aggregation="secagg+"))
    arrays = ArrayRecord({k: Array(v) for k, v in model.items()})
    context = node_context(0, USERS)
    context.state[wire.STATE] = ConfigRecord({"stage": "share_keys"})  # an abandoned round
    reply = secure_app(server_message("train", arrays, context.node_id, catalog=CATALOG), context)
    assert reply.has_error() and reply.error.code == keys.SECAGG_ERROR
    assert "refuses to send its update in the clear" in (reply.error.reason or "")
    assert wire.STATE not in context.state
    evaluate = secure_app(
        server_message("evaluate", arrays, context.node_id, catalog=CATALOG), context
    )
    assert not evaluate.has_error()  # evaluation is not a train round


class _Switching(LocalGrid):
    """Changes node 2's round parameters (the clipping range) at the share_keys stage."""

    def tamper(self, msg: Message) -> None:
        if _stage(msg) == Stage.SHARE_KEYS and msg.metadata.dst_node_id == 2:
            msg.content[wire.SECAGG]["clipping-range"] = 99.0  # type: ignore[index]


def test_a_device_refuses_round_parameters_that_change_between_stages(
    app: ClientApp, model: Arrays
) -> None:
    grid = _Switching(app)
    aggregate, report = _secure(grid, _round(model))
    refused = [r for s, r in grid.replies if s == Stage.SHARE_KEYS and r.has_error()]
    assert len(refused) == 1 and "round parameters changed" in (refused[0].error.reason or "")
    assert report.secagg is not None and report.secagg["status"] == "ok"
    assert report.secagg["survivors"] == USERS - 1 and aggregate is not None


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "setup", "mask-key": b"k", "share-key": b"s"}),
          keys.METRICS: MetricRecord({"x": 1.0})}, "not only 'secagg'"),
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "unmask", "node-ids": ["1"], "shares": [b"x"]})},
         "reply of stage 'unmask' to a 'setup' request"),
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "setup", "mask-key": b"k", "masked": b"m"})},
         "undeclared keys ['masked']"),
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "setup", "mask-key": 7})},
         "'mask-key' is not bytes or text"),
    ],
    ids=["extra-record", "wrong-stage", "undeclared-key", "not-bytes"],
)  # fmt: skip
def test_the_guard_checks_a_secure_reply_against_its_request(
    records: dict[str, Any], problem: str
) -> None:
    request = server_message("train", None, 1, catalog=CATALOG)
    request.content[wire.SECAGG] = ConfigRecord({wire.STAGE: Stage.SETUP})
    reply = Message(content=RecordDict(records), reply_to=request)
    problems = violations(reply, {}, request=request)
    assert any(problem in p for p in problems), problems


# --- what the server refuses ------------------------------------------------------------------
def test_a_sum_whose_mean_update_exceeds_the_bound_is_refused(
    app: ClientApp, model: Arrays, plain: Plain
) -> None:
    """The server never sees an update of a secure round, but it sees their mean: one
    beyond max-update-norm is refused, and the round changes nothing."""
    mean_norm = global_norm({k: v / USERS for k, v in _summed(plain, NODES).items()})
    validator = ReplyValidator(SHAPES, max_update_norm=mean_norm / 2)
    aggregate, report = _secure(LocalGrid(app), _round(model), validator)
    assert aggregate is None
    assert report.rejected == {"update-norm": 1}
    assert (report.contributed, report.failed) == (0, USERS)
    assert report.secagg is not None and report.secagg["status"] == "ok"  # it was unmasked


def test_a_secure_sum_record_in_a_plain_round_is_refused_by_validation() -> None:
    """A device could add a ``secagg-sum`` record to its plain reply, hoping to be taken
    for a secure round's sum (counted 1000 times, and under DP past the server's re-clip):
    a plain train reply carries exactly ``arrays`` and ``metrics``, so it is refused."""
    shapes = {"item_embedding.weight": (3, 4), "head.bias": (1,)}
    start = {k: a.numpy().astype(np.float64) for k, a in model_arrays().items()}

    def answer(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        reply = train_reply(model_arrays(), examples=5, loss=0.5, node=node)  # Δ = 0
        if node == 4:
            reply.content["secagg-sum"] = ConfigRecord({"count": 1000})
        return reply

    aggregator = PlainAggregation(
        ReplyValidator(shapes, max_update_norm=10.0), weight_key=keys.UNIT_WEIGHT, clip_norm=0.5
    )
    content = RecordDict({keys.ARRAYS: model_arrays(), keys.CONFIG: ConfigRecord({})})
    messages = [Message(content, node, MessageType.TRAIN) for node in (1, 2, 3, 4)]
    round_ = TrainRound(1, messages, start, Channel(shapes), timeout=600.0)
    aggregate, report = aggregator.aggregate(ScriptedGrid([1, 2, 3, 4], answer), round_)
    assert report.rejected == {"records": 1}
    assert any("secagg-sum" in e for e in report.errors), report.errors
    assert aggregate is not None and aggregate.count == 3 and aggregate.weight == 3.0
    assert (report.contributed, report.failed) == (3, 1)
