"""Tests for fedrec.client.data: where a node's state is kept decides whether a run resumes, and
where a simulated node's shard comes from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import federation, node_context
from flwr.app import Context, RecordDict

from fedrec.client.partitions import DataSetPartitions, check_state_is_kept, state_store
from fedrec.common.data.pack import write_pack
from fedrec.common.data.shard import user_shard

DP = federation(local_dp_noise_multiplier=1.0, client_weighting="uniform")


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
    check_state_is_kept(federation(resume="runs/a/checkpoint.npz"))  # no device DP
    kept = DP.replace(resume="runs/a/checkpoint.npz", state_dir="state", key_file="key")
    check_state_is_kept(kept)  # the ledgers are on disk


def test_a_node_maps_its_shard_from_the_pack_and_never_loads_the_data_set(
    tmp_path: Path,
) -> None:
    from fedrec.client import partitions as client_data

    config = federation(synthetic_users=40, synthetic_items=400, seed=2)
    interactions, split = DataSetPartitions().split(config)
    folder = write_pack(
        split, interactions.user_features, tmp_path / "pack", config.data_settings()
    )
    client_data._load_split.cache_clear()
    packed = DataSetPartitions(str(folder))
    for user in (0, 17, 39):
        served = packed.local_user(config, node_context(user, 40))
        expected = user_shard(interactions, split, user)
        np.testing.assert_array_equal(served.shard.train_items, expected.train_items)
        np.testing.assert_array_equal(served.shard.candidates, expected.candidates)
        assert (served.name, served.shard.test_item) == (f"user-{user:06d}", expected.test_item)
    assert client_data._load_split.cache_info().currsize == 0  # no data set in this process

    with pytest.raises(ValueError, match="the runner writes one pack per run"):
        packed.local_user(config.replace(seed=3), node_context(0, 40))
    with pytest.raises(ValueError, match="the data set has 40 users"):
        packed.local_user(config, node_context(0, 41))
    # a machine without the runner's folder (another node of a Ray cluster) loads the data
    elsewhere = DataSetPartitions(str(tmp_path / "not-here"))
    served = elsewhere.local_user(config, node_context(17, 40))
    np.testing.assert_array_equal(served.shard.train_items, split.train_items_of(17))
    assert client_data._load_split.cache_info().currsize == 1
