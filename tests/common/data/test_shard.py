"""Tests for fedrec.common.data.shard: a user's shard, leak-free negatives and the round-0 state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.common.data.catalog import Catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.examples import (
    training_exclusions,
)
from fedrec.common.data.shard import UserShard, user_shard
from fedrec.common.data.split import NO_ITEM, Split
from fedrec.common.model import ModelConfig, SeedModel, initial_shared_state, shared_parameter_names


def _excluded(split: Split, user: int) -> np.ndarray:
    """The training exclusions of ``user`` in a global split."""
    held = (split.val_item[user], split.test_item[user])
    return training_exclusions(split.train_items_of(user), held, split.candidates[user])


def test_user_shard_matches_the_split(data: Interactions, split: Split) -> None:
    for user in range(split.num_users):
        shard = user_shard(data, split, user)
        np.testing.assert_array_equal(shard.train_items, split.train_items_of(user))
        np.testing.assert_array_equal(shard.user_features, data.user_features[user])
        assert shard.val_item == split.val_item[user]
        assert shard.test_item == split.test_item[user]
        expected = split.candidates[user]
        np.testing.assert_array_equal(shard.candidates, expected[expected != NO_ITEM])
        assert shard.num_items == split.num_items
        assert shard.evaluable == (split.test_item[user] != NO_ITEM)
        np.testing.assert_array_equal(shard.excluded(), _excluded(split, user))


def test_user_shard_is_a_copy(data: Interactions, split: Split) -> None:
    shard = user_shard(data, split, 0)
    before = split.train_items_of(0).copy()
    shard.train_items[:] = -5
    np.testing.assert_array_equal(split.train_items_of(0), before)


@pytest.mark.parametrize("user", [-1, 60])
def test_user_shard_rejects_an_unknown_user(data: Interactions, split: Split, user: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        user_shard(data, split, user)


def test_sample_negatives_never_returns_an_excluded_item(data: Interactions, split: Split) -> None:
    for user in range(0, split.num_users, 7):
        shard = user_shard(data, split, user)
        negatives = shard.sample_negatives(2000, np.random.default_rng(user))
        assert negatives.dtype.kind == "i" and len(negatives) == 2000
        assert ((negatives >= 0) & (negatives < shard.num_items)).all()
        forbidden = set(shard.train_items.tolist()) | set(shard.candidates.tolist())
        forbidden |= {shard.val_item, shard.test_item}
        assert not forbidden & set(negatives.tolist())


def test_sample_negatives_on_a_crowded_catalog() -> None:
    """Only 2 of 10 items are allowed: rejection sampling must still find only those two."""
    shard = UserShard(
        user_features=np.zeros(1, np.float32),
        train_items=np.array([0, 1, 2, 3], dtype=np.int64),
        val_item=4,
        test_item=5,
        candidates=np.array([6, 7], dtype=np.int64),
        num_items=10,
    )
    negatives = shard.sample_negatives(500, np.random.default_rng(0))
    assert set(negatives.tolist()) == {8, 9}


def test_sample_negatives_when_nothing_is_left() -> None:
    shard = UserShard(np.zeros(1, np.float32), np.arange(3), 3, 4, np.arange(0), 5)
    with pytest.raises(ValueError, match="no negative"):
        shard.sample_negatives(1, np.random.default_rng(0))


def test_sample_negatives_is_deterministic_for_a_seed(data: Interactions, split: Split) -> None:
    shard = user_shard(data, split, 3)
    a = shard.sample_negatives(100, np.random.default_rng([0, 3, 1]))
    b = shard.sample_negatives(100, np.random.default_rng([0, 3, 1]))
    c = shard.sample_negatives(100, np.random.default_rng([0, 3, 2]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_catalog_of(data: Interactions) -> None:
    catalog = Catalog.of(data)
    assert catalog.item_ids == data.item_ids
    assert catalog.num_items == data.num_items == 400
    np.testing.assert_array_equal(catalog.item_features, data.item_features)
    assert catalog.user_feature_dim == data.user_features.shape[1]


def test_initial_shared_state(data: Interactions) -> None:
    catalog = Catalog.of(data)
    state = initial_shared_state(catalog, dim=8, seed=1)
    model = SeedModel(
        ModelConfig(1, catalog.num_items, catalog.user_feature_dim,
                    catalog.item_features.shape[1], id_dim=8, dim=8),
        torch.zeros(1, catalog.user_feature_dim),
        torch.from_numpy(catalog.item_features),
    )  # fmt: skip
    assert list(state) == shared_parameter_names(model)
    assert "user_embedding.weight" not in state and "item_features" not in state
    params = dict(model.named_parameters())
    assert {k: v.shape for k, v in state.items()} == {k: params[k].shape for k in state}
    again = initial_shared_state(catalog, dim=8, seed=1)
    other = initial_shared_state(catalog, dim=8, seed=2)
    for key in state:
        torch.testing.assert_close(state[key], again[key], rtol=0, atol=0)
    assert not torch.equal(state["item_embedding.weight"], other["item_embedding.weight"])
