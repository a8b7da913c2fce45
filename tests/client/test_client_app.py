"""Tests for fedrec.client.app: the ClientApp called directly, as the simulation engine does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import catalog_of, federation, node_context, server_message, with_catalog
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.app import Handlers, make_client_app
from fedrec.client.data import LocalUser
from fedrec.client.local import build_local_model, local_train
from fedrec.client.mods import CATALOG_MISMATCH_ERROR
from fedrec.client.partitions import DataSetPartitions
from fedrec.client.trainers import local_train_config
from fedrec.common import keys
from fedrec.common.data.catalog import Catalog, save_catalog
from fedrec.common.data.shard import UserShard
from fedrec.common.data.split import NO_ITEM
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import PRIVATE_KEYS, initial_shared_state, shared_shapes
from fedrec.common.records import numpy_arrays

USERS, DIM, SEED, NEGATIVES = 60, 8, 0, 4  # negatives: the default (4 per positive)
CONFIG = with_catalog(federation(synthetic_users=USERS, synthetic_items=400, dim=DIM, seed=SEED))
CATALOG = catalog_of(CONFIG)
EVAL_KEYS = {
    "val-hr@10", "val-ndcg@10", "val-full_hr@10", "val-full_ndcg@10",
    "hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10",
}  # fmt: skip


@pytest.fixture(scope="module")
def shards() -> DataSetPartitions:
    return DataSetPartitions()


@pytest.fixture(scope="module")
def app(shards: DataSetPartitions) -> ClientApp:
    return make_client_app(CONFIG, shards)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return CATALOG


@pytest.fixture(scope="module")
def initial(catalog: Catalog) -> ArrayRecord:
    return ArrayRecord(initial_shared_state(catalog, DIM, SEED))


def _train(app: ClientApp, context: Context, arrays: ArrayRecord, server_round: int) -> Message:
    reply = app(
        server_message("train", arrays, context.node_id, server_round, catalog=CATALOG), context
    )
    assert not reply.has_error(), reply.error
    return reply


def _private(context: Context) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in context.state[keys.STATE_PRIVATE].items()}


def test_train_reply_carries_only_the_shared_group(
    app: ClientApp, catalog: Catalog, initial: ArrayRecord
) -> None:
    context = node_context(3, USERS)
    request = server_message("train", initial, context.node_id, 1, catalog=CATALOG)
    reply = app(request, context)
    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == request.metadata.message_id
    assert set(reply.content.keys()) == {keys.ARRAYS, keys.METRICS}
    arrays = reply.content[keys.ARRAYS]
    assert isinstance(arrays, ArrayRecord)
    shapes = {k: tuple(a.shape) for k, a in arrays.items()}
    assert shapes == shared_shapes(catalog, DIM)
    assert not set(PRIVATE_KEYS) & set(shapes) and "item_features" not in shapes
    metrics = reply.content[keys.METRICS]
    assert isinstance(metrics, MetricRecord)
    assert set(metrics) == {keys.NUM_EXAMPLES, keys.UNIT_WEIGHT, keys.TRAIN_LOSS, keys.RETURNING}
    assert metrics[keys.UNIT_WEIGHT] == 1
    assert metrics[keys.RETURNING] == 0  # a fresh node has no stored private state yet
    assert isinstance(metrics[keys.NUM_EXAMPLES], int) and metrics[keys.NUM_EXAMPLES] > 0
    assert isinstance(metrics[keys.TRAIN_LOSS], float) and metrics[keys.TRAIN_LOSS] > 0
    # the node trained: the shared parameters it sends back differ from those it received
    assert any(not np.array_equal(a.numpy(), initial[k].numpy()) for k, a in arrays.items())


def test_train_keeps_the_private_state_on_the_node(
    app: ClientApp, shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    context = node_context(5, USERS)
    _train(app, context, initial, 1)
    record = context.state[keys.STATE_PRIVATE]
    assert isinstance(record, ArrayRecord)
    assert set(record) == {"user_embedding.weight", "user_features"}
    assert tuple(record["user_embedding.weight"].shape) == (1, DIM)
    shard = shards.local_user(CONFIG, context).shard
    np.testing.assert_array_equal(record["user_features"].numpy()[0], shard.user_features)


def test_second_round_starts_from_the_stored_embedding(
    app: ClientApp,
    shards: DataSetPartitions,
    catalog: Catalog,
    initial: ArrayRecord,
) -> None:
    context = node_context(7, USERS)
    reply1 = _train(app, context, initial, 1)
    first = _private(context)

    # a fresh node with the same message reproduces round 1 exactly (seeded user row)
    fresh = node_context(7, USERS)
    _train(app, fresh, initial, 1)
    np.testing.assert_array_equal(_private(fresh)["user_embedding.weight"],
                                  first["user_embedding.weight"])  # fmt: skip

    shared = reply1.content[keys.ARRAYS]
    _train(app, context, shared, 2)
    second = _private(context)
    assert not np.array_equal(second["user_embedding.weight"], first["user_embedding.weight"])

    # round 2 continued from the stored row: redo it by hand from the stored state
    shard = shards.local_user(CONFIG, context).shard
    model = build_local_model(catalog, shard, DIM, numpy_arrays(shared), first, seed=123)
    rng = np.random.default_rng([SEED, 7, 2])
    local_train(model, shard, local_train_config(CONFIG), rng)
    np.testing.assert_allclose(second["user_embedding.weight"], model.user_row, atol=1e-6)

    # ... and not from the seeded initialisation that a fresh node uses in round 2
    fresh2 = node_context(7, USERS)
    _train(app, fresh2, shared, 2)
    assert not np.allclose(_private(fresh2)["user_embedding.weight"],
                           second["user_embedding.weight"])  # fmt: skip


def test_a_stored_embedding_is_used_black_box(app: ClientApp, initial: ArrayRecord) -> None:
    """Plant a recognisable row in the node's state: one round of Adam cannot move it far."""
    context = node_context(9, USERS)
    _train(app, context, initial, 1)
    planted = _private(context)
    planted["user_embedding.weight"][:] = 5.0
    context.state[keys.STATE_PRIVATE] = ArrayRecord(
        {k: torch.from_numpy(v) for k, v in planted.items()}
    )
    _train(app, context, initial, 2)
    row = _private(context)["user_embedding.weight"]
    assert np.abs(row - 5.0).max() < 0.5  # a seeded row has std 0.1 around 0


def test_the_user_embedding_never_leaves_the_node(
    app: ClientApp, initial: ArrayRecord, tmp_path: Path
) -> None:
    """Train and evaluate with the audit log on: no reply or record mentions private keys."""
    log = tmp_path / "audit.jsonl"
    audited = make_client_app(CONFIG.replace(audit_log=str(log)), DataSetPartitions())
    context = node_context(11, USERS)
    replies = [
        audited(server_message("train", initial, context.node_id, 1, catalog=CATALOG), context),
        audited(server_message("evaluate", initial, context.node_id, 1, catalog=CATALOG), context),
    ]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["train", "evaluate"]
    for reply, line in zip(replies, lines, strict=True):
        assert not reply.has_error()
        names = [name for record in reply.content.values() for name in record]
        assert not set(PRIVATE_KEYS) & set(names)
        text = json.dumps(line)
        assert all(key not in text for key in PRIVATE_KEYS)
        assert line["node"] == context.node_id and line["bytes"] > 0


def test_evaluate_reply_has_only_scalar_metrics(app: ClientApp, initial: ArrayRecord) -> None:
    context = node_context(13, USERS)
    reply = app(server_message("evaluate", initial, context.node_id, 1, catalog=CATALOG), context)
    assert not reply.has_error()
    assert set(reply.content.keys()) == {keys.METRICS}
    metrics = reply.content[keys.METRICS]
    assert set(metrics) == EVAL_KEYS | {keys.USERS, keys.NUM_EXAMPLES, keys.UNIT_WEIGHT}
    assert metrics[keys.USERS] == 1 and metrics[keys.NUM_EXAMPLES] == 1
    for key in EVAL_KEYS:
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    assert keys.STATE_PRIVATE not in context.state  # evaluation stores nothing


def test_evaluate_uses_the_trained_private_state(app: ClientApp, initial: ArrayRecord) -> None:
    context = node_context(15, USERS)
    _train(app, context, initial, 1)
    stored = _private(context)
    app(server_message("evaluate", initial, context.node_id, 1, catalog=CATALOG), context)
    after = _private(context)
    assert all(np.array_equal(after[k], stored[k]) for k in stored)  # read, not rewritten


def test_the_evaluation_refresh_changes_the_scores_but_not_the_stored_state(
    shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    """eval-private-epochs re-fits the user row for ranking only; the stored row is kept."""
    replies = {}
    for epochs in (0, 3):
        app = make_client_app(CONFIG.replace(eval_private_epochs=epochs), shards)
        context = node_context(17, USERS)
        _train(app, context, initial, 1)
        stored = _private(context)
        replies[epochs] = app(
            server_message("evaluate", initial, context.node_id, 2, catalog=CATALOG), context
        )
        assert not replies[epochs].has_error()
        after = _private(context)
        assert all(np.array_equal(after[k], stored[k]) for k in stored)
    plain, refreshed = (replies[e].content[keys.METRICS] for e in (0, 3))
    assert set(plain) == set(refreshed)
    # a different user vector ranks differently: some score-based number must move
    assert any(plain[k] != refreshed[k] for k in ("val-full_ndcg@10", "full_ndcg@10",
                                                  "val-ndcg@10", "ndcg@10"))  # fmt: skip


def test_the_app_pickles_by_reference(app: ClientApp, initial: ArrayRecord) -> None:
    """The engine pickles the ClientApp with every message: closures would travel by value
    (code and all, ~4 ms per message); handlers and mods must travel by reference."""
    from ray import cloudpickle

    data = cloudpickle.dumps(make_client_app(CONFIG))
    assert len(data) < 6000, len(data)  # 5.2 kB (it carries the config); closures: 9.6 kB
    clone = cloudpickle.loads(data)
    context = node_context(19, USERS)
    reply = clone(server_message("train", initial, context.node_id, 1, catalog=CATALOG), context)
    assert not reply.has_error(), reply.error


class _TrainOnly:
    """A ShardSource whose user has fewer than 3 interactions: train-only, not evaluable."""

    def __init__(self, inner: DataSetPartitions) -> None:
        self.inner = inner

    def catalog(self, config: FederationConfig, context: Context) -> Catalog:
        return self.inner.catalog(config, context)

    def local_user(self, config: FederationConfig, context: Context) -> LocalUser:
        user = self.inner.local_user(config, context)
        full = user.shard
        shard = UserShard(full.user_features, full.train_items[:2], NO_ITEM, NO_ITEM,
                          np.zeros(0, np.int64), full.num_items)  # fmt: skip
        return LocalUser(user.name, user.stream, shard, user.store)


def test_a_train_only_node_counts_as_no_user(
    shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    app = make_client_app(CONFIG, _TrainOnly(shards))
    context = node_context(0, USERS)
    reply = app(server_message("evaluate", initial, context.node_id, 1, catalog=CATALOG), context)
    assert dict(reply.content[keys.METRICS]) == {
        keys.USERS: 0,
        keys.NUM_EXAMPLES: 0,
        keys.UNIT_WEIGHT: 1,
    }
    train = _train(app, context, initial, 1)
    assert train.content[keys.METRICS][keys.NUM_EXAMPLES] == 2 * (1 + NEGATIVES)


def test_run_config_is_read_when_no_config_is_fixed(
    app: ClientApp, shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    from_run_config = make_client_app(source=shards)
    context = node_context(4, USERS, run_config=CONFIG.to_mapping())
    reply = _train(from_run_config, context, initial, 1)
    expected = _train(app, node_context(4, USERS), initial, 1)
    for key, array in reply.content[keys.ARRAYS].items():
        np.testing.assert_array_equal(array.numpy(), expected.content[keys.ARRAYS][key].numpy())


def test_a_typo_in_the_run_config_is_an_error(
    shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    app = make_client_app(source=shards)
    context = node_context(0, USERS, run_config={"local-epoch": 2})
    with pytest.raises(ValueError, match="local-epoch"):
        app(server_message("train", initial, context.node_id, 1, catalog=CATALOG), context)


def test_node_count_mismatch_is_a_clear_error(app: ClientApp, initial: ArrayRecord) -> None:
    """Called directly the ClientApp raises; Flower's runtime turns that into an error reply."""
    context = node_context(0, USERS - 1)
    with pytest.raises(ValueError, match=rf"{USERS - 1} nodes but the data set has {USERS} users"):
        app(server_message("train", initial, context.node_id, 1, catalog=CATALOG), context)
    with pytest.raises(ValueError, match="num-supernodes"):
        app(server_message("evaluate", initial, context.node_id, 1, catalog=CATALOG), context)
    assert keys.STATE_PRIVATE not in context.state


# --- record-level DP on the node ---------------------------------------------------------------
DP_APP_CONFIG = CONFIG.replace(
    local_dp_noise_multiplier=1.0,
    local_dp_clip_norm=1.0,
    local_batch_size=16,
    client_weighting="uniform",
)


def _epsilon_of(reply: Message) -> float:
    return float(reply.content[keys.METRICS][keys.RECORD_EPSILON])


def test_the_dp_ledger_lives_in_node_state_and_accumulates(
    shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    app = make_client_app(DP_APP_CONFIG, shards)
    context = node_context(21, USERS)
    first = _train(app, context, initial, 1)
    assert first.content[keys.METRICS][keys.BUDGET_EXHAUSTED] == 0
    stored = json.loads(str(context.state[keys.STATE_RECORD_LEDGER]["json"]))
    assert stored["history"] and stored["accountant"] == "rdp"
    second = _train(app, context, first.content[keys.ARRAYS], 2)
    assert 0 < _epsilon_of(first) < _epsilon_of(second)
    # the same node state on a "new process" (a fresh app object) keeps counting
    third = _train(make_client_app(DP_APP_CONFIG, shards), context, initial, 3)
    assert _epsilon_of(third) > _epsilon_of(second)
    # a fresh node starts at the first round's ε: the ledger is per node
    assert _epsilon_of(_train(app, node_context(21, USERS), initial, 1)) == pytest.approx(
        _epsilon_of(first)
    )


def test_a_node_past_its_budget_declines_with_a_zero_update(
    shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    probe = make_client_app(DP_APP_CONFIG, shards)
    one_round = _epsilon_of(_train(probe, node_context(23, USERS), initial, 1))
    app = make_client_app(DP_APP_CONFIG.replace(local_epsilon_budget=one_round * 1.01), shards)
    context = node_context(23, USERS)
    _train(app, context, initial, 1)
    private_before = _private(context)
    reply = _train(app, context, initial, 2)
    metrics = reply.content[keys.METRICS]
    assert metrics[keys.BUDGET_EXHAUSTED] == 1
    assert keys.NUM_EXAMPLES not in metrics  # uniform weights: the history's length stays here
    assert _epsilon_of(reply) == pytest.approx(one_round)  # nothing more spent
    for key, array in reply.content[keys.ARRAYS].items():
        np.testing.assert_array_equal(array.numpy(), initial[key].numpy())
    after = _private(context)
    assert all(np.array_equal(after[k], private_before[k]) for k in after)


def test_the_node_clips_its_update_when_the_server_sends_c(
    app: ClientApp, initial: ArrayRecord
) -> None:
    context = node_context(25, USERS)
    request = server_message("train", initial, context.node_id, 1, catalog=CATALOG)
    request.content[keys.CONFIG][keys.CLIPPING_NORM] = 0.01
    reply = app(request, context)
    assert not reply.has_error(), reply.error
    arrays = reply.content[keys.ARRAYS]
    norm = np.sqrt(sum(
        ((arrays[k].numpy().astype(np.float64) - initial[k].numpy()) ** 2).sum() for k in arrays
    ))  # fmt: skip
    assert norm == pytest.approx(0.01, rel=1e-3)  # unclipped it is ~100x larger


def test_dp_noise_is_not_derived_from_the_run_seed(
    shards: DataSetPartitions, initial: ArrayRecord
) -> None:
    """The same node, round and config twice: a seeded (predictable, removable) noise would
    give the same update; DP-SGD's noise must come from fresh entropy."""
    app = make_client_app(DP_APP_CONFIG, shards)
    a = _train(app, node_context(27, USERS), initial, 1).content[keys.ARRAYS]
    b = _train(app, node_context(27, USERS), initial, 1).content[keys.ARRAYS]
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    plain = make_client_app(CONFIG, shards)  # without DP the run is reproducible
    c = _train(plain, node_context(27, USERS), initial, 1).content[keys.ARRAYS]
    d = _train(plain, node_context(27, USERS), initial, 1).content[keys.ARRAYS]
    assert all(np.array_equal(c[k].numpy(), d[k].numpy()) for k in c)


# --- the catalog a round is built on -------------------------------------------------------------
def test_a_round_built_on_another_catalog_is_refused(
    app: ClientApp, initial: ArrayRecord, tmp_path: Path
) -> None:
    other_config = with_catalog(CONFIG.replace(synthetic_items=401))  # one more item
    other = catalog_of(other_config)
    assert other.hash != CATALOG.hash
    for message_type in ("train", "evaluate"):
        context = node_context(29, USERS)
        request = server_message(message_type, initial, context.node_id, 1, catalog=other)
        reply = app(request, context)
        assert reply.has_error() and reply.error.code == CATALOG_MISMATCH_ERROR
        assert "catalog mismatch" in reply.error.reason
        assert other.hash[:12] in reply.error.reason and CATALOG.hash[:12] in reply.error.reason
        assert keys.STATE_PRIVATE not in context.state  # nothing ran
    unnamed = server_message("train", initial, 30, 1)  # no hash at all
    reply = app(unnamed, node_context(29, USERS))
    assert reply.has_error() and "no catalog hash" in reply.error.reason


def test_data_of_another_catalog_is_a_clear_error(initial: ArrayRecord, tmp_path: Path) -> None:
    """The device's shard indexes items of the data set; its catalog must list the same."""
    other = catalog_of(with_catalog(CONFIG.replace(synthetic_items=401)))
    other_catalog = str(save_catalog(other, tmp_path / "other.npz"))
    app = make_client_app(CONFIG.replace(catalog=other_catalog))  # 60 users, 400 items of data
    context = node_context(3, USERS)
    with pytest.raises(ValueError, match=r"indexes 400 items, its catalog .* has 401"):
        app(server_message("train", initial, context.node_id, 1, catalog=other), context)


# --- a node that is neither a partition nor a device ---------------------------------------
def test_a_node_without_partition_or_store_is_a_clear_error(initial: ArrayRecord) -> None:
    app = make_client_app(CONFIG)
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match=r"no 'partition-id'.*store=PATH"):
        app(server_message("train", initial, 5, 1, catalog=CATALOG), context)


def test_the_features_come_from_the_shard_not_the_stored_state(
    app: ClientApp, initial: ArrayRecord
) -> None:
    """A device's attributes may change (a new profile): the stored row is kept, the
    features are the shard's."""
    context = node_context(31, USERS)
    _train(app, context, initial, 1)
    stale = _private(context)
    stale["user_features"][:] = 9.0  # what an older profile encoded to
    context.state[keys.STATE_PRIVATE] = ArrayRecord(
        {k: torch.from_numpy(v) for k, v in stale.items()}
    )
    _train(app, context, initial, 2)
    current = DataSetPartitions().local_user(CONFIG, context).shard.user_features
    np.testing.assert_array_equal(_private(context)["user_features"][0], current)


def test_a_simulated_nodes_rounding_is_seeded_and_a_devices_is_its_own() -> None:
    """The stochastic roundings (compressed upload, SecAgg+ quantization) draw from the run
    seed and the partition on a simulated node; a device (no partition) gets None: fresh
    OS entropy, not a stream the server could regenerate from config.json."""
    handlers = Handlers(CONFIG.replace(seed=5), None)
    assert handlers.rounding_seed(node_context(3, USERS)) == [5, 3]
    device = Context(run_id=1, node_id=9, node_config={"store": "/x"}, state=RecordDict(),
                     run_config={})  # fmt: skip
    assert handlers.rounding_seed(device) is None
