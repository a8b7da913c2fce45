"""Training examples: every positive interaction plus sampled, leak-free negatives.

One owner for what every trainer trains on — the centralized trainer, a device's local round
and a device's DP-SGD round all build their examples here:

* :func:`training_exclusions` — the items a user's training negative must never be: its train
  items, its held-out (validation and test) items and its evaluation candidates. Training on a
  candidate as a negative would teach the model "this candidate is a negative" and leak the
  evaluation protocol into training.
* :class:`NegativeSampler` — uniform negatives outside each user's exclusions, for one user (a
  device) or many (the centralized trainer).
* :func:`make_examples` — positives and ``negatives`` negatives per positive, labelled 1/0,
  shuffled unless the caller samples batches itself (DP-SGD's Poisson sampling).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedrec.common.data.split import NO_ITEM, Split

__all__ = ["Examples", "NegativeSampler", "make_examples", "training_exclusions"]


def training_exclusions(
    train_items: np.ndarray, held_out: Iterable[int], candidates: np.ndarray
) -> np.ndarray:
    """Sorted, unique items a training negative must never be (``NO_ITEM`` entries dropped)."""
    parts = [np.asarray(train_items), np.asarray(list(held_out)), np.asarray(candidates)]
    out = np.unique(np.concatenate([p.astype(np.int64, copy=False) for p in parts]))
    return out[out != NO_ITEM]


class NegativeSampler:
    """Uniform training negatives that avoid each user's :func:`training_exclusions`.

    Exclusions are kept as one sorted array of keys ``user * num_items + item``; sampling draws
    uniformly and redraws the excluded ones (vectorized), which terminates quickly because every
    user excludes a small fraction of the catalog.
    """

    def __init__(
        self,
        num_items: int,
        exclusions: Mapping[int, np.ndarray],
        never: np.ndarray | None = None,
    ) -> None:
        """``exclusions[user]``: the items ``user``'s negatives avoid (any order, unique);
        ``never``: items no user's negative may be (the cold items of common/data/cold.py)."""
        if num_items < 1:
            raise ValueError(f"a negative sampler needs a catalog, got {num_items} items")
        self.num_items = num_items
        self._never = np.zeros(num_items, dtype=bool)
        if never is not None:
            self._never[np.asarray(never, dtype=np.int64)] = True
        if self._never.all():
            raise ValueError("every item of the catalog is excluded: no negative to train on")
        keys = [user * num_items + np.asarray(items) for user, items in exclusions.items()]
        self._excluded = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
        never_count = int(self._never.sum())
        if any(
            len(items) + never_count - int(self._never[np.asarray(items, np.int64)].sum())
            >= num_items
            for items in exclusions.values()
        ):
            raise ValueError(
                "a user excludes the whole catalog: no negative item exists to train on"
            )

    @classmethod
    def of_split(cls, split: Split, users: np.ndarray | None = None) -> NegativeSampler:
        """Negatives for ``users`` (default: all) of a global split, keyed by user index."""
        users = np.arange(split.num_users) if users is None else np.asarray(users)
        return cls(
            split.num_items,
            {
                int(u): training_exclusions(
                    split.train_items_of(int(u)),
                    (split.val_item[u], split.test_item[u]),
                    split.candidates[u],
                )
                for u in users
            },
            never=split.never_negative(),
        )

    def is_excluded(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users.astype(np.int64) * self.num_items + items
        never = self._never[items]
        if not len(self._excluded):
            return never
        pos = np.minimum(np.searchsorted(self._excluded, keys), len(self._excluded) - 1)
        return (self._excluded[pos] == keys) | never

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One negative item per entry of ``users`` (B,) -> (B,) int64."""
        items = rng.integers(0, self.num_items, size=len(users))
        bad = self.is_excluded(users, items)
        while bad.any():
            items[bad] = rng.integers(0, self.num_items, size=int(bad.sum()))
            bad[bad] = self.is_excluded(users[bad], items[bad])
        return items


@dataclass(frozen=True)
class Examples:
    """One epoch (or one DP round) of labelled pairs."""

    users: np.ndarray  # (N,) int64
    items: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) float32, 1 for positives, 0 for negatives

    def __len__(self) -> int:
        return len(self.users)


def make_examples(
    users: np.ndarray,
    items: np.ndarray,
    sampler: NegativeSampler,
    negatives: int,
    rng: np.random.Generator,
    *,
    shuffle: bool = True,
) -> Examples:
    """Positives ``(users, items)`` plus ``negatives`` sampled negatives each.

    Positives come first, then the negatives (``negatives`` blocks in the order of ``users``);
    ``shuffle`` permutes the whole set with ``rng`` after the negatives are drawn.
    """
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    users = np.asarray(users, dtype=np.int64)
    neg_users = np.tile(users, negatives)
    neg_items = sampler.sample(neg_users, rng)
    all_users = np.concatenate([users, neg_users])
    all_items = np.concatenate([np.asarray(items, dtype=np.int64), neg_items])
    labels = np.concatenate([np.ones(len(users)), np.zeros(len(neg_users))]).astype(np.float32)
    if not shuffle:
        return Examples(all_users, all_items, labels)
    order = rng.permutation(len(all_users))
    return Examples(all_users[order], all_items[order], labels[order])
