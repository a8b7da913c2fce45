"""``fedrec audit compare``: runs side by side (simulations/audit/compare.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app


@pytest.mark.research  # two audited runs and an AUC bar
def test_runs_are_compared_on_epsilon_utility_and_attack_auc(
    plain_run: Path, protected_run: Path, tmp_path: Path
) -> None:
    plain, protected = tmp_path / "plain", tmp_path / "protected"
    shutil.copytree(plain_run, plain)
    shutil.copytree(protected_run, protected)
    out = tmp_path / "compared"
    args = ["audit", "compare", str(plain), str(protected), "--targets", "30",
            "--attacks", "interaction", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["run"]: r for r in json.loads((out / "compare.json").read_text())}
    assert math.isinf(rows["plain"]["epsilon"]) and not rows["plain"]["secure"]
    assert 0 < rows["protected"]["epsilon"] < 10 and rows["protected"]["secure"]
    assert (
        "masked-upload" in rows["protected"]["auc"] and "masked-upload" not in rows["plain"]["auc"]
    )
    assert rows["plain"]["auc"]["upload"] > 0.8
    assert rows["plain"]["membership_auc"] == {} and rows["plain"]["canary_epsilon_lb"] is None
    assert (plain / "audit" / "audit.json").exists()  # audited on the way, kept for next time
    html = (out / "compare.html").read_text()
    assert 'id="comparison"' in html and "∞ (no DP)" in html and "<svg" in html
    one = CliRunner().invoke(app, ["audit", "compare", str(plain)])
    assert one.exit_code == 2 and "two or more run folders" in one.output
