"""The centralized trainer's loops: one epoch of steps, and evaluation of every user.

An epoch's examples (every train interaction plus leak-free negatives) come from
:func:`fedrec.common.data.examples.make_examples`; :func:`train_epoch` takes optimizer steps
on the binary cross-entropy of the logits. :func:`evaluate` ranks the validation or test item
of every evaluated user with :func:`fedrec.common.metrics.held_out_ranks`, the protocol each
device applies to its own user (``client/local.py: local_evaluate``).
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from fedrec.common.data.examples import Examples
from fedrec.common.data.split import NO_ITEM, Split
from fedrec.common.metrics import held_out_ranks, known_positive_mask, summarize

__all__ = ["Scorer", "Which", "evaluate", "train_epoch"]

Which = Literal["val", "test"]


class Scorer(Protocol):
    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...
    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


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
        known = known_positive_mask(
            [split.train_items_of(int(u)) for u in batch], other_all[batch], split.num_items
        )
        ranks = held_out_ranks(scores, target, split.candidates[batch], known)
        sampled.append(ranks[0])
        full.append(ranks[1])
    sampled_ranks = np.concatenate(sampled) if sampled else np.zeros(0, np.int64)
    full_ranks_ = np.concatenate(full) if full else np.zeros(0, np.int64)
    return {**summarize(sampled_ranks, k), **summarize(full_ranks_, k, prefix="full_")}
