"""fedrec.client: the device. Raw interactions and the user's own embedding never leave it.

app             the Flower ClientApp: a node's handlers and mods (the entry point)
data            where a node's user comes from: a partition, or its own sealed store
local           local training, evaluation and recommendation on the device
trainers        plain local training or DP-SGD, picked once from the config
dp_sgd          record-level DP-SGD with Opacus and the device's ε ledger
mods            what may leave a device: the guard, the clip, the catalog check, the recorder
store           the state-store interface (and its in-memory backings)
secure_store    the encrypted on-disk store, key rotation
encrypted_shards  a simulation served from per-user encrypted folders
"""

__all__ = [
    "app",
    "data",
    "dp_sgd",
    "encrypted_shards",
    "local",
    "mods",
    "secure_store",
    "store",
    "trainers",
]
