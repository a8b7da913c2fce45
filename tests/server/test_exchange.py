"""Tests for fedrec.server.exchange: the server's end of the compressed exchange."""

from __future__ import annotations

import numpy as np
import pytest
from builders import StaticGrid, model_arrays, server_message, train_reply
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedrec.common import keys
from fedrec.common.colr import FACTOR, LowRank
from fedrec.common.compression import compress, payload_layout
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.records import message_bytes
from fedrec.server.exchange import Exchange
from fedrec.server.factory import ServerRandomness, make_strategy
from fedrec.server.validation import ReplyValidator

pytestmark = pytest.mark.usefixtures("server_task")

SHAPES = {"item_embedding.weight": (3, 4), "head.bias": (1,)}
GLOBAL = {k: a.numpy().astype(np.float64) for k, a in model_arrays().items()}


def _payload(delta: dict[str, np.ndarray], mode: str) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in compress(delta, mode).items()})


def test_a_decoded_reply_is_the_servers_model_plus_the_update() -> None:
    exchange = Exchange("int8", "int8", SHAPES)
    delta = {"item_embedding.weight": np.full((3, 4), 0.25, np.float32),
             "head.bias": np.array([-1.0], np.float32)}  # fmt: skip
    reply = train_reply(_payload(delta, "int8"), 10, 0.1, 1)
    assert exchange.decode(reply, GLOBAL) is None
    arrays = {k: a.numpy() for k, a in reply.content[keys.ARRAYS].items()}
    assert all(v.dtype == np.float32 for v in arrays.values())
    np.testing.assert_allclose(
        arrays["item_embedding.weight"], GLOBAL["item_embedding.weight"] + 0.25
    )
    np.testing.assert_allclose(arrays["head.bias"], [0.5 - 1.0])


def test_a_reply_off_the_upload_layout_is_refused_as_payload() -> None:
    exchange = Exchange("none", "int8", SHAPES)
    weights = train_reply(model_arrays(2.0), 10, 0.1, 1)  # float32 weights, not int8 Δ
    refusal = exchange.decode(weights, GLOBAL)
    assert refusal is not None and refusal.reason == "payload" and "int8" in refusal.detail


@pytest.mark.parametrize("data", [b"", b"junk"], ids=["empty", "garbage"])
def test_undecodable_bytes_are_a_refusal_not_a_crash(data: bytes) -> None:
    """The bytes are the device's: ``Array.numpy`` raises EOFError / ValueError on these."""
    junk = Array(dtype="int8", shape=(3, 4), stype="numpy.ndarray", data=data)
    payload = _payload({k: np.zeros(s, np.float32) for k, s in SHAPES.items()}, "int8")
    payload["item_embedding.weight"] = junk
    refusal = Exchange("none", "int8", SHAPES).decode(train_reply(payload, 10, 0.1, 1), GLOBAL)
    assert refusal is not None and refusal.reason == "payload"
    validator = ReplyValidator(SHAPES, max_update_norm=100.0, weigh_by_examples=False)
    weights = model_arrays()
    weights["item_embedding.weight"] = Array(dtype="float32", shape=(3, 4),
                                             stype="numpy.ndarray", data=data)  # fmt: skip
    refused = validator.check(train_reply(weights, 10, 0.1, 1), GLOBAL)
    assert refused is not None and refused.reason == "arrays" and "undecodable" in refused.detail


def test_every_model_sent_is_encoded_and_the_round_averages_the_decoded_updates() -> None:
    """The recorder sends the model in the download's form (to trainers and evaluators),
    records the compressed bytes, and aggregates global + Δ (plain FedAvg: the mean)."""
    config = FederationConfig(clients_per_round=2, download_compression="int8",
                              upload_compression="fp16", client_weighting="uniform")  # fmt: skip
    recorder = make_strategy(config, randomness=ServerRandomness.seeded(0), num_rounds=1,
                             exchange=Exchange.of(config, SHAPES))  # fmt: skip
    grid = StaticGrid([1, 2, 3])
    sent = list(recorder.configure_train(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    layout = payload_layout(SHAPES, "int8")
    for message in sent:
        arrays = message.content[keys.ARRAYS]
        assert {k: (tuple(a.shape), np.dtype(a.dtype)) for k, a in arrays.items()} == layout
    assert recorder._current["bytes_down_per_client"] == message_bytes(sent[0])
    codes = sum(a.numpy().nbytes for a in sent[0].content[keys.ARRAYS].values())
    assert codes == 12 + 1 + 4 * (3 + 1)  # int8 codes and a float32 scale a row, not 4 * 13
    ups = [{k: np.full(s, d, np.float32) for k, s in SHAPES.items()} for d in (0.5, 1.5)]
    replies = [train_reply(_payload(u, "fp16"), 5, 0.1, m.metadata.dst_node_id)
               for u, m in zip(ups, sent, strict=True)]  # fmt: skip
    arrays, _ = recorder.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["head.bias"].numpy(), [0.5 + 1.0])  # mean Δ = 1
    bad = train_reply(model_arrays(), 5, 0.1, 3)  # float32 weights where fp16 Δ was asked
    list(recorder.configure_train(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    recorder.aggregate_train(1, [train_reply(_payload(ups[0], "fp16"), 5, 0.1, 1), bad])
    assert recorder._current["rejected"] == {"train": {"payload": 1}}
    evaluated = list(recorder.configure_evaluate(1, model_arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    assert all(np.dtype(m.content[keys.ARRAYS]["head.bias"].dtype) == np.int8 for m in evaluated)


def test_fp16_uploads_under_secure_aggregation_are_refused_with_the_reason() -> None:
    secure = {"secure_aggregation": "secagg+", "client_weighting": "uniform"}
    with pytest.raises(ValueError, match="SecAgg\\+ masks integers"):
        FederationConfig(**secure, upload_compression="fp16")
    assert FederationConfig(**secure, upload_compression="int8").secagg_settings().compact
    with pytest.raises(ValueError, match="download-compression must be one of"):
        FederationConfig(download_compression="int4")


def test_a_secure_sum_moves_onto_the_exact_model() -> None:
    """The secure grid returns the decoded model plus the mean update; the exchange puts the
    mean update onto the server's own model, so the download's rounding never accumulates."""
    from flwr.app import ConfigRecord as Config
    from flwr.app import Message, RecordDict

    from fedrec.common.compression import decompress
    from fedrec.common.secagg.wire import SECURE_SUM

    exchange = Exchange("int8", "int8", SHAPES)
    started = decompress(compress(GLOBAL, "int8"), "int8", SHAPES)
    assert any(np.abs(started[k] - GLOBAL[k]).max() > 0 for k in SHAPES)  # it did round
    summed = {k: started[k].astype(np.float64) + 0.125 for k in SHAPES}
    content = RecordDict({
        keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in summed.items()}),
        SECURE_SUM: Config({"count": 5}),
    })  # fmt: skip
    reply = Message(content=content, reply_to=server_message("train", None, node_id=1))
    assert exchange.decode(reply, GLOBAL) is None
    for k in SHAPES:
        np.testing.assert_allclose(reply.content[keys.ARRAYS][k].numpy(), GLOBAL[k] + 0.125)


def test_a_low_rank_round_names_its_basis_and_expands_each_factor() -> None:
    """start_round puts the round's form (rank, fresh seed) in every train message; a
    reply's factor A comes back as ΔE = A·B on that basis, added to the exact model."""
    exchange = Exchange("none", "none", SHAPES, rank=2, seed=5)
    messages = [server_message("train", model_arrays(), node_id=n, server_round=3) for n in (1, 2)]
    exchange.start_round(messages, 3)
    form = LowRank.for_round(2, 5, 3)
    for message in messages:
        assert LowRank.of(message.content.config_records[keys.CONFIG]) == form
    a = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    payload = ArrayRecord({FACTOR: Array(a), "head.bias": Array(np.array([0.25], np.float32))})
    reply = train_reply(payload, 10, 0.1, 1)
    assert exchange.decode(reply, GLOBAL) is None
    table = reply.content[keys.ARRAYS]["item_embedding.weight"].numpy()
    np.testing.assert_allclose(
        table, GLOBAL["item_embedding.weight"] + a @ form.basis(4), rtol=1e-6, atol=1e-6
    )
    dense = train_reply(model_arrays(2.0), 10, 0.1, 1)  # the full table where A was asked
    refusal = exchange.decode(dense, GLOBAL)
    assert refusal is not None and refusal.reason == "payload"


def test_the_next_round_draws_another_basis() -> None:
    exchange = Exchange("none", "none", SHAPES, rank=2, seed=5)
    seeds = []
    for server_round in (1, 2):
        message = server_message("train", model_arrays(), node_id=1, server_round=server_round)
        exchange.start_round([message], server_round)
        seeds.append(message.content.config_records[keys.CONFIG][keys.COLR_SEED])
    assert seeds[0] != seeds[1]
