"""Tests for the synthetic data generator: determinism, shape, popularity and cluster structure."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.data.dataset import RawRatings, to_implicit
from fedrec.common.data.synthetic import (
    GENRES,
    OCCUPATIONS,
    SyntheticConfig,
    SyntheticTruth,
    generate,
    generate_with_truth,
)

DEFAULT = SyntheticConfig()


@pytest.fixture(scope="module")
def default_data() -> tuple[RawRatings, SyntheticTruth]:
    return generate_with_truth(DEFAULT)


def _dense(raw: RawRatings) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids are "1".."N", so dense index = int(id) - 1."""
    return raw.user.astype(np.int64) - 1, raw.item.astype(np.int64) - 1


def _matrix(raw: RawRatings, cfg: SyntheticConfig) -> np.ndarray:
    users, items = _dense(raw)
    x = np.zeros((cfg.num_users, cfg.num_items), dtype=np.float64)
    x[users, items] = 1.0
    return x


def test_same_seed_gives_identical_arrays() -> None:
    cfg = SyntheticConfig(num_users=120, num_items=300, interactions_per_user=20, seed=7)
    a, b = generate(cfg), generate(cfg)
    for field in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.item_meta == b.item_meta
    assert a.user_meta == b.user_meta


def test_different_seed_gives_different_data() -> None:
    a = generate(SyntheticConfig(num_users=120, num_items=300, interactions_per_user=20, seed=1))
    b = generate(SyntheticConfig(num_users=120, num_items=300, interactions_per_user=20, seed=2))
    assert len(a.item) != len(b.item) or not np.array_equal(a.item, b.item)
    assert a.item_meta != b.item_meta


def test_shapes_types_and_metadata(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    n = len(raw.user)
    assert raw.format == "synthetic" and raw.source == "synthetic"
    assert raw.item.shape == raw.rating.shape == raw.timestamp.shape == (n,)
    assert raw.rating.dtype == np.float64 and raw.timestamp.dtype == np.int64
    assert set(np.unique(raw.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert raw.genres == GENRES
    assert set(raw.user_meta) == {str(u) for u in range(1, DEFAULT.num_users + 1)}
    assert set(raw.item_meta) == {str(i) for i in range(1, DEFAULT.num_items + 1)}
    assert raw.duplicates_removed == 0


def test_item_meta_has_titles_and_genres(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    for meta in raw.item_meta.values():
        assert meta["title"].endswith(")") and "(" in meta["title"]
        year = int(meta["title"][-5:-1])
        assert 1930 <= year <= 2020
        assert 1 <= len(meta["genres"]) <= 3
        assert set(meta["genres"]) <= set(GENRES)


def test_user_meta_ranges(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    for meta in raw.user_meta.values():
        assert set(meta) == {"age", "gender", "occupation", "zip"}
        assert 13 <= int(meta["age"]) <= 75
        assert meta["gender"] in {"M", "F"}
        assert meta["occupation"] in OCCUPATIONS
        assert len(meta["zip"]) == 5 and meta["zip"].isdigit()


def test_mean_interactions_per_user(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    users, _ = _dense(raw)
    counts = np.bincount(users, minlength=DEFAULT.num_users)
    assert counts.min() >= 5
    assert abs(counts.mean() - DEFAULT.interactions_per_user) <= 0.2 * DEFAULT.interactions_per_user
    assert counts.std() > 5  # counts vary between users


def test_no_duplicate_pairs(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    users, items = _dense(raw)
    keys = users * DEFAULT.num_items + items
    assert len(np.unique(keys)) == len(keys)


def test_timestamps_increase_per_user(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    users, _ = _dense(raw)
    order = np.lexsort((raw.timestamp, users))
    same_user = np.diff(users[order]) == 0
    assert np.all(np.diff(raw.timestamp[order])[same_user] > 0)


def test_popularity_is_heavy_tailed(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    _, items = _dense(raw)
    counts = np.sort(np.bincount(items, minlength=DEFAULT.num_items))[::-1]
    top_decile_share = counts[: DEFAULT.num_items // 10].sum() / counts.sum()
    assert top_decile_share > 0.3
    assert counts[0] > 10 * np.median(counts)


def test_uniform_popularity_is_flat() -> None:
    cfg = SyntheticConfig(popularity_exponent=0.0, cluster_affinity=0.0)
    _, items = _dense(generate(cfg))
    counts = np.sort(np.bincount(items, minlength=cfg.num_items))[::-1]
    assert counts[: cfg.num_items // 10].sum() / counts.sum() < 0.15


def test_users_in_same_cluster_overlap_more(
    default_data: tuple[RawRatings, SyntheticTruth],
) -> None:
    raw, truth = default_data
    x = _matrix(raw, DEFAULT)
    inter = x @ x.T
    sizes = x.sum(axis=1)
    jaccard = inter / (sizes[:, None] + sizes[None, :] - inter)
    same = truth.user_cluster[:, None] == truth.user_cluster[None, :]
    off_diagonal = ~np.eye(DEFAULT.num_users, dtype=bool)
    within = jaccard[same & off_diagonal].mean()
    across = jaccard[~same].mean()
    assert within > 3 * across, (within, across)


def test_users_prefer_their_cluster_items(
    default_data: tuple[RawRatings, SyntheticTruth],
) -> None:
    raw, truth = default_data
    users, items = _dense(raw)
    in_cluster = truth.user_cluster[users] == truth.item_cluster[items]
    assert in_cluster.mean() > 0.5  # chance level is 1 / num_clusters = 0.125
    assert raw.rating[in_cluster].mean() > raw.rating[~in_cluster].mean() + 0.5


def test_item_genres_follow_their_cluster(
    default_data: tuple[RawRatings, SyntheticTruth],
) -> None:
    raw, truth = default_data
    hits = [
        bool(set(raw.item_meta[str(i + 1)]["genres"]) & set(truth.cluster_genres[c]))
        for i, c in enumerate(truth.item_cluster)
    ]
    assert np.mean(hits) > 0.7


def test_to_implicit_works(default_data: tuple[RawRatings, SyntheticTruth]) -> None:
    raw, _ = default_data
    inter = to_implicit(raw)
    assert inter.num_users == DEFAULT.num_users
    assert inter.num_items == DEFAULT.num_items
    assert len(inter) == len(raw.user)
    assert inter.item_features.shape == (DEFAULT.num_items, len(GENRES))
    assert inter.item_features.sum(axis=1).min() >= 1
    assert inter.user_features.shape[0] == DEFAULT.num_users
    assert "age/100" in inter.user_feature_names
    assert all(inter.item_titles)


def test_small_and_edge_configs() -> None:
    raw = generate(
        SyntheticConfig(num_users=3, num_items=5, interactions_per_user=5, num_clusters=2)
    )
    users, _ = _dense(raw)
    assert np.array_equal(np.bincount(users), [5, 5, 5])  # everybody saw the whole catalog
    raw = generate(
        SyntheticConfig(num_users=40, num_items=50, interactions_per_user=10, cluster_affinity=1.0)
    )
    assert to_implicit(raw).num_users == 40


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_users": 0}, "num_users"),
        ({"num_items": -1}, "num_items"),
        ({"num_items": 2.5}, "num_items"),
        ({"interactions_per_user": 0}, "interactions_per_user"),
        ({"num_items": 10, "interactions_per_user": 11}, "interactions_per_user"),
        ({"num_clusters": 0}, "num_clusters"),
        ({"num_items": 10, "interactions_per_user": 5, "num_clusters": 11}, "num_clusters"),
        ({"popularity_exponent": -0.5}, "popularity_exponent"),
        ({"popularity_exponent": float("nan")}, "popularity_exponent"),
        ({"cluster_affinity": 1.5}, "cluster_affinity"),
        ({"cluster_affinity": -0.1}, "cluster_affinity"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_config_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**kwargs)  # type: ignore[arg-type]
