"""Seeded runs compared array by array: does a refactor leave every result as it was?

    .venv/bin/python benchmarks/parity.py run --out DIR [--only NAME ...] [--jobs 2]
    .venv/bin/python benchmarks/parity.py compare BEFORE AFTER

``run`` makes each named run below with ``fedrec simulate --server-seed`` (the in-process,
seeded backend: same cohorts, same client randomness, same DP noise for one seed) through
the command line only, so the same script measures a checkout from before a change and one
from after it. ``compare`` reads two such folders and compares, per run, every array of the
final model (``model.npz``), of the last checkpoint (the model and the server optimizer's
state) and of the inference bundle, and the figures of every round (train loss, evaluation,
ε, clients, bytes); it prints ``identical`` or the largest difference of each, and exits 1 if
any run differs beyond its tolerance. Every run is exact (tolerance 0) except SecAgg+: its
devices quantize their updates (step 2c/2^b per coordinate), so its tolerance is stated in
that step; and two runs whose arithmetic changed by design (user-level DP with a compressed
or low-rank upload: the device's clip is now one clip, from C and the upload's rounding),
which are reported, not required equal (tolerance ∞).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# the MovieLens 100K files, beside the checkout (run from the repository root)
ML100K = os.environ.get("FEDREC_ML100K", str(Path("..", "shared", "data", "ml-100k").resolve()))

# name → (scenario, server seed, --set overrides, tolerance as a multiple of the SecAgg+ step)
RUNS: dict[str, tuple[str, int, list[str], float]] = {
    "synthetic-quick-s1": ("simulations/synthetic-quick.toml", 1, [], 0.0),
    "synthetic-quick-s2": ("simulations/synthetic-quick.toml", 2, [], 0.0),
    "ml100k-fedavg-s1": ("simulations/ml100k-fedavg.toml", 1, [f"data={ML100K}"], 0.0),
    "user-level-dp": (  # the user level only: the devices' DP-SGD draws fresh OS entropy
        "simulations/ml100k-dp-eps8.toml",
        1,
        [
            f"data={ML100K}",
            "num-rounds=30",
            "eval-every=15",
            "local-dp-noise-multiplier=0",
            "local-epsilon-budget=0",
        ],
        0.0,
    ),
    "secagg-dp": (
        "simulations/ml100k-secagg-dp-eps8.toml",
        1,
        [f"data={ML100K}", "num-rounds=20", "eval-every=10"],
        # the devices' quantization: a coordinate of the mean moves by at most one step
        # (stochastic rounding, 2c/2^b), the released model by a few steps over the rounds
        64.0,
    ),
    "int8-both": (
        "simulations/ml100k-fedavg.toml",
        1,
        [
            f"data={ML100K}",
            "num-rounds=150",
            "eval-every=50",
            "download-compression=int8",
            "upload-compression=int8",
        ],
        0.0,
    ),
    "colr-8": (
        "simulations/ml100k-fedavg.toml",
        1,
        [f"data={ML100K}", "num-rounds=150", "eval-every=50", "colr-rank=8"],
        0.0,
    ),
    "cold-items-0.2": (
        "simulations/ml100k-fedavg.toml",
        1,
        [f"data={ML100K}", "num-rounds=150", "eval-every=50", "cold-items=0.2"],
        0.0,
    ),
    # changed by design (the device's user-level clip is decided once: C less the upload's
    # rounding, in place of a clip to C and another to the rounding's bound): reported, not
    # required equal
    "user-dp-int8": (
        "simulations/ml100k-dp-eps8.toml",
        1,
        [
            f"data={ML100K}",
            "num-rounds=30",
            "eval-every=15",
            "local-dp-noise-multiplier=0",
            "local-epsilon-budget=0",
            "download-compression=int8",
            "upload-compression=int8",
        ],
        math.inf,
    ),
    "user-dp-colr-8": (
        "simulations/ml100k-dp-eps8.toml",
        1,
        [
            f"data={ML100K}",
            "num-rounds=30",
            "eval-every=15",
            "local-dp-noise-multiplier=0",
            "local-epsilon-budget=0",
            "colr-rank=8",
        ],
        math.inf,
    ),
    "item-ids-none": (
        "simulations/ml100k-fedavg.toml",
        1,
        [f"data={ML100K}", "num-rounds=150", "eval-every=50", "item-ids=none"],
        0.0,
    ),
}
SECAGG_STEP = 2 * 8.0 / 2**22  # secagg-clip-range 8, secagg-quantization-bits 22
TIMING = ("seconds", "stage_seconds")  # wall-clock fields: never compared
ARRAY_FILES = ("model.npz", "checkpoint.npz", "bundle.npz")


def run_one(name: str, out: Path, fedrec: str) -> tuple[str, float, int]:
    scenario, seed, sets, _ = RUNS[name]
    folder = out / name
    command = [fedrec, "simulate", "--config", scenario, "--server-seed", str(seed)]
    for item in sets:
        command += ["--set", item]
    command += ["--out", str(folder)]
    started = time.perf_counter()
    env = {**os.environ, "COLUMNS": "200"}
    with (out / f"{name}.log").open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return name, time.perf_counter() - started, code


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if data[k].dtype.kind in "fiub"}


def numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number inside a round record, by its path (timing fields left out)."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if not any(t in str(k) for t in TIMING):
                out |= numbers(v, f"{prefix}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out |= numbers(v, f"{prefix}[{i}]")
    elif isinstance(value, bool | int | float):
        out[prefix] = float(value)
    return out


RECORD_FIELDS = ("round", "train_loss", "returning", "eval", "clients_sampled", "privacy")
# fields a round record no longer carries, on purpose: DP-FedAvg's own counts of malformed and
# non-finite replies (validation refuses those before any aggregation, under "rejected")
DROPPED = ("/privacy/user_level/rejected_malformed", "/privacy/user_level/rejected_non_finite")


def compare_run(before: Path, after: Path, tolerance: float) -> tuple[bool, list[str]]:
    lines, ok = [], True
    for file in ARRAY_FILES:
        if not (before / file).exists():
            continue
        a, b = arrays_of(before / file), arrays_of(after / file)
        if set(a) != set(b):
            lines.append(f"  {file}: arrays differ {sorted(set(a) ^ set(b))}")
            ok = False
            continue
        worst = max(
            (float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0) for k in a
        )
        same = all(np.array_equal(a[k], b[k]) for k in a)
        verdict = "identical" if same else f"max |diff| {worst:.3g}"
        if not same and tolerance and file == "bundle.npz":  # int8 codes of model.npz:
            # a model within tolerance may round a code to the next level
            codes = [k for k in a if a[k].dtype.kind in "iu"]
            moved = sum(int(np.sum(a[k] != b[k])) for k in codes)
            total = sum(a[k].size for k in codes)
            verdict += f": {moved} of {total} int8 codes differ (the bundle quantizes model.npz)"
        elif not same and worst > tolerance:
            ok = False
            verdict += f" > tolerance {tolerance:.3g}"
        lines.append(f"  {file}: {len(a)} arrays, {verdict}")
    ra = json.loads((before / "metrics.json").read_text())["rounds"]
    rb = json.loads((after / "metrics.json").read_text())["rounds"]
    if len(ra) != len(rb):
        return False, [*lines, f"  rounds: {len(ra)} before, {len(rb)} after"]
    worst, where = 0.0, ""
    for x, y in zip(ra, rb, strict=True):
        nx = numbers({k: x.get(k) for k in RECORD_FIELDS})
        ny = numbers({k: y.get(k) for k in RECORD_FIELDS})
        for dropped in DROPPED:
            nx.pop(dropped, None)
        if set(nx) != set(ny):
            return False, [*lines, f"  round {x.get('round')}: fields {sorted(set(nx) ^ set(ny))}"]
        for k in nx:
            d = abs(nx[k] - ny[k])
            if d > worst or (math.isnan(nx[k]) != math.isnan(ny[k])):
                worst, where = d, f"round {x.get('round')} {k}"
    fields = "identical" if worst == 0 else f"max |diff| {worst:.3g} ({where})"
    if worst > tolerance and not (tolerance and where.endswith(("hr@10", "ndcg@10"))):
        ok = ok and worst == 0
    lines.append(f"  rounds.jsonl: {len(ra)} rounds, {fields}")
    fa = json.loads((before / "metrics.json").read_text())["final"]
    fb = json.loads((after / "metrics.json").read_text())["final"]
    lines.append(f"  final: before {_final(fa)} | after {_final(fb)}")
    return ok, lines


def _final(final: dict[str, float]) -> str:
    return " ".join(f"{k} {final[k]:.4f}" for k in ("hr@10", "full_hr@10") if k in final)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="make the named runs into --out")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--only", nargs="*", default=None, help="run only these names")
    run.add_argument("--jobs", type=int, default=2, help="runs at a time")
    run.add_argument("--fedrec", default=str(Path(sys.executable).parent / "fedrec"))
    compare = sub.add_parser("compare", help="compare two folders made by run")
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        names = args.only or list(RUNS)
        args.out.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for name, seconds, code in pool.map(lambda n: run_one(n, args.out, args.fedrec), names):
                print(f"{name}: exit {code}, {seconds:.0f} s", flush=True)
        return 0
    failed = 0
    for name, (*_, steps) in RUNS.items():
        before, after = args.before / name, args.after / name
        if not (before / "metrics.json").exists() or not (after / "metrics.json").exists():
            print(f"{name}: missing in {'before' if not before.exists() else 'after'}")
            continue
        if math.isinf(steps):  # changed by design: reported only
            _, lines = compare_run(before, after, 0.0)
            print(f"{name}: changed by design")
            print("\n".join(lines))
            continue
        ok, lines = compare_run(before, after, steps * SECAGG_STEP)
        failed += not ok
        print(f"{name}: {'same' if ok else 'DIFFERENT'}")
        print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
