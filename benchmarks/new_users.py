"""HR@10 by the history a device's user row is fitted on (simulations/new_users.py).

    .venv/bin/python benchmarks/new_users.py --data ../shared/data/ml-100k \
        --model runs/fed-0/model.npz [--seed 0] [--users 943] [--no-user-features]

For each model (a run's ``model.npz``) and ``--users`` users spread over the data set: fit
each user's row on its last n = 0, 1, 2, 5, 10, 20 train interactions and on all of them
(printed as -1),
and rank its test item as the device's evaluation does; prints one JSON line per model.
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
from fedrec.simulations.new_users import LENGTHS, history_curve  # ALL (-1): whole history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True, help="a run's model.npz")
    parser.add_argument("--catalog", default="", help="the catalog the models trained on")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="the runs' split seed")
    parser.add_argument("--cold-items", type=float, default=0.0, help="the runs' cold-items")
    parser.add_argument("--no-user-features", action="store_true", help="withhold them")
    parser.add_argument(
        "--all-users", action="store_true",
        help="every user at each length it has (default: only users with 20 or more, paired)",
    )  # fmt: skip
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
        curve = history_curve(shared, catalog, shards, dim, lengths=LENGTHS,
                              user_features=not args.no_user_features, seed=args.seed,
                              same_users=not args.all_users)  # fmt: skip
        print(json.dumps({"model": path, "user_features": not args.no_user_features,
                          "curve": curve, "seconds": time.perf_counter() - started}))  # fmt: skip


if __name__ == "__main__":
    main()
