"""On-device recommendation latency: ``Device.recommend`` over a real catalog, no server.

    .venv/bin/python benchmarks/recommend.py --data ../shared/data/ml-100k [--dim 64] [--reps 200]

Builds the catalog of ``--data``, one device store (the median user's history, sealed under a
key file) and caches a global model of width ``--dim`` on it (the initial shared state: the
ranking cost does not depend on the weights' values). Times ``recommend(k=10)`` and
``recommend(k=10, explain=True)`` in this process (the store is read and decrypted, the
catalog scored, seen items excluded, every call), and one ``fedrec client recommend``
command end to end (a new process: Python and torch start-up included). Median and p95 in
milliseconds. Nothing here needs a SuperLink: none is started.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from fedrec.client.device import Device, Interaction
from fedrec.common import keys
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.sources import load_interactions
from fedrec.common.model import initial_shared_state


def timed(call: object, reps: int) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(1e3 * (time.perf_counter() - started))
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    data = load_interactions(args.data)
    catalog = Catalog.of(data)
    counts = np.bincount(data.user, minlength=data.num_users)
    user = int(np.argsort(counts)[len(counts) // 2])  # the median user
    rows = np.flatnonzero(data.user == user)
    with tempfile.TemporaryDirectory() as scratch:
        folder, key = Path(scratch) / "store", Path(scratch) / "store.key"
        device = Device.create(folder, catalog, key_file=key)
        device.import_history(
            [
                Interaction(data.item_ids[data.item[r]], "view", None, float(data.timestamp[r]))
                for r in rows
            ],
            hold_out=2,
        )
        shared = ArrayRecord(initial_shared_state(catalog, args.dim, 0))
        device.cache_model(shared, 1, ConfigRecord({keys.CATALOG_HASH: catalog.hash}))
        plain = timed(lambda: device.recommend(k=10), args.reps)
        explained = timed(lambda: device.recommend(k=10, explain=True), args.reps)
        fedrec = str(Path(sys.executable).parent / "fedrec")
        started = time.perf_counter()
        subprocess.run(
            [
                fedrec,
                "client",
                "recommend",
                "--store",
                str(folder),
                "--key-file",
                str(key),
                "-k",
                "10",
            ],
            check=True,
            capture_output=True,
        )
        command = 1e3 * (time.perf_counter() - started)
    print(
        f"{args.data}: {catalog.num_items} items, user with {len(rows)} interactions, dim"
        f" {args.dim}: recommend(k=10) median {plain[0]:.2f} ms (p95 {plain[1]:.2f});"
        f" explain=True median {explained[0]:.2f} ms (p95 {explained[1]:.2f});"
        f" `fedrec client recommend` command {command:.0f} ms end to end"
    )


if __name__ == "__main__":
    main()
