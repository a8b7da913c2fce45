"""Ranking metrics: HR@K and NDCG@K from the 0-based rank of the held-out item.

Two protocols share the same rank -> metric functions:
  * **LOO-99** (sampled): the held-out item is ranked among itself + 99 sampled negatives.
  * **Full ranking**: the held-out item is ranked among every item not in the user's train set.

Ties are broken **pessimistically** and deterministically: a candidate whose score equals the
held-out item's score counts as ranked above it. A model that scores everything equal therefore
gets rank = (number of candidates) - 1, never a lucky hit (a constant model scores 0, not 1).

  rank  = #{c : s_c > s_target} + #{c : s_c == s_target, c != target}      (0-based)
  HR@K  = 1[rank < K]
  NDCG@K = 1[rank < K] / log2(rank + 2)                                    (one relevant item)

**Exposure** of target items (the measure of item-promotion attacks, Rong et al. 2022): for a
user and a target item the user has not interacted with, whether the target ranks in the top K
of every item the user has not interacted with (same pessimistic ties);
ER@K = the mean over those (user, target) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "exposure",
    "full_ranks",
    "held_out_ranks",
    "hit_ratio",
    "known_positive_mask",
    "loo_ranks",
    "ndcg",
    "rank_among",
    "summarize",
]


def rank_among(target_score: np.ndarray, other_scores: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among that row's others, ties counted against it.

    target_score: (U,); other_scores: (U, C) -> (U,) int64 in [0, C].
    NaN scores are rejected: a NaN would silently rank anywhere.
    """
    target_score = np.asarray(target_score, dtype=np.float64)
    other_scores = np.asarray(other_scores, dtype=np.float64)
    if np.isnan(target_score).any() or np.isnan(other_scores).any():
        raise ValueError("scores contain NaN: the model diverged or an input is broken")
    return (other_scores >= target_score[:, None]).sum(axis=1).astype(np.int64)


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    """Fraction of users whose held-out item ranks in the top ``k``."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0
    return float((ranks < k).mean())


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item per user: 1 / log2(rank + 2) inside the top ``k``."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def loo_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks under LOO sampling: ``scores`` (U, 1 + C) with the held-out item in column 0."""
    scores = np.asarray(scores)
    return rank_among(scores[:, 0], scores[:, 1:])


def full_ranks(scores: np.ndarray, target: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Ranks under full ranking.

    scores: (U, I) score of every item; target: (U,) held-out item; excluded: (U, I) bool,
    True for items that are not candidates (the user's train items and other known positives).
    The target itself must not be excluded.
    """
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(target))
    if excluded[rows, target].any():
        raise ValueError("a held-out item is marked as excluded from its own ranking")
    masked = np.where(excluded, -np.inf, scores)
    masked[rows, target] = -np.inf  # the target is not its own competitor
    return rank_among(scores[rows, target], masked)


def summarize(ranks: np.ndarray, k: int = 10, prefix: str = "") -> dict[str, float]:
    """``{prefix+"hr@k": ..., prefix+"ndcg@k": ...}`` from ranks."""
    return {f"{prefix}hr@{k}": hit_ratio(ranks, k), f"{prefix}ndcg@{k}": ndcg(ranks, k)}


def held_out_ranks(
    scores: np.ndarray, targets: np.ndarray, candidates: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(LOO ranks, full ranks) of each row's held-out item: the one evaluation protocol that
    the centralized evaluator and every device share.

    scores: (U, I) of every item; targets: (U,) held-out items; candidates: (U, C) sampled
    negatives; known: (U, I) bool, the user's known positives other than the target.
    """
    columns = np.concatenate([np.asarray(targets)[:, None], candidates], axis=1)
    sampled = loo_ranks(np.take_along_axis(scores, columns, axis=1))
    return sampled, full_ranks(scores, targets, known)


def known_positive_mask(
    train_items: Sequence[np.ndarray], other_held_out: Sequence[int], num_items: int
) -> np.ndarray:
    """(U, I) bool: each user's train items and other held-out item (ignored if negative)."""
    mask = np.zeros((len(train_items), num_items), dtype=bool)
    for row, (items, other) in enumerate(zip(train_items, other_held_out, strict=True)):
        mask[row, items] = True
        if other >= 0:
            mask[row, other] = True
    return mask


def exposure(
    scores: np.ndarray, targets: np.ndarray, seen: np.ndarray, ks: Sequence[int] = (5, 10)
) -> dict[int, float] | None:
    """One user's exposure of ``targets``: {k: fraction of the targets it has not ``seen``
    that rank in its top ``k`` among every unseen item}; None if it has seen every target.

    scores: (I,) of every item; targets: (T,) item indices; seen: (I,) bool, the user's items.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: the model diverged or an input is broken")
    eligible = targets[~seen[targets]]
    if eligible.size == 0:
        return None
    competitors = np.where(seen, -np.inf, scores)
    # rank of each target among the unseen others (itself excluded), ties against it
    ahead = (competitors[None, :] >= scores[eligible][:, None]).sum(axis=1) - 1
    return {k: float((ahead < k).mean()) for k in ks}
