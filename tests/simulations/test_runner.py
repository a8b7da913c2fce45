"""The engine runner's lifecycle (simulations/runner.py): Ctrl-C ends a run between rounds,
resumable from its checkpoint; a second Ctrl-C ends the process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from fedrec.common.fedconfig import FederationConfig
from fedrec.common.stop import STOP_REQUESTED, RunInterrupted
from fedrec.simulations.inprocess import run_inprocess
from fedrec.simulations.runner import stop_between_rounds

RUN = {"data": "synthetic", "synthetic-users": 40, "synthetic-items": 300, "num-rounds": 6,
       "clients-per-round": 10, "eval-every": 3}  # fmt: skip


def test_a_signal_requests_a_stop_instead_of_raising() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_between_rounds():
        assert not STOP_REQUESTED.is_set()
        os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread: no KeyboardInterrupt
        assert STOP_REQUESTED.is_set()
    assert signal.getsignal(signal.SIGINT) is before  # restored
    STOP_REQUESTED.clear()


def test_a_stop_ends_the_run_after_the_round_under_way_and_it_resumes(tmp_path: Path) -> None:
    config = FederationConfig.from_mapping(RUN).replace(out_dir=str(tmp_path / "run"))

    def stop_after_round_2(record: dict) -> None:
        if record["round"] == 2:
            STOP_REQUESTED.set()  # as the Ctrl-C handler does

    try:
        with pytest.raises(RunInterrupted, match="after round 2"):
            run_inprocess(config, seed=1, on_round=stop_after_round_2)
    finally:
        STOP_REQUESTED.clear()
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(FileExistsError, match="interrupted run"):  # not overwritten by accident
        run_inprocess(config, seed=1)
    metrics, _ = run_inprocess(config.replace(resume=str(tmp_path / "run")), seed=1)
    assert [r["round"] for r in metrics["rounds"]] == list(range(7))
    assert metrics["resumed"]["round"] == 2
