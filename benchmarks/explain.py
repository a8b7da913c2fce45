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

import torch

from fedrec.simulations.faithfulness import faithfulness
from fedrec.simulations.trained import add_arguments, spread_shards, trained_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, users=200)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    catalog, shards = spread_shards(args)
    for model in trained_models(args):
        started = time.perf_counter()
        result = faithfulness(model.shared, catalog, shards, model.dim, k=args.k, seed=args.seed)
        row = {"model": model.path, **result.__dict__, "ratio": result.ratio,
               "seconds": time.perf_counter() - started}  # fmt: skip
        print(json.dumps(row))


if __name__ == "__main__":
    main()
