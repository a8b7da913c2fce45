"""``fedrec audit``: the privacy audit of a run, for the privacy officer who signs it off.

    fedrec audit report RUN_DIR [--attacks all|none|LIST] [--out DIR]
    fedrec audit compare RUN_DIR RUN_DIR ... [--out DIR]

``report`` writes ``audit.json`` and ``report.html`` (simulations/audit/report.py): each
protection with its evidence, the ε ledger recomputed, every key the server received, and
attacks that would show a leak. ``compare`` puts runs side by side (ε, SecAgg+, HR@10, attack
AUCs), auditing each run that has no ``audit/audit.json`` yet. Both exit 1 when a check
contradicts a claim (an ε that does not recompute, a private key received, masked uploads an
attack can read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from fedrec.common.cli import console, or_exit

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="The privacy audit of a run: its report, or runs side by side.", no_args_is_help=True
)

STYLE = {"green": "green", "amber": "yellow", "red": "red", "n/a": "dim"}

DataOption = Annotated[
    str | None,
    typer.Option("--data", help="The run's data, if config.json's path is not readable."),
]
AttacksOption = Annotated[
    str,
    typer.Option(
        help="all | none | a comma-separated list (interaction, attribute, membership, canary)."
    ),
]
TargetsOption = Annotated[int, typer.Option(help="Devices the attacks observe.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the observed round and the bootstrap.")]
CanariesOption = Annotated[int, typer.Option(help="Canary users of the canary audit.")]
CanaryItemsOption = Annotated[int, typer.Option(help="Items of each canary.")]
MembersOption = Annotated[
    int, typer.Option(help="Candidate users of membership inference (half left out).")
]
ShadowsOption = Annotated[
    int, typer.Option(help="Shadow reruns of membership inference (it trains 1 + N).")
]


@dataclass(frozen=True)
class Auditor:
    """The attacks' settings of one command: audits a run folder into a report folder."""

    data: str | None
    attacks: str
    targets: int
    seed: int
    canaries: int
    canary_items: int
    members: int
    shadows: int

    def __call__(self, run: Path, folder: Path | None = None) -> dict[str, Any]:
        from fedrec.simulations.audit.report import audit_run, write_report

        named: dict[str, tuple[str, ...] | None] = {"all": None, "none": ()}  # None: all apply
        chosen = (
            named[self.attacks]
            if self.attacks in named
            else [a.strip() for a in self.attacks.split(",")]
        )
        with console.status(f"auditing {run} (the attacks replay the run)"):
            audit = or_exit(
                lambda: audit_run(
                    run,
                    data=self.data,
                    attacks=chosen,
                    targets=self.targets,
                    seed=self.seed,
                    canaries=self.canaries,
                    canary_items=self.canary_items,
                    members=self.members,
                    shadows=self.shadows,
                )
            )
        write_report(audit, folder or run / "audit")
        return audit


@audit_app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (fedrec simulate / server run).")],
    data: DataOption = None,
    attacks: AttacksOption = "all",
    targets: TargetsOption = 100,
    seed: SeedOption = 0,
    canaries: CanariesOption = 200,
    canary_items: CanaryItemsOption = 20,
    members: MembersOption = 200,
    shadows: ShadowsOption = 2,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for audit.json and report.html (default RUN/audit)."),
    ] = None,
) -> None:
    """Write audit.json and report.html of one run (see ``fedrec audit --help``)."""
    auditor = Auditor(data, attacks, targets, seed, canaries, canary_items, members, shadows)
    audit = auditor(run_dir, out)
    folder = out or run_dir / "audit"
    for row in audit["summary"]:
        style = STYLE[row["status"]]
        console.print(f"[{style}]{row['status']:>5}[/] {row['name']}: {row['evidence']}")
    for line in _attack_lines(audit["attacks"]):
        console.print(line)
    console.print(
        f"written: {folder / 'audit.json'}, {folder / 'report.html'}"
        f" ({audit['audit_seconds']:.1f} s)"
    )
    if audit["violations"]:
        for line in audit["violations"]:
            console.print(f"[red]violation:[/] {line}")
        raise typer.Exit(code=1)


@audit_app.command("compare")
def compare_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    data: DataOption = None,
    attacks: AttacksOption = "all",
    targets: TargetsOption = 100,
    seed: SeedOption = 0,
    canaries: CanariesOption = 200,
    canary_items: CanaryItemsOption = 20,
    members: MembersOption = 200,
    shadows: ShadowsOption = 2,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for compare.json and compare.html.")
    ] = Path("audit-compare"),
) -> None:
    """Put runs side by side: ε, SecAgg+, HR@10 and the attacks' AUCs (each run without an
    audit yet is audited first, into RUN/audit)."""
    from fedrec.simulations.audit.compare import compare_audits, write_comparison

    if len(run_dirs) < 2:
        console.print("[red]error:[/] compare needs two or more run folders")
        raise typer.Exit(code=2)
    auditor = Auditor(data, attacks, targets, seed, canaries, canary_items, members, shadows)
    rows = or_exit(lambda: compare_audits(run_dirs, auditor))
    json_path, html_path = write_comparison(rows, out)
    for r in rows:
        aucs = "  ".join(f"{v} {a:.3f}" for v, a in r["auc"].items())
        console.print(f"{r['run']}: ε {r['epsilon']:.3g}, HR@10 {r['hr@10']}  {aucs}")
    console.print(f"written: {json_path}, {html_path}")
    if any(r["violations"] for r in rows):
        console.print("[red]violation:[/] a run's audit contradicts one of its claims")
        raise typer.Exit(code=1)


def _attack_lines(attacks: dict[str, Any]) -> list[str]:
    """The attacks' headline figures, one line each."""
    lines = []
    for view, result in attacks.get("interaction", {}).items():
        if isinstance(result, dict):
            auc = result["auc"]
            lines.append(
                f"interaction inference, {view}: AUC {auc['value']:.3f}"
                f" ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})"
            )
    membership = attacks.get("membership", {})
    for view in ("loss", "rank", "lira"):
        if view in membership:
            auc = membership[view]["auc"]
            lines.append(
                f"membership inference, {view}: AUC {auc['value']:.3f}"
                f" ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})"
            )
    if membership:
        seconds = ", ".join(f"{s:.0f}" for s in membership["rerun_seconds"])
        lines.append(f"membership inference: {membership['reruns']} reruns ({seconds} s)")
    if "canary" in attacks:
        c = attacks["canary"]
        claim = "none" if c["claimed_epsilon"] is None else f"{c['claimed_epsilon']:.3f}"
        lines.append(
            f"canary audit: ε ≥ {c['epsilon_lower_bound']:.3f} (95 %, {c['correct']}/"
            f"{c['guesses']} correct guesses) against claimed ε {claim};"
            f" rerun {c['rerun_seconds']:.0f} s"
        )
    return lines
