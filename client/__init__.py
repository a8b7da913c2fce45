"""fedrec.client: the device. Raw interactions and the user's own embedding never leave it.

app             the Flower ClientApp: a node resolved once per message, its handlers and mods
mods            what may leave a device: the guard, the catalog check, the reply recorder
exchange        the exchange mod: decode the model, clip the update once, encode it
secagg          the device's half of SecAgg+: a train mod that masks the update
local           local training, evaluation and recommendation on the device
trainers        plain local training or DP-SGD, picked once from the config
dp_sgd          record-level DP-SGD with Opacus and the device's ε ledger
data            where a node's user comes from: the ShardSource interface
device          the device SDK: a user's sealed store, its history, recommendations
explain         why an item is recommended: past items' influence, genres, text neighbours
partitions      a simulated node: its partition of a data set (never imported by a device)
encrypted_shards  a simulated node from per-user encrypted folders
store           the state-store interface (and its in-memory backings)
secure_store    the encrypted on-disk store, key rotation
cli             ``fedrec client …``: the device's store from the command line
"""

__all__ = [
    "app",
    "cli",
    "data",
    "device",
    "dp_sgd",
    "encrypted_shards",
    "exchange",
    "explain",
    "local",
    "mods",
    "partitions",
    "secagg",
    "secure_store",
    "store",
    "trainers",
]
