"""Where a node gets its user's data and keeps its state: the :class:`ShardSource` interface.

A ClientApp call needs one :class:`LocalUser`: the user's shard (train items, held-out items,
evaluation candidates, features), a stable name, a stream number for its own randomness, and
the :class:`~fedrec.client.store.StateStore` its private state and DP ledger live in. Which
source provides it follows from what the node was configured with
(``client/app.py: source_for``):

* a **deployed device** (node config ``store=PATH key-file=PATH``): its own sealed store
  (:class:`fedrec.client.device.DeviceSource`) holds its history, its copy of the catalog
  and, between rounds and runs, its private state; no ``partition-id`` is involved;
* a **simulated node** (the engine sets ``partition-id``): the user of that index, cut from the
  data set (:mod:`fedrec.client.partitions`) or read from its encrypted folder under
  ``shard-dir`` (:mod:`fedrec.client.encrypted_shards`); its state lives in Flower's
  ``context.state`` (memory, one run) or, with ``state-dir``, in an encrypted folder per user.
  A deployed device never imports either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Context

from fedrec.client.store import StateStore
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.shard import UserShard
from fedrec.common.fedconfig import FederationConfig

__all__ = [
    "NODE_CATALOG",
    "NODE_KEY_FILE",
    "NODE_PASSPHRASE_FILE",
    "NODE_STORE",
    "NUM_PARTITIONS",
    "PARTITION_ID",
    "LocalUser",
    "ModelCache",
    "ShardSource",
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
