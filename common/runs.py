"""Run folders: every job writes ``config.json`` and ``metrics.json`` (and artefacts) to one DIR.

The audit report, the benchmark scripts and the tests read these files, so the layout is an
interface: keys only get added, never renamed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


def prepare_run_dir(out: str | Path) -> Path:
    """Create ``out`` (parents too); an existing non-empty run folder is refused, not mixed."""
    path = Path(out)
    if path.exists() and (path / METRICS_FILE).exists():
        raise FileExistsError(
            f"{path} already holds a finished run ({METRICS_FILE}); choose a new --out folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    path = Path(path)
    text = json.dumps(_jsonable(payload), indent=2, sort_keys=False, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_header() -> dict[str, str]:
    """Provenance stamped into every config.json."""
    import torch

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
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
