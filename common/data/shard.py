"""One user's data as a device holds it.

A :class:`UserShard` is everything a client needs to train and evaluate locally: its train
items, its held-out validation/test items, its 99 evaluation candidates and its features. It
is cut from the global split in simulation (:func:`user_shard`) and read from the device's
encrypted store in a deployment; nothing in it is ever sent to the server. Item indices are
rows of the public :class:`~fedrec.common.data.catalog.Catalog`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.common.data.cold import ColdShard
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.examples import (
    Examples,
    NegativeSampler,
    make_examples,
    training_exclusions,
)
from fedrec.common.data.split import NO_ITEM, Split

__all__ = ["DEVICE_USER", "UserShard", "user_shard"]

DEVICE_USER = 0  # the only user row of a device's model and of its examples


@dataclass(frozen=True)
class UserShard:
    user_features: np.ndarray  # (F_u,) float32, private
    train_items: np.ndarray  # (n,) int64, time order, private
    val_item: int  # NO_ITEM for a train-only user
    test_item: int
    candidates: np.ndarray  # (99,) int64 evaluation negatives (empty for train-only users)
    num_items: int
    cold: ColdShard | None = None  # the cold-start protocol's part (simulations, cold-items)

    @property
    def evaluable(self) -> bool:
        return self.test_item != NO_ITEM

    def excluded(self) -> np.ndarray:
        """Sorted items a training negative must never be (train, held-out, candidates)."""
        return training_exclusions(
            self.train_items, (self.val_item, self.test_item), self.candidates
        )

    def never_negative(self) -> np.ndarray:
        """Items no negative may be whatever the user did: the run's cold items."""
        return self.cold.items if self.cold is not None else np.zeros(0, np.int64)

    def negative_sampler(self) -> NegativeSampler:
        return NegativeSampler(
            self.num_items, {DEVICE_USER: self.excluded()}, never=self.never_negative()
        )

    def sample_negatives(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` uniform items outside :meth:`excluded` (rejection sampling, vectorized)."""
        return self.negative_sampler().sample(np.full(n, DEVICE_USER, np.int64), rng)

    def examples(
        self, negatives: int, rng: np.random.Generator, *, shuffle: bool = True
    ) -> Examples:
        """The user's train items and ``negatives`` fresh negatives each (one epoch)."""
        users = np.full(len(self.train_items), DEVICE_USER, np.int64)
        return make_examples(
            users, self.train_items, self.negative_sampler(), negatives, rng, shuffle=shuffle
        )


def user_shard(data: Interactions, split: Split, user: int) -> UserShard:
    """Cut user ``user``'s shard out of the global data and split."""
    if not 0 <= user < split.num_users:
        raise ValueError(f"user index {user} outside [0, {split.num_users})")
    candidates = split.candidates[user]
    return UserShard(
        user_features=data.user_features[user],
        train_items=split.train_items_of(user).copy(),
        val_item=int(split.val_item[user]),
        test_item=int(split.test_item[user]),
        candidates=candidates[candidates != NO_ITEM].copy(),
        num_items=split.num_items,
        cold=split.cold.shard(user) if split.cold is not None else None,
    )
