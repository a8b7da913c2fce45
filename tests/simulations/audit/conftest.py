"""Small seeded in-process runs for the audit tests: one plain, one with user-level DP and
SecAgg+ (each a few seconds), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.inprocess import run_inprocess

BASE = {
    "data": "synthetic",
    "synthetic-users": 60,
    "synthetic-items": 300,
    "num-rounds": 4,
    "clients-per-round": 10,
    "eval-every": 4,
    "client-weighting": "uniform",
}
PROTECTED = {"dp-clip-norm": 0.5, "dp-noise-multiplier": 1.0, "secure-aggregation": "secagg+"}


def _run(root: Path, name: str, **extra: object) -> Path:
    out = root / name
    config = FederationConfig.from_mapping({**BASE, **extra}).replace(out_dir=str(out))
    run_inprocess(config, seed=1)
    return out


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("audit"), "plain")


@pytest.fixture(scope="session")
def protected_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("audit"), "protected", **PROTECTED)
