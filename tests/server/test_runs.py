"""Tests for fedrec.server.runs: run folders and atomic, strict JSON files."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fedrec.common import files
from fedrec.server.runs import (
    CHECKPOINT,
    CONFIG_FILE,
    METRICS_FILE,
    ROUNDS_LOG,
    prepare_run_dir,
    run_header,
    write_json,
)

# ---------------------------------------------------------------- prepare_run_dir


def test_prepare_run_dir_creates_parents(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run1"
    assert prepare_run_dir(out) == out
    assert out.is_dir()
    assert prepare_run_dir(str(out)) == out  # an existing, unfinished folder is fine


def test_prepare_run_dir_accepts_folder_without_metrics(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("{}")
    assert prepare_run_dir(tmp_path) == tmp_path


def test_prepare_run_dir_refuses_a_finished_run(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text("{}")
    with pytest.raises(FileExistsError, match=METRICS_FILE):
        prepare_run_dir(tmp_path)
    assert (tmp_path / METRICS_FILE).read_text() == "{}"  # untouched


@pytest.mark.parametrize("left", [ROUNDS_LOG, CHECKPOINT])
def test_prepare_run_dir_refuses_an_interrupted_run_unless_resuming_it(
    tmp_path: Path, left: str
) -> None:
    (tmp_path / left).write_text("round 3")
    with pytest.raises(
        FileExistsError, match=f"interrupted run: continue it with --resume {tmp_path}"
    ):
        prepare_run_dir(tmp_path)
    with pytest.raises(FileExistsError, match="interrupted"):
        prepare_run_dir(tmp_path, resume=tmp_path.parent)  # resuming another run
    assert prepare_run_dir(tmp_path, resume=tmp_path) == tmp_path
    assert prepare_run_dir(tmp_path, resume=tmp_path / CHECKPOINT) == tmp_path
    assert (tmp_path / left).read_text() == "round 3"  # untouched


# ---------------------------------------------------------------- write_json


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_json_round_trip(tmp_path: Path) -> None:
    payload = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": {}}}
    path = write_json(tmp_path / "m.json", payload)
    assert path == tmp_path / "m.json"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert json.loads(text) == payload
    assert list(json.loads(text)) == ["a", "b", "c"]  # key order kept
    assert _leftovers(tmp_path) == []


def test_write_json_non_finite_floats_become_null(tmp_path: Path) -> None:
    payload = {
        "nan": float("nan"),
        "inf": math.inf,
        "-inf": -math.inf,
        "np_nan": np.float32("nan"),
        "nested": [1.0, {"x": np.float64("inf")}, (float("nan"),)],
        "ok": 0.25,
    }
    out = json.loads(write_json(tmp_path / "m.json", payload).read_text())
    assert out == {
        "nan": None,
        "inf": None,
        "-inf": None,
        "np_nan": None,
        "nested": [1.0, {"x": None}, [None]],
        "ok": 0.25,
    }


def test_write_json_numpy_scalars_paths_and_keys(tmp_path: Path) -> None:
    payload = {
        "i": np.int64(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "p": Path("/x/y"),
        "t": (1, 2),
        7: "int key",
    }
    out = json.loads(write_json(tmp_path / "m.json", payload).read_text())
    assert out == {"i": 3, "f": 0.5, "b": True, "p": "/x/y", "t": [1, 2], "7": "int key"}


@dataclass(frozen=True)
class _Inner:
    lr: float = 0.01
    path: Path = Path("data/x.csv")


@dataclass(frozen=True)
class _Config:
    name: str = "seed"
    epochs: int = 3
    loss: float = float("nan")
    inner: _Inner = field(default_factory=_Inner)
    dims: tuple[int, ...] = (32, 16)


def test_write_json_dataclasses(tmp_path: Path) -> None:
    out = json.loads(write_json(tmp_path / CONFIG_FILE, {"config": _Config()}).read_text())
    assert out == {
        "config": {
            "name": "seed",
            "epochs": 3,
            "loss": None,
            "inner": {"lr": 0.01, "path": "data/x.csv"},
            "dims": [32, 16],
        }
    }
    top = json.loads(write_json(tmp_path / "top.json", _Config(epochs=5)).read_text())
    assert top["epochs"] == 5


def test_write_json_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"v": 1})
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert _leftovers(tmp_path) == []


def test_write_json_unserializable_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_write_json_is_atomic_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"v": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}  # never half-written
    assert _leftovers(tmp_path) == []  # the temp file is cleaned up
    assert os.listdir(tmp_path) == ["m.json"]


# ---------------------------------------------------------------- run_header


def test_run_header_keys_and_serializable(tmp_path: Path) -> None:
    """Every config.json names the versions of fedrec and of what computes its numbers."""
    from importlib.metadata import version

    import fedrec

    header = run_header()
    assert set(header) >= {"created", "fedrec", "flwr", "torch", "opacus", "python", "machine"}
    assert header["fedrec"] == fedrec.__version__ == version("fedrec")
    assert header["flwr"] == version("flwr") and header["opacus"] == version("opacus")
    assert all(isinstance(v, str) and v for v in header.values())
    assert header["created"].endswith("+00:00")
    assert json.loads(write_json(tmp_path / "h.json", header).read_text()) == header
