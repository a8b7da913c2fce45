"""fedrec.client: the device. Raw interactions and the user's own embedding never leave it.

app             the Flower ClientApp: a node resolved once per message, its handlers and mods
mods            what may leave a device: the guard, the catalog check, the reply recorder
exchange        the exchange mod: decode the model, clip the update once, encode it
secagg          the device's half of SecAgg+: a train mod that masks the update
local_model     the one-user seed model in NumPy: a device loads no torch to train
local           local training (forward, backward, SGD/Adam written out) and evaluation
trainers        plain local training or DP-SGD, picked once from the config
dp_sgd          record-level DP-SGD with Opacus (the only torch on a device: an extra)
data            where a node's user comes from: the ShardSource interface
device          the device SDK: a user's sealed store, its history, recommendations
explain         why an item is recommended: past items' influence, genres, text neighbours
partitions      a simulated node: its partition of a data set (never imported by a device)
encrypted_shards  a simulated node from per-user encrypted folders
store           the state-store interface (and its in-memory backings)
secure_store    the encrypted on-disk store, key rotation
cli             ``fedrec client …``: the device's store from the command line
executor        the warm executor: one process per device runs every fedrec ClientApp task
flower_tasks    Flower 1.42's task runtime as the executor uses it (its only touch points)
echo            the null ClientApp: Flower's floor on a deployment, and faults for tests
"""

__all__ = [
    "app",
    "cli",
    "data",
    "device",
    "dp_sgd",
    "echo",
    "encrypted_shards",
    "exchange",
    "executor",
    "explain",
    "flower_tasks",
    "local",
    "local_model",
    "mods",
    "partitions",
    "secagg",
    "secure_store",
    "store",
    "trainers",
]
