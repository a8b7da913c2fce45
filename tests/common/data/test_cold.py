"""Tests for fedrec.common.data.cold: the item cold-start protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.common.data.catalog import Catalog
from fedrec.common.data.cold import (
    ColdItems,
    choose_cold_items,
    cold_ranks,
    split_with_cold_items,
)
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.examples import NegativeSampler
from fedrec.common.data.pack import open_pack, write_pack
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import NO_ITEM, Split, temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.model import ModelConfig, SeedModel
from fedrec.simulations.training import evaluate, evaluate_cold

FRACTION = 0.2  # 200 of 1,000 items: enough untouched ones for 99 candidates


@pytest.fixture(scope="module")
def data() -> Interactions:
    return load_interactions("synthetic", synthetic=SyntheticConfig(num_users=60, num_items=1000))


@pytest.fixture(scope="module")
def cold_split(data: Interactions) -> Split:
    return split_with_cold_items(data, seed=3, fraction=FRACTION)


def _cold(split: Split) -> ColdItems:
    assert split.cold is not None
    return split.cold


def test_the_cold_items_are_a_seeded_share_of_the_catalog() -> None:
    items = choose_cold_items(400, 0.2, seed=3)  # any catalog
    assert len(items) == 80 and np.all(np.diff(items) > 0) and items.max() < 400
    assert np.array_equal(items, choose_cold_items(400, 0.2, seed=3))
    assert not np.array_equal(items, choose_cold_items(400, 0.2, seed=4))
    assert len(choose_cold_items(400, 0.0, seed=3)) == 0


@pytest.mark.parametrize("fraction", [1.0, -0.1, 0.001])
def test_a_fraction_without_a_cold_and_a_warm_item_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="cold-items"):
        choose_cold_items(400, fraction, seed=0)


def test_no_cold_item_trains_validates_tests_or_is_a_warm_candidate(
    data: Interactions, cold_split: Split
) -> None:
    cold = _cold(cold_split)
    is_cold = cold.mask(data.num_items)
    assert not is_cold[cold_split.train_items].any()
    users = cold_split.eval_users
    assert not is_cold[cold_split.val_item[users]].any()
    assert not is_cold[cold_split.test_item[users]].any()
    assert not is_cold[cold_split.candidates[users]].any()
    # every interaction is either warm (in the split) or counted as cold
    held = 2 * len(users)
    assert len(cold_split.train_items) + held + cold.interactions == len(data)
    assert cold.interactions == int(is_cold[data.item].sum()) > 0


def test_the_cold_target_is_the_users_latest_cold_item_among_untouched_cold_candidates(
    data: Interactions, cold_split: Split
) -> None:
    cold = _cold(cold_split)
    is_cold = cold.mask(data.num_items)
    assert len(cold.users) > 0
    for user in cold.users:
        mine = (data.user == user) & is_cold[data.item]
        times, items = data.timestamp[mine], data.item[mine]
        latest = items[np.flatnonzero(times == times.max())[-1]]  # ties: the file's last
        assert cold.target[user] == latest
        assert np.array_equal(cold.seen_of(int(user)), np.unique(items))
        candidates = cold.candidates[user]
        assert len(np.unique(candidates)) == 99 and is_cold[candidates].all()
        assert not np.isin(candidates, items).any()
    without = np.setdiff1d(np.arange(data.num_users), cold.users)
    assert (cold.target[without] == NO_ITEM).all()


def test_a_user_with_too_few_untouched_cold_items_is_counted_not_ranked(
    data: Interactions,
) -> None:
    # 1,000 items x 0.1 = 100 cold items: a user who touched two of them has 98 left, < 99
    split = split_with_cold_items(data, seed=0, fraction=0.1)
    cold = _cold(split)
    touched = np.diff(cold.seen_indptr)
    evaluable = split.test_item != NO_ITEM
    expected = int(((touched > 1) & evaluable).sum() + ((touched > 0) & ~evaluable).sum())
    assert cold.unranked == expected > 0
    assert (cold.target[touched > 1] == NO_ITEM).all()


def test_without_a_fraction_it_is_the_plain_split(data: Interactions) -> None:
    plain = temporal_leave_one_out(data, seed=3)
    split = split_with_cold_items(data, seed=3, fraction=0.0)
    assert split.cold is None
    assert np.array_equal(split.candidates, plain.candidates)
    assert np.array_equal(split.train_items, plain.train_items)


def test_no_training_negative_is_a_cold_item(data: Interactions, cold_split: Split) -> None:
    cold = _cold(cold_split)
    sampler = NegativeSampler.of_split(cold_split)
    users = np.repeat(cold_split.eval_users, 200)
    negatives = sampler.sample(users, np.random.default_rng(0))
    assert not cold.mask(data.num_items)[negatives].any()
    # and a device's own sampler, from its shard
    shard = user_shard(data, cold_split, int(cold.users[0]))
    draws = shard.sample_negatives(5000, np.random.default_rng(1))
    assert not np.isin(draws, cold.items).any()
    assert len(np.unique(draws)) > 0.5 * (data.num_items - len(cold.items) - len(shard.excluded()))


def test_a_sampler_with_every_item_excluded_is_refused() -> None:
    with pytest.raises(ValueError, match="no negative"):
        NegativeSampler(4, {0: np.array([0, 1])}, never=np.array([2, 3]))


def test_cold_ranks_by_hand() -> None:
    items = np.array([2, 5, 7, 9, 11])
    # one user: target 7 scored 0.5; candidates 2 and 11; its other cold item 9 scores above
    scores = np.array([[0.9, 0.1, 0.5, 0.8, 0.2]])  # of items 2, 5, 7, 9, 11
    sampled, full = cold_ranks(
        scores, items, np.array([7]), np.array([[2, 11]]), [np.array([7, 9])]
    )
    assert sampled.tolist() == [1]  # only 2 (0.9) above among {2, 11}
    assert full.tolist() == [1]  # 2 above; 9 is the user's own and left out; 5, 11 below
    with pytest.raises(ValueError, match="not among the cold items"):
        cold_ranks(scores, items, np.array([4]), np.array([[2, 11]]), [np.array([4])])


def _seed_model(data: Interactions, seed: int = 0) -> SeedModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        data.num_users, data.num_items, 0, data.item_features.shape[1], id_dim=8, dim=8
    )
    return SeedModel(
        config,
        torch.zeros(data.num_users, 0),
        torch.from_numpy(data.item_features),
    )


def test_a_cold_item_is_scored_as_if_its_id_row_were_zero(data: Interactions) -> None:
    model = _seed_model(data)
    users, items = torch.tensor([0, 3]), torch.tensor([1, 4, 9])
    with torch.no_grad():
        scored = model.score_from_features(users, items)
        model.item_embedding.weight[items] = 0.0
        assert torch.allclose(scored, model.score_all(users)[:, items], atol=1e-6)


def test_the_central_cold_metrics_follow_the_ranks(data: Interactions, cold_split: Split) -> None:
    cold = _cold(cold_split)
    model = _seed_model(data, seed=1)
    metrics = evaluate_cold(model, cold_split)
    with torch.no_grad():
        scores = model.score_from_features(
            torch.from_numpy(cold.users), torch.from_numpy(cold.items)
        ).numpy()
    hits, gains, full_hits = [], [], []
    for row, user in enumerate(cold.users):
        by_item = dict(zip(cold.items.tolist(), scores[row], strict=True))
        target = by_item[int(cold.target[user])]
        rank = sum(by_item[int(c)] >= target for c in cold.candidates[user])
        others = set(cold.items.tolist()) - set(cold.seen_of(int(user)).tolist())
        full_rank = sum(by_item[c] >= target for c in others)
        hits.append(rank < 10)
        gains.append(1 / math.log2(rank + 2) if rank < 10 else 0.0)
        full_hits.append(full_rank < 10)
    assert metrics["cold-hr@10"] == pytest.approx(np.mean(hits))
    assert metrics["cold-ndcg@10"] == pytest.approx(np.mean(gains))
    assert metrics["cold-full_hr@10"] == pytest.approx(np.mean(full_hits))
    assert evaluate(model, cold_split, "test")["cold-hr@10"] == metrics["cold-hr@10"]


def test_the_warm_full_ranking_leaves_the_cold_items_out(
    data: Interactions, cold_split: Split
) -> None:
    """A model that scores the cold items above everything loses no warm rank."""
    model = _seed_model(data, seed=2)
    before = evaluate(model, cold_split, "test")
    with torch.no_grad():
        model.item_embedding.weight[torch.from_numpy(_cold(cold_split).items)] = 100.0
    after = evaluate(model, cold_split, "test")
    for key in ("hr@10", "full_hr@10", "full_ndcg@10"):
        assert after[key] == before[key]


def test_an_id_only_model_ranks_no_cold_item(data: Interactions, cold_split: Split) -> None:
    """Without features every cold item scores alike, and ties count against the target."""
    catalog = Catalog.of(data).without_item_block("genres")
    assert catalog.item_feature_dim == 0
    torch.manual_seed(0)
    id_only = SeedModel(
        ModelConfig(data.num_users, data.num_items, 0, 0, id_dim=8, dim=8),
        torch.zeros(data.num_users, 0),
        torch.from_numpy(catalog.item_features),
    )
    metrics = evaluate_cold(id_only, cold_split)
    assert metrics["cold-hr@10"] == metrics["cold-full_hr@10"] == 0.0
    assert evaluate_cold(_seed_model(data), cold_split)["cold-hr@10"] > 0.0  # with genres


def test_a_pack_carries_the_cold_items(data: Interactions, cold_split: Split, tmp_path) -> None:
    pack = open_pack(write_pack(cold_split, data.user_features, tmp_path / "pack", {"s": 1}))
    for user in (int(_cold(cold_split).users[0]), 0, data.num_users - 1):
        expected, got = user_shard(data, cold_split, user), pack.shard(user)
        assert expected.cold is not None and got.cold is not None
        for name in ("items", "candidates", "seen"):
            assert np.array_equal(getattr(expected.cold, name), getattr(got.cold, name))
        assert expected.cold.target == got.cold.target
    plain = temporal_leave_one_out(data, seed=0)
    assert open_pack(write_pack(plain, data.user_features, tmp_path / "p2", {})).cold is None


def test_a_cold_set_too_small_for_99_candidates_is_refused(data: Interactions) -> None:
    with pytest.raises(ValueError, match="at least 100 are needed"):
        split_with_cold_items(data, seed=0, fraction=0.05)  # 50 of 1,000 items
