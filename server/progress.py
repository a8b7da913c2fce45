"""A run as the commands show it: a live view of its rounds, and its results at the end.

On a terminal, ``fedrec simulate``, ``fedrec server run`` and ``fedrec deploy local`` show
a live bar with the current round's figures; off one (a log file, CI) they print one plain
line per round. :func:`print_results` states what the run folder holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from fedrec.common.cli import console

__all__ = ["PlainProgress", "print_results", "progress_view", "round_line"]


def progress_view() -> Progress | PlainProgress:
    """The live view on a terminal (description, bar, a line of current figures, elapsed
    time); plain progress lines otherwise (a log file, CI), where a live view prints nothing."""
    if not console.is_terminal:
        return PlainProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


class PlainProgress:
    """The live view's interface as one printed line per change of a task's figures."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self._tasks: dict[TaskID, dict[str, Any]] = {}
        self._started = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        task = TaskID(len(self._tasks))
        self._tasks[task] = {"description": description, "total": total, "completed": 0.0,
                             "info": fields.get("info", ""), "printed": None}  # fmt: skip
        return task

    def update(
        self,
        task: TaskID,
        *,
        advance: float | None = None,
        completed: float | None = None,
        description: str | None = None,
        info: str | None = None,
    ) -> None:
        state = self._tasks[task]
        if advance is not None:
            state["completed"] += advance
        if completed is not None:
            state["completed"] = completed
        if description is not None:
            state["description"] = description
        if info is not None:
            state["info"] = info
        total = f"/{state['total']:g}" if state["total"] else ""
        line = f"{state['description']} {state['completed']:g}{total}  {state['info']}".rstrip()
        if line != state["printed"]:  # one line per change, with the elapsed time
            elapsed = time.monotonic() - self._started
            self.console.print(f"[{elapsed:7.1f} s] {line}", markup=False, highlight=False)
            state["printed"] = line


def round_line(record: dict[str, Any]) -> str:
    """One round's figures (a rounds.jsonl record) for the live view."""
    hr = record.get("eval", {}).get("hr@10")
    exposure = record.get("eval", {}).get("er@10")
    loss = record.get("train_loss")
    eps = record.get("privacy", {}).get("user_level", {}).get("epsilon")
    return (
        f"round {record['round']}  clients {record.get('clients_replied', 0)}/"
        f"{record.get('clients_sampled', 0)}"
        + (f"  loss {loss:.4f}" if loss is not None else "")
        + (f"  HR@10 {hr:.3f}" if hr is not None else "")
        + (f"  targets ER@10 {exposure:.3f}" if exposure is not None else "")
        + (f"  ε {eps:.3f}" if eps is not None else "")
    )


def print_results(metrics: dict[str, Any], out: Path) -> None:
    """What a finished federation (simulated or deployed) prints: test quality, bytes, ε."""
    final = metrics.get("final", {})
    if final:
        console.print(
            f"[bold]test[/] (best val round {metrics['best_round']}): "
            f"HR@10 {final['hr@10']:.4f}  NDCG@10 {final['ndcg@10']:.4f}  "
            f"full HR@10 {final['full_hr@10']:.4f}  full NDCG@10 {final['full_ndcg@10']:.4f}"
        )
    evaluated = [r["eval"] for r in metrics.get("rounds", []) if "eval" in r]
    if evaluated and "er@10" in evaluated[-1]:
        last = evaluated[-1]
        console.print(
            f"target items' exposure (released model): ER@5 {last['er@5']:.4f}"
            f"  ER@10 {last['er@10']:.4f}"
        )
    b = metrics["bytes_per_client_round"]
    console.print(f"bytes per client per round: down {b['down']:.0f}  up {b['up']:.0f}")
    if "traffic" in metrics:
        t = metrics["traffic"]
        console.print(
            f"traffic: training down {t['train']['down'] / 1e6:.1f} MB up"
            f" {t['train']['up'] / 1e6:.1f} MB; evaluation down"
            f" {t['evaluate']['down'] / 1e6:.1f} MB up {t['evaluate']['up'] / 1e6:.2f} MB"
        )
    _print_privacy(metrics.get("privacy", {}))
    console.print(
        f"run folder: [bold]{out}[/] (config.json, metrics.json, model.npz, bundle.npz, *.png)"
    )


def _print_privacy(privacy: dict[str, Any]) -> None:
    user, record = privacy.get("user_level"), privacy.get("record_level")
    if user:
        stop = (
            f", stopped by the budget at round {privacy['stop_round']}"
            if privacy.get("stopped_by_budget")
            else ""
        )
        console.print(
            f"user-level DP: ε {user['epsilon']:.3f} (δ {user['delta']:g}) after"
            f" {user['rounds']} rounds, z {user['z']:.3f}, C {user['C']:g}, q {user['q']:.4f},"
            f" {user['accountant']}{stop}"
        )
    if record and record.get("epsilon_max") is not None:
        console.print(
            f"record-level DP (devices): ε min/median/max {record['epsilon_min']:.3f}/"
            f"{record['epsilon_median']:.3f}/{record['epsilon_max']:.3f} (δ {record['delta']:g}),"
            f" {record['clients_at_budget']} device(s) reached their budget"
        )


# the scenarios shipped with fedrec (simulations/*.toml, in the repository and the wheel)
SCENARIO_DIR = Path(__file__).resolve().parents[1] / "simulations"
