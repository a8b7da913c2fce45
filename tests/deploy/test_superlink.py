"""Tests for fedrec.deploy.superlink: what a deployed run is submitted with, and followed by.

The SuperLink itself runs in tests/simulations/test_deploy_e2e.py (real processes, TLS)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from builders import federation

from fedrec.common.fedconfig import SIMULATION_KEYS, FederationConfig
from fedrec.deploy.credentials import make_server_credentials
from fedrec.deploy.superlink import (
    SuperLinkSettings,
    _json_of,
    _RoundsTail,
    submit_federation,
    write_app,
    write_run_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_app_names_fedrecs_components_and_every_default(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "app")
    document = tomllib.loads((folder / "pyproject.toml").read_text())
    flwr = document["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "fedrec.server.app:app",
        "clientapp": "fedrec.client.app:app",
    }
    assert document["project"]["dependencies"] == []  # nothing is installed at run time
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    # the table `flwr run .` sends from the repository, less what only a simulation sets
    assert flwr["config"] == {k: v for k, v in ours.items() if k not in SIMULATION_KEYS}
    assert SIMULATION_KEYS and all(k in ours for k in SIMULATION_KEYS)


def test_the_run_config_file_gives_the_config_back(tmp_path: Path) -> None:
    config = federation(
        num_rounds=7, catalog='/srv/"odd" path/catalog.npz', local_lr=0.25, strategy="fedyogi"
    )
    path = write_run_config(config, tmp_path / "run-config.toml")
    parsed = FederationConfig.from_mapping(tomllib.loads(path.read_text()))
    assert parsed == config


def test_a_deployed_run_needs_absolute_paths_and_a_catalog(tmp_path: Path) -> None:
    control = object()  # never reached: every check fails before a request
    with pytest.raises(ValueError, match="must be an absolute path on the SuperLink host"):
        submit_federation(control, federation(catalog="catalog.npz"), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the published catalog"):
        submit_federation(control, federation(out_dir=str(tmp_path)), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a run folder"):
        submit_federation(control, federation(catalog=str(tmp_path / "c.npz")), tmp_path)  # type: ignore[arg-type]


def test_superlink_settings_check_the_credentials(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fedrec server certs --out"):
        SuperLinkSettings(tmp_path, tmp_path / "state.db")
    make_server_credentials(tmp_path)
    settings = SuperLinkSettings(tmp_path, tmp_path / "state.db", port=18000)
    argv = settings.argv()
    for flag in ("--enable-supernode-auth", "--disable-runtime-dependency-installation"):
        assert flag in argv
    assert argv[argv.index("--database") + 1] == str(tmp_path / "state.db")
    assert "--insecure" not in argv
    in_memory = SuperLinkSettings(tmp_path, None).argv()
    assert in_memory[in_memory.index("--database") + 1] == ":flwr-in-memory:"
    assert settings.address == "127.0.0.1:18000"  # it listens everywhere; dial loopback
    assert SuperLinkSettings(tmp_path, tmp_path / "db", host="::1", port=9).address == "[::1]:9"
    with pytest.raises(ValueError, match="port must be"):
        SuperLinkSettings(tmp_path, tmp_path / "db", port=70000)


def test_rounds_are_followed_line_by_line_never_half(tmp_path: Path) -> None:
    log = tmp_path / "rounds.jsonl"
    tail = _RoundsTail(log)
    assert list(tail.new()) == []  # not written yet
    log.write_text('{"round": 0}\n{"round": 1}\n{"rou')  # the third still being written
    assert [r["round"] for r in tail.new()] == [0, 1]
    with log.open("a") as fh:
        fh.write('nd": 2}\n')
    assert [r["round"] for r in tail.new()] == [2]
    assert list(tail.new()) == []


def test_flwr_json_is_found_after_plain_lines() -> None:
    assert _json_of('Loading project\n{"success": true, "run-id": 5}') == {
        "success": True,
        "run-id": 5,
    }
    assert _json_of("no json here") is None
    assert _json_of(json.dumps([1, 2])) is None
