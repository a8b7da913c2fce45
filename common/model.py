"""The seed model: two towers over id embeddings and features, a linear head on u ⊙ v.

    h = [user-id embedding ; user features]      g = [item-id embedding ; item features]
    u = ReLU(W_u·h + b_u)                         v = ReLU(W_v·g + b_v)
    r = σ(w_r·(u ⊙ v) + b_r)                      trained with BCE on positives + negatives

Parameters fall in two named groups, and the federation exchanges only the **shared** one:
  * private — the user-id embedding table and the user features (computed only from the user's
    own data; on a device this is a single row that never leaves it);
  * shared  — item-id embeddings, W_v/b_v, W_u/b_u and the head w_r/b_r.
Item features are public catalog metadata (genres, a text embedding): a buffer that every
party builds from the catalog, so it is neither trained nor exchanged.

``item_ids=False`` builds the model without the item-id table: g = [item features] alone, so
every item, seen or new, is scored from its features, and the shared group shrinks to the
towers and the head (on ml-100k with text features 144,065 → 32,321 parameters; user-level
DP adds the same noise to each coordinate, and what fewer of them buy is measured in
docs/results.md, "A smaller shared model under DP").

The layout without the model (its config, parameter names and the shared group's shapes)
lives in common/shapes.py, torch-free: a device checks every message against it and trains
the same model in NumPy (client/local_model.py, client/local.py). This module is the
server's and the centralized trainer's, and DP-SGD's on a device.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as missing:  # a device install: its plain path never comes here
    raise ImportError(
        "the torch seed model (fedrec's server, simulations, centralized training and"
        " record-level DP-SGD) needs torch: pip install 'fedrec[torch]'"
    ) from missing

from fedrec.common.data.catalog import Catalog
from fedrec.common.shapes import (
    CATALOG_KEYS,
    ITEM_TABLE,
    PRIVATE_KEYS,
    ModelConfig,
    device_config,
    shared_shapes,
)

__all__ = [
    "CATALOG_KEYS",
    "ITEM_TABLE",
    "PRIVATE_KEYS",
    "ModelConfig",
    "SeedModel",
    "device_model",
    "initial_shared_state",
    "load_private_state",
    "load_shared_state",
    "private_state",
    "private_state_names",
    "shared_parameter_names",
    "shared_shapes",
    "shared_state",
]


class SeedModel(nn.Module):
    """u = ReLU(W_u·h + b_u), v = ReLU(W_v·g + b_v), logit = w_r·(u ⊙ v) + b_r."""

    user_features: torch.Tensor  # (num_users, F_u) buffer: private, never trained
    item_features: torch.Tensor  # (num_items, F_i) buffer: the public catalog's

    def __init__(
        self,
        config: ModelConfig,
        user_features: torch.Tensor,
        item_features: torch.Tensor,
        *,
        initialize: bool = True,
    ) -> None:
        """``initialize=False`` leaves the id-embedding tables uninitialised (no init cost): for
        a model whose every parameter is loaded right after, as a device's in each round."""
        super().__init__()
        _check_features("user_features", user_features, config.num_users, config.user_feature_dim)
        _check_features("item_features", item_features, config.num_items, config.item_feature_dim)
        self.config = config
        self.user_embedding = _embedding(config.num_users, config.id_dim, initialize)
        self.item_embedding: nn.Embedding | None = (
            _embedding(config.num_items, config.id_dim, initialize) if config.item_ids else None
        )
        if initialize:
            nn.init.normal_(self.user_embedding.weight, std=config.init_std)
            if self.item_embedding is not None:
                nn.init.normal_(self.item_embedding.weight, std=config.init_std)
        self.register_buffer("user_features", user_features.float().clone())
        self.register_buffer("item_features", item_features.float().clone())
        self.user_tower = nn.Linear(config.id_dim + config.user_feature_dim, config.dim)  # W_u
        self.item_tower = nn.Linear(config.item_id_dim + config.item_feature_dim, config.dim)  # W_v
        self.head = nn.Linear(config.dim, 1)  # w_r, b_r

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) user indices -> (B, dim) u."""
        h = torch.cat([self.user_embedding(users), self.user_features[users]], dim=-1)
        return torch.relu(self.user_tower(h))

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) item indices (or the whole catalog when None) -> (B, dim) v."""
        table = self.item_embedding
        if items is None:
            features = self.item_features
            ids = None if table is None else table.weight
        else:
            features = self.item_features[items]
            ids = None if table is None else table(items)
        g = features if ids is None else torch.cat([ids, features], dim=-1)
        return torch.relu(self.item_tower(g))

    def feature_item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(B,) items -> (B, dim) v from the items' features alone, with a zero id row: how
        the model sees an item it never trained on (a cold or a new item). Without an
        item-id table that is every item's vector."""
        features = self.item_features[items]
        ids = features.new_zeros(len(items), self.config.item_id_dim)
        return torch.relu(self.item_tower(torch.cat([ids, features], dim=-1)))

    def score_from_features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) users, (C,) items -> (B, C) logits of ``items`` scored from their features
        alone (:meth:`feature_item_vectors`)."""
        u = self.user_vectors(users) * self.head.weight
        return u @ self.feature_item_vectors(items).T + self.head.bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) users, (B,) items -> (B,) logits (apply σ for the score r)."""
        uv = self.user_vectors(users) * self.item_vectors(items)  # (B, dim)
        return self.head(uv).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) users -> (B, num_items) logits over the whole catalog."""
        u = self.user_vectors(users) * self.head.weight  # (B, dim): w_r folded into u
        return u @ self.item_vectors().T + self.head.bias  # (B, I)


def device_model(
    catalog: Catalog,
    dim: int,
    user_features: np.ndarray,
    *,
    initialize: bool = True,
    item_ids: bool = True,
) -> SeedModel:
    """A one-user seed model over ``catalog``: the shape every device and the server share
    (``item_ids``: with the item-id table, or items as their features alone).

    ``initialize=False`` skips the random initialisation, for a caller that loads every
    parameter right after (a device receiving the shared group and restoring its row).
    """
    features = np.asarray(user_features, dtype=np.float32).reshape(1, -1)
    return SeedModel(
        device_config(catalog, dim, item_ids),
        torch.from_numpy(features),
        torch.from_numpy(catalog.item_features),
        initialize=initialize,
    )


def initial_shared_state(
    catalog: Catalog, dim: int, seed: int, *, item_ids: bool = True
) -> dict[str, torch.Tensor]:
    """The shared group of a freshly initialised seed model: round 0 of a federation."""
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG untouched
        torch.manual_seed(seed)
        zeros = np.zeros(catalog.user_feature_dim, np.float32)
        model = device_model(catalog, dim, zeros, item_ids=item_ids)
    return shared_state(model)


def _embedding(rows: int, width: int, initialize: bool) -> nn.Embedding:
    if initialize:
        return nn.Embedding(rows, width)  # default init, then ours (keeps the seeded stream)
    return nn.Embedding(rows, width, _weight=torch.empty(rows, width))  # skips the init


def shared_parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters the federation exchanges (everything not private)."""
    return [n for n, _ in model.named_parameters() if n not in PRIVATE_KEYS]


def private_state_names(model: nn.Module) -> list[str]:
    """Names of the state that must never leave the device."""
    return [n for n in model.state_dict() if n in PRIVATE_KEYS]


def shared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the shared parameters, in a stable order."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in shared_parameter_names(model)}


def private_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n].detach().clone() for n in private_state_names(model)}


def load_shared_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy exactly the shared parameters into ``model``; any other key or shape is an error."""
    _load_exact(model, state, shared_parameter_names(model), "shared")


def load_private_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    _load_exact(model, state, private_state_names(model), "private")


def _load_exact(
    model: nn.Module, state: Mapping[str, torch.Tensor], expected: list[str], group: str
) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{group} state mismatch: missing {missing}, unexpected {extra}")
    current = model.state_dict()
    values = {name: torch.as_tensor(state[name]) for name in expected}
    for name, value in values.items():  # check every shape first: a rejected load changes nothing
        if value.shape != current[name].shape:
            raise ValueError(
                f"{group} state '{name}': expected shape {tuple(current[name].shape)},"
                f" got {tuple(value.shape)}"
            )
    with torch.no_grad():
        for name, value in values.items():
            current[name].copy_(value)


def _check_features(name: str, features: torch.Tensor, rows: int, width: int) -> None:
    if tuple(features.shape) != (rows, width):
        raise ValueError(f"{name}: expected shape ({rows}, {width}), got {tuple(features.shape)}")
