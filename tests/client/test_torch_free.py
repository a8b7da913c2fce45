"""A device's plain path imports no torch (issue 27): a process where torch and Opacus
cannot be imported serves a train and an evaluate message through the real ClientApp, and
asks for the ``torch`` extra, by name, only when the run trains under DP-SGD."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from builders import catalog_of, federation, with_catalog

from fedrec.common.model import initial_shared_state

TESTS = Path(__file__).resolve().parents[1]
USERS, DIM = 60, 8
SETTINGS = {"synthetic-users": USERS, "synthetic-items": 400, "dim": DIM, "seed": 0}

# Runs in a fresh interpreter: a finder first on sys.meta_path refuses torch and Opacus
# (and notes every attempt), then one node trains and evaluates through the ClientApp.
SCRIPT = """
import importlib.abc, json, sys

attempts = []

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "opacus"):
            attempts.append(name)
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, TESTS)
import numpy as np
from builders import federation, node_context, server_message, with_catalog
from flwr.app import Array, ArrayRecord

from fedrec.client.app import make_client_app
from fedrec.common import keys
from fedrec.common.data.catalog import load_catalog

config = with_catalog(federation(**{k.replace("-", "_"): v for k, v in SETTINGS.items()}))
catalog = load_catalog(config.data.catalog)
with np.load(ARRAYS) as saved:
    initial = ArrayRecord({name: Array(saved[name]) for name in saved.files})
app = make_client_app(config)
context = node_context(3, SETTINGS["synthetic-users"])
out = {}
try:
    for kind in ("train", "evaluate"):
        reply = app(server_message(kind, initial, context.node_id, 1, catalog=catalog), context)
        out[kind] = sorted(reply.content[keys.METRICS])
        if kind == "train":
            out["arrays"] = sorted(reply.content[keys.ARRAYS])
except ImportError as error:
    out["error"] = str(error)
out["torch"] = [m for m in sys.modules if m.split(".")[0] in ("torch", "opacus")]
out["attempts"] = attempts
print(json.dumps(out))
"""


def _run_blocked(tmp_path: Path, **settings: object) -> dict[str, object]:
    config = with_catalog(federation(**{k.replace("-", "_"): v for k, v in SETTINGS.items()}))
    initial = initial_shared_state(catalog_of(config), DIM, 0)
    arrays = tmp_path / "initial.npz"
    np.savez(arrays, **{name: value.numpy() for name, value in initial.items()})  # type: ignore[arg-type]
    values = {"TESTS": str(TESTS), "ARRAYS": str(arrays), "SETTINGS": {**SETTINGS, **settings}}
    prelude = "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items())
    done = subprocess.run(
        [sys.executable, "-c", prelude + SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_device_trains_and_evaluates_without_torch(tmp_path: Path) -> None:
    result = _run_blocked(tmp_path)
    assert "error" not in result, result
    assert keys_present(result, "train", "train-loss") and keys_present(result, "evaluate", "hr@10")
    assert "item_embedding.weight" in result["arrays"]  # type: ignore[operator]
    assert result["torch"] == [] and result["attempts"] == []  # never even tried


def test_dp_sgd_without_torch_names_the_extra_to_install(tmp_path: Path) -> None:
    dp = {"local-dp-noise-multiplier": 1.0, "client-weighting": "uniform"}
    result = _run_blocked(tmp_path, **dp)
    error = str(result.get("error", ""))
    assert "pip install 'fedrec[torch]'" in error and "DP-SGD" in error, result
    assert result["torch"] == []


def keys_present(result: dict[str, object], kind: str, key: str) -> bool:
    found = result.get(kind)
    return isinstance(found, list) and key in found
