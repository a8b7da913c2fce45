"""How long an honest update is: the L2 norm of one device's update against the model's norm,
and of each item-table row it moves.

    .venv/bin/python benchmarks/update_norms.py --data ../shared/data/ml-100k [--epochs 1 5]
        [--config simulations/ml100k-fedavg.toml] [--model RUN/model.npz]
        [--set catalog=FILE --set item-ids=none ...]

The server refuses a reply whose update is longer than ``max-update-norm``, by default the
norm of the model the run starts from (server/validation.py), and ``norm-bound`` /
``row-norm-bound`` clip each update and each of its item rows (server/robust.py). This
measures the margins: every ``--every``-th user trains one round from the initial model (or
a run's trained ``--model``) with the scenario's local settings (the device's own code:
``fedrec.client.local.local_train``); the median and largest update norms are printed next
to the model's norm, and the quantiles of the norms of the item rows that moved. The median
is also what user-level DP's clip C is set from (``dp-clip-norm``, README "Differential
privacy"); ``--set`` changes the scenario (a catalog, ``item-ids = none``) as a run would.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fedrec.client.local import build_local_model, local_train
from fedrec.client.trainers import local_train_config
from fedrec.common.cli import apply_settings, load_scenario
from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import ITEM_TABLE, initial_shared_state
from fedrec.common.privacy import global_norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--every", type=int, default=16, help="Train every N-th user.")
    parser.add_argument("--config", help="A scenario whose local settings to use.")
    parser.add_argument("--model", help="A run's model.npz to train from (default: round 0).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.config:
        base = FederationConfig.from_mapping({**load_scenario(args.config), "data": args.data})
    else:
        base = FederationConfig(data=args.data, dim=args.dim, local_lr=1.0, local_batch_size=128)
    base = FederationConfig.from_mapping(apply_settings(base.to_mapping(), args.set))
    data = load_interactions(base.data.data, synthetic=base.synthetic())
    split = temporal_leave_one_out(data)
    catalog = load_catalog(base.catalog) if base.catalog else Catalog.of(data)
    start = initial_shared_state(
        catalog, base.model.dim, base.data.seed, item_ids=base.model.item_id_table
    )
    bound = global_norm({k: v.numpy() for k, v in start.items()})
    if args.model:
        with np.load(args.model) as saved:
            start = {k: torch.from_numpy(saved[k]) for k in saved.files}
    for epochs in args.epochs:
        config = base.replace(local_epochs=epochs)
        norms, rows, shares = [], [], []
        for user in range(0, data.num_users, args.every):
            shard = user_shard(data, split, user)
            model = build_local_model(catalog, shard, config.dim, start, None, user)
            local_train(model, shard, local_train_config(config), np.random.default_rng(user))
            after = model.shared_state()
            norms.append(global_norm({k: after[k] - start[k].numpy() for k in after}))
            if ITEM_TABLE in after:
                moved = np.linalg.norm(after[ITEM_TABLE] - start[ITEM_TABLE].numpy(), axis=1)
                rows.append(moved[moved > 0])
                shares.append(float(np.square(moved).sum()) / max(norms[-1] ** 2, 1e-30))
        size = sum(v.numel() for v in start.values())
        print(
            f"{args.data}, dim {config.model.dim}, item-ids {config.model.item_ids},"
            f" {size:,} shared"
            f" parameters, {epochs} local epoch(s), {len(norms)} users, from"
            f" {args.model or 'round 0'}: update norm median {np.median(norms):.3f},"
            f" max {max(norms):.3f}; the model's norm (the default max-update-norm) {bound:.2f}"
        )
        if rows:
            every_row = np.concatenate(rows)
            quantiles = np.quantile(every_row, [0.5, 0.99, 0.999])
            print(
                f"  item rows moved: {every_row.size}, norm median {quantiles[0]:.4f},"
                f" 99% {quantiles[1]:.4f}, 99.9% {quantiles[2]:.4f}, max {every_row.max():.4f};"
                f" the table's share of ‖Δ‖²: median {np.median(shares):.3f}"
            )


if __name__ == "__main__":
    main()
