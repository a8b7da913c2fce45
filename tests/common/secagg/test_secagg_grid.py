"""SecAgg+ as Message-API rounds: common/secagg/grid.py with the real ClientApp and its mods
(common/secagg/device.py) on every node, messages passed in memory by a local grid."""

from __future__ import annotations

import base64
from collections.abc import Iterable

import numpy as np
import pytest
from builders import catalog_of, node_context, server_message, with_catalog
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.supercore.task_identity import TaskIdentity

from fedrec.client.app import make_client_app
from fedrec.client.mods import PRIVACY_GUARD_ERROR, SharedOnlyGuard, violations
from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import initial_shared_state
from fedrec.common.secagg import wire
from fedrec.common.secagg.device import quantized_clip_norm, update_vector
from fedrec.common.secagg.grid import SUMMED_METRICS, SecureAggregationGrid, secure_sum
from fedrec.common.secagg.primitives import (
    SecAggSettings,
    decode_vector,
    dequantize_sum,
    encode_vector,
    flatten,
    quantize,
    wire_dtype,
)
from fedrec.server.dp_fedavg import UserLevelDP
from fedrec.server.factory import ServerRandomness, make_strategy
from fedrec.server.recorder import RoundRecorder

CONFIG = with_catalog(
    FederationConfig(
        synthetic_users=40, synthetic_items=300, dim=8, seed=0, client_weighting="uniform"
    )
)
CATALOG = catalog_of(CONFIG)
NODES = 10
SETTINGS = SecAggSettings(neighbours=6, threshold=0.6)  # k = 6, t = 5 of 7 shares


@pytest.fixture(autouse=True)
def _run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class LocalGrid:
    """Delivers each message to the node's ClientApp in this process; a node listed in
    ``drop[stage]`` stops answering from that stage on. Keeps every reply for inspection."""

    def __init__(self, app: ClientApp, drop: dict[str, set[int]] | None = None) -> None:
        self.app = app
        self.contexts: dict[int, Context] = {}
        for user in range(NODES):
            context = node_context(user, CONFIG.synthetic_users)
            self.contexts[context.node_id] = context
        self.drop = drop or {}
        self.gone: set[int] = set()
        self.sent: list[Message] = []
        self.replies: list[tuple[str, Message]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        out = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            stage = msg.content[wire.SECAGG][wire.STAGE] if wire.SECAGG in msg.content else "-"
            self.gone |= self.drop.get(stage, set()) & {node}
            if node in self.gone:
                continue
            reply = self.app(msg, self.contexts[node])
            self.replies.append((stage, reply))
            out.append(reply)
        return out


@pytest.fixture(scope="module")
def app() -> ClientApp:
    return make_client_app(CONFIG)


@pytest.fixture(scope="module")
def initial() -> ArrayRecord:
    return ArrayRecord(initial_shared_state(CATALOG, CONFIG.dim, CONFIG.seed))


def _train_messages(initial: ArrayRecord, clip: float | None = None) -> list[Message]:
    messages = []
    for node in range(1, NODES + 1):
        msg = server_message("train", initial, node, server_round=1, catalog=CATALOG)
        if clip is not None:
            msg.content[keys.CONFIG][keys.CLIPPING_NORM] = clip
        messages.append(msg)
    return messages


def _plain_mean(
    app: ClientApp, initial: ArrayRecord, nodes: Iterable[int], clip: float | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """What the plain path computes: each node trains (fresh context), FedAvg-uniform mean."""
    grid = LocalGrid(app)
    deltas, losses = [], []
    start = {k: v.numpy().astype(np.float64) for k, v in initial.items()}
    for msg in _train_messages(initial, clip):
        if msg.metadata.dst_node_id not in nodes:
            continue
        reply = grid.send_and_receive([msg])[0]
        assert not reply.has_error(), reply.error
        local = reply.content[keys.ARRAYS]
        deltas.append({k: local[k].numpy().astype(np.float64) - start[k] for k in start})
        losses.append(float(reply.content[keys.METRICS][keys.TRAIN_LOSS]))
    mean = {k: start[k] + np.mean([d[k] for d in deltas], axis=0) for k in start}
    return mean, float(np.mean(losses))


def _secure(app: ClientApp, initial: ArrayRecord, drop: dict[str, set[int]] | None = None):
    grid = LocalGrid(app, drop)
    secure = SecureAggregationGrid(grid, SETTINGS)  # type: ignore[arg-type]
    replies = list(secure.send_and_receive(_train_messages(initial)))
    return replies, secure.report, grid


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
def test_round_parameters(n: int, settings: SecAggSettings, k: int, t: int) -> None:
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
        FederationConfig(secure_aggregation="secagg+")
    with pytest.raises(ValueError, match="secagg-clip-range"):
        FederationConfig(
            secure_aggregation="secagg+",
            client_weighting="uniform",
            dp_clip_norm=9.0,
            dp_noise_multiplier=1.0,
            clients_per_round=5,
        )


# --- the protocol through the real ClientApp ------------------------------------------------
def test_secure_mean_equals_the_plain_mean(app: ClientApp, initial: ArrayRecord) -> None:
    replies, report, _ = _secure(app, initial)
    assert len(replies) == 1 and report["status"] == "ok" and report["survivors"] == NODES
    reply = replies[0]
    count, summed = secure_sum(reply)
    assert summed and count == NODES
    plain, loss = _plain_mean(app, initial, range(1, NODES + 1))
    config = SETTINGS.for_round(NODES)
    bound = config.max_sum_error(NODES) / NODES  # per coordinate, on the mean
    got = reply.content[keys.ARRAYS]
    moved = 0.0
    for k, value in plain.items():
        err = np.abs(got[k].numpy() - value).max()
        assert err <= bound + 1e-6, (k, err, bound)
        moved = max(moved, np.abs(value - initial[k].numpy()).max())
    assert moved > 100 * bound  # the updates are far larger than the error: a real check
    step = 2 * SUMMED_METRICS[keys.TRAIN_LOSS] / config.quantization_range  # per device
    assert reply.content[keys.METRICS][keys.TRAIN_LOSS] == pytest.approx(loss, abs=step)
    assert reply.content[keys.METRICS][keys.RETURNING] == pytest.approx(0.0, abs=1e-6)
    assert reply.content[keys.METRICS][keys.UNIT_WEIGHT] == NODES


def test_train_replies_of_a_secure_round_carry_no_arrays_or_metrics(
    app: ClientApp, initial: ArrayRecord
) -> None:
    _, _, grid = _secure(app, initial)
    stages = [stage for stage, _ in grid.replies]
    assert stages.count(Stage.COLLECT_MASKED_VECTORS) == NODES
    for stage, reply in grid.replies:
        assert not reply.has_error(), reply.error
        assert set(reply.content.keys()) == {wire.SECAGG}, stage
        assert set(reply.content[wire.SECAGG].keys()) <= wire.REPLY_KEYS[stage]
    for context in grid.contexts.values():  # the round is over: its secrets are wiped
        assert wire.STATE not in context.state


@pytest.mark.parametrize("stage", Stage.all())
def test_dropouts_at_every_stage(app: ClientApp, initial: ArrayRecord, stage: str) -> None:
    """Two of ten drop (t = 5 of 7 shares): the round completes; the sum covers exactly the
    clients whose masked vectors arrived (a client gone only at unmask still counts)."""
    dropped = {3, 8}
    replies, report, _ = _secure(app, initial, {stage: dropped})
    assert report["status"] == "ok", report["status"]
    assert report["dropped"][stage] == 2
    contributors = set(range(1, NODES + 1))
    if stage != Stage.UNMASK:
        contributors -= dropped
    assert report["survivors"] == len(contributors)
    plain, _ = _plain_mean(app, initial, contributors)
    got = replies[0].content[keys.ARRAYS]
    bound = SETTINGS.for_round(NODES).max_sum_error(len(contributors)) / len(contributors)
    for k, value in plain.items():
        assert np.abs(got[k].numpy() - value).max() <= bound + 1e-6


@pytest.mark.parametrize("stage", Stage.all())
def test_too_many_dropouts_fail_closed(app: ClientApp, initial: ArrayRecord, stage: str) -> None:
    """Six of ten gone: fewer than t = 5 live holders for some secret; no reply and nothing
    unmasked (the server stops before reconstructing), and no client was ever asked for
    both shares of anyone."""
    replies, report, grid = _secure(app, initial, {stage: {1, 2, 3, 4, 5, 6}})
    assert replies == []
    assert report["status"].startswith("failed closed: InsufficientSharesError")
    assert report["survivors"] == 0
    for request in grid.sent:
        record = request.content.get(wire.SECAGG)
        if record is not None and record[wire.STAGE] == Stage.UNMASK:
            asked = wire.read_unmask_request(record)
            assert not set(asked.survivors) & set(asked.dropped)


def test_a_tiny_cohort_is_skipped_not_revealed(app: ClientApp, initial: ArrayRecord) -> None:
    grid = LocalGrid(app)
    secure = SecureAggregationGrid(grid, SETTINGS)  # type: ignore[arg-type]
    assert list(secure.send_and_receive(_train_messages(initial)[:2])) == []
    assert secure.report["status"].startswith("skipped") and grid.replies == []


def test_a_tampered_ciphertext_is_refused_by_the_device(
    app: ClientApp, initial: ArrayRecord
) -> None:
    class Tampering(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            for msg in messages:
                record = msg.content.get(wire.SECAGG)
                if (
                    record
                    and record[wire.STAGE] == Stage.COLLECT_MASKED_VECTORS
                    and msg.metadata.dst_node_id == 4
                    and "ciphertexts" in record
                ):
                    forged = list(record["ciphertexts"])
                    raw = bytearray(base64.urlsafe_b64decode(forged[0]))
                    raw[len(raw) // 2] ^= 1  # one bit of the ciphertext body
                    forged[0] = base64.urlsafe_b64encode(bytes(raw))
                    record["ciphertexts"] = forged
            return super().send_and_receive(messages, timeout=timeout)

    grid = Tampering(app)
    secure = SecureAggregationGrid(grid, SETTINGS)  # type: ignore[arg-type]
    replies = list(secure.send_and_receive(_train_messages(initial)))
    refused = [r for s, r in grid.replies if s == Stage.COLLECT_MASKED_VECTORS and r.has_error()]
    assert len(refused) == 1 and "TamperedShareError" in refused[0].error.reason
    assert secure.report["dropped"][Stage.COLLECT_MASKED_VECTORS] == 1
    assert secure.report["survivors"] == NODES - 1 and len(replies) == 1


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
    """Stochastic rounding moves each coordinate by < one step: clipping Δ to C − step·√d
    keeps the quantized update's norm ≤ C (the server's sensitivity); clipping to C alone
    does not — the second half shows this test can fail."""
    config = SecAggSettings(clip_range=1.0, quantization_bits=6).for_round(5)  # step 1/32
    d, clip = 200, 0.5
    rng = np.random.default_rng(0)
    sent = RecordDict({
        keys.ARRAYS: ArrayRecord({"w": Array(np.zeros(d, dtype=np.float32))}),
        keys.CONFIG: ConfigRecord({keys.CLIPPING_NORM: clip}),
    })  # fmt: skip
    worst_safe, worst_naive = 0.0, 0.0
    for _ in range(200):
        local = rng.normal(size=d).astype(np.float32)
        reply = RecordDict({keys.ARRAYS: ArrayRecord({"w": Array(local)})})
        vector = update_vector(sent, reply, {}, config)
        assert np.linalg.norm(flatten(vector)) <= quantized_clip_norm(clip, config, d) + 1e-9
        quantized = dequantize_sum(quantize(flatten(vector), config, rng), 1, config)
        worst_safe = max(worst_safe, float(np.linalg.norm(quantized)))
        naive = local / np.linalg.norm(local) * clip
        requantized = dequantize_sum(quantize(naive.astype(np.float64), config, rng), 1, config)
        worst_naive = max(worst_naive, float(np.linalg.norm(requantized)))
    assert worst_safe <= clip
    assert worst_naive > clip


def test_dp_fedavg_noises_the_secure_sum_with_the_fixed_denominator(
    app: ClientApp, initial: ArrayRecord
) -> None:
    """The same cohort and the same noise draws: DP-FedAvg over the one secure-sum reply
    equals DP-FedAvg over the ten plain replies, within the quantization error / m."""
    clip, m = 0.5, 20
    dp = UserLevelDP(
        clip_norm=clip, noise_multiplier=1.0, expected_clients=m, num_nodes=40, delta=1e-4,
        target_epsilon=0.0,
    )  # fmt: skip
    config = CONFIG.replace(dp_clip_norm=clip, dp_noise_multiplier=1.0, clients_per_round=m)
    outs = []
    for secure in (True, False):
        grid = LocalGrid(app)
        wrapped = SecureAggregationGrid(grid, SETTINGS)  # type: ignore[arg-type]
        strategy = make_strategy(
            config, randomness=ServerRandomness.seeded(7), num_rounds=1, user_dp=dp,
            secure=wrapped if secure else None,
        )  # fmt: skip
        assert repr(strategy) == "RoundRecorder(DPFedAvg(ServerStep(FedAvg)))"
        _begin_round(strategy, initial, grid)  # the cohort draw, as in a run
        messages = _train_messages(initial, clip)
        sender = wrapped if secure else grid
        replies = list(sender.send_and_receive(messages))
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        assert strategy.user_dp is not None and strategy.user_dp.last_record["replies"] == NODES
        outs.append({k: v.numpy() for k, v in arrays.items()})
    moved = max(np.abs(outs[1][k] - initial[k].numpy()).max() for k in outs[1])
    assert moved > 0.01  # the cohort's updates (and the noise) are far above the tolerance
    quantization = SETTINGS.for_round(NODES).max_sum_error(NODES) / m
    # the device clips to C − step·√d under SecAgg, C in the plain path
    margin = SETTINGS.for_round(NODES).step * np.sqrt(sum(v.size for v in outs[0].values()))
    for k in outs[0]:
        assert np.abs(outs[0][k] - outs[1][k]).max() <= quantization + NODES * margin / m + 1e-6


# --- what the server and the device refuse ---------------------------------------------------
def _plain_strategy(
    config: FederationConfig, secure: SecureAggregationGrid | None = None
) -> RoundRecorder:
    return make_strategy(config, randomness=ServerRandomness.seeded(0), num_rounds=1, secure=secure)


def _begin_round(strategy: RoundRecorder, initial: ArrayRecord, grid: LocalGrid) -> None:
    """Round 1 as the run starts it: its cohort is drawn and the model handed out."""
    list(strategy.configure_train(1, initial, ConfigRecord(), grid))  # type: ignore[arg-type]


def _end_round(strategy: RoundRecorder) -> dict:
    """Close round 1 (no evaluation) and return its record."""
    strategy.aggregate_evaluate(1, [])
    return strategy.records[-1]


def test_a_forged_aggregate_reply_is_dropped_by_a_plain_run(
    app: ClientApp, initial: ArrayRecord
) -> None:
    """A device could add a ``secagg-sum`` record to its reply to be counted 1000 times (and,
    under DP, to skip the server's re-clip): without secure aggregation such a reply is
    dropped; with it, device replies never reach the strategy at all."""
    grid = LocalGrid(app)
    honest = grid.send_and_receive(_train_messages(initial)[:3])
    forged = grid.send_and_receive(_train_messages(initial)[3:4])[0]
    forged.content[wire.SECURE_SUM] = ConfigRecord({"count": 1000})
    dp = UserLevelDP(
        clip_norm=0.5, noise_multiplier=1e-9, expected_clients=20, num_nodes=40, delta=1e-4,
        target_epsilon=0.0,
    )  # fmt: skip
    config = CONFIG.replace(dp_clip_norm=0.5, dp_noise_multiplier=1.0, clients_per_round=20)
    strategy = make_strategy(
        config, randomness=ServerRandomness.seeded(0), num_rounds=1, user_dp=dp
    )
    _begin_round(strategy, initial, grid)
    arrays, _ = strategy.aggregate_train(1, [*honest, forged])
    assert arrays is not None
    assert strategy.user_dp is not None and strategy.user_dp.last_record["replies"] == 3
    assert _end_round(strategy)["clients_failed"] == 1
    moved = np.sqrt(sum(
        ((arrays[k].numpy() - initial[k].numpy()).astype(np.float64) ** 2).sum() for k in arrays
    ))  # fmt: skip
    assert moved <= 3 * 0.5 / 20 + 1e-3  # three clipped updates over m = 20, nothing more


def test_a_failed_secure_round_leaves_the_model_unchanged(
    app: ClientApp, initial: ArrayRecord
) -> None:
    grid = LocalGrid(app, {Stage.SETUP: {1, 2, 3, 4, 5, 6, 7, 8}})
    secure = SecureAggregationGrid(grid, SETTINGS)  # type: ignore[arg-type]
    config = CONFIG.replace(strategy="fedadam", server_lr=0.05)
    strategy = _plain_strategy(config, secure)
    messages = list(strategy.configure_train(1, initial, ConfigRecord(), grid))  # type: ignore[arg-type]
    arrays, metrics = strategy.aggregate_train(1, secure.send_and_receive(messages))
    assert arrays is None and metrics is None  # Flower keeps the previous model
    record = _end_round(strategy)
    assert record["clients_replied"] == 0 and record["secagg"]["status"].startswith("failed")
    # an empty fan-out (e.g. an empty Poisson cohort) resets the report, never reuses it
    assert list(secure.send_and_receive([])) == []
    assert secure.report["clients"] == 0 and secure.report["status"].startswith("skipped")


def test_a_round_every_device_refuses_stops_the_run() -> None:
    report = {"clients": 5, "survivors": 0, "dropped": {}, "errors": ["secure aggregation: x"],
              "bytes_down": 0, "bytes_up": 0, "stage_seconds": {}, "status": "failed closed",
              "all_failed": Stage.COLLECT_MASKED_VECTORS}  # fmt: skip
    secure = SecureAggregationGrid(LocalGrid(make_client_app(CONFIG)), SETTINGS)  # type: ignore[arg-type]
    secure.report = report
    strategy = _plain_strategy(CONFIG, secure)
    list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), secure))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"every client refused .* collect_masked_vectors"):
        strategy.aggregate_train(1, [])


def test_a_secure_device_refuses_a_plaintext_train_round(initial: ArrayRecord) -> None:
    secure_app = make_client_app(CONFIG.replace(secure_aggregation="secagg+"))
    context = node_context(0, CONFIG.synthetic_users)
    context.state[wire.STATE] = ConfigRecord({"stage": "share_keys"})  # an abandoned round
    reply = secure_app(server_message("train", initial, context.node_id, catalog=CATALOG), context)
    assert reply.has_error() and "refuses to send its update in the clear" in reply.error.reason
    assert wire.STATE not in context.state
    evaluate = secure_app(
        server_message("evaluate", initial, context.node_id, catalog=CATALOG), context
    )
    assert not evaluate.has_error()  # evaluation is not a train round


def test_a_device_refuses_round_parameters_that_change_between_stages(
    app: ClientApp, initial: ArrayRecord
) -> None:
    class Switching(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            for msg in messages:
                record = msg.content[wire.SECAGG]
                if record[wire.STAGE] == Stage.SHARE_KEYS and msg.metadata.dst_node_id == 2:
                    record["clipping-range"] = 99.0
            return super().send_and_receive(messages, timeout=timeout)

    grid = Switching(app)
    secure = SecureAggregationGrid(grid, SETTINGS)  # type: ignore[arg-type]
    secure.send_and_receive(_train_messages(initial))
    refused = [r for s, r in grid.replies if s == Stage.SHARE_KEYS and r.has_error()]
    assert len(refused) == 1 and "round parameters changed" in refused[0].error.reason
    assert secure.report["status"] == "ok" and secure.report["survivors"] == NODES - 1


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "setup", "mask-key": b"k", "share-key": b"s"}),
          keys.METRICS: None}, "not only 'secagg'"),
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "unmask", "node-ids": ["1"], "shares": [b"x"]})},
         "reply of stage 'unmask' to a 'setup' request"),
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "setup", "mask-key": b"k", "masked": b"m"})},
         "undeclared keys ['masked']"),
        ({wire.SECAGG: ConfigRecord({wire.STAGE: "setup", "mask-key": 7})},
         "'mask-key' is not bytes or text"),
    ],
)  # fmt: skip
def test_the_guard_checks_a_secure_reply_against_its_request(records: dict, problem: str) -> None:
    from flwr.app import MetricRecord

    request = server_message("train", None, 1, catalog=CATALOG)
    request.content[wire.SECAGG] = ConfigRecord({wire.STAGE: Stage.SETUP})
    content = RecordDict({
        k: (MetricRecord({"x": 1.0}) if v is None else v) for k, v in records.items()
    })  # fmt: skip
    reply = Message(content=content, reply_to=request)
    assert any(problem in p for p in violations(reply, {}, request=request)), violations(
        reply, {}, request=request
    )
