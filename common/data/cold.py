"""Item cold start: a seeded share of the catalog held out of training entirely, and the
protocol that ranks it.

The standard protocol for new items (cold items: no interaction at all in training):

* **which items** — ``round(fraction × num_items)`` catalog items, drawn uniformly from the
  split seed's own stream (:data:`COLD_STREAM`); the same on every node of a run;
* **held out entirely** — every interaction with a cold item is removed before the temporal
  split: no train, validation or test item is cold, no warm evaluation candidate is cold
  (:func:`~fedrec.common.data.split.temporal_leave_one_out` ``never``), no training negative is
  (a negative is a training signal too: the item tower would learn that the cold items'
  features make negatives), and the warm full ranking leaves them out;
* **the cold target** — each warm-evaluable user with a cold interaction has one: its latest
  (by time, ties in file order), ranked (a) among 99 cold items the user never touched
  (LOO-99, sampled once from the seed) and (b) among every cold item but the user's other
  cold ones (full ranking over the cold set);
* **scored from features alone** — a cold item's id row never trained (it holds its
  initialisation, or DP noise), so the model scores it with a zero id row
  (``SeedModel.score_from_features``): ID-only models cannot rank cold items (every one ties,
  and ties count against the target), genres and text features can.

:func:`split_with_cold_items` is the one entry point: with ``fraction`` 0 it is the plain
temporal split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedrec.common.data.dataset import Interactions
from fedrec.common.data.split import NO_ITEM, Split, temporal_leave_one_out
from fedrec.common.metrics import held_out_ranks

__all__ = [
    "COLD_STREAM",
    "ColdItems",
    "ColdShard",
    "choose_cold_items",
    "cold_ranks",
    "split_with_cold_items",
]

COLD_STREAM = 7  # [seed, COLD_STREAM, 0]: which items; [seed, COLD_STREAM, 1]: candidates


@dataclass(frozen=True)
class ColdShard:
    """One user's part of the cold-start protocol, as a device holds it."""

    items: np.ndarray  # (C,) sorted: the run's cold items (public: a function of the seed)
    target: int  # the user's latest cold interaction (NO_ITEM: none to rank)
    candidates: np.ndarray  # (K,) cold items the user never touched
    seen: np.ndarray  # the user's cold items, the target among them (sorted)

    @property
    def ranked(self) -> bool:
        return self.target != NO_ITEM


@dataclass(frozen=True)
class ColdItems:
    """The cold items of a split and every user's cold target."""

    items: np.ndarray  # (C,) int64, sorted
    target: np.ndarray  # (U,) int64: the latest cold interaction, NO_ITEM if none is ranked
    candidates: np.ndarray  # (U, K) int64 cold negatives, NO_ITEM rows where no target
    seen_indptr: np.ndarray  # (U + 1,) int64: user u's cold items are
    seen_items: np.ndarray  # seen_items[seen_indptr[u]:seen_indptr[u + 1]], sorted
    fraction: float
    interactions: int  # interactions on cold items, removed from training and evaluation
    unranked: int  # users with a cold interaction and no target (not warm-evaluable, or too
    # few untouched cold items left to sample candidates from)

    @property
    def users(self) -> np.ndarray:
        """Users with a cold target, ascending."""
        return np.flatnonzero(self.target != NO_ITEM)

    def mask(self, num_items: int) -> np.ndarray:
        """(num_items,) bool, True on cold items."""
        out = np.zeros(num_items, dtype=bool)
        out[self.items] = True
        return out

    def seen_of(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def shard(self, user: int) -> ColdShard:
        candidates = self.candidates[user]
        return ColdShard(
            items=self.items,
            target=int(self.target[user]),
            candidates=candidates[candidates != NO_ITEM].copy(),
            seen=self.seen_of(user).copy(),
        )

    def stats(self) -> dict[str, int | float]:
        return {
            "cold_fraction": self.fraction,
            "cold_items": len(self.items),
            "cold_interactions": self.interactions,
            "cold_users": len(self.users),
            "cold_unranked_users": self.unranked,
        }


def choose_cold_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted cold items: ``round(fraction × num_items)`` of the catalog, from the seed."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold-items must be a fraction in [0, 1), got {fraction}")
    count = round(fraction * num_items)
    if fraction and not 1 <= count < num_items:
        raise ValueError(
            f"cold-items = {fraction} of {num_items} items is {count} items: the protocol"
            " needs at least one cold and one warm item"
        )
    rng = np.random.default_rng([seed, COLD_STREAM, 0])
    return np.sort(rng.choice(num_items, size=count, replace=False)).astype(np.int64)


def split_with_cold_items(
    data: Interactions, *, seed: int, fraction: float = 0.0, num_candidates: int = 99
) -> Split:
    """The temporal split of ``data`` with ``fraction`` of its items held out as cold items
    (``Split.cold``); ``fraction`` 0: the plain split."""
    if fraction == 0.0:
        return temporal_leave_one_out(data, num_candidates=num_candidates, seed=seed)
    cold = choose_cold_items(data.num_items, fraction, seed)
    if len(cold) <= num_candidates:
        raise ValueError(
            f"cold-items = {fraction} of {data.num_items} items is {len(cold)} cold items: each"
            f" cold target is ranked among {num_candidates} cold items the user never touched,"
            f" so at least {num_candidates + 1} are needed (a larger fraction or catalog)"
        )
    is_cold = np.zeros(data.num_items, dtype=bool)
    is_cold[cold] = True
    on_cold = is_cold[data.item]
    warm = replace(
        data,
        user=data.user[~on_cold],
        item=data.item[~on_cold],
        timestamp=data.timestamp[~on_cold],
    )
    split = temporal_leave_one_out(warm, num_candidates=num_candidates, seed=seed, never=cold)
    users, items, times = data.user[on_cold], data.item[on_cold], data.timestamp[on_cold]
    order = np.lexsort((times, users))  # by user, then time; stable on ties
    users, items = users[order], items[order]
    counts = np.bincount(users, minlength=data.num_users)
    ends = np.cumsum(counts)
    has_cold = counts > 0
    latest = np.full(data.num_users, NO_ITEM, dtype=np.int64)
    latest[has_cold] = items[ends[has_cold] - 1]
    seen_indptr = np.concatenate([[0], ends]).astype(np.int64)
    seen = [np.sort(items[seen_indptr[u] : seen_indptr[u + 1]]) for u in range(data.num_users)]

    rng = np.random.default_rng([seed, COLD_STREAM, 1])
    target = np.full(data.num_users, NO_ITEM, dtype=np.int64)
    candidates = np.full((data.num_users, num_candidates), NO_ITEM, dtype=np.int64)
    for user in np.flatnonzero(has_cold & (split.test_item != NO_ITEM)):
        pool = np.setdiff1d(cold, seen[user], assume_unique=True)
        if len(pool) < num_candidates:
            continue  # counted as unranked below
        target[user] = latest[user]
        candidates[user] = rng.choice(pool, size=num_candidates, replace=False)
    cold_items = ColdItems(
        items=cold,
        target=target,
        candidates=candidates,
        seen_indptr=seen_indptr,
        seen_items=np.concatenate(seen).astype(np.int64) if seen else np.zeros(0, np.int64),
        fraction=float(fraction),
        interactions=int(on_cold.sum()),
        unranked=int(has_cold.sum() - (target != NO_ITEM).sum()),
    )
    return replace(split, cold=cold_items)


def cold_ranks(
    scores: np.ndarray,
    items: np.ndarray,
    targets: np.ndarray,
    candidates: np.ndarray,
    seen: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(LOO ranks, full ranks) of each row's cold target among the cold items.

    scores: (U, C) of the cold ``items`` (sorted), in their order; targets: (U,) cold items;
    candidates: (U, K) cold items the user never touched; seen: each user's cold items (the
    target among them), left out of its full ranking but for the target.
    """
    columns = np.searchsorted(items, targets)
    if (items[np.minimum(columns, len(items) - 1)] != targets).any():
        raise ValueError("a cold target is not among the cold items")
    known = np.zeros(scores.shape, dtype=bool)
    for row, user_seen in enumerate(seen):
        known[row, np.searchsorted(items, user_seen)] = True
    known[np.arange(len(targets)), columns] = False
    return held_out_ranks(scores, columns, np.searchsorted(items, candidates), known)
