"""The one-user seed model a device trains and evaluates, in NumPy (no torch on a device).

The same model as :class:`fedrec.common.model.SeedModel` with a single user row, and the
same parameter names (they are the wire format)::

    h = [e ; f]  (user-id row, user features)     g_j = [E_j ; F_j]  (E_j absent without ids)
    u = ReLU(W_u·h + b_u)                          v_j = ReLU(W_v·g_j + b_v)
    logit_j = w·(u ⊙ v_j) + b                      trained with mean BCE (client/local.py)

Its parameters live in one dict in ``SeedModel.named_parameters()`` order, float32; the user
and item features are constants (private and public). Only DP-SGD (client/dp_sgd.py) converts
it to the torch model and back, as Opacus needs one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedrec.common.data.catalog import Catalog
from fedrec.common.data.shard import UserShard
from fedrec.common.shapes import (
    ITEM_TABLE,
    PARAMETER_NAMES,
    PRIVATE_KEYS,
    ModelConfig,
    device_config,
    parameter_shapes,
)

__all__ = ["USER_ROW", "LocalModel", "build_local_model", "torch_normal"]

USER_ROW = "user_embedding.weight"  # (1, id_dim): the device's private row


@dataclass
class LocalModel:
    """One user's seed model: its trainable parameters by name and the two feature tables."""

    config: ModelConfig
    params: dict[str, np.ndarray]  # SeedModel's names and order; float32, trained in place
    user_features: np.ndarray  # (1, F_u) private, constant
    item_features: np.ndarray  # (I, F_i) the public catalog's, constant

    @property
    def user_row(self) -> np.ndarray:
        return self.params[USER_ROW]

    @property
    def item_table(self) -> np.ndarray | None:
        """(I, id_dim) item-id table, or None for a model without item ids."""
        return self.params.get(ITEM_TABLE)

    def shared_names(self) -> list[str]:
        """The shared group's names, in the wire order."""
        return [n for n in self.params if n not in PRIVATE_KEYS]

    def shared_state(self) -> dict[str, np.ndarray]:
        """Copies of the shared parameters, in the wire order."""
        return {n: self.params[n].copy() for n in self.shared_names()}

    def private_state(self) -> dict[str, np.ndarray]:
        """What never leaves the device: the user row and the user features."""
        return {USER_ROW: self.user_row.copy(), "user_features": self.user_features.copy()}

    def user_vector(self) -> np.ndarray:
        """(dim,) u = ReLU(W_u·[e ; f] + b_u)."""
        h = np.concatenate([self.user_row[0], self.user_features[0]])
        return _relu(self.params["user_tower.weight"] @ h + self.params["user_tower.bias"])

    def item_vectors(self, items: np.ndarray | None = None) -> np.ndarray:
        """(B,) item indices (the whole catalog when None) -> (B, dim) v."""
        rows = slice(None) if items is None else items
        features = self.item_features[rows]
        table = self.item_table
        g = features if table is None else np.concatenate([table[rows], features], axis=1)
        return _relu(g @ self.params["item_tower.weight"].T + self.params["item_tower.bias"])

    def logits(self, items: np.ndarray) -> np.ndarray:
        """(B,) items -> (B,) logits (σ of which is the score r)."""
        return self.item_vectors(items) @ self._folded_user() + self.params["head.bias"][0]

    def score_all(self) -> np.ndarray:
        """(I,) logits over the whole catalog."""
        return self.item_vectors() @ self._folded_user() + self.params["head.bias"][0]

    def score_from_features(self, items: np.ndarray) -> np.ndarray:
        """(C,) logits of ``items`` scored from their features alone, with a zero id row: how
        the model sees an item it never trained on (a cold or a new item)."""
        w_v = self.params["item_tower.weight"][:, self.config.item_id_dim :]
        v = _relu(self.item_features[items] @ w_v.T + self.params["item_tower.bias"])
        return v @ self._folded_user() + self.params["head.bias"][0]

    def _folded_user(self) -> np.ndarray:
        """(dim,) w ⊙ u: the head folded into the user vector."""
        return self.user_vector() * self.params["head.weight"][0]


def build_local_model(
    catalog: Catalog,
    shard: UserShard,
    dim: int,
    shared: Mapping[str, object] | None,
    private: Mapping[str, object] | None,
    seed: int,
) -> LocalModel:
    """A one-user model: the server's shared weights + this device's private row.

    ``shared`` and ``private`` hold arrays (NumPy, or anything ``np.asarray`` reads); the
    shared group says whether the model has an item-id table, and any other name or shape
    is an error. Without a stored row (first participation) the user row is drawn from
    ``seed`` with torch's CPU normal stream (:func:`torch_normal`), so a device's first
    round is the one the torch model had. A device working offline from scratch
    (``shared`` None) initialises the shared group from ``seed`` too, in NumPy: id tables
    N(0, init_std²), the towers and the head as nn.Linear's default U(±1/√fan_in).
    """
    features = np.asarray(shard.user_features, dtype=np.float32).reshape(1, -1)
    item_ids = shared is None or ITEM_TABLE in shared
    config = device_config(catalog, dim, item_ids)
    shapes = parameter_shapes(config)
    expected = [n for n in PARAMETER_NAMES if n in shapes]
    values: dict[str, object] = {**(_initial(shapes, config, seed) if shared is None else shared)}
    _check_names(values, expected[1:], "shared")
    if private is not None:  # the stored row; the features are the shard's (they may change)
        _check_names({USER_ROW: None, **private}, [USER_ROW, "user_features"], "private")
        values[USER_ROW] = private[USER_ROW]
    else:
        values[USER_ROW] = torch_normal(seed, dim, config.init_std)[None, :]
    params = {n: np.asarray(values[n]).astype(np.float32) for n in expected}  # copies
    for name in expected:  # every shape first: a rejected load builds nothing
        if params[name].shape != shapes[name]:
            group = "private" if name == USER_ROW else "shared"
            raise ValueError(
                f"{group} state '{name}': expected shape {shapes[name]}, got {params[name].shape}"
            )
    item_features = np.asarray(catalog.item_features, dtype=np.float32)
    return LocalModel(config, params, features, item_features)


def torch_normal(seed: int, size: int, std: float) -> np.ndarray:
    """(size,) float32 N(0, std²) exactly as ``torch.empty(size).normal_(0, std,
    generator=torch.Generator().manual_seed(seed))`` draws it on the CPU (to a float32 ulp),
    so the seeded user rows of the torch model carry over: torch's mt19937, and its two
    Box–Muller paths (doubles one value at a time below 16 values, float blocks of 16 from
    16 values on, the last block redrawn when 16 does not divide the size).
    """
    bits = _Words(np.random.RandomState(seed))  # init_genrand(seed), as torch's mt19937(seed)
    if size < 16:
        raw = bits.next(4 * ((size + 1) // 2)).reshape(-1, 2)
        u = ((raw[:, 0] << np.uint64(32)) | raw[:, 1]) & np.uint64((1 << 53) - 1)
        u1, u2 = (u.astype(np.float64) * 2.0**-53).reshape(-1, 2).T
        radius, theta = np.sqrt(-2.0 * np.log1p(-u2)), 2.0 * np.pi * u1
        pairs = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
        return (pairs.reshape(-1)[:size] * std).astype(np.float32)
    data = _uniform24(bits, size)
    _box_muller_16(data, size - size % 16, std)
    if size % 16:
        data[-16:] = _uniform24(bits, 16)
        _box_muller_16(data[-16:], 16, std)
    return data


class _Words:
    """mt19937's raw 32-bit outputs, in order (a full-range uint32 draw is one output)."""

    def __init__(self, state: np.random.RandomState) -> None:
        self.state = state

    def next(self, n: int) -> np.ndarray:
        return self.state.randint(0, 2**32, size=n, dtype=np.uint32).astype(np.uint64)


def _uniform24(bits: _Words, n: int) -> np.ndarray:
    raw = bits.next(n) & np.uint64((1 << 24) - 1)
    return (raw.astype(np.float64) * 2.0**-24).astype(np.float32)


def _box_muller_16(data: np.ndarray, size: int, std: float) -> None:
    """In place over ``data[:size]``: each block of 16 uniforms becomes 16 normals."""
    blocks = data[:size].reshape(-1, 2, 8)
    radius = np.sqrt(-2.0 * np.log(1.0 - blocks[:, 0]))
    theta = np.float32(2.0 * np.pi) * blocks[:, 1]
    s = np.float32(std)
    data[:size] = np.stack([radius * np.cos(theta) * s, radius * np.sin(theta) * s], 1).ravel()


def _initial(
    shapes: dict[str, tuple[int, ...]], config: ModelConfig, seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name == USER_ROW:  # drawn by the caller, as with a shared group from the server
            continue
        if name.endswith("embedding.weight"):
            values[name] = rng.normal(0.0, config.init_std, shape)
        else:  # a Linear's weight (out, in) or bias (out,): bound 1/√in
            fan_in = shapes[name.replace(".bias", ".weight")][1]
            bound = 1.0 / np.sqrt(fan_in) if fan_in else 0.0
            values[name] = rng.uniform(-bound, bound, shape)
    return values


def _check_names(state: Mapping[str, object], expected: list[str], group: str) -> None:
    missing = sorted(set(expected) - set(state))
    if group == "private":  # the stored features are optional: the shard's replace them
        missing = [n for n in missing if n != "user_features"]
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{group} state mismatch: missing {missing}, unexpected {extra}")


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=np.float32)
