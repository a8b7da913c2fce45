"""Are the device's explanations faithful? Remove what they name, and see the score fall.

For each user, with the shared model fixed (the federation's, or any trained seed model's):

1. fit the user's private row on its whole history, as a device does (``private_epochs`` of
   Adam on the row alone, from a seeded start) and take its top recommendation i;
2. explain i (:func:`fedrec.client.explain.explain`): the ``k`` past items of largest
   influence;
3. refit the row, from the same start and the same random stream, on the history without
   those ``k`` items, and on the history without ``k`` random past items (``random_draws``
   times);
4. the **drop** of each is i's logit with the whole history minus its logit after the refit.

Explanations are faithful when removing the explained items lowers the score more than
removing random ones, on average over users: ``mean_drop_explained > mean_drop_random``,
with the paired difference's standard error beside it (``benchmarks/explain.py`` on ml-100k;
``tests/simulations/test_faithfulness.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedrec.client.explain import explain
from fedrec.client.local import LocalModel, LocalTrainConfig, build_local_model, local_train
from fedrec.common.bundle import build_bundle
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.shard import UserShard

__all__ = ["Faithfulness", "faithfulness"]


@dataclass(frozen=True)
class Faithfulness:
    users: int  # users measured (each with at least 2k past items)
    k: int
    mean_drop_explained: float  # mean over users of the top item's logit drop
    mean_drop_random: float
    paired_se: float  # standard error of the mean paired difference (explained − random)
    wins: float  # fraction of users whose explained drop exceeds their random one

    @property
    def ratio(self) -> float:
        return self.mean_drop_explained / self.mean_drop_random if self.mean_drop_random else 0.0


def faithfulness(
    shared: Mapping[str, torch.Tensor],
    catalog: Catalog,
    shards: list[UserShard],
    dim: int,
    *,
    k: int = 3,
    random_draws: int = 3,
    private_epochs: int = 10,
    seed: int = 0,
) -> Faithfulness:
    """The drops of the explained and of random past items over ``shards`` (users with
    fewer than ``2k`` train items are skipped)."""
    arrays = {name: value.numpy() for name, value in shared.items()}
    bundle = build_bundle(arrays, catalog.item_features, catalog.hash)
    config = LocalTrainConfig(epochs=0, private_epochs=private_epochs)
    genres, text = catalog.block("genres"), catalog.block("text")
    explained, random_ = [], []
    for index, shard in enumerate(shards):
        history = shard.train_items
        if len(history) < 2 * k:
            continue

        def refit(removed: np.ndarray, shard: UserShard = shard, index: int = index) -> LocalModel:
            own = shard.train_items
            kept = replace(shard, train_items=own[~np.isin(own, removed)])
            model = build_local_model(catalog, kept, dim, shared, None, seed=seed + index)
            local_train(model, kept, config, np.random.default_rng([seed, index]))
            return model

        model = refit(np.zeros(0, np.int64))
        row = model.user_row[0]
        u = bundle.user_vector(row, shard.user_features)
        seen = np.concatenate([history, [shard.val_item, shard.test_item], shard.never_negative()])
        top, _ = bundle.top_k(u, 1, seen[seen >= 0])
        item = int(top[0])
        why = explain(bundle, u, top, history, len(row), genres=genres,
                      text=None if text is None else text[0], k=k)[0]  # fmt: skip
        if len(why.past_items) < k:
            continue  # fewer than k past items lift it at all: nothing to remove
        logit = _logit(model, item)
        explained.append(logit - _logit(refit(np.asarray(why.past_items)), item))
        draws = np.random.default_rng([seed, index, 1])
        drops = [
            logit - _logit(refit(draws.choice(history, size=k, replace=False)), item)
            for _ in range(random_draws)
        ]
        random_.append(float(np.mean(drops)))
    diff = np.asarray(explained) - np.asarray(random_)
    n = len(diff)
    return Faithfulness(
        users=n,
        k=k,
        mean_drop_explained=float(np.mean(explained)) if n else 0.0,
        mean_drop_random=float(np.mean(random_)) if n else 0.0,
        paired_se=float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        wins=float((diff > 0).mean()) if n else 0.0,
    )


def _logit(model: LocalModel, item: int) -> float:
    return float(model.logits(np.array([item]))[0])
