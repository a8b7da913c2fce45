"""Where a device gets its own data: the :class:`ShardSource` interface.

In simulation every virtual node derives its user's shard from the same data source and split
seed (``partition-id`` = dense user index). One simulation process hosts many virtual nodes,
so :class:`SimulationShards` loads and splits the data set once per process and hands each
node its own shard; a deployed device reads its shard from its encrypted store instead.
"""

from __future__ import annotations

from typing import Protocol

from flwr.app import Context

from fedrec.common.dataset import Interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.shard import Catalog, UserShard, user_shard
from fedrec.common.sources import load_interactions
from fedrec.common.split import Split, temporal_leave_one_out

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


class ShardSource(Protocol):
    def catalog(self, config: FederationConfig) -> Catalog: ...
    def shard(self, config: FederationConfig, context: Context) -> UserShard: ...


class SimulationShards:
    """Shards cut from one global data set, loaded once per process and keyed by its source."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[object, ...], tuple[Catalog, Interactions, Split]] = {}

    def _load(self, config: FederationConfig) -> tuple[Catalog, Interactions, Split]:
        key = (
            config.data,
            config.threshold,
            config.seed,
            config.synthetic_users,
            config.synthetic_items,
        )
        if key not in self._loaded:
            data = load_interactions(
                config.data, threshold=config.threshold, synthetic=config.synthetic()
            )
            self._loaded = {
                key: (Catalog.of(data), data, temporal_leave_one_out(data, seed=config.seed))
            }
        return self._loaded[key]

    def catalog(self, config: FederationConfig) -> Catalog:
        return self._load(config)[0]

    def num_users(self, config: FederationConfig) -> int:
        return self._load(config)[2].num_users

    def shard(self, config: FederationConfig, context: Context) -> UserShard:
        _catalog, data, split = self._load(config)
        user = int(context.node_config[PARTITION_ID])
        partitions = int(context.node_config.get(NUM_PARTITIONS, split.num_users))
        if partitions != split.num_users:
            raise ValueError(
                f"the federation has {partitions} nodes but the data set has {split.num_users}"
                " users: run one node per user (num-supernodes = number of users)"
            )
        return user_shard(data, split, user)
