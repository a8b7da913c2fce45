"""Tests for fedrec.client.data: where a node's state is kept decides whether a run resumes."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from fedrec.client.data import check_state_is_kept, state_store
from fedrec.common.fedconfig import FederationConfig

DP = FederationConfig(local_dp_noise_multiplier=1.0, client_weighting="uniform")


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_a_resumed_dp_simulation_without_state_dir_is_refused() -> None:
    resumed = DP.replace(resume="runs/a/checkpoint.npz")
    with pytest.raises(ValueError, match="ledger would start again at ε = 0"):
        check_state_is_kept(resumed)
    with pytest.raises(ValueError, match="needs state-dir"):
        state_store(resumed, _context(), "user-1")  # where memory would be chosen


def test_what_may_resume_in_memory() -> None:
    check_state_is_kept(DP)  # a fresh run: its ledgers start at zero anyway
    check_state_is_kept(FederationConfig(resume="runs/a/checkpoint.npz"))  # no device DP
    kept = DP.replace(resume="runs/a/checkpoint.npz", state_dir="state", key_file="key")
    check_state_is_kept(kept)  # the ledgers are on disk
