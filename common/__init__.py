"""fedrec.common: what the client and the server both import. Nothing here imports either.

Pure pieces first, then the small stateful ones and the Flower glue both sides use:

    data/       data sets, the public catalog, splits, examples, shards (fedrec.common.data)
    shapes      the seed model's configuration and parameter shapes, without torch
    model       the seed model (torch) and its shared / private parameter groups
    bundle      the model's inference bundle: a device ranks the catalog with NumPy alone
    metrics     HR@K, NDCG@K and the evaluation protocol (LOO-99 and full ranking)
    privacy     ε accounting (Opacus), the privacy ledger, clipping
    compression the wire forms of the shared group (fp16, int8) and their rounding
    colr        low-rank item-table updates (CoLR): public bases, factors
    channel     a round's wire forms both ways, their margins, layouts and noise subspace
    secagg/     SecAgg+'s primitives, protocol state machines and wire records
    crypto      sealed files: AES-256-GCM, key files, passphrase KDFs
    files       the atomic file writer
    fedconfig   the federation's settings, parsed once into frozen sections
    keys        names of message records, metrics and config keys
    records     typed access to Flower records; message sizes
    packing     a message's arrays as one Flower object on a deployment's wire
    stop        stopping a run between rounds
    cli         what every command shares: the console, the error exit, scenario files
"""

__all__ = [
    "bundle",
    "channel",
    "cli",
    "colr",
    "compression",
    "crypto",
    "data",
    "fedconfig",
    "files",
    "keys",
    "metrics",
    "model",
    "packing",
    "privacy",
    "records",
    "secagg",
    "shapes",
    "stop",
]
