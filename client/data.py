"""Where a device gets its own data: the :class:`ShardSource` interface.

In simulation every virtual node derives its user's shard from the same data source and split
seed (``partition-id`` = dense user index); a deployed device reads its shard from its
encrypted store instead, behind the same interface.

Why a process-wide cache: Flower's Ray backend pickles the ClientApp and sends it with *every*
message (``ClientAppActor.run(client_app_fn, message, ...)``), so state held by the app object
starts empty on each call. Without :func:`_load_split`'s bounded cache each call re-read and
re-split the data set (~0.4 s on ml-100k), which capped a 943-node federation at a few client
updates per second. The cache holds at most two data sets per worker process and is keyed by
every setting that affects the data, so it can never serve a stale split.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from flwr.app import Context

from fedrec.common.data.dataset import Interactions
from fedrec.common.data.shard import Catalog, UserShard, user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import Split, temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.fedconfig import FederationConfig

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


class ShardSource(Protocol):
    def catalog(self, config: FederationConfig) -> Catalog: ...
    def shard(self, config: FederationConfig, context: Context) -> UserShard: ...


@lru_cache(maxsize=2)
def _load_split(
    data: str, threshold: float, seed: int, synthetic: SyntheticConfig
) -> tuple[Catalog, Interactions, Split]:
    interactions = load_interactions(data, threshold=threshold, synthetic=synthetic)
    split = temporal_leave_one_out(interactions, seed=seed)
    return Catalog.of(interactions), interactions, split


class SimulationShards:
    """Shards cut from one global data set (partition-id = user index)."""

    def _load(self, config: FederationConfig) -> tuple[Catalog, Interactions, Split]:
        return _load_split(config.data, config.threshold, config.seed, config.synthetic())

    def catalog(self, config: FederationConfig) -> Catalog:
        return self._load(config)[0]

    def num_users(self, config: FederationConfig) -> int:
        return self._load(config)[2].num_users

    def shard(self, config: FederationConfig, context: Context) -> UserShard:
        _, data, split = self._load(config)
        user = int(context.node_config[PARTITION_ID])
        partitions = int(context.node_config.get(NUM_PARTITIONS, split.num_users))
        if partitions != split.num_users:
            raise ValueError(
                f"the federation has {partitions} nodes but the data set has {split.num_users}"
                " users: run one node per user (num-supernodes = number of users)"
            )
        return user_shard(data, split, user)
