"""Membership inference against the released model (simulations/audit/membership.py): it finds
the members of a run that memorizes, stays at chance against a model no user trained, and its
LiRA statistic is the offline, fixed-variance one of Carlini et al."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import federation

from fedrec.common.data.catalog import build_catalog, save_catalog
from fedrec.common.data.sources import load_interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import initial_shared_state
from fedrec.server.runs import CATALOG_FILE, FINAL_MODEL, write_arrays
from fedrec.simulations.audit.membership import (
    MIN_ITEMS,
    _candidates,
    _lira,
    membership_audit,
)
from fedrec.simulations.inprocess import run_inprocess

# 40 users, every one a candidate, all training every round for 5 local epochs: it memorizes
LEAKY = {"data": "synthetic", "synthetic-users": 40, "synthetic-items": 300, "num-rounds": 10,
         "clients-per-round": 80, "eval-every": 10, "client-weighting": "uniform",
         "local-epochs": 5}  # fmt: skip


def _rerun(config: FederationConfig) -> dict:
    return run_inprocess(config, seed=1)[0]


def _untrained(config: FederationConfig) -> dict:
    """A "run" that releases the initial model of its catalog: it depends on no user."""
    out = Path(config.outputs.out_dir)
    catalog = build_catalog(config.data.data)
    save_catalog(catalog, out / CATALOG_FILE)
    initial = initial_shared_state(catalog, config.model.dim, config.data.seed)
    write_arrays(out / FINAL_MODEL, {k: v.numpy() for k, v in initial.items()})
    return {}


@pytest.mark.research  # three reruns and an AUC bar
def test_the_members_of_a_memorizing_run_are_found() -> None:
    found = membership_audit(FederationConfig.from_mapping(LEAKY), _rerun, targets=40, shadows=2)
    assert found.reruns == 3 and found.targets == 40
    assert found.claimed_epsilons == (None, None, None)
    for view in ("loss", "rank", "lira"):
        result = found.views[view]
        assert result.auc.ci_low > 0.5, (view, result.auc)
    pairs = found.views["loss"]
    assert pairs.n_members + pairs.n_nonmembers == 3 * 40  # every (rerun, candidate) pair


def test_a_model_no_user_trained_gives_chance(tmp_path: Path) -> None:
    found = membership_audit(
        FederationConfig.from_mapping(LEAKY), _untrained, targets=40, shadows=2
    )
    for view in ("loss", "rank"):
        auc = found.views[view].auc
        assert auc.ci_low < 0.5 < auc.ci_high, (view, auc)
    # the same model thrice: every score equals its out-mean, LiRA cannot tell anyone apart
    assert found.views["lira"].auc.value == pytest.approx(0.5)


def test_lira_compares_each_score_with_the_other_reruns_that_left_the_user_out() -> None:
    scores = np.array([[1.0, 5.0], [2.0, 7.0], [4.0, 6.0]])  # 3 reruns × 2 candidates
    included = np.array([[True, False], [False, False], [False, True]])
    statistic, usable = _lira(scores, included)
    # candidate 0 is out in reruns 1, 2 (scores 2, 4); candidate 1 in reruns 0, 1 (5, 7)
    assert usable.tolist() == [[True, True], [True, True], [True, True]]
    spread = np.std([2 - 3, 4 - 3, 5 - 6, 7 - 6])  # out-scores less their candidate's out-mean
    raw = [[1 - 3, 5 - 7], [2 - 4, 7 - 5], [4 - 2, 6 - 6]]
    assert statistic == pytest.approx(np.array(raw) / spread)
    alone = np.array([[True, True], [False, True], [True, True]])
    _, usable = _lira(scores, alone)  # candidate 1 is never out: no pair of it is usable
    assert usable[:, 1].tolist() == [False, False, False] and usable[:, 0].tolist() == [
        True, False, True]  # fmt: skip


def test_candidates_have_their_history_and_negatives_outside_it() -> None:
    data = load_interactions("synthetic", synthetic=federation().synthetic())
    chosen, candidates = _candidates(data, 25, np.random.default_rng(0))
    assert len(chosen) == 25 == len(set(chosen.tolist()))
    for u, c in zip(chosen, candidates, strict=True):
        history = {data.item_ids[i] for i in data.item[data.user == u]}
        assert c.user == data.user_ids[u] and len(c.train) >= MIN_ITEMS
        assert set(c.train) < history and not set(c.negatives) & history
        assert len(c.negatives) == min(4 * len(c.train), data.num_items - len(history))


def test_too_few_targets_or_shadows_are_refused() -> None:
    config = FederationConfig.from_mapping(LEAKY)
    with pytest.raises(ValueError, match="at least 1 shadow"):
        membership_audit(config, _rerun, shadows=0)
    with pytest.raises(ValueError, match="at least 4 targets"):
        membership_audit(config, _rerun, targets=3)
