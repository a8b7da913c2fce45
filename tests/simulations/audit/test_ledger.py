"""The audit recomputes every recorded user-level ε (simulations/audit/ledger.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fedrec.common.privacy import epsilon
from fedrec.simulations.audit.ledger import recompute_user_level


def _rounds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def test_the_recomputed_epsilon_equals_the_runs_in_every_round(protected_run: Path) -> None:
    check = recompute_user_level(_rounds(protected_run), population=60)
    assert [r.round for r in check.rounds] == [1, 2, 3, 4]
    assert check.disagreements == [] and check.to_dict()["agrees"]
    # independently: fedrec's closed-form composition of (z, q) over the same steps
    z, q = check.rounds[0].z, check.rounds[0].q
    assert q == 10 / 60 and z == 1.0
    for r in check.rounds:
        assert abs(r.recomputed - epsilon(z, q, r.round, check.delta)) < 1e-9
    assert check.at_deltas["1e-05"] > check.at_deltas["0.001"]  # smaller δ, larger ε
    assert not check.delta_too_large  # δ 1e-4 < 1/60


def test_a_tampered_epsilon_is_caught(protected_run: Path) -> None:
    rounds = _rounds(protected_run)
    third = next(r for r in rounds if r["round"] == 3)
    third["privacy"]["user_level"]["epsilon"] *= 0.9  # a run that under-reports
    check = recompute_user_level(rounds, population=60)
    assert [r.round for r in check.disagreements] == [3]
    assert not check.to_dict()["agrees"]


def test_delta_at_or_above_one_over_n_is_flagged(protected_run: Path) -> None:
    assert recompute_user_level(_rounds(protected_run), population=10_000).delta_too_large


def test_a_run_without_dp_has_an_empty_ledger(plain_run: Path) -> None:
    check = recompute_user_level(_rounds(plain_run), population=60)
    assert check.rounds == () and check.epsilon == 0.0 and not check.delta_too_large


def test_a_resumed_runs_log_is_recomputed_from_the_rounds_it_counts(protected_run: Path) -> None:
    later = [r for r in _rounds(protected_run) if r["round"] >= 3]  # as a run resumed at 2
    check = recompute_user_level(later, population=60)
    assert check.assumed_rounds == 2 and [r.round for r in check.rounds] == [3, 4]
    assert check.disagreements == []
