"""Peak memory of one on-device DP-SGD round (client/dp_sgd.py) as the catalog grows.

    .venv/bin/python benchmarks/dp_memory.py --items 1682 100000 [--mode ghost hooks] [--json]

Each point runs in a fresh subprocess: one ``dp_local_train`` round for a user with 100 train
items (4 negatives each: 500 examples, 4 Poisson batches of ~125 at batch 128), id and tower
width 64, item features of width 19 (ml-100k's genres), one torch thread. It reports the
process's peak RSS (``ru_maxrss``) once the model is built and after the round, the round's
increase and its wall time. Ghost clipping (the default) only needs per-example gradient
norms; Opacus's "hooks" mode materializes per-example embedding gradients, batch × items × dim
floats, which is what grows with the catalog.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

MIB = 1024  # ru_maxrss is in KiB on Linux
TRAIN_ITEMS = 100
DIM = 64
BATCH = 128
ITEM_FEATURES = 19
USER_FEATURES = 23


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def measure(num_items: int, mode: str, seed: int = 0) -> dict[str, Any]:
    """One DP round in *this* process; call it in a fresh one (``ru_maxrss`` only grows)."""
    import numpy as np
    import torch

    from fedrec.client.dp_sgd import RecordDPConfig, dp_local_train
    from fedrec.client.local import LocalTrainConfig
    from fedrec.common.data.catalog import Catalog
    from fedrec.common.data.shard import UserShard
    from fedrec.common.model import device_model
    from fedrec.common.privacy import PrivacyLedger

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    features = (rng.random((num_items, ITEM_FEATURES)) < 0.1).astype(np.float32)  # (I, 19)
    catalog = Catalog.of_features(features, USER_FEATURES)
    picked = rng.choice(num_items, size=TRAIN_ITEMS + 2 + 99, replace=False)
    shard = UserShard(
        user_features=rng.random(USER_FEATURES).astype(np.float32),
        train_items=picked[:TRAIN_ITEMS].astype(np.int64),
        val_item=int(picked[TRAIN_ITEMS]),
        test_item=int(picked[TRAIN_ITEMS + 1]),
        candidates=picked[TRAIN_ITEMS + 2 :].astype(np.int64),
        num_items=num_items,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = device_model(catalog, DIM, shard.user_features)
    config = LocalTrainConfig(epochs=1, lr=0.5, batch_size=BATCH, negatives=4)
    dp = RecordDPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-4)
    before = peak_rss_mib()
    started = time.perf_counter()
    result = dp_local_train(model, shard, config, dp, PrivacyLedger(), rng, grad_sample_mode=mode)
    seconds = time.perf_counter() - started
    after = peak_rss_mib()
    return {
        "items": num_items,
        "mode": mode,
        "peak_before_mib": before,
        "peak_after_mib": after,
        "increase_mib": after - before,
        "seconds": seconds,
        "steps": result.steps,
        "examples": result.examples,
    }


def measure_in_subprocess(num_items: int, mode: str) -> dict[str, Any]:
    child = [sys.executable, __file__, "--child", "--items", str(num_items), "--mode", mode]
    done = subprocess.run(child, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # e.g. killed for memory: report it, keep the other points
        return {"items": num_items, "mode": mode, "error": done.stderr.strip()[-300:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| items | mode | peak RSS before (MiB) | after (MiB) | step increase (MiB) | wall (s) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['items']} | {r['mode']} | failed: {r['error']!r} | | | |")
            continue
        lines.append(
            f"| {r['items']} | {r['mode']} | {r['peak_before_mib']:.0f} | {r['peak_after_mib']:.0f}"
            f" | {r['increase_mib']:.0f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1682, 100_000])
    parser.add_argument("--mode", nargs="+", default=["ghost"], choices=["ghost", "hooks"])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.items[0], args.mode[0])))
        return
    rows = [measure_in_subprocess(n, mode) for n in args.items for mode in args.mode]
    print(json.dumps(rows) if args.json else table(rows))


if __name__ == "__main__":
    main()
