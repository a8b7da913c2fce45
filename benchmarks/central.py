"""Centralized baselines on one split: seed model vs matrix factorization vs most-popular.

    .venv/bin/python benchmarks/central.py --data ../shared/data/ml-100k [--out runs/bench-central]

Prints one table (sampled LOO-99 and full-ranking HR@10/NDCG@10 on the test item, chosen at
the best validation epoch; train time; time per epoch) and writes each model's run folder and
``summary.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedrec.simulations.central import CentralConfig, run_central


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--out", default=f"runs/bench-central-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="seed,mf,mostpop")
    args = parser.parse_args()

    out = Path(args.out)
    rows = {}
    for name in args.models.split(","):
        config = CentralConfig(model=name, data=args.data, epochs=args.epochs, seed=args.seed)
        rows[name] = run_central(config, out / name)
    table = Table(title=f"centralized baselines on {args.data} (test item, best val epoch)")
    for col in (
        "model",
        "HR@10",
        "NDCG@10",
        "full HR@10",
        "full NDCG@10",
        "best epoch",
        "train s",
        "s/epoch",
    ):
        table.add_column(col, justify="right")
    for name, m in rows.items():
        f = m["final"]
        table.add_row(
            name,
            f"{f['hr@10']:.4f}",
            f"{f['ndcg@10']:.4f}",
            f"{f['full_hr@10']:.4f}",
            f"{f['full_ndcg@10']:.4f}",
            str(m["best_epoch"]),
            f"{m['train_seconds']:.1f}",
            f"{m['seconds_per_epoch']:.2f}",
        )
    Console().print(table)
    summary = {
        name: {
            "final": m["final"],
            "best_epoch": m["best_epoch"],
            "train_seconds": m["train_seconds"],
            "seconds_per_epoch": m["seconds_per_epoch"],
        }
        for name, m in rows.items()
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
