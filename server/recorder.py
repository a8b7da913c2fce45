"""The run's record of its rounds: every round's entry, kept and streamed as it ends.

The round loop (``server/rounds.py``) hands :meth:`RoundRecorder.record` one entry per round
— built from what each layer returned (the aggregator's report, DP-FedAvg's ledger entry,
the step size, the evaluation) — and the recorder keeps it, appends it to ``rounds.jsonl``
(streamed, so a long run can be watched with ``tail -f``) and passes a copy to the live view.
It records; it drives nothing.

An entry (``rounds.jsonl``, one JSON object a line): ``round``; the training fan-out's
``clients_sampled`` / ``clients_replied`` / ``clients_failed``, ``errors``, bytes per client
and in total each way, ``received`` (record names, shapes and types of what arrived, never a
value), ``rejected`` (refused replies by reason), ``bounded`` (norm bounding), ``secagg`` (a
secure round's stages); ``train_loss`` and ``returning`` (the contributors' means),
``server_lr``; ``privacy`` (``user_level``: the DP-FedAvg ledger; ``record_level``: the
devices' DP-SGD ε); the evaluation's ``eval`` (the evaluated users' mean of each rate),
``clients_evaluated`` and its bytes; ``train_seconds`` and ``round_seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrec.server.runs import append_round

__all__ = ["RoundRecorder"]

RoundCallback = Callable[[dict[str, Any]], None]


class RoundRecorder:
    """Keeps, streams and reports each round's entry."""

    def __init__(self, run_dir: Path | None = None, on_round: RoundCallback | None = None):
        self.run_dir = run_dir
        self.on_round = on_round
        self.records: list[dict[str, Any]] = []

    def record(self, entry: dict[str, Any]) -> None:
        self.records.append(dict(entry))
        if self.run_dir is not None:
            append_round(self.run_dir, entry)
        if self.on_round is not None:
            self.on_round(dict(entry))
