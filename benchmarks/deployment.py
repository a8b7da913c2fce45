"""A real deployment on loopback against the same rounds in simulation.

    .venv/bin/python benchmarks/deployment.py [--nodes 5 10 20] [--rounds 3] [--out DIR]

For each N: ``fedrec deploy local``'s LocalDeployment with N SuperNodes (TLS, node
authentication, one sealed store per synthetic user, N users) runs ``--rounds`` rounds; then
``fedrec simulate`` runs the same settings (same data, same N users, same rounds) in the
simulation engine. Printed and written to ``OUT/deployment.json``:

* seconds per round (train + evaluate, rounds >= 1) deployed and simulated, and their ratio;
* SuperNode start-up: seconds from starting N processes to all N online, and for one device
  restarted on its own (graceful stop, start, online);
* peak RSS of one SuperNode with its ClientApp processes (sampled every 0.2 s from /proc);
* bytes per device per round: the model down and the update up as the ServerApp counts
  them, and Flower's own count of the run's traffic divided by devices and rounds.

One run per N (a benchmark, not a test: minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from fedrec.common.fedconfig import FederationConfig
from fedrec.deploy.local import LocalDeployment, deployment_config
from fedrec.deploy.processes import free_port
from fedrec.simulations.runner import simulate


def settings(nodes: int, rounds: int) -> FederationConfig:
    return deployment_config(
        FederationConfig(
            synthetic_items=1000,
            dim=32,
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


def family_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


class PeakRSS(threading.Thread):
    """Samples one device's process family until stopped."""

    def __init__(self, deployment: LocalDeployment) -> None:
        super().__init__(daemon=True)
        self.deployment, self.peak, self.done = deployment, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            service = self.deployment.devices[0].service
            if service is not None and service.running():
                self.peak = max(self.peak, family_rss(service.pid))
            time.sleep(0.2)


def deployed(nodes: int, rounds: int, out: Path) -> dict[str, Any]:
    config = settings(nodes, rounds)
    with LocalDeployment(out, nodes, config) as deployment:
        deployment.build()
        deployment.start_superlink()
        deployment.register_devices()
        deployment.start_devices()
        sampler = PeakRSS(deployment)
        sampler.start()
        outcome = deployment.federate()
        sampler.done.set()
        sampler.join()
        # one device restarted on its own: graceful stop (it deactivates), start, online
        node = deployment.devices[-1]
        assert node.service is not None
        node.service.stop()
        deployment.services.forget(node.service)
        node.port = free_port()
        started = time.perf_counter()
        deployment.start_device(node)
        assert deployment.control is not None
        deployment.control.wait_online(nodes, 120, deployment.check_alive)
        restart = time.perf_counter() - started
    metrics = outcome.metrics
    traffic = outcome.info.get("network-traffic", {})
    return {
        "seconds_per_round": round_seconds(metrics["rounds"]),
        "supernodes_online_seconds": deployment.timings["supernodes_online_seconds"],
        "one_supernode_restart_seconds": restart,
        "peak_rss_one_device_bytes": sampler.peak,
        "bytes_per_device_round": metrics["bytes_per_client_round"],
        "flower_bytes_per_device_round": {
            "to_devices": traffic.get("outbound-bytes", 0) / (nodes * rounds),
            "from_devices": traffic.get("inbound-bytes", 0) / (nodes * rounds),
        },
        "hr@10": metrics["final"]["hr@10"],
        "run_seconds": deployment.timings["run_seconds"],
    }


def simulated(nodes: int, rounds: int, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    metrics = simulate(settings(nodes, rounds).replace(out_dir=str(out)))
    return {
        "seconds_per_round": round_seconds(metrics["rounds"]),
        "hr@10": metrics["final"]["hr@10"],
        "run_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-deployment"))
    args = parser.parse_args()
    results: dict[str, Any] = {"rounds": args.rounds, "by_nodes": {}}
    for n in args.nodes:
        dep = deployed(n, args.rounds, args.out / f"deployed-{n}")
        sim = simulated(n, args.rounds, args.out / f"simulated-{n}")
        ratio = dep["seconds_per_round"] / sim["seconds_per_round"]
        results["by_nodes"][n] = {"deployed": dep, "simulated": sim, "ratio": ratio}
        rss = dep["peak_rss_one_device_bytes"] / 2**20
        b, f = dep["bytes_per_device_round"], dep["flower_bytes_per_device_round"]
        print(
            f"{n:3d} nodes: {dep['seconds_per_round']:.1f} s/round deployed,"
            f" {sim['seconds_per_round']:.1f} simulated (×{ratio:.1f});"
            f" {n} SuperNodes online in {dep['supernodes_online_seconds']:.1f} s, one restart"
            f" {dep['one_supernode_restart_seconds']:.1f} s; peak RSS of one device {rss:.0f} MiB;"
            f" bytes/device/round down {b['down']:.0f} up {b['up']:.0f} (Flower: to"
            f" {f['to_devices']:.0f}, from {f['from_devices']:.0f})",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deployment.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out / 'deployment.json'}")


if __name__ == "__main__":
    main()
