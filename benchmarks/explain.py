"""Faithfulness of the device's explanations on trained models (simulations/faithfulness.py).

    .venv/bin/python benchmarks/explain.py --data ../shared/data/ml-100k \
        --model runs/fed-0/model.npz --model runs/fed-1/model.npz [--users 200] [--k 3]

For each model (a run's ``model.npz``: the shared group, as a device receives it) and each of
``--users`` users spread over the data set: fit the user's row on its history as a device does,
explain its top recommendation, and refit without the explained past items and without as
many random ones; prints the mean logit drops, their paired standard error and the share of
users where the explained items' drop is the larger. ``--catalog`` names the catalog the
model was trained on (default: the data set's own, ID + genres).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.simulations.faithfulness import faithfulness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True, help="a run's model.npz")
    parser.add_argument("--catalog", default="", help="the catalog the models trained on")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the runs' split seed")
    parser.add_argument("--cold-items", type=float, default=0.0, help="the runs' cold-items")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_interactions(args.data)
    split = split_with_cold_items(data, seed=args.seed, fraction=args.cold_items)
    catalog = load_catalog(args.catalog) if args.catalog else Catalog.of(data)
    picked = np.unique(np.linspace(0, data.num_users - 1, args.users).astype(int))
    shards = [user_shard(data, split, int(u)) for u in picked]
    for path in args.model:
        with np.load(path) as arrays:
            shared = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
        dim = int(shared["head.weight"].shape[1])
        started = time.perf_counter()
        result = faithfulness(shared, catalog, shards, dim, k=args.k, seed=args.seed)
        row = {"model": path, **result.__dict__, "ratio": result.ratio,
               "seconds": time.perf_counter() - started}  # fmt: skip
        print(json.dumps(row))


if __name__ == "__main__":
    main()
