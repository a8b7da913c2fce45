"""Privacy–utility curves of several models from paired sweeps (``benchmarks/sweep.py``).

    .venv/bin/python benchmarks/dp_curves.py DIR/sweep.json [DIR2/sweep.json ...] \
        [--png docs/dp-item-ids.png] [--label MODEL=TEXT ...]

Each sweep's variants are named ``MODEL-LEVEL``, LEVEL one of ``nodp``, ``eps8``, ``eps2``
(any ``epsN``), all run over the same seeds. Per model and level it prints HR@10 as mean ±
sd over the seeds and the ratio to the same model's non-private run, computed seed by seed
(paired: the same cohorts and the same noise draws in every arm) and then averaged; with
``--png`` it plots HR@10 and that ratio against ε.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

PRIVATE = "nodp"


def level_epsilon(level: str) -> float:
    """``nodp`` → ∞, ``eps8`` → 8.0."""
    if level == PRIVATE:
        return math.inf
    if not level.startswith("eps"):
        raise ValueError(f"variant level {level!r}: expected nodp or epsN")
    return float(level.removeprefix("eps"))


def collect(paths: list[Path]) -> dict[str, dict[float, dict[int, float]]]:
    """model → ε → seed → test HR@10 (at the best validation round)."""
    out: dict[str, dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        results: dict[str, list[dict[str, Any]]] = json.loads(path.read_text())["results"]
        for name, runs in results.items():
            model, _, level = name.rpartition("-")
            for run in runs:
                out[model][level_epsilon(level)][int(run["seed"])] = run["final"]["hr@10"]
    return out


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(curves: dict[str, dict[float, dict[int, float]]]) -> str:
    lines = [
        "| model | ε | seeds | HR@10 per seed | mean ± sd | × own non-private (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for model, levels in curves.items():
        private = levels.get(math.inf, {})
        for eps in sorted(levels, reverse=True):
            by_seed = levels[eps]
            seeds = sorted(by_seed)
            ratios = [by_seed[s] / private[s] for s in seeds if s in private]
            ratio = _spread(ratios) if eps != math.inf and ratios else "1"
            lines.append(
                f"| {model} | {'∞' if math.isinf(eps) else f'{eps:g}'} | {len(seeds)}"
                f" | {' / '.join(f'{by_seed[s]:.4f}' for s in seeds)}"
                f" | {_spread([by_seed[s] for s in seeds])} | {ratio} |"
            )
    return "\n".join(lines)


def plot(curves: dict[str, dict[float, dict[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for model, levels in curves.items():
        private = levels.get(math.inf, {})
        finite = sorted(e for e in levels if not math.isinf(e))
        hr = [[levels[e][s] for s in sorted(levels[e])] for e in finite]
        ratio = [[levels[e][s] / private[s] for s in sorted(levels[e]) if s in private]
                 for e in finite]  # fmt: skip
        for axis, values in ((left, hr), (right, ratio)):
            means = [statistics.mean(v) for v in values]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            axis.errorbar(finite, means, yerr=sds, marker="o", capsize=3, label=model)
        if private:
            mean = statistics.mean(private.values())
            left.axhline(mean, linestyle=":", color=left.lines[-1].get_color(), linewidth=1)
    left.set(xlabel="user-level ε (δ = 1e-4)", ylabel="test HR@10", xscale="log")
    right.set(xlabel="user-level ε (δ = 1e-4)", ylabel="× the same model without DP",
              xscale="log")  # fmt: skip
    right.axhline(0.85, color="grey", linewidth=0.8)
    right.axhline(0.70, color="grey", linewidth=0.8)
    left.legend(fontsize=8)
    left.set_title("HR@10 (dotted: each model without DP)", fontsize=9)
    right.set_title("ratio, paired by seed (lines: 0.85 and 0.70)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep.json files")
    parser.add_argument("--png", type=Path, help="write the two curves here")
    parser.add_argument("--label", action="append", default=[], help="MODEL=TEXT (the legend)")
    args = parser.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    curves = {labels.get(k, k): v for k, v in collect(args.sweeps).items()}
    print(table(curves))
    if args.png:
        plot(curves, args.png)
        print(f"written to {args.png}")


if __name__ == "__main__":
    main()
