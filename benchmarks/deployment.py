"""A real deployment on loopback: fedrec's rounds against the null app's on the same devices.

    .venv/bin/python benchmarks/deployment.py [--nodes 5 10 20] [--rounds 2] [--data PATH]
                                              [--per-message] [--simulate] [--out DIR]

For each N: ``fedrec deploy local``'s LocalDeployment with N devices (TLS, node
authentication, one sealed store per user; each device a SuperNode and, by default, its warm
executor) runs ``--rounds`` rounds of fedrec (evaluation every round), then, on the same
deployment, the null app (``fedrec.server.echo`` / ``fedrec.client.echo``: the same
rounds, a train and an evaluate stage, arrays of the model's shapes down and up, nothing
computed). Printed and
written to ``OUT/deployment.json``:

* seconds per round (rounds >= 1: train + evaluate) of fedrec and of the null app, and the
  ratio; the growth of fedrec's round from the smallest N to the largest;
* one device's resident memory (its SuperNode + executor + whatever they spawn, from /proc,
  sampled every 0.5 s during fedrec's run): the median over the run's second half
  ("steady") and the peak;
* CPU seconds per device per round: user + system time of every device process (with the
  children they reaped) from the end of round 0 (the first evaluation) to the end of the
  run, over N × rounds;
* CPU seconds per round by role (all SuperNodes, executors, the SuperLink, the ServerApp),
  for fedrec's rounds and the null app's;
* replies the server did not get before a stage closed (``clients_unanswered``).

``--per-message`` runs the devices as Flower does by default (a process per message), for
comparison; ``--simulate`` adds the same settings in the simulation engine.
One deployment per N (a benchmark, not a test: minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from fedrec.common.data.catalog import load_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.shapes import shared_shapes
from fedrec.deploy.local import LocalDeployment, deployment_config
from fedrec.simulations.runner import simulate

TICK = os.sysconf("SC_CLK_TCK")


def settings(nodes: int, rounds: int, data: str) -> FederationConfig:
    return deployment_config(
        FederationConfig().replace(
            data=data,
            synthetic_items=1000,
            num_rounds=rounds,
            clients_per_round=nodes,
            min_clients=nodes,
            eval_every=1,
            round_timeout=600.0,
        ),
        nodes,
    )


def round_seconds(records: list[dict[str, Any]]) -> float:
    return statistics.mean(r["round_seconds"] for r in records if r["round"] >= 1)


def family(roots: list[int]) -> list[int]:
    """``roots`` and all their live descendants (/proc/PID/task/TID/children: no scan of
    /proc, which at 0.25 s intervals cost the machine a third of a core)."""
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in children.read_text().split())
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime + cutime + cstime of ``pids`` (what they and their reaped children used)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / TICK


ROLES = {  # a process's role in the deployment, by its command line
    "flower-supernode": "supernodes",
    "fedrec.client.executor": "executors",
    "flwr-clientapp": "clientapps",
    "flower-superlink": "superlink",
    "flower-superexec": "superexec",
    "flwr-serverapp": "serverapp",
}


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (with reaped children) of the deployment's live processes, by role."""
    out: dict[str, float] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = next((r for marker, r in ROLES.items() if marker in command), None)
        if role is not None:
            out[role] = out.get(role, 0.0) + cpu_seconds([int(entry.name)])
    return out


def _delta(after: dict[str, float], before: dict[str, float], per: float) -> dict[str, float]:
    return {k: round((v - before.get(k, 0.0)) / per, 3) for k, v in sorted(after.items())}


def device_roots(deployment: LocalDeployment) -> list[list[int]]:
    return [
        [s.pid for s in (node.service, node.executor) if s is not None]
        for node in deployment.devices
    ]


class Sampler(threading.Thread):
    """Samples device 0's resident memory until stopped."""

    def __init__(self, deployment: LocalDeployment) -> None:
        super().__init__(daemon=True)
        self.deployment, self.samples, self.done = deployment, list[int](), threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(rss_bytes(family(device_roots(self.deployment)[0])))
            time.sleep(0.5)


def deployed(nodes: int, rounds: int, data: str, out: Path, warm: bool) -> dict[str, Any]:
    config = settings(nodes, rounds, data)
    with LocalDeployment(out, nodes, config, warm=warm) as deployment:
        deployment.build()
        deployment.start_superlink()
        deployment.register_devices()
        deployment.start_devices()
        time.sleep(5)  # every executor has imported its app: the run measures rounds only
        catalog = load_catalog(deployment.catalog_path)
        shapes = shared_shapes(catalog, config.model.dim, item_ids=config.model.item_id_table)
        payload = sum(math.prod(s) for s in shapes.values())
        sampler = Sampler(deployment)
        sampler.start()

        def device_cpu() -> float:
            return cpu_seconds([p for roots in device_roots(deployment) for p in family(roots)])

        before: list[float] = []  # the devices' CPU once round 0 (the first evaluation) is in
        roles: list[dict[str, float]] = []

        def on_round(record: dict[str, Any]) -> None:
            if not before:
                before.append(device_cpu())
                roles.append(cpu_by_role())

        outcome = deployment.federate(on_round)
        after = device_cpu()
        fedrec_roles = _delta(cpu_by_role(), roles[0], rounds)
        sampler.done.set()
        sampler.join()
        echo_before = cpu_by_role()
        layout = ",".join("x".join(str(n) for n in shape) for shape in shapes.values())
        echo = deployment.federate_echo(rounds, payload, payload_shapes=layout)
        echo_roles = _delta(cpu_by_role(), echo_before, rounds)  # its start-up included
        restarts = dict(deployment.restarts)
    records = outcome.metrics["rounds"]
    samples = sampler.samples
    steady = statistics.median(samples[len(samples) // 2 :]) if samples else 0
    fedrec_round, echo_round = round_seconds(records), round_seconds(echo.metrics["rounds"])
    return {
        "runtime": "warm executor" if warm else "a process per message",
        "seconds_per_round": fedrec_round,
        "echo_seconds_per_round": echo_round,
        "ratio_to_echo": fedrec_round / echo_round,
        "steady_rss_one_device_mib": steady / 2**20,
        "peak_rss_one_device_mib": max(samples, default=0) / 2**20,
        "cpu_seconds_per_device_round": (after - before[0]) / (nodes * rounds),
        "cpu_seconds_per_round_by_role": {"fedrec": fedrec_roles, "null app": echo_roles},
        "unanswered": sum(r.get("clients_unanswered", 0) for r in records),
        "eval_unanswered": sum(r.get("eval_unanswered", 0) for r in records),
        "executor_restarts": restarts,
        "payload_floats": payload,
        "hr@10": outcome.metrics["final"].get("hr@10"),
        "run_seconds": deployment.timings["run_seconds"],
        "supernodes_online_seconds": deployment.timings["supernodes_online_seconds"],
    }


def simulated(nodes: int, rounds: int, data: str, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    metrics = simulate(settings(nodes, rounds, data).replace(out_dir=str(out)))
    return {
        "seconds_per_round": round_seconds(metrics["rounds"]),
        "run_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", default="synthetic", help="'synthetic' or a data folder")
    parser.add_argument("--per-message", action="store_true", help="Flower's default runtime")
    parser.add_argument("--simulate", action="store_true", help="also the simulation engine")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-deployment"))
    args = parser.parse_args()
    data = args.data if args.data == "synthetic" else str(Path(args.data).resolve())
    results: dict[str, Any] = {"rounds": args.rounds, "data": args.data, "by_nodes": {}}
    for n in args.nodes:
        dep = deployed(n, args.rounds, data, args.out / f"deployed-{n}", not args.per_message)
        row: dict[str, Any] = {"deployed": dep}
        line = (
            f"{n:3d} devices ({dep['runtime']}): fedrec {dep['seconds_per_round']:.2f} s/round,"
            f" null app {dep['echo_seconds_per_round']:.2f} (×{dep['ratio_to_echo']:.2f});"
            f" one device steady {dep['steady_rss_one_device_mib']:.0f} MiB"
            f" (peak {dep['peak_rss_one_device_mib']:.0f}); CPU/device/round"
            f" {dep['cpu_seconds_per_device_round']:.3f} s; unanswered {dep['unanswered']}"
            f" train, {dep['eval_unanswered']} eval; executor restarts {dep['executor_restarts']}"
            f"; CPU s/round by role {dep['cpu_seconds_per_round_by_role']}"
        )
        if args.simulate:
            row["simulated"] = simulated(n, args.rounds, data, args.out / f"simulated-{n}")
            line += f"; simulated {row['simulated']['seconds_per_round']:.2f} s/round"
        results["by_nodes"][n] = row
        print(line, flush=True)
    ns = sorted(results["by_nodes"])
    if len(ns) > 1:
        first, last = (
            results["by_nodes"][n]["deployed"]["seconds_per_round"] for n in (ns[0], ns[-1])
        )
        results["growth"] = last / first
        print(f"growth of fedrec's round from {ns[0]} to {ns[-1]} devices: ×{last / first:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deployment.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out / 'deployment.json'}")


if __name__ == "__main__":
    main()
