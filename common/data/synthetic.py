"""A deterministic synthetic ratings data set: the embedded default for the demo and fast tests.

The generative story, all vectorized with one ``np.random.default_rng(seed)``:

* Every item belongs to one of ``num_clusters`` latent taste clusters (balanced) and has a
  Zipf popularity weight ``(rank + 1) ** -popularity_exponent`` with a random rank.
* Each cluster favours 2-3 of :data:`GENRES`; an item gets 1-3 genres drawn mostly from its
  cluster's favourites, so genres carry information about the cluster.
* Every user belongs to one cluster (balanced). A user's items are sampled *without
  replacement* from the mixture ``cluster_affinity * P(item | own cluster) + (1 -
  cluster_affinity) * P(item)``, both proportional to popularity (Gumbel top-k trick).
* The order of a user's interactions is a random permutation, so the last (held-out) items
  come from exactly the same distribution as the earlier ones; timestamps increase per user.
* Ratings 1-5 are higher for in-cluster and genre-matching items; user attributes (age,
  gender, occupation, zip) are mildly correlated with the cluster.

A model that learns clusters and popularity can therefore beat a popularity baseline by a clear
margin. :func:`generate_with_truth` also returns the latent assignment for tests and oracles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedrec.common.data.dataset import RawRatings

__all__ = [
    "GENRES",
    "MIN_INTERACTIONS",
    "OCCUPATIONS",
    "SyntheticConfig",
    "SyntheticTruth",
    "generate",
    "generate_with_truth",
]

GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
)
OCCUPATIONS: tuple[str, ...] = (
    "student",
    "engineer",
    "educator",
    "artist",
    "healthcare",
    "programmer",
    "writer",
    "administrator",
    "retired",
    "other",
)
MIN_INTERACTIONS = 5
"""Lower clip of the per-user interaction count (or the configured mean, if smaller)."""

_ADJECTIVES = (
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Midnight", "Distant", "Burning",
    "Frozen", "Lost", "Wild", "Secret", "Electric", "Hollow", "Savage", "Gentle", "Iron",
    "Velvet", "Forgotten", "Endless", "Restless", "Bitter", "Shining",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Empire", "Garden", "River", "Station", "Kingdom", "Mirror", "Frontier", "Orchard",
    "Highway", "Lighthouse", "Circus", "Galaxy", "Island", "Machine", "Canyon", "Symphony",
    "Shadow", "Winter", "Carnival", "Voyage", "Labyrinth", "Citadel", "Prairie",
)  # fmt: skip
_START_TIME = 883_612_800  # 1998-01-01 UTC, in seconds
_START_SPREAD = 2 * 365 * 86_400  # users join over two years
_MEAN_GAP = 86_400  # mean seconds between two interactions of one user
_COUNT_SIGMA = 0.6  # log-normal spread of per-user interaction counts
_GENRE_COUNT_P = (0.45, 0.40, 0.15)  # P(item has 1, 2, 3 genres)
_IN_CLUSTER_GENRE_P = 0.85  # share of an item's genre probability on its cluster's favourites
_KEY_BUDGET = 2_000_000  # (users x items) keys sampled per chunk


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic data set; every field is validated on construction."""

    num_users: int = 500
    num_items: int = 1000
    interactions_per_user: int = 50  # mean; per-user counts are log-normal, clipped to >= 5
    num_clusters: int = 8
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity; 0 = uniform
    cluster_affinity: float = 0.8  # share of a user's picks drawn from their own cluster
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("num_users", self.num_users, 1)
        _check_int("num_items", self.num_items, 1)
        _check_int("interactions_per_user", self.interactions_per_user, 1)
        if self.interactions_per_user > self.num_items:
            raise ValueError(
                f"interactions_per_user must be <= num_items ({self.num_items}), "
                f"got {self.interactions_per_user}"
            )
        _check_int("num_clusters", self.num_clusters, 1)
        if self.num_clusters > self.num_items:
            raise ValueError(
                f"num_clusters must be <= num_items ({self.num_items}), got {self.num_clusters}"
            )
        _check_int("seed", self.seed, 0)
        _check_float("popularity_exponent", self.popularity_exponent, 0.0, math.inf)
        _check_float("cluster_affinity", self.cluster_affinity, 0.0, 1.0)


@dataclass(frozen=True)
class SyntheticTruth:
    """The latent structure behind a generated data set (dense 0-based indices).

    Dense index ``k`` corresponds to raw id ``str(k + 1)`` for both users and items.
    """

    user_cluster: np.ndarray  # (num_users,) int64
    item_cluster: np.ndarray  # (num_items,) int64
    item_popularity: np.ndarray  # (num_items,) float64 Zipf weights, max 1.0
    cluster_genres: tuple[tuple[str, ...], ...]  # favoured genres of each cluster


def generate(config: SyntheticConfig | None = None) -> RawRatings:
    """Generate the synthetic ratings for ``config`` (default :class:`SyntheticConfig`)."""
    return generate_with_truth(config)[0]


def generate_with_truth(
    config: SyntheticConfig | None = None,
) -> tuple[RawRatings, SyntheticTruth]:
    """Like :func:`generate`, also returning the latent clusters and popularity."""
    cfg = config if config is not None else SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    item_cluster = rng.permutation(np.arange(cfg.num_items) % cfg.num_clusters)
    user_cluster = rng.permutation(np.arange(cfg.num_users) % cfg.num_clusters)
    popularity = (rng.permutation(cfg.num_items) + 1.0) ** -cfg.popularity_exponent
    cluster_genres = _cluster_genres(rng, cfg.num_clusters)
    item_genres = _item_genres(rng, cluster_genres[item_cluster])

    counts = _interaction_counts(rng, cfg)
    users, items = _sample_items(rng, cfg, user_cluster, item_cluster, popularity, counts)
    users, items, timestamps = _order_in_time(rng, cfg.num_users, users, items, counts)
    genre_match = (cluster_genres.astype(np.int64) @ item_genres.T.astype(np.int64)) > 0
    ratings = _ratings(rng, cfg, users, items, user_cluster, item_cluster, genre_match)

    user_ids = np.arange(1, cfg.num_users + 1).astype(str)
    item_ids = np.arange(1, cfg.num_items + 1).astype(str)
    raw = RawRatings(
        source="synthetic",
        format="synthetic",
        user=user_ids[users],
        item=item_ids[items],
        rating=ratings,
        timestamp=timestamps,
        genres=GENRES,
        item_meta=_item_meta(rng, item_ids, item_genres),
        user_meta=_user_meta(rng, cfg.num_clusters, user_ids, user_cluster),
    )
    truth = SyntheticTruth(
        user_cluster=user_cluster.astype(np.int64),
        item_cluster=item_cluster.astype(np.int64),
        item_popularity=popularity,
        cluster_genres=tuple(
            tuple(GENRES[g] for g in np.flatnonzero(row)) for row in cluster_genres
        ),
    )
    return raw, truth


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (low <= float(value) <= high) or math.isnan(float(value)):
        bound = f">= {low}" if math.isinf(high) else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _top_k_mask(keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Boolean mask of the ``k[r]`` largest keys of each row ``r`` (ties broken arbitrarily)."""
    ranks = np.argsort(np.argsort(-keys, axis=1, kind="stable"), axis=1, kind="stable")
    return ranks < k[:, None]


def _cluster_genres(rng: np.random.Generator, num_clusters: int) -> np.ndarray:
    """(C, G) bool: each cluster favours 2 or 3 random genres."""
    k = rng.integers(2, 4, size=num_clusters)
    return _top_k_mask(rng.random((num_clusters, len(GENRES))), k)


def _item_genres(rng: np.random.Generator, favoured: np.ndarray) -> np.ndarray:
    """(I, G) bool: 1-3 genres per item, mostly from its cluster's favoured genres."""
    n_fav = favoured.sum(axis=1, keepdims=True)
    p = (1 - _IN_CLUSTER_GENRE_P) / len(GENRES) + _IN_CLUSTER_GENRE_P * favoured / n_fav
    gumbel = -np.log(rng.exponential(size=favoured.shape))
    k = rng.choice(len(_GENRE_COUNT_P), size=len(favoured), p=_GENRE_COUNT_P) + 1
    return _top_k_mask(np.log(p) + gumbel, k)


def _interaction_counts(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Per-user counts: log-normal with the configured mean, clipped to [5, num_items]."""
    mu = math.log(cfg.interactions_per_user) - _COUNT_SIGMA**2 / 2
    raw = rng.lognormal(mu, _COUNT_SIGMA, size=cfg.num_users)
    low = min(MIN_INTERACTIONS, cfg.interactions_per_user)
    return np.clip(np.rint(raw), low, cfg.num_items).astype(np.int64)


def _sample_items(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    user_cluster: np.ndarray,
    item_cluster: np.ndarray,
    popularity: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sampling without replacement for all users, in chunks of users."""
    in_cluster = np.arange(cfg.num_clusters)[:, None] == item_cluster[None, :]
    p_cluster = popularity * in_cluster
    p_cluster /= p_cluster.sum(axis=1, keepdims=True)
    p_global = popularity / popularity.sum()
    mix = cfg.cluster_affinity * p_cluster + (1 - cfg.cluster_affinity) * p_global
    neg_inv_w = (-1.0 / np.maximum(mix, 1e-30)).astype(np.float32)  # (C, I)

    # Exponential race: item i's key is E_i / w_i with E_i ~ Exp(1); the k smallest keys are a
    # weighted sample without replacement (equivalent to Gumbel top-k on log w).
    chunk = max(1, _KEY_BUDGET // cfg.num_items)
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for start in range(0, cfg.num_users, chunk):
        stop = min(start + chunk, cfg.num_users)
        k = counts[start:stop]
        keys = rng.random((stop - start, cfg.num_items), dtype=np.float32)
        with np.errstate(divide="ignore"):  # U == 0 gives an infinite key: never picked first
            np.log(keys, out=keys)  # log U = -E with E ~ Exp(1)
        np.multiply(keys, neg_inv_w[user_cluster[start:stop]], out=keys)
        kmax = int(k.max())
        top = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(kmax)[None, :] < k[:, None]
        users.append(np.broadcast_to(np.arange(start, stop)[:, None], top.shape)[keep])
        items.append(top[keep])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def _order_in_time(
    rng: np.random.Generator,
    num_users: int,
    users: np.ndarray,
    items: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle each user's items into a random order and give them increasing timestamps."""
    order = np.lexsort((rng.random(len(users)), users))
    users, items = users[order], items[order]
    gaps = 60 + rng.exponential(_MEAN_GAP, size=len(users)).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    cum = np.cumsum(gaps)
    start = _START_TIME + rng.integers(0, _START_SPREAD, size=num_users)
    base = start - np.concatenate(([0], cum))[offsets]
    return users, items, base[users] + cum


def _ratings(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    users: np.ndarray,
    items: np.ndarray,
    user_cluster: np.ndarray,
    item_cluster: np.ndarray,
    genre_match: np.ndarray,
) -> np.ndarray:
    """Ratings 1-5: about 4 for in-cluster items, about 3 otherwise, plus user/item biases."""
    user_bias = rng.normal(0.0, 0.35, size=cfg.num_users)
    item_bias = rng.normal(0.0, 0.3, size=cfg.num_items)
    same = user_cluster[users] == item_cluster[items]
    score = (
        2.9
        + 1.0 * same
        + 0.35 * genre_match[user_cluster[users], items]
        + user_bias[users]
        + item_bias[items]
        + rng.normal(0.0, 0.6, size=len(users))
    )
    return np.clip(np.rint(score), 1, 5).astype(np.float64)


def _item_meta(
    rng: np.random.Generator, item_ids: np.ndarray, item_genres: np.ndarray
) -> dict[str, dict]:
    """``{"title": "The Silent Harbor (1987)", "genres": [...]}`` for every item."""
    n = len(item_ids)
    adjective = rng.integers(0, len(_ADJECTIVES), size=n)
    noun = rng.integers(0, len(_NOUNS), size=n)
    with_the = rng.random(n) < 0.6
    year = rng.integers(1930, 2021, size=n)
    rows, cols = np.nonzero(item_genres)
    genre_lists = np.split(
        np.asarray(GENRES, dtype=object)[cols], np.flatnonzero(np.diff(rows)) + 1
    )
    return {
        item: {
            "title": f"{'The ' if with_the[i] else ''}{_ADJECTIVES[adjective[i]]} "
            f"{_NOUNS[noun[i]]} ({year[i]})",
            "genres": genre_lists[i].tolist(),
        }
        for i, item in enumerate(item_ids.tolist())
    }


def _user_meta(
    rng: np.random.Generator, num_clusters: int, user_ids: np.ndarray, user_cluster: np.ndarray
) -> dict[str, dict[str, str]]:
    """Age 13-75, gender M/F, occupation and 5-digit zip, each mildly tied to the cluster."""
    n = len(user_ids)
    age_mean = rng.uniform(20, 55, size=num_clusters)
    p_male = rng.uniform(0.3, 0.7, size=num_clusters)
    occupation_p = rng.dirichlet(np.ones(len(OCCUPATIONS)), size=num_clusters)
    zip_digit = rng.integers(0, 10, size=num_clusters)

    age = np.clip(np.rint(rng.normal(age_mean[user_cluster], 10.0)), 13, 75).astype(np.int64)
    male = rng.random(n) < p_male[user_cluster]
    cdf = np.cumsum(occupation_p[user_cluster], axis=1)
    occupation = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), len(OCCUPATIONS) - 1)
    first = np.where(rng.random(n) < 0.4, zip_digit[user_cluster], rng.integers(0, 10, size=n))
    zips = first * 10_000 + rng.integers(0, 10_000, size=n)
    return {
        user: {
            "age": str(age[u]),
            "gender": "M" if male[u] else "F",
            "occupation": OCCUPATIONS[occupation[u]],
            "zip": f"{zips[u]:05d}",
        }
        for u, user in enumerate(user_ids.tolist())
    }
