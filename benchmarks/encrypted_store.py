"""What encryption at rest costs a client call: plain vs encrypted shards and state.

    .venv/bin/python benchmarks/encrypted_store.py --data /work/shared/data/ml-100k \
        [--calls 300] [--dim 64] [--json]

One "call" does what a ClientApp train call does with data and state, through the same
interfaces: the catalog file, ``local_user(config, context)`` of a ShardSource, then
``load``/``save`` of the private state (user embedding row + user features) and
``load_json``/``save_json`` of a privacy ledger in a StateStore. Plain is
DataSetPartitions + ContextStateStore (memory); encrypted is EncryptedPartitions +
EncryptedFileStore with a key file, a fresh store per call (the simulation re-sends the app
with every message), every save atomic and fsync'ed; a third row repeats it with
``os.fsync`` stubbed out, to split the cost of encryption from the cost of durability. Users
are visited in a seeded random order, after a warm-up of a few calls. The shards are written
once to a temporary folder (never next to the data set); the one-off costs (writing them, one
production Argon2id derivation) are printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from flwr.app import Context, RecordDict

from fedrec.client.data import (
    NUM_PARTITIONS,
    PARTITION_ID,
    DataSetPartitions,
    ShardSource,
    pseudonym,
)
from fedrec.client.encrypted_shards import EncryptedPartitions, write_encrypted_shards
from fedrec.client.secure_store import EncryptedFileStore
from fedrec.client.store import ContextStateStore, StateStore
from fedrec.common import keys
from fedrec.common.crypto import Argon2idParams, Passphrase, SealingKey, read_key_file
from fedrec.common.data.catalog import Catalog, load_catalog, save_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger
from fedrec.server.runs import CATALOG_FILE

WARMUP = 5


def one_call(
    source: ShardSource, store: StateStore, config: FederationConfig, context: Context
) -> tuple[float, float]:
    """Seconds spent (reading the shard, loading + saving the state) in one client call."""
    start = time.perf_counter()
    catalog = load_catalog(config.catalog)
    shard = source.local_user(config, context).shard
    loaded = time.perf_counter()
    private = store.load(keys.STATE_PRIVATE)
    ledger_doc = store.load_json(keys.STATE_RECORD_LEDGER)
    if private is None:  # first visit: what a fresh device model would hold
        private = {
            "user_embedding.weight": np.zeros((1, config.dim), np.float32),  # (1, dim)
            "user_features": shard.user_features.reshape(1, -1),  # (1, F_u)
        }
    ledger = PrivacyLedger.from_dict(ledger_doc) if ledger_doc else PrivacyLedger()
    ledger.record(1.1, min(1.0, 64 / max(1, len(shard.train_items))), steps=2)
    private["user_embedding.weight"] += 0.01  # "training"
    store.save(keys.STATE_PRIVATE, private)
    store.save_json(keys.STATE_RECORD_LEDGER, ledger.to_dict())
    assert catalog.num_items == shard.num_items
    return loaded - start, time.perf_counter() - loaded


def run(
    name: str,
    source: ShardSource,
    store_of: Callable[[int, Context], StateStore],
    config: FederationConfig,
    order: np.ndarray,
    users: int,
) -> dict[str, Any]:
    contexts = [_node(u, users) for u in range(users)]
    for user in order[:WARMUP]:
        one_call(source, store_of(int(user), contexts[user]), config, contexts[user])
    shard_s, state_s = [], []
    for user in order:
        a, b = one_call(source, store_of(int(user), contexts[user]), config, contexts[user])
        shard_s.append(a)
        state_s.append(b)
    ms = {
        "shard": shard_s,
        "state": state_s,
        "total": [a + b for a, b in zip(shard_s, state_s, strict=True)],
    }
    return {
        "name": name,
        **{f"{k}_mean_ms": 1e3 * statistics.fmean(v) for k, v in ms.items()},
        **{f"{k}_median_ms": 1e3 * statistics.median(v) for k, v in ms.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="data-set path or 'synthetic'")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = FederationConfig(data=args.data, dim=args.dim, seed=args.seed)
    plain = DataSetPartitions()
    data, split = plain.split(config)
    users = split.num_users
    scratch = tempfile.TemporaryDirectory(prefix="fedrec-bench-catalog-")
    catalog = save_catalog(Catalog.of(data), Path(scratch.name) / CATALOG_FILE)
    config = config.replace(catalog=str(catalog))
    order = np.random.default_rng(args.seed).integers(0, users, size=args.calls)
    states: dict[int, RecordDict] = {}
    results = [
        run(
            "plain",
            plain,
            lambda u, c: ContextStateStore(states.setdefault(u, RecordDict())),
            config,
            order,
            users,
        )
    ]
    with tempfile.TemporaryDirectory(prefix="fedrec-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_encrypted_shards(config, root / "shards", root / "device.key")
        write_s = time.perf_counter() - start
        encrypted = EncryptedPartitions(root / "shards", root / "device.key")
        key_file = root / "device.key"

        def encrypted_store(user: int, context: Context) -> StateStore:
            name = pseudonym(user)
            return EncryptedFileStore(root / "state" / name, read_key_file(key_file), name)

        results.append(run("encrypted", encrypted, encrypted_store, config, order, users))
        with mock.patch("os.fsync"):  # what the crypto costs without the durability
            results.append(run("no-fsync", encrypted, encrypted_store, config, order, users))
    scratch.cleanup()
    start = time.perf_counter()
    SealingKey.from_passphrase(Passphrase("benchmark", Argon2idParams()))
    argon_s = time.perf_counter() - start

    one_off = {"users": users, "write_all_s": write_s, "argon2id_default_s": argon_s}
    if args.json:
        print(json.dumps({"data": args.data, "calls": args.calls, **one_off, "runs": results}))
        return
    print(f"data={args.data} users={users} calls={args.calls} dim={args.dim}")
    print(f"{'':10} {'shard ms':>18} {'state ms':>18} {'total ms':>18}   (mean / median)")
    for r in results:
        cells = [f"{r[f'{k}_mean_ms']:8.3f} / {r[f'{k}_median_ms']:7.3f}" for k in _PARTS]
        print(f"{r['name']:10} " + " ".join(f"{c:>18}" for c in cells))
    extra = {k: results[1][f"{k}_mean_ms"] - results[0][f"{k}_mean_ms"] for k in _PARTS}
    print("overhead   " + " ".join(f"{f'+{extra[k]:.3f}':>18}" for k in _PARTS) + "   (mean)")
    print(
        f"one-off: writing {users} encrypted shards {write_s:.2f} s"
        f" ({1e3 * write_s / users:.2f} ms/user); one Argon2id derivation at the production"
        f" default {Argon2idParams().words()} {argon_s:.2f} s (once per store with a passphrase)"
    )


_PARTS = ("shard", "state", "total")


def _node(user: int, users: int) -> Context:
    node_config = {PARTITION_ID: user, NUM_PARTITIONS: users}
    return Context(
        run_id=0, node_id=user, node_config=node_config, state=RecordDict(), run_config={}
    )


if __name__ == "__main__":
    main()
