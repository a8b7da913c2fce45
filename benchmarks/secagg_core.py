"""What one SecAgg+ round of the protocol core costs, in memory, for 10 / 50 / 100 clients.

    .venv/bin/python benchmarks/secagg_core.py [--clients 10 50 100] [--dim 10000]
        [--drop 0.0 0.1] [--full-graph-max 50] [--json]

For each n: SecAgg+ with k = 2·⌈log2 n⌉ neighbours (Bell et al. 2020 take k = O(log n)) and,
for n ≤ --full-graph-max, SecAgg (the complete graph, k = n − 1); t = ⌊(k + 1)/2⌋ + 1, the
smallest majority of a client's k + 1 shares. Each row runs the four stages between
SecAggClient and SecAggServer objects (the loop of ``run_secagg``, timed per stage); a fraction
--drop of the clients drops after sharing its keys, so the server also rebuilds their mask keys
and strips their pairwise masks.
Client times are the mean over clients (they would run in parallel on devices); server times
are totals. Bytes are what one client uploads over the whole round (public keys, encrypted
shares, masked vector, unmask shares).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from fedrec.common.secagg.primitives import SecAggConfig
from fedrec.common.secagg.protocol import SecAggClient, SecAggServer

STAGES = Stage.all()


def secagg_plus_neighbours(n: int) -> int:
    k = 2 * math.ceil(math.log2(n))
    return n - 1 if k >= n - 1 else k


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_round(config: SecAggConfig, dim: int, drop: float, seed: int) -> dict[str, Any]:
    """Run one round; seconds per stage (client mean, server total) and bytes per client."""
    n, rng = config.num_clients, np.random.default_rng(seed)
    updates = [rng.normal(size=dim) for _ in range(n)]
    dropped = set(rng.choice(n, size=round(drop * n), replace=False).tolist())
    clients = [SecAggClient(i, config) for i in range(n)]
    server, _ = timed(lambda: SecAggServer(config, range(n), [(dim,)], rng))
    client_s = dict.fromkeys(STAGES, 0.0)
    server_s = dict.fromkeys(STAGES, 0.0)
    sent = 0

    def ask(stage: str, requests: dict[int, Any], answer: Callable[[int, Any], Any]) -> dict:
        replies = {}
        for u, request in requests.items():
            if stage == Stage.COLLECT_MASKED_VECTORS and u in dropped:
                continue
            replies[u], seconds = timed(lambda u=u, r=request: answer(u, r))
            client_s[stage] += seconds / n
        return replies

    keys = ask(Stage.SETUP, dict.fromkeys(range(n)), lambda u, _: clients[u].setup())
    sent += 64 * len(keys)
    requests, server_s[Stage.SETUP] = timed(lambda: server.share_keys_requests(keys))
    shares = ask(Stage.SHARE_KEYS, requests, lambda u, r: clients[u].share_keys(r))
    sent += sum(len(c) for reply in shares.values() for c in reply.ciphertexts)
    requests, server_s[Stage.SHARE_KEYS] = timed(lambda: server.collect_requests(shares))
    vectors = ask(
        Stage.COLLECT_MASKED_VECTORS,
        requests,
        lambda u, r: clients[u].masked_input(r, [updates[u]], np.random.default_rng(u)),
    )
    sent += sum(len(v) for v in vectors.values())
    requests, server_s[Stage.COLLECT_MASKED_VECTORS] = timed(
        lambda: server.unmask_requests(vectors)
    )
    unmasks = ask(Stage.UNMASK, requests, lambda u, r: clients[u].unmask(r))
    sent += sum(len(s) for reply in unmasks.values() for s in reply.shares)
    result, server_s[Stage.UNMASK] = timed(lambda: server.aggregate(unmasks))
    want = sum(np.clip(updates[u], -8, 8) for u in result.contributors)
    error = float(np.max(np.abs(result.total[0] - want)))
    assert error < config.max_sum_error(len(result.contributors)), error
    return {
        "n": n,
        "k": config.neighbours,
        "t": config.threshold,
        "dim": dim,
        "dropped": len(dropped),
        "client_s": client_s,
        "server_s": server_s,
        "client_total_s": sum(client_s.values()),
        "server_total_s": sum(server_s.values()),
        "bytes_up_per_client": sent / n,
        "max_abs_error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--dim", type=int, default=10_000)
    parser.add_argument("--drop", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--full-graph-max", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    rows = []
    print(
        "   n    k    t  drop | client s (mean): setup  shares   mask  unmask"
        " | server s: keys  relay    sum  unmask | KiB up/client"
    )
    for n in args.clients:
        ks = [secagg_plus_neighbours(n)] + ([n - 1] if n <= args.full_graph_max else [])
        for k in dict.fromkeys(ks):
            config = SecAggConfig(num_clients=n, num_neighbours=k, threshold=(k + 1) // 2 + 1)
            for drop in args.drop:
                row = one_round(config, args.dim, drop, args.seed)
                rows.append(row)
                c, s = row["client_s"], row["server_s"]
                print(
                    f"{n:4d} {k:4d} {config.threshold:4d} {row['dropped']:5d} | "
                    + " ".join(f"{c[st]:7.3f}" for st in STAGES)
                    + "     | "
                    + " ".join(f"{s[st]:7.3f}" for st in STAGES)
                    + f"    | {row['bytes_up_per_client'] / 1024:8.1f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
