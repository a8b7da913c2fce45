"""Compare federation settings on one data set, paired: every variant sees the same cohorts.

    .venv/bin/python benchmarks/sweep.py --data ../shared/data/ml-100k \
        [--config simulations/ml100k-fedavg.toml] [--seeds 1 2] [--jobs 1] \
        --variant base: --variant cpr50:clients-per-round=50 \
        --variant refresh:private-epochs=1,eval-private-epochs=1 [--out DIR]

Each variant is the scenario with its ``KEY=VALUE`` overrides (comma-separated; an empty
list is the scenario itself), run once per seed through :mod:`fedrec.simulations.inprocess`
(the real ServerApp round loop and ClientApp, server draws seeded). With one seed per
comparison the variants differ only in what the overrides change, not in which users were
drawn when, so differences of a few thousandths of HR@10 mean something — on that seed.

Prints and writes (``DIR/sweep.json``, ``.md``) per variant and seed: validation HR@10 at
every evaluated round, test HR@10 / NDCG@10 and full-ranking figures at the best
validation round, test HR@10 of the last round, bytes per client and round each way, and
seconds; the mean over seeds with its standard deviation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fedrec.common import keys
from fedrec.common.cli import apply_settings, load_scenario


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` → (NAME, ["KEY=VALUE", ...])."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--variant expects NAME:KEY=VALUE,... (may be empty), got {text!r}")
    return name, [item for item in rest.split(",") if item.strip()]


def run_variant(values: dict[str, Any], seed: int, out: str) -> dict[str, Any]:
    from fedrec.simulations.inprocess import run_summarized

    run = run_summarized(values, seed, out)
    tested = list(run["test_hr"].values())
    return {
        "seed": seed,
        "final": run["final"],
        "best_round": run["best_round"],
        "last_test_hr": tested[-1] if tested else None,
        "val_hr": run["val_hr"],
        "user_epsilon": run["user_epsilon"],
        "bytes_per_client_round": run["bytes_per_client_round"],
        "traffic": run["traffic"],
        "seconds": run["seconds"],
    }


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| variant | seed | HR@10 | NDCG@10 | full HR@10 | full NDCG@10 | best round"
        " | last-round HR@10 | validation HR@10 by round | KB down / up per client-round | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for r in runs:
            f = r["final"]
            val = " ".join(f"{k}:{v:.3f}" for k, v in r["val_hr"].items() if v is not None)
            lines.append(
                f"| {name} | {r['seed']} | {f[keys.HR]:.4f} | {f[keys.NDCG]:.4f}"
                f" | {f[keys.FULL_HR]:.4f} | {f[keys.FULL_NDCG]:.4f} | {r['best_round']}"
                f" | {r['last_test_hr']:.4f} | {val} | {_kb(r)} | {r['seconds']:.0f} |"
            )
        if len(runs) > 1:
            hr = [r["final"][keys.HR] for r in runs]
            spread = f" ± {statistics.stdev(hr):.4f}"
            lines.append(f"| {name} | mean | {statistics.mean(hr):.4f}{spread} | | | | | | | | |")
    return "\n".join(lines)


def _kb(run: dict[str, Any]) -> str:
    b = run.get("bytes_per_client_round") or {}
    return f"{b.get('down', 0) / 1e3:.1f} / {b.get('up', 0) / 1e3:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--config", default="simulations/ml100k-fedavg.toml")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1])
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,...")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--out", default=f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in (args.variant or ["base:"]))
    base = {**load_scenario(args.config), "data": args.data}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        jobs = {
            (name, seed): pool.submit(
                run_variant, apply_settings(base, items), seed, str(out / f"{name}-seed{seed}")
            )
            for seed in args.seeds
            for name, items in variants.items()
        }
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for (name, _), job in jobs.items():
            results[name].append(job.result())
            print(json.dumps({"variant": name, **results[name][-1]}), flush=True)
    text = table(results)
    (out / "sweep.json").write_text(
        json.dumps({"args": vars(args), "variants": variants, "results": results}, indent=2)
    )
    (out / "sweep.md").write_text(text + "\n")
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
