"""Run folders: every job writes ``config.json`` and ``metrics.json`` (and artefacts) to one DIR.

The one place that names the files of a run folder and writes them (atomically: a crash leaves
the old file or the new one, :func:`fedrec.common.files.write_atomic`)::

    config.json        the job, its settings and provenance (written when the run starts)
    metrics.json       per-round records and final metrics (written once, when it ends)
    rounds.jsonl       the per-round records, one line each, streamed as rounds finish
    catalog.npz        the public catalog the run was built on (simulations build it here)
    checkpoint.npz     the shared model, server-optimizer state and (DP) ledger, every round
    checkpoint.json    a readable copy of the checkpoint's round and ledger
    model.npz          the final shared model (federated); model.pt (centralized)
    bundle.npz         its inference bundle: what a device ranks with (fedrec.common.bundle)
    quality.png, loss.png

The audit report, the benchmark scripts and the tests read these files, so the layout is an
interface: keys only get added, never renamed.
"""

from __future__ import annotations

import io
import json
import math
import platform
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.files import write_atomic

__all__ = [
    "CATALOG_FILE",
    "CENTRAL_MODEL",
    "CHECKPOINT",
    "CHECKPOINT_META",
    "CONFIG_FILE",
    "FINAL_MODEL",
    "INFERENCE_BUNDLE",
    "LOSS_PLOT",
    "METRICS_FILE",
    "QUALITY_PLOT",
    "ROUNDS_LOG",
    "append_round",
    "prepare_run_dir",
    "read_rounds",
    "run_header",
    "write_arrays",
    "write_figure",
    "write_json",
    "write_state_dict",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
ROUNDS_LOG = "rounds.jsonl"
CATALOG_FILE = "catalog.npz"
CHECKPOINT = "checkpoint.npz"
CHECKPOINT_META = "checkpoint.json"
FINAL_MODEL = "model.npz"
INFERENCE_BUNDLE = "bundle.npz"
CENTRAL_MODEL = "model.pt"
QUALITY_PLOT = "quality.png"
LOSS_PLOT = "loss.png"


def prepare_run_dir(out: str | Path, resume: str | Path = "") -> Path:
    """Create ``out`` (parents too). A folder holding a run is refused, not overwritten: a
    finished one always, an interrupted one (a round log or checkpoint, no metrics) unless
    this run resumes from it (``resume``: its folder or checkpoint)."""
    path = Path(out)
    if path.exists() and (path / METRICS_FILE).exists():
        raise FileExistsError(
            f"{path} already holds a finished run ({METRICS_FILE}); choose a new --out folder"
        )
    interrupted = path.exists() and any((path / f).exists() for f in (ROUNDS_LOG, CHECKPOINT))
    resumed = Path(resume).resolve() if resume else None
    if interrupted and resumed not in (path.resolve(), (path / CHECKPOINT).resolve()):
        raise FileExistsError(
            f"{path} holds an interrupted run: continue it with --resume {path}, or choose a"
            " new --out folder (its files would be overwritten)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    text = json.dumps(_jsonable(payload), indent=2, sort_keys=False, allow_nan=False)
    return write_atomic(path, (text + "\n").encode("utf-8"))


def write_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write named arrays as one ``.npz`` atomically (no pickled objects inside)."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez(buffer, **named)
    return write_atomic(path, buffer.getvalue())


def write_figure(path: str | Path, figure: Any, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return write_atomic(path, buffer.getvalue())


def write_state_dict(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write a torch state dict (``torch.save``) atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return write_atomic(path, buffer.getvalue())


def append_round(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Append one round's record to ``rounds.jsonl`` (one short line: an atomic append)."""
    with (Path(run_dir) / ROUNDS_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every round's record of ``rounds.jsonl`` (FileNotFoundError if the run kept none)."""
    text = (Path(run_dir) / ROUNDS_LOG).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_header() -> dict[str, str]:
    """Provenance stamped into every config.json: when, where, and the versions of fedrec
    and of what computes a run's numbers (Flower, torch, Opacus)."""
    from importlib.metadata import PackageNotFoundError, version

    import fedrec

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fedrec": fedrec.__version__,
        "flwr": installed("flwr"),
        "torch": installed("torch"),
        "opacus": installed("opacus"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
