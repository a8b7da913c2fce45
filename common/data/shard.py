"""One user's data as a device holds it, and the public catalog every party shares.

A :class:`UserShard` is everything a client needs to train and evaluate locally: its train
items, its held-out validation/test items, its 99 evaluation candidates and its features. It
is derived from the global split in simulation and would be read from the device's encrypted
store in a deployment; nothing in it is ever sent to the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.common.data.dataset import Interactions
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import NO_ITEM, Split
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import ModelConfig, SeedModel, shared_state


@dataclass(frozen=True)
class Catalog:
    """Public item metadata: identical on the server and every device."""

    item_ids: tuple[str, ...]
    item_features: np.ndarray  # (num_items, F_i) float32
    user_feature_dim: int  # width of every user's private feature vector

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def of(cls, data: Interactions) -> Catalog:
        return cls(data.item_ids, data.item_features, data.user_features.shape[1])


@dataclass(frozen=True)
class UserShard:
    user_features: np.ndarray  # (F_u,) float32, private
    train_items: np.ndarray  # (n,) int64, time order, private
    val_item: int  # NO_ITEM for a train-only user
    test_item: int
    candidates: np.ndarray  # (99,) int64 evaluation negatives (empty for train-only users)
    num_items: int

    @property
    def evaluable(self) -> bool:
        return self.test_item != NO_ITEM

    def excluded(self) -> np.ndarray:
        """Sorted items a training negative must never be (train, held-out, candidates)."""
        held = np.array([self.val_item, self.test_item], dtype=np.int64)
        out = np.unique(np.concatenate([self.train_items, held, self.candidates]))
        return out[out != NO_ITEM]

    def sample_negatives(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` uniform items outside :meth:`excluded` (rejection sampling, vectorized)."""
        excluded = self.excluded()
        if len(excluded) >= self.num_items:
            raise ValueError("this user excludes the whole catalog: no negative exists")
        items = rng.integers(0, self.num_items, size=n)
        bad = np.isin(items, excluded)
        while bad.any():
            items[bad] = rng.integers(0, self.num_items, size=int(bad.sum()))
            bad[bad] = np.isin(items[bad], excluded)
        return items


def load_catalog(config: FederationConfig) -> Catalog:
    """The public catalog of the configured data source (the server needs only this)."""
    data = load_interactions(config.data, threshold=config.threshold, synthetic=config.synthetic())
    return Catalog.of(data)


def device_model(
    catalog: Catalog, dim: int, user_features: np.ndarray, *, initialize: bool = True
) -> SeedModel:
    """A one-user seed model over ``catalog``: the shape every device and the server share.

    ``initialize=False`` skips the random initialisation, for a caller that loads every
    parameter right after (a device receiving the shared group and restoring its row).
    """
    config = ModelConfig(
        num_users=1,
        num_items=catalog.num_items,
        user_feature_dim=catalog.user_feature_dim,
        item_feature_dim=catalog.item_features.shape[1],
        id_dim=dim,
        dim=dim,
    )
    features = np.asarray(user_features, dtype=np.float32).reshape(1, -1)
    return SeedModel(
        config,
        torch.from_numpy(features),
        torch.from_numpy(catalog.item_features),
        initialize=initialize,
    )


def initial_shared_state(catalog: Catalog, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """The shared group of a freshly initialised seed model: round 0 of a federation."""
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = device_model(catalog, dim, np.zeros(catalog.user_feature_dim, np.float32))
    return shared_state(model)


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
    )
