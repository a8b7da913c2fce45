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

import torch

from fedrec.simulations.new_users import LENGTHS, history_curve  # ALL (-1): whole history
from fedrec.simulations.trained import add_arguments, spread_shards, trained_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, users=300)
    parser.add_argument("--no-user-features", action="store_true", help="withhold them")
    parser.add_argument(
        "--all-users", action="store_true",
        help="every user at each length it has (default: only users with 20 or more, paired)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    catalog, shards = spread_shards(args)
    for model in trained_models(args):
        started = time.perf_counter()
        curve = history_curve(model.shared, catalog, shards, model.dim, lengths=LENGTHS,
                              user_features=not args.no_user_features, seed=args.seed,
                              same_users=not args.all_users)  # fmt: skip
        print(json.dumps({"model": model.path, "user_features": not args.no_user_features,
                          "curve": curve, "seconds": time.perf_counter() - started}))  # fmt: skip


if __name__ == "__main__":
    main()
