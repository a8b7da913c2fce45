"""Cost of a simulated round as the population grows, for a fixed cohort.

    .venv/bin/python benchmarks/scale.py [--users 1000 10000 100000] [--items 10000]
        [--clients 100] [--rounds 20] [--eval-clients 1000] [--out DIR]

Each population size runs ``fedrec simulate`` in a fresh process (the real CLI, Flower's
simulation engine with its private Ray instance) on the synthetic generator, with m
clients per round, one local epoch and an evaluation of ``--eval-clients`` sampled users at
the last round only. Reported per N: the start-up time (the command's wall time less its
recorded rounds, 0 to R, from ``rounds.jsonl``: data, catalog, Ray and actors, and the
shut-down), the median seconds
of rounds 2..R (``round_seconds``), and the peak resident memory of the driver (the CLI
process) and of the largest Ray worker — sampled from ``/proc`` every 0.5 s over the
process tree, since a worker's own high-water mark leaves with it. Writes ``DIR/scale.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Ray's workers are grandchildren of the CLI)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


class PeakMemory(threading.Thread):
    """Samples the driver's and the Ray workers' resident memory until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.driver, self.worker = pid, 0.0, 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.driver = max(self.driver, _rss_mb(self.pid))
            for child in _children(self.pid):
                if "ray::" in _cmdline(child) or "default_worker" in _cmdline(child):
                    self.worker = max(self.worker, _rss_mb(child))
            self.stopped.wait(0.5)


def run_one(users: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    folder = out / f"users-{users}"
    settings = {
        "synthetic-users": users,
        "synthetic-items": args.items,
        "clients-per-round": args.clients,
        "eval-every": args.rounds,
        "eval-clients": min(args.eval_clients, users),
        "local-epochs": 1,
        "strategy": "fedadam",
        "server-lr": 0.05,
        "server-tau": 0.0001,
        "client-weighting": "uniform",
    }
    fedrec = str(Path(sys.executable).parent / "fedrec")
    command = [fedrec, "simulate", "--data", "synthetic", "--num-rounds", str(args.rounds),
               "--out", str(folder)]  # fmt: skip
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    memory = PeakMemory(process.pid)
    memory.start()
    _, err = process.communicate()
    memory.stopped.set()
    memory.join()
    if process.returncode != 0:
        raise RuntimeError(f"N = {users}: exit {process.returncode}: {err.decode()[-2000:]}")
    total = time.time() - started
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    trained = [r for r in rounds if r["round"] >= 1]
    later = [r["round_seconds"] for r in trained[1:]]
    return {
        "users": users,
        "items": args.items,
        "clients": args.clients,
        "rounds": args.rounds,
        "total_seconds": total,
        "rounds_seconds": sum(r["round_seconds"] for r in rounds),
        "startup_seconds": total - sum(r["round_seconds"] for r in rounds),
        "round0_seconds": rounds[0]["round_seconds"],  # the initial model's evaluation
        "round_seconds_median": statistics.median(later) if later else None,
        "last_round_seconds": trained[-1]["round_seconds"],  # with the evaluation
        "driver_peak_mb": memory.driver,
        "worker_peak_mb": memory.worker,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--eval-clients", type=int, default=1_000)
    parser.add_argument("--out", default="runs/bench-scale")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for users in args.users:
        results.append(run_one(users, args, out))
        print(json.dumps(results[-1]), flush=True)
    lines = [
        "| users | items | m | start-up s (all but the rounds) | s / round (median, rounds 2..) |"
        " last round s (with evaluation) | driver peak MB | worker peak MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['users']:,} | {r['items']:,} | {r['clients']} | {r['startup_seconds']:.1f} |"
            f" {r['round_seconds_median']:.2f} | {r['last_round_seconds']:.1f} |"
            f" {r['driver_peak_mb']:.0f} | {r['worker_peak_mb']:.0f} |"
        )
    table = "\n".join(lines)
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    (out / "scale.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
