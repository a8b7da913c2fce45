"""The Flower ClientApp: one node is one user's device.

Each train message brings the shared parameters; the node restores its private state (user
embedding, user features) from its :class:`~fedrec.client.store.StateStore`, trains locally,
saves the private state back and replies with the **shared** parameters and scalar metrics
only. Evaluation ranks the user's own held-out items on the device and replies with hit/NDCG
numbers, never item ids. Every reply passes the shared-only guard mod before it leaves, and a
round whose catalog hash is not the device's own catalog's is refused before anything runs.

What a node serves comes from its configuration (:func:`source_for`): a deployed device names
its sealed store and its catalog in its node config (``store=PATH key-file=PATH
catalog=PATH``); a simulated node gets ``partition-id`` from the engine and reads the run's
catalog (``catalog`` in the run config). A deployed device parses the run config as a
deployment (``FederationConfig.from_mapping(..., deployed=True)``: a simulation setting is
refused, naming it) and never imports the simulated sources. Every message resolves the node
once (:class:`Node`: its settings, source, catalog and shared shapes), and every mod and
handler of that message reads the same resolution.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.data import (
    NODE_KEY_FILE,
    NODE_PASSPHRASE_FILE,
    NODE_STORE,
    PARTITION_ID,
    LocalUser,
    ShardSource,
)
from fedrec.client.device import DeviceSource
from fedrec.client.exchange import ExchangeMod
from fedrec.client.local import build_local_model, local_evaluate, refresh_user
from fedrec.client.local_model import LocalModel
from fedrec.client.mods import CatalogCheck, MessageRecorder, SharedOnlyGuard, packing_mod
from fedrec.client.secagg import SecAggPlusMod
from fedrec.client.trainers import local_train_config, trainer_for
from fedrec.common import keys
from fedrec.common.colr import LowRank
from fedrec.common.data.catalog import Catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.records import array_record, arrays_of, config_of, integer, numpy_arrays
from fedrec.common.shapes import shared_shapes

__all__ = ["Node", "app", "make_client_app", "source_for"]

EVAL_STREAM = 1  # separates the evaluation refresh's random stream from training's


def make_client_app(
    fixed_config: FederationConfig | None = None, source: ShardSource | None = None
) -> ClientApp:
    """Build the ClientApp; ``fixed_config`` overrides ``context.run_config`` (simulation),
    ``source`` overrides where each node's user comes from (tests)."""
    handlers = Handlers(fixed_config, source)
    app = ClientApp(
        mods=[
            packing_mod,  # outermost: a deployed message's arrays come packed as one object
            handlers.one_message,  # the node is resolved for this message only
            MessageRecorder(handlers.audit_path),
            SharedOnlyGuard(handlers.shared_shapes),
            CatalogCheck(handlers.catalog_of),
        ]
    )
    # the handlers' mods run inside the global ones: the guard checks what leaves. The
    # exchange decodes the model, clips the update once and encodes it; secure aggregation
    # sits outside it, so it masks the clipped update (and is inert unless the message
    # starts a secure round)
    exchange = ExchangeMod(handlers.shared_shapes, handlers.rounding_seed)
    secure = SecAggPlusMod(
        handlers.shared_shapes, handlers.secure, rounding_seed=handlers.rounding_seed
    )
    app.train(mods=[secure, exchange])(handlers.train)
    app.evaluate(mods=[exchange])(handlers.evaluate)
    return app


def source_for(config: FederationConfig, node_config: Mapping[str, object]) -> ShardSource:
    """The source a node's configuration names: its own store (a deployed device), else its
    partition of the data set, read from encrypted folders when ``shard-dir`` is set."""
    if NODE_STORE in node_config:  # the device's own key: never the server's run config's
        key_file, passphrase_file = (
            node_config.get(k) for k in (NODE_KEY_FILE, NODE_PASSPHRASE_FILE)
        )
        if not key_file and not passphrase_file:
            raise ValueError(
                f"node config {NODE_STORE}={node_config[NODE_STORE]} also needs"
                f" {NODE_KEY_FILE}=PATH or {NODE_PASSPHRASE_FILE}=PATH: the store is sealed"
            )
        return DeviceSource(
            Path(str(node_config[NODE_STORE])),
            key_file=str(key_file) if key_file else None,
            passphrase_file=str(passphrase_file) if passphrase_file else None,
        )
    if config.storage.shard_dir:  # a simulated node from sealed shard folders
        from fedrec.client.encrypted_shards import EncryptedPartitions

        return EncryptedPartitions(config.storage.shard_dir, config.storage.key_file)
    from fedrec.client.partitions import DataSetPartitions  # a simulated node

    return DataSetPartitions()


@dataclass(frozen=True)
class Node:
    """What one message's node is: its settings, where its user comes from, its catalog and
    the shared group's shapes over it. Resolved once per message (:meth:`Handlers.node`)."""

    config: FederationConfig
    source: ShardSource
    catalog: Catalog
    shapes: dict[str, tuple[int, ...]]


class Handlers:
    """The node's handlers. A module-level class with bound methods, not closures: the
    simulation engine pickles the ClientApp with every message, and closures are pickled by
    value, instances by reference."""

    def __init__(self, fixed_config: FederationConfig | None, source: ShardSource | None) -> None:
        self.fixed_config = fixed_config
        self.source = source
        self._last: tuple[Context, Node] | None = None  # the message being served

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_last": None}  # pickled with every message: never a node

    def node(self, context: Context) -> Node:
        """The node serving ``context``'s message, resolved on its first use and shared by
        every mod and handler of that message (they all get the same Context object)."""
        if self._last is not None and self._last[0] is context:
            return self._last[1]
        deployed = NODE_STORE in context.node_config  # a device: no simulation setting
        config = self.fixed_config or FederationConfig.from_mapping(
            context.run_config, deployed=deployed
        )
        source = self.source or source_for(config, context.node_config)
        catalog = source.catalog(config, context)
        shapes = shared_shapes(catalog, config.model.dim, item_ids=config.model.item_id_table)
        node = Node(config, source, catalog, shapes)
        self._last = (context, node)
        return node

    def one_message(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        """A mod: whatever resolves the node during this message, none of it outlives the
        message (a grid that keeps one Context per node, the in-process one, resolves it
        anew for the next)."""
        try:
            return call_next(msg, context)
        finally:
            self._last = None

    def config_of(self, context: Context) -> FederationConfig:
        return self.node(context).config

    def catalog_of(self, context: Context) -> Catalog:
        """The node's own copy of the published catalog."""
        return self.node(context).catalog

    def shared_shapes(self, context: Context) -> dict[str, tuple[int, ...]]:
        return self.node(context).shapes

    def local_user(self, config: FederationConfig, context: Context) -> LocalUser:
        node = self.node(context)
        user = node.source.local_user(config, context)
        if user.shard.num_items != node.catalog.num_items:
            raise ValueError(
                f"this device's data indexes {user.shard.num_items} items, its catalog"
                f" {node.catalog.hash[:12]} has {node.catalog.num_items}: they come from"
                " different data"
            )
        return user

    def secure(self, context: Context) -> bool:
        """Whether this device takes part in train rounds only through secure aggregation."""
        return self.config_of(context).secure.enabled

    def audit_path(self, context: Context) -> str:
        return self.config_of(context).simulation.audit_log

    def rounding_seed(self, context: Context) -> list[int] | None:
        """The seed of the upload's stochastic rounding (compressed upload, SecAgg+'s
        quantization): the run seed and the node's partition on a simulated node, so a
        seeded run reproduces; ``None`` on a device (fresh OS entropy: its rounding is its
        own, not a stream the server could regenerate)."""
        partition = context.node_config.get(PARTITION_ID)
        return None if partition is None else [self.config_of(context).data.seed, int(partition)]

    def train(self, msg: Message, context: Context) -> Message:
        config = self.config_of(context)
        user = self.local_user(config, context)
        private = _private_row(user, config.model.dim)
        model = self._model(msg, config, user, private, context)
        rng = np.random.default_rng([config.data.seed, user.stream, _round(msg)])
        low_rank = LowRank.of(config_of(msg.content))  # a CoLR round: train the table's factor
        basis = None if low_rank is None else low_rank.training_basis(config.model.dim)
        trainer = trainer_for(config)  # DP-SGD's loads torch: set the threads after it
        _limit_threads(config.local.threads)
        trained = trainer(model, user.shard, user.store, rng, basis)
        user.store.save(keys.STATE_PRIVATE, model.private_state())
        if user.device is not None:  # a deployed device keeps the model for its own use
            user.device.cache_model(arrays_of(msg.content), _round(msg), config_of(msg.content))
            user.device.note_round(
                config, _round(msg), len(user.shard.train_items), config_of(msg.content)
            )
        returning = int(private is not None)
        if (
            config.server.client_weighting == "uniform"
        ):  # unused; it would tell the history's length
            trained.pop(keys.NUM_EXAMPLES, None)
        metrics = MetricRecord({**trained, keys.UNIT_WEIGHT: 1, keys.RETURNING: returning})
        shared = array_record(model.shared_state())
        content = RecordDict({keys.ARRAYS: shared, keys.METRICS: metrics})
        return Message(content=content, reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        config = self.config_of(context)
        _limit_threads(config.local.threads)
        user = self.local_user(config, context)
        private = _private_row(user, config.model.dim)
        model = self._model(msg, config, user, private, context)
        rng = np.random.default_rng([config.data.seed, user.stream, _round(msg), EVAL_STREAM])
        # not stored: evaluating must not change what the next train round starts from
        train_config = local_train_config(config)
        refresh_user(model, user.shard, train_config, config.local.eval_private_epochs, rng)
        catalog = self.catalog_of(context)
        targets = (
            catalog.indices_of(config.simulation.target_item_ids())
            if config.simulation.target_items
            else None
        )
        values = local_evaluate(model, user.shard, targets=targets)
        if user.device is not None:
            user.device.cache_model(arrays_of(msg.content), _round(msg), config_of(msg.content))
        evaluated = 1 if values else 0
        metrics = MetricRecord(
            {keys.USERS: evaluated, keys.NUM_EXAMPLES: evaluated, keys.UNIT_WEIGHT: 1, **values}
        )
        return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)

    def _model(
        self,
        msg: Message,
        config: FederationConfig,
        user: LocalUser,
        private: Mapping[str, np.ndarray] | None,
        context: Context,
    ) -> LocalModel:
        shared = numpy_arrays(arrays_of(msg.content))
        seed = int(np.random.default_rng([config.data.seed, user.stream]).integers(2**31))
        catalog = self.catalog_of(context)
        return build_local_model(catalog, user.shard, config.model.dim, shared, private, seed)


def _private_row(user: LocalUser, dim: int) -> Mapping[str, np.ndarray] | None:
    """The user's stored private state. A device keeps it across runs, and a later run may
    train a model of another width: its row of the old width is set aside (learnt anew)
    rather than failing every round; in a simulation a mismatch is a bug and stays one."""
    private = user.store.load(keys.STATE_PRIVATE)
    if private is None or user.device is None:
        return private
    row = private.get("user_embedding.weight")
    return private if row is not None and tuple(row.shape) == (1, dim) else None


def _limit_threads(threads: int) -> None:
    """``client-threads``: the threads of NumPy's BLAS (the plain path's matrix products),
    where threadpoolctl is installed, and torch's where this process has loaded torch
    (DP-SGD; the plain path never loads it). A one-user model's products are small: extra
    BLAS threads only spin (measured: twice the CPU time of an evaluate message)."""
    _blas_controller().limit(limits=threads, user_api="blas")  # process-wide, as torch's
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


@cache  # a handle on the process's BLAS libraries: finding them costs ~0.5 ms a message
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

    return ThreadpoolController()


def _round(msg: Message) -> int:
    return integer(config_of(msg.content), keys.SERVER_ROUND, 0)


# Entry point for `flwr run` (settings from [tool.flwr.app.config] in pyproject.toml)
app = make_client_app()
