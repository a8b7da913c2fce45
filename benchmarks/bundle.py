"""The torch-free recommender: does the bundle (16-bit codes; 8-bit compared) rank as the
float32 model does, and what does a recommend call cost on one core?

    .venv/bin/python benchmarks/bundle.py --data ../shared/data/ml-100k [--model RUN/model.pt]
        [--epochs 20] [--dim 64] [--items 1682 10000 100000] [--reps 100] [--out DIR]

1. **Agreement.** A centrally trained seed model of ``--data`` (``fedrec train-central``'s
   training; or ``--model``, its ``model.pt``) ranks the catalog for every user in float32
   (``SeedModel.score_all``), and the bundle built from its shared group ranks it in NumPy
   (each user's own id row and features; train and held-out items excluded, as
   ``Device.recommend`` does), with 16-bit and with 8-bit codes. Reported per width: the
   share of users whose top-10 sets are equal, and the share among users whose float 10th and
   11th scores differ by more than twice the bundle's worst-case rounding of that user's
   scores (the users for whom any disagreement would be a defect, not a near-tie).
2. **Cost.** For each ``--items`` size, a synthetic catalog of that many items, one device
   store with a cached model: the bundle's size on disk, the median of ``--reps`` calls of
   the ranking alone (``InferenceBundle.top_k``) and of ``Device.recommend(k=10)`` (store
   decrypted, shard built, ranked), and a fresh process that opens the store and recommends:
   its peak RSS and whether it imported torch; and a fresh process that runs one training
   round of the device's ClientApp on that store (one local epoch from the initial model):
   its peak RSS, seconds and upload bytes. Everything on one core
   (``OMP/OPENBLAS/MKL_NUM_THREADS=1``, set before NumPy loads).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of this (large) process
# would report the parent's resident memory at the fork
_PROBE = """
import re, sys, time
from pathlib import Path
from fedrec.client.device import Device
started = time.perf_counter()
device = Device.open(sys.argv[1], key_file=sys.argv[2])
items = device.recommend(k=10)
took = time.perf_counter() - started
peak = re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)
print(len(items), 'torch' in sys.modules, peak, took)
"""


# one training round of the device's ClientApp on its store, in a fresh process: its peak RSS
# (torch, the model, the round) and what it sent
_TRAIN_PROBE = """
import re, sys, time, uuid
from pathlib import Path
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from fedrec.client.app import make_client_app
from fedrec.client.device import Device
from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import initial_shared_state
from fedrec.common.records import message_bytes
store, key, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
catalog = Device.open(store, key_file=key).catalog
config = ConfigRecord({keys.SERVER_ROUND: 1, keys.CATALOG_HASH: catalog.hash})
content = RecordDict({keys.CONFIG: config,
                      keys.ARRAYS: ArrayRecord(initial_shared_state(catalog, dim, 0))})
meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=7,
                reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                message_type="train")
context = Context(run_id=1, node_id=7, node_config={"store": store, "key-file": key},
                  state=RecordDict(), run_config={})
started = time.perf_counter()
reply = make_client_app(FederationConfig(dim=dim))(Message(metadata=meta, content=content), context)
took = time.perf_counter() - started
assert not reply.has_error(), reply.error
peak = re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)
print(peak, took, message_bytes(reply))
"""


def agreement(data_path: str, model_path: str, epochs: int, dim: int) -> dict[str, Any]:
    import torch

    from fedrec.common.bundle import build_bundle
    from fedrec.common.data.catalog import Catalog
    from fedrec.common.data.sources import load_interactions
    from fedrec.common.data.split import temporal_leave_one_out
    from fedrec.simulations.central import CentralConfig, build_model, train_central

    torch.set_num_threads(1)
    data = load_interactions(data_path)
    split = temporal_leave_one_out(data, seed=0)
    config = CentralConfig(data=data_path, epochs=epochs, dim=dim)
    model = build_model(config, data, split)
    if model_path:
        model.load_state_dict(torch.load(model_path, weights_only=True))
        trained = f"loaded {model_path}"
    else:
        started = time.perf_counter()
        _, result = train_central(config, data, split)
        trained = f"trained {epochs} epochs in {time.perf_counter() - started:.0f} s, test HR@10"
        trained += f" {result.final.get('hr@10', float('nan')):.4f}"
    catalog = Catalog.of(data)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    rows, features = state["user_embedding.weight"], data.user_features
    with torch.no_grad():
        exact = model.score_all(torch.arange(data.num_users)).numpy()
    report: dict[str, Any] = {
        "data": data_path, "model": trained, "users": data.num_users, "items": catalog.num_items,
    }  # fmt: skip
    for bits in (16, 8):
        bundle = build_bundle(state, catalog.item_features, catalog.hash, bits=bits)
        step = bundle.item_vectors().max(axis=0) / bundle.levels
        equal = separated = separated_equal = 0
        for user in range(data.num_users):
            held = [split.val_item[user], split.test_item[user]]
            seen = np.concatenate([split.train_items_of(user), held])
            seen = seen[seen >= 0]
            u = bundle.user_vector(rows[user], features[user])
            top, _ = bundle.top_k(u, 10, seen)
            scores = exact[user].copy()
            scores[seen] = -np.inf
            order = np.argsort(-scores, kind="stable")
            same = set(top) == set(order[:10])
            equal += same
            if scores[order[9]] - scores[order[10]] > 2 * float(
                np.abs(bundle.head_weight * u) @ step
            ):
                separated += 1
                separated_equal += same
        report[f"{bits}-bit"] = {
            "top10_equal": equal / data.num_users,
            "separated_users": separated,
            "top10_equal_separated": separated_equal / max(separated, 1),
        }
    return report


def cost(num_items: int, dim: int, reps: int, scratch: Path) -> dict[str, Any]:
    from flwr.app import ArrayRecord, ConfigRecord

    from fedrec.client.device import Device, Interaction
    from fedrec.common import keys
    from fedrec.common.bundle import build_bundle, save_bundle
    from fedrec.common.data.catalog import Catalog
    from fedrec.common.data.sources import load_interactions
    from fedrec.common.data.synthetic import SyntheticConfig
    from fedrec.common.model import initial_shared_state

    data = load_interactions(
        "synthetic", synthetic=SyntheticConfig(num_users=20, num_items=num_items)
    )
    catalog = Catalog.of(data)
    folder, key = scratch / f"store-{num_items}", scratch / f"store-{num_items}.key"
    device = Device.create(folder, catalog, key_file=key)
    rows = np.flatnonzero(data.user == 0)
    device.import_history(
        [Interaction(data.item_ids[data.item[r]], "view", None, float(data.timestamp[r]))
         for r in rows],
        hold_out=2,
    )  # fmt: skip
    shared = initial_shared_state(catalog, dim, 0)
    device.cache_model(ArrayRecord(shared), 1, ConfigRecord({keys.CATALOG_HASH: catalog.hash}))
    numpy_shared = {k: v.numpy() for k, v in shared.items()}
    bundle = build_bundle(numpy_shared, catalog.item_features, catalog.hash)
    size = save_bundle(bundle, scratch / f"bundle-{num_items}.npz").stat().st_size
    model_bytes = sum(v.nbytes for v in numpy_shared.values())
    u = np.abs(np.random.default_rng(0).normal(size=dim)).astype(np.float32)
    bundle.top_k(u, 10)  # decode V once, as a device's first call does
    rank = _median_ms(lambda: bundle.top_k(u, 10), reps)
    call = _median_ms(lambda: device.recommend(k=10), max(10, reps // 5))
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(folder), str(key)],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    trained = subprocess.run(
        [sys.executable, "-c", _TRAIN_PROBE, str(folder), str(key), str(dim)],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return {
        "items": num_items,
        "train_round_rss_mb": int(trained[0]) / 1024,
        "train_round_seconds": float(trained[1]),
        "train_upload_bytes": int(trained[2]),
        "bundle_bytes": size,
        "float32_shared_bytes": model_bytes,
        "top_k_ms": rank,
        "recommend_ms": call,
        "process_rss_mb": int(probe[2]) / 1024,
        "process_seconds": float(probe[3]),
        "process_imported_torch": probe[1] == "True",
    }


def _median_ms(call: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--model", default="", help="a train-central model.pt to use")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--items", type=int, nargs="*", default=[1682, 10_000, 100_000])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if args.data:
        report["agreement"] = agreement(args.data, args.model, args.epochs, args.dim)
        print(json.dumps(report["agreement"]), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        report["cost"] = []
        for n in args.items:
            report["cost"].append(cost(n, args.dim, args.reps, Path(scratch)))
            print(json.dumps(report["cost"][-1]), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bundle.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
