"""``fedrec audit``: audit.json, the HTML report in a real headless Chromium, and the exit
status when a claim is contradicted (simulations/audit/report.py, simulations/cli_audit.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.report import SCHEMA, audit_run, write_report
from fedrec.simulations.inprocess import run_inprocess


@pytest.fixture(scope="module")
def audited(protected_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    rerun = lambda config: run_inprocess(config, seed=1)[0]  # noqa: E731
    audit = audit_run(protected_run, targets=30, canaries=20, canary_items=10, members=30,
                      shadows=1, rerun=rerun)  # fmt: skip
    out = tmp_path_factory.mktemp("report")
    json_path, html_path = write_report(audit, out)
    return {"audit": audit, "json": json_path, "html": html_path}


def test_the_audit_states_each_protection_with_its_evidence(audited: dict) -> None:
    audit = json.loads(audited["json"].read_text())
    assert audit["schema"] == SCHEMA and audit["violations"] == []
    status = {row["name"]: row["status"] for row in audit["summary"]}
    assert status["Private state stays on the device"] == "green"
    assert status["Secure aggregation (SecAgg+)"] == "green"
    assert status["User-level DP (DP-FedAvg)"] == "amber"  # seeded: its noise is predictable
    assert status["Record-level DP (DP-SGD on the device)"] == "red"  # off
    # under SecAgg+ the server's messages are masked: no attribute is read from them
    assert status["User features not inferable from what the server receives"] == "green"
    assert audit["attacks"]["attribute"]["upload"]["gender"]["accuracy"] == 1.0  # without it
    assert audit["ledger"]["agrees"] and len(audit["ledger"]["rounds"]) == 4
    views = audit["attacks"]["interaction"]
    assert {"upload", "cohort-sum", "released", "masked-upload"} <= set(views)
    assert views["masked-upload"]["auc"]["value"] <= 0.55 < views["upload"]["auc"]["value"]
    assert audit["storage"]["checkpoint_arrays"] and audit["not_covered"]
    canary = audit["attacks"]["canary"]
    assert canary["canaries"] == 20 and canary["epsilon_lower_bound"] <= canary["claimed_epsilon"]
    membership = audit["attacks"]["membership"]
    assert membership["reruns"] == 2 and membership["targets"] == 30
    assert all(e > 0 for e in membership["claimed_epsilons"])  # DP reruns, their own ledgers
    assert {"loss", "rank"} <= set(membership) and audit["not_run"] == []
    user_level = next(r for r in audit["summary"] if r["name"] == "User-level DP (DP-FedAvg)")
    assert "membership inference against the released model: AUC" in user_level["evidence"]


def test_the_report_renders_in_headless_chromium(audited: dict, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    url = audited["html"].resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    audit = audited["audit"]
    for section in ('id="summary"', 'id="ledger"', 'id="attacks"', 'id="evidence"',
                    'id="data-handling"', 'id="attribute"', 'id="canary"', 'id="membership"',
                    "Record of processing",
                    "DPIA outline"):  # fmt: skip
        assert section in dom.stdout, section
    assert f"{audit['ledger']['epsilon']:.4g}" in dom.stdout
    assert f"{audit['attacks']['interaction']['masked-upload']['auc']['value']:.3f}" in dom.stdout
    assert f"{audit['attacks']['membership']['loss']['auc']['value']:.3f}" in dom.stdout
    assert "<svg" in dom.stdout  # the figures are inline
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000


def test_a_contradicted_claim_fails_the_command(protected_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(protected_run, run)
    lines = (run / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[-1]["privacy"]["user_level"]["epsilon"] /= 2  # the run claims half its ε
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(app, ["audit", "report", str(run), "--attacks", "none"])
    assert result.exit_code == 1, result.output
    assert "violation" in result.output and "recomputed" in result.output
    assert (run / "audit" / "report.html").exists()
    clean = CliRunner().invoke(app, ["audit", "report", str(protected_run), "--attacks", "none",
                                     "--out", str(tmp_path / "clean")])  # fmt: skip
    assert clean.exit_code == 0, clean.output


def test_unknown_attacks_and_missing_runs_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "report", str(tmp_path), "--attacks", "none"])
    assert result.exit_code == 2 and "config.json" in result.output
    with pytest.raises(ValueError, match="unknown attacks"):
        audit_run(tmp_path, attacks=["telepathy"])


def test_the_devices_record_level_epsilon_is_drawn_as_a_distribution(tmp_path: Path) -> None:
    settings = {"data": "synthetic", "synthetic-users": 60, "synthetic-items": 300,
                "num-rounds": 4, "clients-per-round": 10, "eval-every": 4,
                "local-dp-noise-multiplier": 1.0, "local-dp-clip-norm": 1.0,
                "local-epsilon-budget": 50.0, "client-weighting": "uniform"}  # fmt: skip
    config = FederationConfig.from_mapping(settings).replace(out_dir=str(tmp_path / "run"))
    run_inprocess(config, seed=1)
    audit = audit_run(tmp_path / "run", attacks=())
    summary = audit["ledger"]["record_level"]
    deciles = summary["epsilon_deciles"]
    assert len(deciles) == 11 and deciles == sorted(deciles)
    assert deciles[0] == summary["epsilon_min"] and deciles[-1] == summary["epsilon_max"]
    _, html_path = write_report(audit, tmp_path / "report")
    html = html_path.read_text()
    assert 'id="record-level"' in html and f"{summary['epsilon_max']:.3g}" in html
    assert html.count("<svg") == 1  # the distribution (no user-level ledger, no attack)
