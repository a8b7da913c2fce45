"""A federation's trained models and the users they are measured on, loaded one way for the
per-user analyses of benchmarks/explain.py and benchmarks/new_users.py.

The models are runs' ``model.npz`` files (the shared group, as a device receives it); the
users are ``--users`` users spread evenly over the data set, each with its shard cut from the
runs' split (``--seed``, ``--cold-items``), over the catalog the runs trained on.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.shard import UserShard, user_shard
from fedrec.common.data.sources import load_interactions

__all__ = ["TrainedModel", "add_arguments", "spread_shards", "trained_models"]


@dataclass(frozen=True)
class TrainedModel:
    path: str
    shared: dict[str, torch.Tensor]
    dim: int


def add_arguments(parser: argparse.ArgumentParser, users: int) -> None:
    """The options every such analysis takes (``users``: the default ``--users``)."""
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True, help="a run's model.npz")
    parser.add_argument("--catalog", default="", help="the catalog the models trained on")
    parser.add_argument("--users", type=int, default=users)
    parser.add_argument("--seed", type=int, default=0, help="the runs' split seed")
    parser.add_argument("--cold-items", type=float, default=0.0, help="the runs' cold-items")


def spread_shards(args: argparse.Namespace) -> tuple[Catalog, list[UserShard]]:
    """The runs' catalog and the shards of ``--users`` users spread over the data set."""
    data = load_interactions(args.data)
    split = split_with_cold_items(data, seed=args.seed, fraction=args.cold_items)
    catalog = load_catalog(args.catalog) if args.catalog else Catalog.of(data)
    picked = np.unique(np.linspace(0, data.num_users - 1, args.users).astype(int))
    return catalog, [user_shard(data, split, int(u)) for u in picked]


def trained_models(args: argparse.Namespace) -> Iterator[TrainedModel]:
    """Each ``--model``'s shared group and width, read when its turn comes."""
    for path in args.model:
        with np.load(path) as arrays:
            shared = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
        yield TrainedModel(path, shared, int(shared["head.weight"].shape[1]))
