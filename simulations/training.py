"""The centralized trainer's loops: one epoch of steps, and evaluation of every user.

An epoch's examples (every train interaction plus leak-free negatives) come from
:func:`fedrec.common.data.examples.make_examples`; :func:`train_epoch` takes optimizer steps
on the binary cross-entropy of the logits. :func:`evaluate` ranks the validation or test item
of every evaluated user with :func:`fedrec.common.metrics.held_out_ranks`, the protocol each
device applies to its own user (``client/local.py: local_evaluate``); with cold items held out
(``Split.cold``) it also ranks each user's cold target among the cold items
(:func:`evaluate_cold`, common/data/cold.py), and leaves cold items out of the warm ranking.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fedrec.common import keys
from fedrec.common.data.cold import cold_ranks
from fedrec.common.data.examples import Examples
from fedrec.common.data.split import NO_ITEM, Split
from fedrec.common.metrics import held_out_ranks, known_positive_mask, summarize

__all__ = ["FeatureScorer", "Scorer", "Which", "evaluate", "evaluate_cold", "train_epoch"]

Which = Literal["val", "test"]


class Scorer(Protocol):
    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...
    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FeatureScorer(Protocol):
    def score_from_features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    examples: Examples,
    batch_size: int,
) -> float:
    """One pass over ``examples``; returns the mean BCE loss."""
    model.train()
    users = torch.from_numpy(examples.users)
    items = torch.from_numpy(examples.items)
    labels = torch.from_numpy(examples.labels)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total = 0.0
    for start in range(0, len(examples), batch_size):
        sl = slice(start, start + batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(users[sl], items[sl]), labels[sl])
        (loss / labels[sl].numel()).backward()
        optimizer.step()
        total += float(loss.detach())
    return total / max(len(examples), 1)


@torch.no_grad()
def evaluate(
    model: Scorer,
    split: Split,
    which: Which,
    *,
    k: int = 10,
    users: np.ndarray | None = None,
    chunk: int = 256,
) -> dict[str, float]:
    """HR@k / NDCG@k (LOO sampled) and full_hr@k / full_ndcg@k over ``users`` (default: all);
    with cold items, also the cold target's ``cold-`` metrics (:func:`evaluate_cold`)."""
    if isinstance(model, nn.Module):
        model.eval()
    users = split.eval_users if users is None else np.asarray(users)
    target_all = split.val_item if which == "val" else split.test_item
    other_all = split.test_item if which == "val" else split.val_item
    sampled, full = [], []
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        scores = model.score_all(torch.from_numpy(batch)).numpy()  # (B, I)
        target = target_all[batch]
        if (target == NO_ITEM).any():
            raise ValueError("evaluate() got a train-only user (no held-out item)")
        known = known_positive_mask(
            [split.train_items_of(int(u)) for u in batch], other_all[batch], split.num_items
        )
        known[:, split.never_negative()] = True  # cold items are not in the warm ranking
        ranks = held_out_ranks(scores, target, split.candidates[batch], known)
        sampled.append(ranks[0])
        full.append(ranks[1])
    sampled_ranks = np.concatenate(sampled) if sampled else np.zeros(0, np.int64)
    full_ranks_ = np.concatenate(full) if full else np.zeros(0, np.int64)
    out = {**summarize(sampled_ranks, k), **summarize(full_ranks_, k, prefix="full_")}
    if split.cold is not None:
        if not isinstance(model, FeatureScorer):
            raise ValueError(
                f"{type(model).__name__} cannot score an item from its features: the cold-item"
                " protocol needs the seed model"
            )
        cold_users = np.intersect1d(users, split.cold.users)
        out |= evaluate_cold(model, split, k=k, users=cold_users, chunk=chunk)
    return out


@torch.no_grad()
def evaluate_cold(
    model: FeatureScorer,
    split: Split,
    *,
    k: int = 10,
    users: np.ndarray | None = None,
    chunk: int = 256,
) -> dict[str, float]:
    """``cold-hr@k`` / ``cold-ndcg@k`` (among 99 untouched cold items) and ``cold-full_hr@k``
    / ``cold-full_ndcg@k`` (among every cold item) of each user's cold target, the cold items
    scored from their features alone; empty without cold items or users to rank."""
    cold = split.cold
    if cold is None:
        return {}
    users = cold.users if users is None else np.asarray(users)
    if not len(users):
        return {}
    if isinstance(model, nn.Module):
        model.eval()
    items = torch.from_numpy(cold.items)
    sampled, full = [], []
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        scores = model.score_from_features(torch.from_numpy(batch), items).numpy()
        ranks = cold_ranks(
            scores,
            cold.items,
            cold.target[batch],
            cold.candidates[batch],
            [cold.seen_of(int(u)) for u in batch],
        )
        sampled.append(ranks[0])
        full.append(ranks[1])
    prefix = keys.COLD_PREFIX
    return {
        **summarize(np.concatenate(sampled), k, prefix=prefix),
        **summarize(np.concatenate(full), k, prefix=prefix + "full_"),
    }
