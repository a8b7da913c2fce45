"""Simulated nodes: the user of a ``partition-id``, cut from the run's data set.

The simulation engine gives every node a ``partition-id``; :class:`DataSetPartitions` serves
that user of the configured data set, from the run's shard pack (:mod:`fedrec.common.data.pack`:
the runner splits the data once and writes every user's rows to one memory-mapped folder,
handed to this source as ``pack``) where this machine has it, else from the data set itself.
Its state lives in Flower's ``context.state`` (memory, one run) or, with ``state-dir``, in an
encrypted folder per user. Only a simulated node imports this module; a deployed device
serves its own store (``client/device.py``).

Why a process-wide cache in :class:`DataSetPartitions`: Flower's Ray backend pickles the
ClientApp and sends it with *every* message (``ClientAppActor.run(client_app_fn, message,
...)``), so state held by the app object starts empty on each call; without the bounded cache
of :func:`_load_split` each call would re-read and re-split the data set. It holds at most two
data sets per worker process and is keyed by every setting that affects the data, so it can
never serve a stale split. A node on another machine of a Ray cluster does not see the
runner's pack and loads the data set instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import Context

from fedrec.client.data import NODE_CATALOG, NODE_STORE, NUM_PARTITIONS, PARTITION_ID, LocalUser
from fedrec.client.secure_store import EncryptedFileStore
from fedrec.client.store import ContextStateStore, StateStore
from fedrec.common.crypto import read_key_file
from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.pack import MANIFEST as PACK_MANIFEST
from fedrec.common.data.pack import ShardPack, open_pack
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import SYNTHETIC, load_interactions
from fedrec.common.data.split import Split
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.fedconfig import FederationConfig

__all__ = [
    "DataSetPartitions",
    "check_state_is_kept",
    "partition_of",
    "pseudonym",
    "published_catalog",
    "require_partition",
    "shard_pack",
    "state_store",
    "synthetic_catalog",
]


def published_catalog(config: FederationConfig, context: Context) -> Catalog:
    """A simulated node's catalog: the node config's copy, else the run's ``catalog``; for
    the embedded synthetic data without either, the generator's own catalog (the one the
    ServerApp builds for ``flwr run .`` with its defaults)."""
    path = str(context.node_config.get(NODE_CATALOG) or config.data.catalog)
    if not path and config.data.data == SYNTHETIC:
        return synthetic_catalog(config)
    if not path:
        raise ValueError(
            "this node has no catalog: set `catalog` in the run config, or"
            f" {NODE_CATALOG}=PATH in the node config (the file the server publishes)"
        )
    return load_catalog(path)


def synthetic_catalog(config: FederationConfig) -> Catalog:
    """The catalog of the synthetic data ``config`` names (once per process and settings)."""
    return _synthetic_catalog(config.data.threshold, config.synthetic())


@lru_cache(maxsize=2)
def _synthetic_catalog(threshold: float, synthetic: SyntheticConfig) -> Catalog:
    return Catalog.of(load_interactions(SYNTHETIC, threshold=threshold, synthetic=synthetic))


def pseudonym(user: int) -> str:
    """The folder name (and store pseudonym) of dense user index ``user`` in a simulation."""
    return f"user-{user:06d}"


def check_state_is_kept(config: FederationConfig) -> None:
    """A resumed run with device DP must find every ledger where the last run left it: in
    memory (``context.state``, one run) each would start again at ε = 0. A deployed device
    keeps its own in its store; a simulated node needs ``state-dir``."""
    if config.outputs.resume and config.record_dp.enabled and not config.storage.state_dir:
        raise ValueError(
            "resuming with local DP needs state-dir: in memory (context.state) every"
            " device's ledger would start again at ε = 0"
        )


def state_store(config: FederationConfig, context: Context, name: str) -> StateStore:
    """Where a simulated node's state lives between rounds: Flower's ``context.state``
    (memory, one run), or an encrypted folder per user under ``state-dir``."""
    if not config.storage.state_dir:
        check_state_is_kept(config)
        return ContextStateStore(context.state)
    return EncryptedFileStore(
        Path(config.storage.state_dir) / name, read_key_file(config.storage.key_file), name
    )


def require_partition(context: Context) -> None:
    """A simulated node has ``partition-id``; anything else is a device without its store."""
    if PARTITION_ID not in context.node_config:
        raise ValueError(
            f"node {context.node_id} has no {PARTITION_ID!r} in its node config: a simulated"
            f" node gets one from the engine; a deployed device sets {NODE_STORE}=PATH instead"
        )


def partition_of(context: Context, num_users: int) -> int:
    """The user index a simulated node serves (``partition-id``), checked against the data."""
    require_partition(context)
    node_config = context.node_config
    partitions = int(node_config.get(NUM_PARTITIONS, num_users))
    if partitions != num_users:
        raise ValueError(
            f"the federation has {partitions} nodes but the data set has {num_users} users: run"
            " one node per user (num-supernodes = number of users)"
        )
    user = int(node_config[PARTITION_ID])
    if not 0 <= user < num_users:
        raise ValueError(f"{PARTITION_ID} {user} outside [0, {num_users})")
    return user


@lru_cache(maxsize=2)
def _load_split(
    data: str, threshold: float, seed: int, synthetic: SyntheticConfig, cold_items: float
) -> tuple[Interactions, Split]:
    interactions = load_interactions(data, threshold=threshold, synthetic=synthetic)
    return interactions, split_with_cold_items(interactions, seed=seed, fraction=cold_items)


@lru_cache(maxsize=1)  # the run's: an older run's pack, its files deleted, is let go (unmapped)
def _open_pack(folder: str) -> ShardPack:
    return open_pack(folder)


def shard_pack(folder: str, config: FederationConfig) -> ShardPack | None:
    """The run's shard pack in ``folder`` (written by the runner), if this machine has it.

    A node on another machine of a Ray cluster does not see the runner's folder and loads the
    data set instead; a pack cut from other data settings is refused, never served."""
    if not folder or not Path(folder, PACK_MANIFEST).is_file():
        return None
    pack = _open_pack(folder)
    wanted = config.data_settings()
    if pack.settings != wanted:
        raise ValueError(
            f"shard pack {folder} was cut from {pack.settings}, but this run's data settings"
            f" are {wanted}: the runner writes one pack per run"
        )
    return pack


@dataclass(frozen=True)
class DataSetPartitions:
    """Simulation: node ``partition-id`` serves that user of the configured data set, cut from
    the run's shard pack (``pack``: its folder) where this machine has it, else from the data
    set itself."""

    pack: str = ""

    def catalog(self, config: FederationConfig, context: Context) -> Catalog:
        return published_catalog(config, context)

    def split(self, config: FederationConfig) -> tuple[Interactions, Split]:
        return _load_split(
            config.data.data,
            config.data.threshold,
            config.data.seed,
            config.synthetic(),
            config.simulation.cold_items,
        )

    def local_user(self, config: FederationConfig, context: Context) -> LocalUser:
        require_partition(context)  # before loading a data set this node may not serve
        pack = shard_pack(self.pack, config)
        if pack is not None:
            user = partition_of(context, pack.num_users)
            shard = pack.shard(user)
        else:
            data, split = self.split(config)
            user = partition_of(context, split.num_users)
            shard = user_shard(data, split, user)
        name = pseudonym(user)
        return LocalUser(name, user, shard, state_store(config, context, name))
