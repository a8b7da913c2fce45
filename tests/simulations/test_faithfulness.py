"""Tests for fedrec.simulations.faithfulness: removing the explained past items lowers the
recommended item's score more than removing random ones.

On ml-100k the check runs on the federation's trained models (benchmarks/explain.py, a few
minutes per model: docs/results.md "Explanations on the device")."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.data.catalog import Catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.model import SeedModel, shared_state
from fedrec.simulations.central import CentralConfig, train_central
from fedrec.simulations.faithfulness import Faithfulness, faithfulness


def _measure(data: Interactions, epochs: int, users: int) -> Faithfulness:
    split = temporal_leave_one_out(data, seed=0)
    config = CentralConfig(epochs=epochs, dim=32, seed=0, patience=epochs)
    model, _ = train_central(config, data, split)
    assert isinstance(model, SeedModel)
    shared = shared_state(model)
    picked = np.linspace(0, data.num_users - 1, users).astype(int)
    shards = [user_shard(data, split, int(u)) for u in picked]
    return faithfulness(shared, Catalog.of(data), shards, 32, seed=0)


@pytest.mark.research  # refits against random removals
def test_explanations_are_faithful_on_synthetic_data() -> None:
    """Measured: drop 0.53 explained against 0.14 random (60 users, paired SE 0.06)."""
    data = load_interactions("synthetic", synthetic=SyntheticConfig(num_users=200, num_items=500))
    result = _measure(data, epochs=8, users=60)
    assert result.users >= 40
    assert result.mean_drop_explained > result.mean_drop_random + 3 * result.paired_se, result
    assert result.wins > 0.6, result
