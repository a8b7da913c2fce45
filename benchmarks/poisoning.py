"""Item promotion by malicious devices, with and without norm bounding: the poisoning table.

    .venv/bin/python benchmarks/poisoning.py --data ../shared/data/ml-100k \
        [--config simulations/ml100k-fedavg.toml] [--fractions 0.01 0.05] \
        [--defences row-norm-bound=0.15] [--attack fedrecattack] [--seeds 0 1 2] [--jobs 2] \
        [--set KEY=VALUE ...] [--out DIR] [--report-only]

Every arm is the scenario run through :mod:`fedrec.simulations.inprocess` (the real
ServerApp round loop and ClientApp, with a seeded server) with ``target-items = "tail:5"``
(five items of the less popular half, the same in every arm): a clean arm, then each
``poison-fraction`` without a defence and with each ``--defences`` setting. One seed gives
every arm the same cohorts of the honest users (the malicious devices are extra nodes, so a
poisoned arm's cohorts differ from the clean arm's: the pairing is by seed and targets).
Reported per arm, over the seeds (mean ± sample std): the targets' exposure ER@5 / ER@10
and test HR@10 of the released model (the last round's evaluation, every user), the mean
ER@10 over every evaluation after round 0 (the exposure comes and goes with the malicious
devices' turns: a model released at any of those rounds), the highest and its rounds, and the
updates and rows the defence clipped over all rounds (mean over seeds). Writes
``DIR/poisoning.json`` and ``.md``; ``--report-only`` prints the table again from ``DIR``.
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
from fedrec.common.cli import apply_settings, load_scenario, parse_setting
from fedrec.common.fedconfig import ATTACKS

REPORTED = (keys.ER5, keys.ER10, keys.HR)


def run_arm(name: str, values: dict[str, Any], seed: int, out: str) -> dict[str, Any]:
    """One arm in a worker process, summarized."""
    from fedrec.simulations.inprocess import run_summarized

    summary = run_summarized(values, seed, out)
    return {**summarize_run(name, seed, Path(out)), "seconds": summary["seconds"]}


def summarize_run(name: str, seed: int, out: Path) -> dict[str, Any]:
    """A finished arm's last evaluation, its highest exposure and what the defence clipped."""
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    targets = json.loads((out / "config.json").read_text())["config"]["target-items"]
    evaluated = [r for r in rounds if "eval" in r]
    last = evaluated[-1]
    peak = max(evaluated, key=lambda r: r["eval"].get(keys.ER10, 0.0))
    bounded = [r.get("bounded", {}) for r in rounds]
    return {
        "arm": name,
        "seed": seed,
        "round": last["round"],
        **{k: last["eval"].get(k) for k in REPORTED},
        "peak_er10": peak["eval"].get(keys.ER10),
        "peak_round": peak["round"],
        "mean_er10": statistics.mean(r["eval"].get(keys.ER10, 0.0) for r in evaluated[1:]),
        "bounded_updates": sum(b.get("updates", 0) for b in bounded),
        "bounded_rows": sum(b.get("rows", 0) for b in bounded),
        "target_items": targets,  # as drawn from the data
        "seconds": None,
    }


def arms(
    fractions: list[float], defences: list[str], attack: str
) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("clean", {})]
    for fraction in fractions:
        poison = {"poison-fraction": fraction, "poison-attack": attack}
        out.append((f"{fraction:.0%} {attack}, no defence", poison))
        for defence in defences:
            key, _, value = defence.partition("=")
            out.append(
                (f"{fraction:.0%} {attack}, {defence}", {**poison, key: parse_setting(value)})
            )
    return out


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    lines = [
        "| arm | ER@5 | ER@10 | HR@10 | mean ER@10 | peak ER@10 (round) | clipped updates / rows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        rows = [r for r in results if r["arm"] == name]
        cells = []
        for key in REPORTED:
            values = [float(r[key]) for r in rows if r[key] is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}" if values else "—")
        clipped = (
            f"{statistics.mean(r['bounded_updates'] for r in rows):.0f} /"
            f" {statistics.mean(r['bounded_rows'] for r in rows):.0f}"
        )
        peaks = [float(r["peak_er10"] or 0.0) for r in rows]
        rounds = "/".join(str(r["peak_round"]) for r in rows)
        peak = f"{statistics.mean(peaks):.4f} ({rounds})"
        means = [float(r["mean_er10"]) for r in rows]
        spread = statistics.stdev(means) if len(means) > 1 else 0.0
        mean = f"{statistics.mean(means):.4f} ± {spread:.4f}"
        lines.append(f"| {name} | {' | '.join(cells)} | {mean} | {peak} | {clipped} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="simulations/ml100k-fedavg.toml")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--defences", nargs="*", default=["row-norm-bound=0.15"])
    parser.add_argument("--attack", default="fedrecattack", choices=ATTACKS)
    parser.add_argument("--targets", default="tail:5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--out", default="runs/bench-poisoning")
    parser.add_argument("--report-only", action="store_true", help="Re-read --out's runs.")
    args = parser.parse_args()
    base = apply_settings(
        {**load_scenario(args.config), "data": args.data, "target-items": args.targets},
        args.settings,
    )
    out = Path(args.out)
    plan = arms(args.fractions, args.defences, args.attack)
    started = time.perf_counter()
    if args.report_only:  # the table again from the run folders of an earlier call
        results = [
            summarize_run(name, seed, out / f"{i}-seed{seed}")
            for seed in args.seeds
            for i, (name, _) in enumerate(plan)
        ]
        print(table(results, [name for name, _ in plan]))
        return
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(run_arm, name, {**base, **extra}, seed, str(out / f"{i}-seed{seed}"))
            for seed in args.seeds
            for i, (name, extra) in enumerate(plan)
        ]
        results = []
        for future in futures:
            results.append(future.result())
            r = results[-1]
            print(
                f"{r['arm']} seed {r['seed']}: ER@5 {r[keys.ER5]:.4f} ER@10 {r[keys.ER10]:.4f}"
                f" HR@10 {r[keys.HR]:.4f} ({r['seconds']:.0f} s)",
                flush=True,
            )
    report = table(results, [name for name, _ in plan])
    header = (
        f"{args.config} on {args.data}, targets {results[0]['target_items']}, seeds"
        f" {args.seeds}, {time.perf_counter() - started:.0f} s"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "poisoning.json").write_text(json.dumps({"header": header, "runs": results}, indent=1))
    (out / "poisoning.md").write_text(f"{header}\n\n{report}\n")
    print(f"\n{header}\n\n{report}")


if __name__ == "__main__":
    main()
