"""Where a device gets its own data and keeps its state: the :class:`ShardSource` interface.

A ClientApp call needs one :class:`LocalUser`: the user's shard (train items, held-out items,
evaluation candidates, features), a stable name, a stream number for its own randomness, and
the :class:`~fedrec.client.store.StateStore` its private state and DP ledger live in. Which
source provides it follows from what the node was configured with
(``client/app.py: source_for``):

* a **deployed device** (node config ``store=PATH key-file=PATH``): its own sealed store
  (:class:`fedrec.client.device.DeviceSource`) holds its history, its copy of the catalog
  and, between rounds and runs, its private state; no ``partition-id`` is involved;
* a **simulated node** (the engine sets ``partition-id``): the user of that index, cut from the
  data set (:class:`DataSetPartitions`) or read from its encrypted folder under ``shard-dir``
  (:class:`~fedrec.client.encrypted_shards.EncryptedPartitions`); its state lives in Flower's
  ``context.state`` (memory, one run) or, with ``state-dir``, in an encrypted folder per user.

Why a process-wide cache in :class:`DataSetPartitions`: Flower's Ray backend pickles the
ClientApp and sends it with *every* message (``ClientAppActor.run(client_app_fn, message,
...)``), so state held by the app object starts empty on each call; without the bounded cache
of :func:`_load_split` each call would re-read and re-split the data set. It holds at most two
data sets per worker process and is keyed by every setting that affects the data, so it can
never serve a stale split. In a run of ``fedrec simulate`` it is not even filled: the runner
writes the split once as a memory-mapped shard pack (:mod:`fedrec.common.data.pack`,
``shard-pack``), and a worker maps its users' rows instead of loading 100,000 users' data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Context

from fedrec.client.secure_store import EncryptedFileStore
from fedrec.client.store import ContextStateStore, StateStore
from fedrec.common.crypto import read_key_file
from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.pack import MANIFEST as PACK_MANIFEST
from fedrec.common.data.pack import ShardPack, open_pack
from fedrec.common.data.shard import UserShard, user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import Split
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.fedconfig import FederationConfig

__all__ = [
    "NODE_CATALOG",
    "NODE_KEY_FILE",
    "NODE_PASSPHRASE_FILE",
    "NODE_STORE",
    "NUM_PARTITIONS",
    "PARTITION_ID",
    "DataSetPartitions",
    "LocalUser",
    "ModelCache",
    "ShardSource",
    "check_state_is_kept",
    "partition_of",
    "pseudonym",
    "published_catalog",
    "require_partition",
    "shard_pack",
    "state_store",
]

# node-config keys: the simulation engine sets the first two; a deployed device the others
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NODE_STORE = "store"  # the device's store (fedrec.client.device)
NODE_KEY_FILE = "key-file"  # the key file that store is sealed under
NODE_PASSPHRASE_FILE = "passphrase-file"  # or a file holding its passphrase
NODE_CATALOG = "catalog"  # a simulated node's copy of the published catalog


class ModelCache(Protocol):
    """What a deployed device keeps of each round: the newest model, the rounds it joined."""

    def cache_model(self, arrays: ArrayRecord, server_round: int, config: ConfigRecord) -> None: ...

    def note_round(
        self, config: FederationConfig, server_round: int, trained_on: int, server: ConfigRecord
    ) -> None: ...


@dataclass(frozen=True)
class LocalUser:
    """The user a node serves, as one ClientApp call sees it."""

    name: str  # its pseudonym: the folder of its state, never sent to the server
    stream: int  # its own stream of randomness, with the run seed and the round
    shard: UserShard
    store: StateStore  # its private state and record-level DP ledger, between rounds
    device: ModelCache | None = None  # a deployed device's own record of the rounds


class ShardSource(Protocol):
    def catalog(self, config: FederationConfig, context: Context) -> Catalog: ...
    def local_user(self, config: FederationConfig, context: Context) -> LocalUser: ...


def published_catalog(config: FederationConfig, context: Context) -> Catalog:
    """A simulated node's catalog: the node config's copy, else the run's ``catalog``."""
    path = str(context.node_config.get(NODE_CATALOG) or config.catalog)
    if not path:
        raise ValueError(
            "this node has no catalog: set `catalog` in the run config, or"
            f" {NODE_CATALOG}=PATH in the node config (the file the server publishes)"
        )
    return load_catalog(path)


def pseudonym(user: int) -> str:
    """The folder name (and store pseudonym) of dense user index ``user`` in a simulation."""
    return f"user-{user:06d}"


def check_state_is_kept(config: FederationConfig) -> None:
    """A resumed run with device DP must find every ledger where the last run left it: in
    memory (``context.state``, one run) each would start again at ε = 0. A deployed device
    keeps its own in its store; a simulated node needs ``state-dir``."""
    if config.resume and config.record_level_dp and not config.state_dir:
        raise ValueError(
            "resuming with local DP needs state-dir: in memory (context.state) every"
            " device's ledger would start again at ε = 0"
        )


def state_store(config: FederationConfig, context: Context, name: str) -> StateStore:
    """Where a simulated node's state lives between rounds: Flower's ``context.state``
    (memory, one run), or an encrypted folder per user under ``state-dir``."""
    if not config.state_dir:
        check_state_is_kept(config)
        return ContextStateStore(context.state)
    return EncryptedFileStore(Path(config.state_dir) / name, read_key_file(config.key_file), name)


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


def shard_pack(config: FederationConfig) -> ShardPack | None:
    """The run's shard pack (``shard-pack``, written by the runner), if this machine has it.

    A node on another machine of a Ray cluster does not see the runner's folder and loads the
    data set instead; a pack cut from other data settings is refused, never served."""
    if not config.shard_pack or not Path(config.shard_pack, PACK_MANIFEST).is_file():
        return None
    pack = _open_pack(config.shard_pack)
    wanted = config.data_settings()
    if pack.settings != wanted:
        raise ValueError(
            f"shard pack {config.shard_pack} was cut from {pack.settings}, but this run's data"
            f" settings are {wanted}: leave shard-pack to the runner (it writes one per run)"
        )
    return pack


class DataSetPartitions:
    """Simulation: node ``partition-id`` serves that user of the configured data set, cut from
    the run's shard pack where this machine has it, else from the data set itself."""

    def catalog(self, config: FederationConfig, context: Context) -> Catalog:
        return published_catalog(config, context)

    def split(self, config: FederationConfig) -> tuple[Interactions, Split]:
        return _load_split(
            config.data, config.threshold, config.seed, config.synthetic(), config.cold_items
        )

    def local_user(self, config: FederationConfig, context: Context) -> LocalUser:
        require_partition(context)  # before loading a data set this node may not serve
        pack = shard_pack(config)
        if pack is not None:
            user = partition_of(context, pack.num_users)
            shard = pack.shard(user)
        else:
            data, split = self.split(config)
            user = partition_of(context, split.num_users)
            shard = user_shard(data, split, user)
        name = pseudonym(user)
        return LocalUser(name, user, shard, state_store(config, context, name))
