"""Training and evaluation loops shared by the centralized trainer and the federated client.

An epoch pairs every train interaction with ``negatives`` leak-free sampled negatives
(:class:`fedrec.common.data.split.NegativeSampler`), shuffles, and takes Adam steps on the binary
cross-entropy of the logits. Evaluation ranks the validation or test item of every evaluated
user with both protocols of :mod:`fedrec.common.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from fedrec.common.data.split import NO_ITEM, NegativeSampler, Split
from fedrec.common.metrics import full_ranks, loo_ranks, summarize

Which = Literal["val", "test"]


class Scorer(Protocol):
    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...
    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Examples:
    """One epoch of labelled pairs, already shuffled."""

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
) -> Examples:
    """Positives ``(users, items)`` plus ``negatives`` sampled negatives each, shuffled."""
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    neg_users = np.tile(users, negatives)
    neg_items = sampler.sample(neg_users, rng)
    all_users = np.concatenate([users, neg_users])
    all_items = np.concatenate([items, neg_items])
    labels = np.concatenate([np.ones(len(users)), np.zeros(len(neg_users))]).astype(np.float32)
    order = rng.permutation(len(all_users))
    return Examples(all_users[order], all_items[order], labels[order])


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
    """HR@k / NDCG@k (LOO sampled) and full_hr@k / full_ndcg@k over ``users`` (default: all)."""
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
        columns = np.concatenate([target[:, None], split.candidates[batch]], axis=1)
        sampled.append(loo_ranks(np.take_along_axis(scores, columns, axis=1)))
        full.append(full_ranks(scores, target, _known_positives(split, batch, other_all)))
    sampled_ranks = np.concatenate(sampled) if sampled else np.zeros(0, np.int64)
    full_ranks_ = np.concatenate(full) if full else np.zeros(0, np.int64)
    return {**summarize(sampled_ranks, k), **summarize(full_ranks_, k, prefix="full_")}


def _known_positives(split: Split, users: np.ndarray, other_held_out: np.ndarray) -> np.ndarray:
    """(B, I) mask of the users' train items and their other held-out item."""
    mask = np.zeros((len(users), split.num_items), dtype=bool)
    for row, u in enumerate(users):
        mask[row, split.train_items_of(int(u))] = True
        if other_held_out[u] != NO_ITEM:
            mask[row, other_held_out[u]] = True
    return mask
