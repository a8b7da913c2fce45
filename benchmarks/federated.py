"""Federated vs centralized seed model on one split, and ClientApp throughput vs Flower's floor.

    .venv/bin/python benchmarks/federated.py --data ../shared/data/ml-100k \
        [--config simulations/ml100k-fedavg.toml] [--out runs/bench-federated]

1. trains the centralized seed model (``train-central`` defaults) on the split;
2. runs the federation of ``--config`` on the same data and split (same seed);
3. measures client updates per second through the real simulation engine for our ClientApp
   (1 local epoch) and for a no-op ClientApp that returns arrays of the same size, in the same
   process, and prints the ratio. Round 1 (Ray start-up) is excluded from the rates.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.common import keys
from fedrec.common.cli import load_scenario
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.central import CentralConfig, run_central
from fedrec.simulations.runner import simulate


def noop_client_app() -> ClientApp:
    """Replies to train with the arrays it got (same size), to evaluate with empty metrics."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays: ArrayRecord = msg.content[keys.ARRAYS]
        metrics = MetricRecord({keys.NUM_EXAMPLES: 1, keys.UNIT_WEIGHT: 1, keys.TRAIN_LOSS: 0.0})
        return Message(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({keys.USERS: 0, keys.NUM_EXAMPLES: 0, keys.UNIT_WEIGHT: 1})
        return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)

    return app


def updates_per_second(records: list[dict[str, Any]]) -> float:
    steady = [r for r in records if r["round"] >= 2 and r.get("clients_replied")]
    return sum(r["clients_replied"] for r in steady) / sum(r["train_seconds"] for r in steady)


def throughput(
    base: FederationConfig, out: Path, rounds: int, clients: int, actors: int | None = None
) -> dict[str, float]:
    config = base.replace(
        num_rounds=rounds,
        clients_per_round=clients,
        local_epochs=1,
        eval_every=rounds + 1,
        eval_clients=10,
        audit_log="",
    )
    ours = simulate(config.replace(out_dir=str(out / "throughput-ours")))
    noop = simulate(
        config.replace(out_dir=str(out / "throughput-noop")), client_app=noop_client_app()
    )
    rate_ours, rate_noop = updates_per_second(ours["rounds"]), updates_per_second(noop["rounds"])
    return {
        "ours_updates_per_s": rate_ours,
        "noop_updates_per_s": rate_noop,
        "ratio": rate_ours / rate_noop,
        "rounds": rounds,
        "clients_per_round": clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--config", default="simulations/ml100k-fedavg.toml")
    parser.add_argument("--out", default=f"runs/bench-federated-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--throughput-rounds", type=int, default=6)
    parser.add_argument("--throughput-clients", type=int, default=100)
    parser.add_argument("--actors", type=int, default=None, help="parallel ClientApp actors")
    parser.add_argument("--skip-quality", action="store_true", help="throughput only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = FederationConfig.from_mapping({**load_scenario(args.config), "data": args.data})
    report: dict[str, Any] = {"data": args.data, "scenario": args.config}

    if not args.skip_quality:
        central = run_central(CentralConfig(data=args.data, seed=base.seed), out / "central")
        federated = simulate(base.replace(out_dir=str(out / "federated")))
        ratio = federated["final"]["hr@10"] / central["final"]["hr@10"]
        report.update(
            central=central["final"],
            federated=federated["final"],
            federated_best_round=federated["best_round"],
            hr_ratio=ratio,
            rounds=base.rounds.num_rounds,
            clients_per_round=base.rounds.clients_per_round,
            bytes_per_client_round=federated["bytes_per_client_round"],
            federated_seconds=federated["train_seconds"],
        )
        print("metric        central   federated")
        for k in ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"):
            print(f"{k:<13} {central['final'][k]:.4f}    {federated['final'][k]:.4f}")
        print(
            f"federated/central HR@10 = {ratio:.3f} ({base.rounds.num_rounds} rounds, "
            f"{base.rounds.clients_per_round} clients/round, best round {federated['best_round']})"
        )
        b = federated["bytes_per_client_round"]
        print(f"bytes per client per round: down {b['down']:.0f}, up {b['up']:.0f}")

    tp = throughput(base, out, args.throughput_rounds, args.throughput_clients, args.actors)
    report["throughput"] = tp
    print(
        f"client updates/s: ours {tp['ours_updates_per_s']:.1f}, no-op "
        f"{tp['noop_updates_per_s']:.1f}, ratio {tp['ratio']:.2f}"
    )
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
