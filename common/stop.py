"""Stopping a run between rounds: the request, and what a run that stopped raises.

Set by a signal handler (``fedrec simulate`` on Ctrl-C) to end a run before its next round;
the round under way finishes and is checkpointed, so the run resumes from it. Here, in
``common``, so that what reports an interruption (every command's error handling,
``common/cli.py``) does not import the server and torch.
"""

from __future__ import annotations

import threading
from pathlib import Path

__all__ = ["STOP_REQUESTED", "RunInterrupted"]

STOP_REQUESTED = threading.Event()


class RunInterrupted(RuntimeError):
    """The run stopped between rounds because a stop was requested (Ctrl-C)."""

    def __init__(self, completed_round: int, run_dir: str | Path | None = None) -> None:
        where = (
            f": {run_dir} holds its checkpoint, continue with --resume {run_dir}"
            if run_dir
            else " (checkpointed)"
        )
        super().__init__(f"interrupted after round {completed_round}{where}")
        self.completed_round = completed_round
