"""Utility–privacy sweep: the federation's quality at each privacy level, on one split.

    .venv/bin/python benchmarks/privacy_sweep.py --data ../shared/data/ml-100k \
        [--config simulations/ml100k-dp-eps8.toml] [--epsilons 0.5 1 2 4 8 inf] \
        [--local-z 0.6 1.0] [--set KEY=VALUE ...] [--out DIR]

Each point is a full run of the real simulation engine with the scenario's settings:
  * user level — DP-FedAvg with z calibrated to ε (δ from the scenario) over its rounds;
    ε = inf is the same run without user-level DP (no clipping, no noise);
  * record level — on-device Opacus DP-SGD with noise multiplier ``--local-z`` and no
    user-level DP; each device's ε is reported as min/median/max over devices.
It writes ``sweep.json``, ``sweep.png`` (HR@10/NDCG@10 against user-level ε) and
``sweep.md`` (the README table), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from fedrec.common.cli import apply_settings, load_scenario
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.runner import simulate

METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")


def user_level_point(base: FederationConfig, eps: float) -> FederationConfig:
    if math.isinf(eps):
        return base.replace(dp_clip_norm=0.0, dp_noise_multiplier=0.0, dp_target_epsilon=0.0)
    return base.replace(dp_noise_multiplier=0.0, dp_target_epsilon=eps)


def run_point(label: str, config: FederationConfig, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    metrics = simulate(config.replace(out_dir=str(out / label)))
    privacy = metrics.get("privacy", {})
    row: dict[str, Any] = {
        "label": label,
        "final": metrics["final"],
        "best_round": metrics["best_round"],
        "last": {k: metrics["last"].get(k) for k in METRICS},
        "rounds": len([r for r in metrics["rounds"] if r.get("clients_sampled")]),
        "user_level": privacy.get("user_level"),
        "record_level": privacy.get("record_level"),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps({k: row[k] for k in ("label", "final", "user_level")}), flush=True)
    return row


def table(rows: list[dict[str, Any]], reference: float | None) -> str:
    lines = [
        "| setting | user ε (δ) | z | device ε median/max | HR@10 | × non-private | NDCG@10 "
        "| full HR@10 | full NDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        user, record, final = row["user_level"], row["record_level"], row["final"]
        user_eps = f"{user['epsilon']:.2f} ({user['delta']:g})" if user else "∞"
        z = f"{user['z']:.3f}" if user else "–"
        device = (
            f"{record['epsilon_median']:.2f}/{record['epsilon_max']:.2f}"
            if record and record.get("epsilon_max") is not None
            else "∞"
        )
        ratio = f"{final['hr@10'] / reference:.3f}" if reference else "–"
        lines.append(
            f"| {row['label']} | {user_eps} | {z} | {device} | {final['hr@10']:.4f} | {ratio} "
            f"| {final['ndcg@10']:.4f} | {final['full_hr@10']:.4f} | {final['full_ndcg@10']:.4f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    user_rows = [r for r in rows if r["label"].startswith("user")]
    private = [r for r in user_rows if r["user_level"]]
    plain = [r for r in user_rows if not r["user_level"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["user_level"]["epsilon"] for r in private]
    for key, style in (("hr@10", "-o"), ("ndcg@10", "-s"), ("full_hr@10", "--o")):
        line = ax.plot(xs, [r["final"][key] for r in private], style, label=key)
        if plain:
            ax.axhline(plain[0]["final"][key], color=line[0].get_color(), linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("user-level ε (δ = 1e-4); dotted: no DP")
    ax.set_ylabel("test metric (best validation round)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--config", default="simulations/ml100k-dp-eps8.toml")
    parser.add_argument("--epsilons", nargs="*", type=float, default=[math.inf, 8, 4, 2, 1, 0.5])
    parser.add_argument("--local-z", nargs="*", type=float, default=[], help="DP-SGD z values")
    parser.add_argument("--set", nargs="*", default=[], help="KEY=VALUE overrides")
    parser.add_argument("--out", default=f"runs/privacy-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    values = apply_settings({**load_scenario(args.config), "data": args.data}, args.set)
    scenario = FederationConfig.from_mapping(values)
    user_only = scenario.replace(local_dp_noise_multiplier=0.0, local_epsilon_budget=0.0)
    rows = []
    for eps in args.epsilons:
        label = "user ε=∞" if math.isinf(eps) else f"user ε={eps:g}"
        rows.append(run_point(label, user_level_point(user_only, eps), out))
    for z in args.local_z:
        local = user_level_point(scenario, math.inf).replace(local_dp_noise_multiplier=z)
        rows.append(run_point(f"device z={z:g}", local, out))
    plain = [r for r in rows if r["label"] == "user ε=∞"]
    reference = plain[0]["final"]["hr@10"] if plain else None
    text = table(rows, reference)
    (out / "sweep.json").write_text(json.dumps({"config": values, "rows": rows}, indent=2))
    (out / "sweep.md").write_text(text + "\n")
    if any(r["label"].startswith("user") and r["user_level"] for r in rows):
        plot(rows, out / "sweep.png")
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
