"""A production rollout on paper: what a federation of 1M devices costs, from our own numbers.

    .venv/bin/python benchmarks/rollout.py [--devices 1000000] [--items 1682 10000 100000]
        [--cohorts 1000 10000] [--rounds-per-day 24] [--days 30] [--dim 64] [--json FILE]

Nothing here runs a federation; every figure is computed from fedrec's own code or from a
measurement recorded in docs/results.md, and the assumptions are printed with the table:

* **payload**: the shared group's float32 bytes for a catalog of ``--items`` items at
  ``--dim`` (fedrec.common.model.shared_shapes), plus the message overhead measured on
  ml-100k (479 KB on the wire for 478.6 KB of arrays: ``bytes_down_per_client`` of a run);
* **bytes per device per day**: a device joins a round with probability m / N (uniform
  cohorts), so it expects ``rounds/day × m/N`` train rounds a day, each one model down and one
  update up; evaluation rounds (``--eval-every``, ``--eval-clients`` devices each) add a model
  down for the sampled devices;
* **user-level DP at that N**: the noise multiplier z that ``dp-target-epsilon`` needs over the
  whole deployment (``days × rounds/day`` rounds at sampling rate q = m/N, δ = 1/N), from
  fedrec.common.privacy.calibrate_noise (Opacus's RDP accountant), and the noise std on the
  mean update relative to the clip, z / m — the figure that decides utility. ml-100k's
  ε = 8 run (943 users, m = 100, 200 rounds: the 0.70× of non-private HR@10) and the 5,000-user
  synthetic run (m = 500, 50 rounds: 1.01×) are printed beside it for scale;
* **SecAgg+ per round**: k = 2⌈log2 m⌉ neighbours; the device's extra work grows with k
  (masks and shares), the server's unmasking with m·k; scaled from the ml-100k measurement at
  m = 100, k = 14 (setup + share_keys + collect + unmask = 0.71 + 1.13 + 2.33 + 0.71 s in one
  2-core process, docs/results.md) — an order of magnitude, not a promise;
* **SuperLink**: messages per round (1 per device per train round, 4 with SecAgg+: setup,
  share_keys, collect, unmask) and the bytes it relays per round.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from fedrec.common.data.catalog import Catalog
from fedrec.common.model import shared_shapes
from fedrec.common.privacy import calibrate_noise

OVERHEAD = 479_360 / 478_596  # wire bytes / array bytes of one ml-100k model message (measured)
SECAGG_MEASURED = {"m": 100, "k": 14, "seconds": 0.71 + 1.13 + 2.33 + 0.71}
USER_FEATURES = 35  # ml-100k's user feature width (age, gender, occupation, zip region)
ITEM_FEATURES = 19  # its genres
REFERENCE_RUNS = (  # (name, users, clients per round, rounds, ε, HR@10 ratio to non-private)
    ("ml-100k dp-eps8", 943, 100, 200, 8.0, "0.70x"),
    ("synthetic 5k dp-eps8", 5_000, 500, 50, 8.0, "1.01x"),
)


@dataclass(frozen=True)
class Plan:
    devices: int
    items: int
    cohort: int
    rounds_per_day: int
    days: int
    model_mb: float
    train_rounds_per_device_day: float
    mb_per_device_day: float
    superlink_gb_per_round: float
    messages_per_round_secagg: int
    secagg_neighbours: int
    secagg_seconds_per_round: float
    epsilon: float
    delta: float
    noise_multiplier: float
    noise_over_clip: float


def model_bytes(items: int, dim: int) -> int:
    catalog = Catalog.of_features(np.zeros((items, ITEM_FEATURES), np.float32), USER_FEATURES)
    shapes = shared_shapes(catalog, dim)
    return int(4 * sum(math.prod(shape) for shape in shapes.values()) * OVERHEAD)


def plan(
    devices: int,
    items: int,
    cohort: int,
    rounds_per_day: int,
    days: int,
    dim: int,
    epsilon: float,
    eval_every: int,
    eval_clients: int,
) -> Plan:
    size = model_bytes(items, dim)
    q = cohort / devices
    rounds = rounds_per_day * days
    train = rounds_per_day * q  # train rounds a device joins per day
    evaluations = rounds_per_day / eval_every * eval_clients / devices
    per_day = train * 2 * size + evaluations * size
    delta = 1.0 / devices
    z = calibrate_noise(epsilon, delta, q, rounds)
    k = 2 * math.ceil(math.log2(cohort))
    measured = SECAGG_MEASURED
    secagg = measured["seconds"] * (cohort * k) / (measured["m"] * measured["k"])
    return Plan(
        devices=devices,
        items=items,
        cohort=cohort,
        rounds_per_day=rounds_per_day,
        days=days,
        model_mb=size / 1e6,
        train_rounds_per_device_day=train,
        mb_per_device_day=per_day / 1e6,
        superlink_gb_per_round=2 * cohort * size / 1e9,
        messages_per_round_secagg=4 * cohort,
        secagg_neighbours=k,
        secagg_seconds_per_round=secagg,
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=z,
        noise_over_clip=z / cohort,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, nargs="+", default=[1682, 10_000, 100_000])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--rounds-per-day", type=int, default=24)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--eval-every", type=int, default=24)
    parser.add_argument("--eval-clients", type=int, default=10_000)
    parser.add_argument("--json", help="Also write the plans here.")
    args = parser.parse_args()
    plans = [
        plan(
            args.devices,
            items,
            cohort,
            args.rounds_per_day,
            args.days,
            args.dim,
            args.epsilon,
            args.eval_every,
            args.eval_clients,
        )
        for items in args.items
        for cohort in args.cohorts
    ]
    print(
        f"{args.devices:,} devices, {args.rounds_per_day} rounds/day for {args.days} days,"
        f" dim {args.dim}, user-level ε = {args.epsilon} at δ = 1/N over the whole period,"
        f" evaluation of {args.eval_clients:,} devices every {args.eval_every} rounds\n"
    )
    print(
        "| items | cohort m | model MB | train rounds / device / day | MB / device / day |"
        " SuperLink GB / round | SecAgg+ k, messages / round, ~s / round | z | z / m |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for p in plans:
        print(
            f"| {p.items:,} | {p.cohort:,} | {p.model_mb:.2f} | {p.train_rounds_per_device_day:.3f}"
            f" | {p.mb_per_device_day:.2f} | {p.superlink_gb_per_round:.2f} |"
            f" {p.secagg_neighbours}, {p.messages_per_round_secagg:,},"
            f" {p.secagg_seconds_per_round:.0f}"
            f" | {p.noise_multiplier:.3f} | {p.noise_over_clip:.2e} |"
        )
    print("\nfor scale, the DP runs measured here (z from the same accountant, δ = 1e-4):")
    print("| run | users | m | rounds | z | z / m | HR@10 vs non-private |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, users, m, rounds, eps, ratio in REFERENCE_RUNS:
        z = calibrate_noise(eps, 1e-4, m / users, rounds)
        print(f"| {name} | {users:,} | {m} | {rounds} | {z:.3f} | {z / m:.2e} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(p) for p in plans], f, indent=1)


if __name__ == "__main__":
    main()
