"""What SecAgg+ costs per round: time and bytes with and without it, by cohort size.

    .venv/bin/python benchmarks/secagg_overhead.py --data ../shared/data/ml-100k \
        [--config simulations/ml100k-secagg.toml] [--clients 10 50 100] [--rounds 4] \
        [--set KEY=VALUE ...] [--out DIR]

For each cohort size m it runs the scenario twice through the real simulation engine —
``secure-aggregation = "off"`` and ``"secagg+"`` — for a few rounds, and reports the median
train-round seconds (rounds after the first, which warms the workers up), bytes down and up
per client per round, the SecAgg+ graph (k, t) and the seconds of each protocol stage. Only
a few users are evaluated (``eval-clients``), at the last round; this measures training rounds.
Writes ``DIR/secagg_overhead.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from fedrec.common.cli import apply_settings, load_scenario
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.runner import simulate


def measure(config: FederationConfig, out: Path) -> dict[str, Any]:
    metrics = simulate(config.replace(out_dir=str(out)))
    rounds = [r for r in metrics["rounds"] if r.get("clients_sampled")]
    timed = rounds[1:] or rounds
    row: dict[str, Any] = {
        "round_seconds": statistics.median(r["train_seconds"] for r in timed),
        "bytes_down": statistics.mean(r["bytes_down_per_client"] for r in rounds),
        "bytes_up": statistics.mean(r["bytes_up_per_client"] for r in rounds),
        "clients_replied": statistics.mean(r["clients_replied"] for r in rounds),
    }
    secure = [r["secagg"] for r in timed if "secagg" in r]
    if secure:
        row["neighbours"] = secure[0].get("neighbours")
        row["threshold"] = secure[0].get("threshold")
        row["stage_seconds"] = {
            stage: statistics.median(s["stage_seconds"][stage] for s in secure)
            for stage in secure[0]["stage_seconds"]
        }
        row["status"] = sorted({s["status"] for s in secure})
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients/round | k, t | plain s/round | SecAgg+ s/round | × time | plain down/up KB"
        " | SecAgg+ down/up KB | × bytes up | setup / share_keys / collect / unmask s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p, s = row["plain"], row["secagg"]
        stages = " / ".join(f"{v:.2f}" for v in s["stage_seconds"].values())
        lines.append(
            f"| {row['clients']} | {s['neighbours']}, {s['threshold']} "
            f"| {p['round_seconds']:.2f} | {s['round_seconds']:.2f} "
            f"| {s['round_seconds'] / p['round_seconds']:.2f} "
            f"| {p['bytes_down'] / 1e3:.0f} / {p['bytes_up'] / 1e3:.0f} "
            f"| {s['bytes_down'] / 1e3:.0f} / {s['bytes_up'] / 1e3:.0f} "
            f"| {s['bytes_up'] / p['bytes_up']:.3f} | {stages} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--config", default="simulations/ml100k-secagg.toml")
    parser.add_argument("--clients", nargs="*", type=int, default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], help="KEY=VALUE overrides")
    parser.add_argument("--out", default=f"runs/secagg-overhead-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    values = apply_settings({**load_scenario(args.config), "data": args.data}, args.set)
    base = FederationConfig.from_mapping(values).replace(
        num_rounds=args.rounds, eval_every=10**6, eval_clients=20, resume=""
    )
    rows = []
    for m in args.clients:
        row: dict[str, Any] = {"clients": m}
        for mode in ("off", "secagg+"):
            config = base.replace(clients_per_round=m, secure_aggregation=mode)
            key = "plain" if mode == "off" else "secagg"
            row[key] = measure(config, out / f"m{m}-{key}")
            print(json.dumps({"clients": m, key: row[key]}), flush=True)
        rows.append(row)
    text = table(rows)
    (out / "secagg_overhead.json").write_text(
        json.dumps({"config": values, "rows": rows}, indent=2)
    )
    (out / "secagg_overhead.md").write_text(text + "\n")
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
