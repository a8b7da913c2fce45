"""A run's live view (server/progress.py): off a terminal it becomes plain progress lines,
so a log file or CI shows how a run is going."""

from __future__ import annotations

import io

from rich.console import Console

from fedrec.server.progress import PlainProgress, progress_view


def test_a_log_file_gets_one_line_per_change() -> None:
    out = io.StringIO()
    with PlainProgress(Console(file=out, width=200)) as progress:
        task = progress.add_task("simulate (starting Ray)", total=3, info="")
        progress.update(task, completed=1, info="round 1  loss 0.61", description="simulate")
        progress.update(task, completed=1, info="round 1  loss 0.61")  # nothing new
        progress.update(task, advance=2, info="round 3  HR@10 0.420")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("simulate 1/3  round 1  loss 0.61") and lines[0].startswith("[")
    assert lines[1].endswith("simulate 3/3  round 3  HR@10 0.420")


def test_off_a_terminal_the_view_is_plain() -> None:
    assert isinstance(progress_view(), PlainProgress)  # pytest captures stdout: no terminal
