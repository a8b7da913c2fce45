"""Tests for fedrec.simulations.new_users: HR@10 by the history a user row is fitted on."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.client.local import local_evaluate
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.model import SeedModel, shared_state
from fedrec.simulations.central import CentralConfig, train_central
from fedrec.simulations.new_users import ALL, history_curve


@pytest.fixture(scope="module")
def trained() -> tuple:
    data = load_interactions("synthetic", synthetic=SyntheticConfig(num_users=150, num_items=400))
    split = temporal_leave_one_out(data, seed=0)
    model, _ = train_central(CentralConfig(epochs=6, dim=16, patience=6), data, split)
    assert isinstance(model, SeedModel)
    shards = [user_shard(data, split, u) for u in range(data.num_users)]
    return shared_state(model), Catalog.of(data), shards


@pytest.mark.research  # a trained federation and its curve
def test_the_curve_counts_the_users_with_enough_history(trained: tuple) -> None:
    shared, catalog, shards = trained
    curve = history_curve(shared, catalog, shards, 16, lengths=(0, 1, 30, ALL))
    evaluable = [s for s in shards if s.evaluable]
    assert curve[0]["users"] == curve[ALL]["users"] == len(evaluable)
    assert curve[30]["users"] == sum(len(s.train_items) >= 30 for s in evaluable)
    for point in curve.values():
        assert 0 <= point["ndcg@10"] <= point["hr@10"] <= 1
    # a row fitted on the whole history ranks better than none (the features alone)
    assert curve[ALL]["hr@10"] > curve[0]["hr@10"], curve
    paired = history_curve(shared, catalog, shards, 16, lengths=(0, 30, ALL), same_users=True)
    assert paired[0]["users"] == paired[ALL]["users"] == curve[30]["users"]


def test_no_history_is_the_zero_row_and_features_can_be_withheld(trained: tuple) -> None:
    shared, catalog, shards = trained
    from fedrec.client.local import build_local_model

    evaluable = [s for s in shards if s.evaluable][:20]
    expected = []
    for index, shard in enumerate(evaluable):
        model = build_local_model(catalog, shard, 16, shared, None, seed=index)
        model.user_row[...] = 0.0
        expected.append(local_evaluate(model, shard)["hr@10"])
    curve = history_curve(shared, catalog, evaluable, 16, lengths=(0,))
    assert curve[0]["hr@10"] == pytest.approx(np.mean(expected))
    withheld = history_curve(shared, catalog, evaluable, 16, lengths=(0,), user_features=False)
    assert withheld[0]["users"] == 20
    assert catalog.user_feature_dim > 0  # so withholding them changes the input
    with pytest.raises(ValueError, match="history lengths"):
        history_curve(shared, catalog, evaluable, 16, lengths=(-2,))
