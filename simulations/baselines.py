"""Baselines the seed model is measured against: matrix factorization and most-popular.

Both expose the scorer interface of :class:`fedrec.common.model.SeedModel`:
``forward(users, items) -> (B,) logits`` and ``score_all(users) -> (B, num_items)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = [
    "MatrixFactorization",
    "MostPopular",
]


class MatrixFactorization(nn.Module):
    """logit = p_u · q_i + b_i, trained with the same BCE + negatives loop as the seed model."""

    def __init__(self, num_users: int, num_items: int, dim: int = 32, init_std: float = 0.1):
        super().__init__()
        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        p = self.user_embedding(users)  # (B, dim)
        q = self.item_embedding(items)  # (B, dim)
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        p = self.user_embedding(users)  # (B, dim)
        return p @ self.item_embedding.weight.T + self.item_bias.weight.T  # (B, I)


class MostPopular(nn.Module):
    """Scores every item by its number of train interactions, the same for every user."""

    counts: torch.Tensor  # (I,) a buffer

    def __init__(self, item_counts: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("counts", torch.as_tensor(item_counts, dtype=torch.float32))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1)
