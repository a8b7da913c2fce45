"""``fedrec audit RUN_DIR``: the privacy audit report of a run (simulations/audit/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedrec.simulations.cli_common import console, or_exit

__all__ = ["audit_cmd"]

STYLE = {"green": "green", "amber": "yellow", "red": "red", "n/a": "dim"}


def audit_cmd(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="A run folder (fedrec simulate / server run); or `compare RUN1 RUN2 …`."
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option("--data", help="The run's data, if config.json's path is not readable."),
    ] = None,
    attacks: Annotated[
        str,
        typer.Option(
            help="all | none | a comma-separated list (interaction, attribute, membership, canary)."
        ),
    ] = "all",
    targets: Annotated[int, typer.Option(help="Devices the attacks observe.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the observed round and the bootstrap.")] = 0,
    canaries: Annotated[int, typer.Option(help="Canary users of the canary audit.")] = 200,
    canary_items: Annotated[int, typer.Option(help="Items of each canary.")] = 20,
    members: Annotated[
        int, typer.Option(help="Candidate users of membership inference (half left out).")
    ] = 200,
    shadows: Annotated[
        int, typer.Option(help="Shadow reruns of membership inference (it trains 1 + N).")
    ] = 2,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for audit.json and report.html (compare.*)."),
    ] = None,
) -> None:
    """Write audit.json and report.html: each protection with its evidence, the ε ledger
    recomputed, every key the server received, and attacks that would show a leak.

    `fedrec audit compare RUN1 RUN2 …` puts runs side by side (ε, SecAgg+, HR@10, attack
    AUCs), auditing each run that has no audit/audit.json yet. Exits 1 when a check
    contradicts a claim (an ε that does not recompute, a private key received, masked
    uploads an attack can read)."""
    from fedrec.simulations.audit.report import audit_run, write_report

    named: dict[str, tuple[str, ...] | None] = {"all": None, "none": ()}  # None: all that apply
    chosen = named[attacks] if attacks in named else [a.strip() for a in attacks.split(",")]

    def audit_one(run: Path, folder: Path | None = None) -> dict[str, Any]:
        with console.status(f"auditing {run} (the attacks replay the run)"):
            audit = or_exit(
                lambda: audit_run(
                    run,
                    data=data,
                    attacks=chosen,
                    targets=targets,
                    seed=seed,
                    canaries=canaries,
                    canary_items=canary_items,
                    members=members,
                    shadows=shadows,
                )
            )
        write_report(audit, folder or run / "audit")
        return audit

    if run_dirs[0] == Path("compare") and not run_dirs[0].exists():
        from fedrec.simulations.audit.compare import compare_audits, write_comparison

        rows = or_exit(lambda: compare_audits(run_dirs[1:], audit_one))
        json_path, html_path = write_comparison(rows, out or Path("audit-compare"))
        for r in rows:
            aucs = "  ".join(f"{v} {a:.3f}" for v, a in r["auc"].items())
            console.print(f"{r['run']}: ε {r['epsilon']:.3g}, HR@10 {r['hr@10']}  {aucs}")
        console.print(f"written: {json_path}, {html_path}")
        if any(r["violations"] for r in rows):
            console.print("[red]violation:[/] a run's audit contradicts one of its claims")
            raise typer.Exit(code=1)
        return
    if len(run_dirs) != 1:
        console.print("[red]error:[/] one run folder (or `compare RUN1 RUN2 …`)")
        raise typer.Exit(code=2)
    audit = audit_one(run_dirs[0], out)
    folder = out or run_dirs[0] / "audit"
    for row in audit["summary"]:
        style = STYLE[row["status"]]
        console.print(f"[{style}]{row['status']:>5}[/] {row['name']}: {row['evidence']}")
    for view, result in audit["attacks"].get("interaction", {}).items():
        if isinstance(result, dict):
            auc = result["auc"]
            console.print(
                f"interaction inference, {view}: AUC {auc['value']:.3f}"
                f" ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})"
            )
    membership = audit["attacks"].get("membership", {})
    for view in ("loss", "rank", "lira"):
        if view in membership:
            auc = membership[view]["auc"]
            console.print(
                f"membership inference, {view}: AUC {auc['value']:.3f}"
                f" ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})"
            )
    if membership:
        seconds = ", ".join(f"{s:.0f}" for s in membership["rerun_seconds"])
        console.print(f"membership inference: {membership['reruns']} reruns ({seconds} s)")
    if "canary" in audit["attacks"]:
        c = audit["attacks"]["canary"]
        claim = "none" if c["claimed_epsilon"] is None else f"{c['claimed_epsilon']:.3f}"
        console.print(
            f"canary audit: ε ≥ {c['epsilon_lower_bound']:.3f} (95 %, {c['correct']}/"
            f"{c['guesses']} correct guesses) against claimed ε {claim};"
            f" rerun {c['rerun_seconds']:.0f} s"
        )
    console.print(
        f"written: {folder / 'audit.json'}, {folder / 'report.html'}"
        f" ({audit['audit_seconds']:.1f} s)"
    )
    if audit["violations"]:
        for line in audit["violations"]:
            console.print(f"[red]violation:[/] {line}")
        raise typer.Exit(code=1)
