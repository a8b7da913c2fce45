"""The in-memory data model: raw ratings as read from a file, and dense implicit interactions.

Loaders (``fedrec.common.data.loaders``) produce a :class:`RawRatings`; :func:`to_implicit` turns it
into :class:`Interactions` with dense 0-based ids (the raw ids are kept for the mapping back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.common.data.features import UserFeatureSchema, encode_item_features

__all__ = [
    "Interactions",
    "RawRatings",
    "to_implicit",
]


@dataclass(frozen=True)
class RawRatings:
    """Ratings exactly as read, after de-duplication of (user, item) pairs.

    ``item_meta`` maps a raw item id to ``{"title": str, "genres": list[str]}``; ``user_meta``
    maps a raw user id to a dict of raw attribute strings (e.g. age, gender, occupation, zip).
    """

    source: str  # path or "synthetic"
    format: str  # "ml-100k" | "ml-1m" | "ml-latest" | "csv" | "synthetic"
    user: np.ndarray  # (N,) str raw user ids
    item: np.ndarray  # (N,) str raw item ids
    rating: np.ndarray  # (N,) float64
    timestamp: np.ndarray  # (N,) int64 seconds (or any monotone unit)
    genres: tuple[str, ...] = ()
    item_meta: dict[str, dict] = field(default_factory=dict)
    user_meta: dict[str, dict[str, str]] = field(default_factory=dict)
    duplicates_removed: int = 0

    def __post_init__(self) -> None:
        n = len(self.user)
        if not (len(self.item) == len(self.rating) == len(self.timestamp) == n):
            raise ValueError("RawRatings: user/item/rating/timestamp must have equal length")


@dataclass(frozen=True)
class Interactions:
    """Implicit feedback with dense ids: one row per (user, item) interaction."""

    user: np.ndarray  # (N,) int64 in [0, num_users)
    item: np.ndarray  # (N,) int64 in [0, num_items)
    timestamp: np.ndarray  # (N,) int64
    user_ids: tuple[str, ...]  # dense index -> raw id
    item_ids: tuple[str, ...]
    user_features: np.ndarray  # (num_users, F_u) float32, encoded by user_schema
    user_schema: UserFeatureSchema  # how raw user attributes become those columns
    item_features: np.ndarray  # (num_items, F_i) float32
    item_feature_names: tuple[str, ...]
    item_titles: tuple[str, ...]
    source: str
    format: str
    stats: dict[str, int | float]  # ratings_read, duplicates_removed, below_threshold, ...

    @property
    def user_feature_names(self) -> tuple[str, ...]:
        return self.user_schema.names

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)


def to_implicit(raw: RawRatings, threshold: float = 0.0) -> Interactions:
    """Keep ratings ``>= threshold`` as interactions and re-index users and items densely.

    Every item in the catalog (``raw.item_meta``) keeps an index even if nobody interacted with
    it, so that full ranking covers the whole catalog; users exist only if they have at least
    one interaction. Dense ids follow the sorted order of raw ids (numerically where they are
    all integers), so the mapping is stable across runs.
    """
    keep = raw.rating >= threshold
    if len(keep) and not keep.any():
        raise ValueError(
            f"{raw.source}: no rating is >= the threshold {threshold:g} (the ratings run from"
            f" {raw.rating.min():g} to {raw.rating.max():g}): lower the threshold"
        )
    users_raw = raw.user[keep]
    items_raw = raw.item[keep]
    ts = raw.timestamp[keep].astype(np.int64)

    user_ids = _sorted_ids(np.unique(users_raw))
    catalog = set(raw.item_meta) | set(np.unique(raw.item).tolist())
    item_ids = _sorted_ids(np.array(sorted(catalog), dtype=object))
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = {it: i for i, it in enumerate(item_ids)}
    user = np.fromiter((user_index[u] for u in users_raw), dtype=np.int64, count=len(users_raw))
    item = np.fromiter((item_index[i] for i in items_raw), dtype=np.int64, count=len(items_raw))

    user_schema = UserFeatureSchema.fit(raw.user_meta, user_ids)
    user_features = user_schema.encode(raw.user_meta, user_ids)
    item_features, item_feature_names = encode_item_features(raw.item_meta, item_ids, raw.genres)
    titles = tuple(str(raw.item_meta.get(i, {}).get("title", "")) for i in item_ids)
    stats: dict[str, int | float] = {
        "ratings_read": len(raw.user),
        "duplicates_removed": int(raw.duplicates_removed),
        "below_threshold": int((~keep).sum()),
        "interactions": int(keep.sum()),
        "users": len(user_ids),
        "items": len(item_ids),
        "threshold": float(threshold),
    }
    return Interactions(
        user=user,
        item=item,
        timestamp=ts,
        user_ids=tuple(user_ids),
        item_ids=tuple(item_ids),
        user_features=user_features,
        user_schema=user_schema,
        item_features=item_features,
        item_feature_names=item_feature_names,
        item_titles=titles,
        source=raw.source,
        format=raw.format,
        stats=stats,
    )


def _sorted_ids(ids: np.ndarray) -> list[str]:
    """Sort raw ids numerically when they all parse as integers, else lexicographically."""
    as_str = [str(x) for x in ids]
    try:
        return sorted(as_str, key=int)
    except ValueError:
        return sorted(as_str)
