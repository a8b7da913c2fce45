"""Temporal leave-one-out split, evaluation candidates and leak-free training negatives.

For each user, interactions are ordered by timestamp (ties keep the file order: a stable sort);
the last one is the test item, the second-to-last the validation item, the rest train. Users
with fewer than ``MIN_INTERACTIONS_TO_EVALUATE`` interactions are train-only and counted.

Each evaluated user gets ``num_candidates`` (99) negatives sampled once, from a fixed seed,
among items the user never interacted with. Training negatives
(:mod:`fedrec.common.data.examples`) avoid the user's train items **and** its held-out items
and evaluation candidates, so the model never learns "this candidate is a negative".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedrec.common.data.dataset import Interactions

if TYPE_CHECKING:  # cold.py builds on this module
    from fedrec.common.data.cold import ColdItems

__all__ = [
    "MIN_INTERACTIONS_TO_EVALUATE",
    "NO_ITEM",
    "Split",
    "check_evaluable",
    "temporal_leave_one_out",
]

MIN_INTERACTIONS_TO_EVALUATE = 3
NO_ITEM = -1


@dataclass(frozen=True)
class Split:
    """Train interactions in CSR form per user plus the held-out items and candidates."""

    num_users: int
    num_items: int
    train_indptr: np.ndarray  # (num_users + 1,) int64: user u's train items are
    train_items: np.ndarray  # train_items[train_indptr[u]:train_indptr[u + 1]], time order
    val_item: np.ndarray  # (num_users,) int64, NO_ITEM for train-only users
    test_item: np.ndarray  # (num_users,) int64, NO_ITEM for train-only users
    candidates: np.ndarray  # (num_users, num_candidates) int64 negatives, NO_ITEM rows if none
    train_only_users: int
    seed: int
    cold: ColdItems | None = None  # items held out of training entirely (common/data/cold.py)

    @property
    def eval_users(self) -> np.ndarray:
        """Users with a validation and a test item, ascending."""
        return np.flatnonzero(self.test_item != NO_ITEM)

    @property
    def train_user(self) -> np.ndarray:
        """(N_train,) user index of every train interaction, aligned with ``train_items``."""
        return np.repeat(np.arange(self.num_users), np.diff(self.train_indptr))

    def train_items_of(self, user: int) -> np.ndarray:
        return self.train_items[self.train_indptr[user] : self.train_indptr[user + 1]]

    def never_negative(self) -> np.ndarray:
        """Items no user's training negative or warm evaluation candidate may be (cold ones)."""
        return self.cold.items if self.cold is not None else np.zeros(0, np.int64)

    def item_counts(self) -> np.ndarray:
        """(num_items,) number of train interactions per item (popularity)."""
        return np.bincount(self.train_items, minlength=self.num_items)


def check_evaluable(data: Interactions) -> None:
    """Refuse a data set in which no user can be evaluated (each needs a train, a validation
    and a test item): every quality figure would be a zero that means nothing."""
    counts = np.bincount(data.user, minlength=data.num_users)
    if not (counts >= MIN_INTERACTIONS_TO_EVALUATE).any():
        raise ValueError(
            f"{data.source}: no user can be evaluated: each needs at least"
            f" {MIN_INTERACTIONS_TO_EVALUATE} interactions (train, validation, test), and the"
            f" {data.num_users} users have at most {int(counts.max(initial=0))}"
        )


def temporal_leave_one_out(
    data: Interactions,
    *,
    num_candidates: int = 99,
    seed: int = 0,
    never: np.ndarray | None = None,
) -> Split:
    """Split ``data`` per user by time and sample the evaluation candidates once from ``seed``,
    never among the items ``never`` (the cold items of common/data/cold.py)."""
    if num_candidates < 0:
        raise ValueError(f"num_candidates must be >= 0, got {num_candidates}")
    order = np.lexsort((data.timestamp, data.user))  # by user, then time; stable on ties
    users = data.user[order]
    items = data.item[order]
    counts = np.bincount(users, minlength=data.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)])
    evaluated = counts >= MIN_INTERACTIONS_TO_EVALUATE

    val_item = np.full(data.num_users, NO_ITEM, dtype=np.int64)
    test_item = np.full(data.num_users, NO_ITEM, dtype=np.int64)
    test_item[evaluated] = items[starts[1:][evaluated] - 1]
    val_item[evaluated] = items[starts[1:][evaluated] - 2]
    held_out = np.zeros(len(items), dtype=bool)
    ends = starts[1:][evaluated]
    held_out[ends - 1] = True
    held_out[ends - 2] = True

    train_counts = counts - 2 * evaluated
    train_indptr = np.concatenate([[0], np.cumsum(train_counts)]).astype(np.int64)
    train_items = items[~held_out].astype(np.int64)

    all_items = _csr_sets(users, items, data.num_users)
    never = np.zeros(0, np.int64) if never is None else np.asarray(never, dtype=np.int64)
    candidates = _sample_candidates(
        all_items, evaluated, data.num_items, num_candidates, seed, never
    )
    return Split(
        num_users=data.num_users,
        num_items=data.num_items,
        train_indptr=train_indptr,
        train_items=train_items,
        val_item=val_item,
        test_item=test_item,
        candidates=candidates,
        train_only_users=int((~evaluated).sum()),
        seed=seed,
    )


def _csr_sets(users: np.ndarray, items: np.ndarray, num_users: int) -> list[np.ndarray]:
    counts = np.bincount(users, minlength=num_users)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [np.unique(items[bounds[u] : bounds[u + 1]]) for u in range(num_users)]


def _sample_candidates(
    interacted: list[np.ndarray],
    evaluated: np.ndarray,
    num_items: int,
    k: int,
    seed: int,
    never: np.ndarray,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.full((len(interacted), k), NO_ITEM, dtype=np.int64)
    eligible = np.setdiff1d(np.arange(num_items), never)
    for u in np.flatnonzero(evaluated):
        pool = np.setdiff1d(eligible, interacted[u], assume_unique=True)
        if len(pool) < k:
            raise ValueError(
                f"user {u} interacted with {len(interacted[u])} of the {len(eligible)} eligible"
                f" items: fewer than {k} items remain to sample evaluation candidates from"
            )
        out[u] = rng.choice(pool, size=k, replace=False)
    return out
