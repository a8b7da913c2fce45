"""The `fedrec` command line: train-central end to end, and errors that stop with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import federation
from typer.testing import CliRunner

from fedrec.cli import app

runner = CliRunner()


def flat(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_train_central_writes_the_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train-central",
            "--model",
            "mf",
            "--data",
            "synthetic",
            "--epochs",
            "2",
            "--dim",
            "16",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert str(out) in flat(result.output).replace(" ", "")
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["config"]["model"] == "mf"
    assert set(metrics["final"]) == {"hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10"}
    assert len(metrics["epochs"]) == 2
    assert metrics["train_seconds"] > 0
    assert 0 <= metrics["best_epoch"] < 2


def test_mostpop_needs_no_training(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train-central", "--model", "mostpop", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["final"]["hr@10"] > 0.1  # popularity is a real (weak) signal on synthetic


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train-central", "--model", "bert", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "model must be one of" in flat(result.output)


def test_bad_data_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "ratings.csv"
    bad.write_text("user,item,rating,timestamp\n1,2,5,100\n1,3,x,101\n")
    result = runner.invoke(app, ["train-central", "--data", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "ratings.csv line 3" in flat(result.output)


def test_existing_run_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    result = runner.invoke(app, ["train-central", "--model", "mostpop", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "already holds a finished run" in flat(result.output)


def test_simulate_rejects_unknown_setting(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--set", "lokal-lr=1"])
    assert result.exit_code == 2
    assert "lokal-lr" in flat(result.output)


def test_simulate_rejects_missing_scenario(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["simulate", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "nope.toml" in flat(result.output)


def test_a_scenario_with_settings_outside_its_run_table_is_refused(tmp_path: Path) -> None:
    from fedrec.common.cli import load_scenario

    path = tmp_path / "s.toml"
    path.write_text('num-rounds = 50\n[run]\ndata = "synthetic"\n')
    with pytest.raises(ValueError, match=r"\['num-rounds'\] is outside the \[run\] table"):
        load_scenario(path)


def test_cohorts_larger_than_the_population_are_refused() -> None:
    from fedrec.common.fedconfig import FederationConfig
    from fedrec.simulations.runner import check_population

    check_population(federation(clients_per_round=60, min_clients=60), 60)
    for key in ("clients-per-round", "min-clients", "eval-clients"):
        config = FederationConfig.from_mapping({key: 61})
        with pytest.raises(ValueError, match=f"{key} = 61 exceeds the 60 users"):
            check_population(config, 60)


def test_scenarios_parse() -> None:
    from fedrec.common.cli import SCENARIO_DIR, load_scenario
    from fedrec.common.fedconfig import FederationConfig

    scenarios = sorted(SCENARIO_DIR.glob("*.toml"))
    assert {p.name for p in scenarios} >= {
        "synthetic-quick.toml", "ml100k-fedavg.toml", "ml100k-dp-eps8.toml", "ml100k-dp-eps2.toml",
    }  # fmt: skip
    parsed = {path.stem: FederationConfig.from_mapping(load_scenario(path)) for path in scenarios}
    for name, target in (("ml100k-dp-eps8", 8.0), ("ml100k-dp-eps2", 2.0)):
        config = parsed[name]  # both levels of DP on, with the user-level target
        assert config.user_dp.enabled and config.record_dp.enabled
        assert (config.user_dp.target_epsilon, config.user_dp.delta) == (target, 1e-4)


def test_a_deployment_refuses_user_level_dp_without_secure_aggregation(tmp_path: Path) -> None:
    """Refused before any SuperLink is contacted (none runs here): the server would see each
    device's clipped update, which interaction inference reads (docs/privacy.md)."""
    catalog = tmp_path / "catalog.npz"
    catalog.write_bytes(b"")
    dp = ["--set", "dp-clip-norm=0.5", "--set", "dp-noise-multiplier=1.0",
          "--set", "client-weighting=uniform"]  # fmt: skip
    args = ["server", "run", "--out", str(tmp_path / "run"), "--credentials",
            str(tmp_path / "none"), "--catalog", str(catalog), *dp]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--allow-visible-updates" in flat(result.output) and "warning" in result.output
    assert not (tmp_path / "run").exists()
    allowed = runner.invoke(app, [*args, "--allow-visible-updates"])
    assert "--allow-visible-updates to accept" not in flat(allowed.output)  # past the check


def test_a_deployment_refuses_simulated_malicious_devices(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.npz"
    catalog.write_bytes(b"")
    args = ["server", "run", "--out", str(tmp_path / "run"), "--credentials",
            str(tmp_path / "none"), "--catalog", str(catalog),
            "--set", "poison-fraction=0.05", "--set", "target-items=1"]  # fmt: skip
    result = runner.invoke(app, args)
    said = flat(result.output)
    assert result.exit_code == 2 and "poison-fraction = 0.05 is a simulation setting" in said
    assert not (tmp_path / "run").exists()
