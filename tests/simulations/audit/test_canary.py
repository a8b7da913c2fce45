"""The one-run canary audit (simulations/audit/canary.py): it has power on a run without DP
(the bound is above 0) and stays at or under the claim of a noised run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from builders import federation

from fedrec.common.data.sources import load_interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.canary import canary_audit, write_canary_data
from fedrec.simulations.inprocess import run_inprocess

# every device trains every round: an included canary joins all 30 rounds
BASE = {"data": "synthetic", "synthetic-users": 60, "synthetic-items": 300, "num-rounds": 30,
        "clients-per-round": 80, "eval-every": 30, "client-weighting": "uniform"}  # fmt: skip


def _rerun(config: FederationConfig) -> dict:
    return run_inprocess(config, seed=1)[0]


def test_canaries_are_written_with_their_items_whether_included_or_not(tmp_path: Path) -> None:
    data = load_interactions("synthetic", synthetic=federation(**{}).synthetic())
    included, items = write_canary_data(data, tmp_path, 10, 4, np.random.default_rng(0))
    with (tmp_path / "ratings.csv").open() as f:
        rows = list(csv.DictReader(f))
    canary_rows = [r for r in rows if r["user"].startswith("canary-")]
    assert len(canary_rows) == 4 * int(included.sum())
    assert {r["user"] for r in canary_rows} == {f"canary-{c}" for c in np.flatnonzero(included)}
    written = load_interactions(tmp_path)
    assert {i for row in items for i in row} <= set(written.item_ids)  # excluded ones' too
    assert written.num_users == data.num_users + int(included.sum())


@pytest.mark.research  # a canary rerun with a bound
def test_a_run_without_dp_gives_a_positive_lower_bound() -> None:
    found = canary_audit(FederationConfig.from_mapping(BASE), _rerun, canaries=60, items=30)
    assert found.claimed_epsilon is None and not found.violates
    assert found.epsilon_lower_bound > 0.5, found


@pytest.mark.research  # a canary rerun with a bound
def test_a_noised_run_stays_under_its_claim() -> None:
    config = FederationConfig.from_mapping(
        {**BASE, "dp-clip-norm": 0.5, "dp-noise-multiplier": 1.0}
    )
    found = canary_audit(config, _rerun, canaries=60, items=30)
    assert found.claimed_epsilon is not None and found.claimed_epsilon > 0
    assert found.epsilon_lower_bound <= found.claimed_epsilon and not found.violates


def test_a_model_without_item_ids_is_refused_with_the_audit_that_fits() -> None:
    config = FederationConfig.from_mapping({**BASE, "item-ids": "none"})
    with pytest.raises(ValueError, match="no item table: run the membership audit"):
        canary_audit(config, _rerun, canaries=60, items=30)


def test_the_audit_of_a_run_without_item_ids_leaves_the_canary_out_unless_asked(
    tmp_path: Path,
) -> None:
    """`fedrec audit report RUN` (attacks: all that apply) on an item-ids = "none" run does not
    run the canary audit; naming it is refused before any other attack's work."""
    from fedrec.simulations.audit.report import ATTACKS, applicable_attacks, audit_run

    config = FederationConfig.from_mapping({**BASE, "item-ids": "none", "num-rounds": 2,
                                            "eval-every": 2, "clients-per-round": 10})  # fmt: skip
    assert applicable_attacks(config, None) == ("interaction", "attribute", "membership")
    assert applicable_attacks(FederationConfig.from_mapping(BASE), None) == ATTACKS
    run_inprocess(config.replace(out_dir=str(tmp_path / "run")), seed=1)
    with pytest.raises(ValueError, match="audit it with --attacks interaction,attribute"):
        audit_run(tmp_path / "run", attacks=("interaction", "canary"))
