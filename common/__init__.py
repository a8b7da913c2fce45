"""fedrec.common: what the client and the server share. Nothing here imports either.

Pure pieces first, then the small stateful ones and the Flower glue both sides use:

    data/       data sets, the public catalog, splits, examples, anonymization (fedrec.common.data)
    model       the seed model and its shared / private parameter groups
    bundle      the model's inference bundle: a device ranks the catalog with NumPy alone
    explain     why an item is recommended: past items' influence, genres, text neighbours
    compression the wire forms of the shared group (fp16, int8) and their rounding
    metrics     HR@K, NDCG@K and the evaluation protocol (LOO-99 and full ranking)
    training    the centralized trainer's epoch and evaluation loops
    baselines   matrix factorization and MostPopular, for the centralized references
    privacy     ε accounting (Opacus), the privacy ledger, clipping
    crypto      sealed files: AES-256-GCM, key files, passphrase KDFs
    secagg/     SecAgg+: the protocol and both sides of it on Flower (fedrec.common.secagg)
    fedconfig   the federation's settings, parsed once into a frozen dataclass
    keys        names of message records, metrics and config keys
    records     typed access to Flower records; message sizes
    grids       the Grid wrapper every grid view builds on
    runs        run folders: file names and writers
    files       the atomic file writer
"""

__all__ = [
    "baselines",
    "bundle",
    "compression",
    "crypto",
    "data",
    "explain",
    "fedconfig",
    "files",
    "grids",
    "keys",
    "metrics",
    "model",
    "privacy",
    "records",
    "runs",
    "secagg",
    "training",
]
