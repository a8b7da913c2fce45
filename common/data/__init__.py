"""fedrec.common.data: from files on disk to what a model trains and is evaluated on.

loaders     MovieLens 100K / 1M / latest and generic CSV into raw ratings (file, line, problem)
synthetic   the embedded, deterministic generator (the default data set)
sources     one entry point: ``--data PATH|synthetic`` to interactions
dataset     raw ratings and dense implicit interactions
features    user-feature schema and encoding, item genre / text blocks
catalog     the public catalog: items, features, user-feature schema, content hash
split       temporal leave-one-out and evaluation candidates
cold        item cold start: items held out of training entirely, and their ranking protocol
examples    training examples: positives plus leak-free negatives
shard       one user's data as a device holds it
pack        every user's shard of a split in memory-mapped files (a simulation's workers)
errors      the data-format error every loader raises
"""

__all__ = [
    "catalog",
    "cold",
    "dataset",
    "errors",
    "examples",
    "features",
    "loaders",
    "pack",
    "shard",
    "sources",
    "split",
    "synthetic",
]
