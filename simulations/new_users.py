"""Where a device with little history stands: HR@10 by the number of interactions its user row
was fitted on.

For each user, with the shared model fixed (a federation's ``model.npz``): keep only the
user's last ``n`` train interactions, fit the private row on them as a device does
(``private_epochs`` of Adam on the row alone, from a seeded start; ``n`` = 0: no history, a
zero row, the user's features alone) and rank its test item exactly as the device's
evaluation does (LOO-99 and full ranking, every one of the user's real interactions left out
of the full ranking). ``user_features=False`` withholds the user's features at that fit and
ranking (zeros: the model trained with them, so this measures what they carry for a user with
little history, not a model trained without them). ``benchmarks/new_users.py`` on ml-100k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from fedrec.client.local import LocalTrainConfig, build_local_model, local_evaluate, local_train
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.shard import UserShard

__all__ = ["ALL", "LENGTHS", "history_curve"]

ALL = -1  # the whole history
LENGTHS = (0, 1, 2, 5, 10, 20, ALL)  # interactions the row is fitted on
_KEYS = ("hr@10", "ndcg@10", "full_hr@10")


def history_curve(
    shared: Mapping[str, torch.Tensor],
    catalog: Catalog,
    shards: Sequence[UserShard],
    dim: int,
    *,
    lengths: Sequence[int] = LENGTHS,
    user_features: bool = True,
    same_users: bool = False,
    private_epochs: int = 10,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """{n: {"users": U, "hr@10": …, "ndcg@10": …, "full_hr@10": …}} over the evaluable
    ``shards`` with at least ``n`` train interactions (``n`` = :data:`ALL`: every shard, on
    its whole history); ``same_users``: only the shards with at least the longest of
    ``lengths`` (every point over the same users: a paired curve)."""
    if any(n < ALL for n in lengths):
        raise ValueError(f"history lengths must be >= 0 (or ALL), got {list(lengths)}")
    config = LocalTrainConfig(epochs=0, private_epochs=private_epochs)
    least = max(lengths, default=0) if same_users else 0
    sums: dict[int, dict[str, float]] = {n: dict.fromkeys(("users", *_KEYS), 0.0) for n in lengths}
    for index, shard in enumerate(shards):
        if not shard.evaluable or len(shard.train_items) < least:
            continue
        if not user_features:
            shard = replace(shard, user_features=np.zeros_like(shard.user_features))
        for n in lengths:
            if n > len(shard.train_items) or (n == ALL and not len(shard.train_items)):
                continue
            model = build_local_model(catalog, shard, dim, shared, None, seed=seed + index)
            if n == 0:
                model.user_row[...] = 0.0  # a new user: its features alone
            else:
                kept = shard.train_items if n == ALL else shard.train_items[-n:]
                recent = replace(shard, train_items=kept)
                local_train(model, recent, config, np.random.default_rng([seed, index, n + 1]))
            metrics = local_evaluate(model, shard)  # the full shard: every real interaction
            sums[n]["users"] += 1
            for key in _KEYS:
                sums[n][key] += metrics[key]
    return {
        n: {"users": s["users"], **{k: s[k] / s["users"] if s["users"] else 0.0 for k in _KEYS}}
        for n, s in sums.items()
    }
