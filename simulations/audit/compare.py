"""``fedrec audit compare RUN1 RUN2 …``: ε against attack AUCs and HR@10 across runs.

Each run's ``audit/audit.json`` is read (written first by :func:`~.report.audit_run` when a
run has none), and one table and one figure put the runs side by side: the user-level ε the
audit recomputed (∞ without user-level DP), whether SecAgg+ was on, test HR@10, each
interaction-inference view's AUC, membership inference's AUC (LiRA and the loss score) and the
canary audit's ε lower bound — the privacy/utility trade-off of TF Privacy's privacy report,
on our attacks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment

__all__ = ["MEMBERSHIP_ORDER", "VIEW_ORDER", "compare_audits", "write_comparison"]

VIEW_ORDER = ("upload", "masked-upload", "cohort-sum", "released")
MEMBERSHIP_ORDER = ("lira", "loss")
Auditor = Callable[[Path], dict[str, Any]]


def _row(run: Path, audit: dict[str, Any]) -> dict[str, Any]:
    ledger = audit["ledger"]
    views = audit["attacks"].get("interaction", {})
    membership = audit["attacks"].get("membership", {})
    canary = audit["attacks"].get("canary")
    return {
        "run": run.name,
        "dir": str(run),
        "epsilon": ledger["epsilon"] if ledger["rounds"] else math.inf,
        "delta": ledger["delta"] or None,
        "secure": audit["run"]["config"].get("secure-aggregation", "off") != "off",
        "hr@10": audit["run"]["final"].get("hr@10"),
        "auc": {v: views[v]["auc"]["value"] for v in VIEW_ORDER if v in views},
        "membership_auc": {
            v: membership[v]["auc"]["value"] for v in MEMBERSHIP_ORDER if v in membership
        },
        "canary_epsilon_lb": canary["epsilon_lower_bound"] if canary else None,
        "violations": len(audit["violations"]),
    }


def compare_audits(runs: Sequence[Path], audit: Auditor) -> list[dict[str, Any]]:
    """One row per run; ``audit(run)`` is called for a run without ``audit/audit.json``."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two run folders")
    rows = []
    for run in runs:
        saved = run / "audit" / "audit.json"
        rows.append(_row(run, json.loads(saved.read_text()) if saved.exists() else audit(run)))
    return rows


def _figure(rows: list[dict[str, Any]]) -> str:
    from fedrec.server.plots import plt, svg_of

    finite = [r["epsilon"] for r in rows if math.isfinite(r["epsilon"])]
    plain_at = 2 * max(finite) if finite else 1.0  # runs without DP, drawn right of the rest
    figure, axis = plt.subplots(figsize=(6, 3.5))
    series = [(v, "auc", v) for v in VIEW_ORDER]
    series += [(f"membership ({v})", "membership_auc", v) for v in MEMBERSHIP_ORDER]
    for label, column, view in series:
        points = [(r["epsilon"] if math.isfinite(r["epsilon"]) else plain_at, r[column][view])
                  for r in rows if view in r[column]]  # fmt: skip
        if points:
            axis.scatter(*zip(*points, strict=True), label=label)
    axis.axhline(0.5, color="grey", lw=0.8, ls=":")
    axis.set(xscale="log", xlabel="user-level ε (rightmost: no DP)", ylabel="attack AUC")
    axis.legend(fontsize=8)
    return svg_of(figure)


def write_comparison(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``out/compare.json`` and ``out/compare.html``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "compare.json"
    json_path.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    template = (resources.files(__package__) / "compare.html").read_text()
    html = (
        Environment(autoescape=True)
        .from_string(template)
        .render(
            rows=rows,
            views=VIEW_ORDER,
            membership=MEMBERSHIP_ORDER,
            figure=_figure(rows),
            inf=math.inf,
        )
    )
    html_path = out / "compare.html"
    html_path.write_text(html)
    return json_path, html_path
