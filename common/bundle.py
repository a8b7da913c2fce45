"""The inference bundle: what a device needs to rank the catalog, in NumPy alone.

Scoring a user against every item needs only the item side once per model version and the
user's own vector::

    v_i = ReLU(W_v·g_i + b_v)            for every catalog item (public: the shared model's)
    u   = ReLU(W_u·[e_u ; f_u] + b_u)    on the device, from its private row e_u and features
    r_i = w_r·(u ⊙ v_i) + b_r = v_i·(w_r ⊙ u) + b_r

and σ is monotone, so ranking by ``V·(w_r ⊙ u)`` is exactly the model's ranking. A bundle holds
V quantized to 16 (or 8) bits per entry, ``v_ij ≈ scale_i · code_ij · column_j``: each column is
first divided by its largest value over the catalog (ReLU features differ in range by orders of
magnitude, and a small column would otherwise round to zero in every row), then each row is
rounded onto the 2^b − 1 levels of its own largest entry (ReLU makes every entry ≥ 0, so the
codes are unsigned); W_u, b_u, w_r, b_r stay in float32. The whole recommend path runs without
PyTorch (a device that only recommends never loads it).

Why 16 bits by default (measured on a trained ml-100k model, benchmarks/bundle.py): for 5 % of
users the float scores of their 10th and 11th items differ by less than 0.1 % of their score
range, so 8-bit codes (a step of 0.4 % of a row's largest entry) change the top 10 of 6.5 % of
users; 16-bit codes change none (float16 V: 0.85 %). 16 bits are half of float32 V; 8 bits, a
quarter, where a device would trade that agreement for the bytes.

:func:`build_bundle` computes it from the shared group of a model (the server writes one with
each released model; a device builds its own from each model it receives: the same function).
It is bound to the catalog by the catalog's hash, and :func:`load_bundle` checks the file's
format and every array's shape before anything is ranked with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUNDLE_FORMAT",
    "CODES",
    "InferenceBundle",
    "build_bundle",
    "bundle_arrays",
    "bundle_meta",
    "bundle_of",
    "load_bundle",
    "quantize_rows",
    "save_bundle",
]

BUNDLE_FORMAT = "fedrec-bundle/1"
CODES = {8: np.uint8, 16: np.uint16}  # bits per entry -> code type
_CHUNK = 16_384  # items per block when computing V (bounds the temporary memory)
_TABLE = "item_embedding.weight"  # absent from a model without item ids (item-ids = "none")
_ITEM_KEYS = ("item_tower.weight", "item_tower.bias")
_USER_KEYS = ("user_tower.weight", "user_tower.bias", "head.weight", "head.bias")


@dataclass(frozen=True)
class InferenceBundle:
    """Quantized item vectors and the user tower and head of one model version."""

    item_codes: np.ndarray  # (I, d) uint16 (or uint8)
    item_scales: np.ndarray  # (I,) float32: v_ij ≈ item_scales[i] * code_ij * column_scales[j]
    column_scales: np.ndarray  # (d,) float32
    user_weight: np.ndarray  # (d, id_dim + F_u) float32: W_u (input_dim = id_dim + F_u)
    user_bias: np.ndarray  # (d,) float32: b_u
    head_weight: np.ndarray  # (d,) float32: w_r
    head_bias: float  # b_r
    catalog_sha256: str  # the catalog whose items the rows are, in its order
    model_round: int  # the round of the model it was built from (-1: not known)

    @property
    def num_items(self) -> int:
        return int(self.item_codes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_codes.shape[1])

    @property
    def bits(self) -> int:
        return int(self.item_codes.dtype.itemsize * 8)

    @property
    def levels(self) -> int:
        """The largest code: a row's largest entry."""
        return (1 << self.bits) - 1

    @property
    def input_dim(self) -> int:
        """Width of the user tower's input: the user-id row and then the user's features."""
        return int(self.user_weight.shape[1])

    def item_vectors(self) -> np.ndarray:
        """(I, d) float32 V, decoded once and kept (4 bytes per entry in memory)."""
        return self._decoded

    @cached_property  # frozen, yet cached: cached_property writes the instance's __dict__
    def _decoded(self) -> np.ndarray:
        scaled = self.item_codes * self.item_scales[:, None]
        return (scaled * self.column_scales[None, :]).astype(np.float32)

    def user_vector(self, user_row: np.ndarray, user_features: np.ndarray) -> np.ndarray:
        """u = ReLU(W_u·[e_u ; f_u] + b_u) for the device's private row and features."""
        h = np.concatenate([np.ravel(user_row), np.ravel(user_features)]).astype(np.float32)
        if h.shape != (self.input_dim,):
            raise ValueError(
                f"user row and features have {h.size} values, the bundle's user tower takes"
                f" {self.input_dim}: the row or the features are not this model's"
            )
        return np.maximum(self.user_weight @ h + self.user_bias, 0.0)

    def logits(self, u: np.ndarray) -> np.ndarray:
        """(I,) r_i = v_i·(w_r ⊙ u) + b_r over the whole catalog."""
        return self.item_vectors() @ (self.head_weight * u) + self.head_bias

    def top_k(
        self, u: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best items for user vector ``u`` outside ``exclude``, best first, with
        their scores σ(r)."""
        logits = self.logits(u)
        if exclude is not None and len(exclude):
            logits[np.asarray(exclude, dtype=np.int64)] = -np.inf
        k = min(int(k), int(np.isfinite(logits).sum()))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        top = np.argpartition(-logits, k - 1)[:k]
        top = top[np.argsort(-logits[top], kind="stable")]
        return top.astype(np.int64), (1.0 / (1.0 + np.exp(-logits[top]))).astype(np.float32)


def quantize_rows(rows: np.ndarray, bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative (I, d) rows → ``bits``-bit unsigned codes and per-row scales, rounding to
    the nearest level: ``|v - scale·code| ≤ scale / 2`` per entry, ``scale = max(row) /
    (2^bits - 1)``."""
    if bits not in CODES:
        raise ValueError(f"bits must be one of {sorted(CODES)}, got {bits!r}")
    levels = (1 << bits) - 1
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"rows must be a matrix, got shape {rows.shape}")
    if (rows < 0).any() or not np.isfinite(rows).all():
        raise ValueError("item vectors must be finite and non-negative (they follow a ReLU)")
    scales = (rows.max(axis=1, initial=0.0) / levels).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float64)  # float64: exact to a level
    codes = np.rint(rows / safe[:, None]).clip(0, levels).astype(CODES[bits])
    return codes, scales


def build_bundle(
    shared: Mapping[str, np.ndarray],
    item_features: np.ndarray,
    catalog_sha256: str,
    model_round: int = -1,
    *,
    bits: int = 16,
) -> InferenceBundle:
    """The bundle of a model's shared group (``shared``: name → array, NumPy or anything
    ``np.asarray`` takes) over a catalog's ``item_features``, its codes ``bits`` wide."""
    if bits not in CODES:
        raise ValueError(f"bits must be one of {sorted(CODES)}, got {bits!r}")
    missing = [k for k in (*_ITEM_KEYS, *_USER_KEYS) if k not in shared]
    if missing:
        raise ValueError(f"the shared model lacks {missing}: not a seed model's shared group")
    w_v, b_v = (np.asarray(shared[k], dtype=np.float32) for k in _ITEM_KEYS)
    features = np.asarray(item_features, dtype=np.float32)
    table = (  # without item ids g is the features alone: a table zero columns wide
        np.asarray(shared[_TABLE], dtype=np.float32)
        if _TABLE in shared
        else np.zeros((features.shape[0], 0), np.float32)
    )
    if features.shape[0] != table.shape[0] or w_v.shape[1] != table.shape[1] + features.shape[1]:
        raise ValueError(
            f"item features {features.shape} do not fit the model (item table {table.shape},"
            f" item tower {w_v.shape}): the model was trained on another catalog"
        )
    blocks = [slice(start, start + _CHUNK) for start in range(0, table.shape[0], _CHUNK)]

    def vectors(block: slice) -> np.ndarray:
        g = np.concatenate([table[block], features[block]], axis=1)
        return np.maximum(g @ w_v.T + b_v, 0.0)

    top = np.max([vectors(b).max(axis=0) for b in blocks], axis=0)  # V block by block
    columns = np.where(top > 0, top, 1.0).astype(np.float32)
    codes = np.empty((table.shape[0], w_v.shape[0]), CODES[bits])
    scales = np.empty(table.shape[0], np.float32)
    for block in blocks:
        codes[block], scales[block] = quantize_rows(vectors(block) / columns, bits)
    w_u, b_u, w_r, b_r = (np.asarray(shared[k], dtype=np.float32) for k in _USER_KEYS)
    return InferenceBundle(
        item_codes=codes,
        item_scales=scales,
        column_scales=columns,
        user_weight=w_u,
        user_bias=b_u,
        head_weight=w_r.reshape(-1),
        head_bias=float(b_r.reshape(-1)[0]),
        catalog_sha256=catalog_sha256,
        model_round=int(model_round),
    )


def save_bundle(bundle: InferenceBundle, path: str | Path) -> Path:
    """Write ``bundle`` as an ``.npz`` (no pickles); returns the path."""
    path = Path(path)
    arrays = {"meta": np.array(json.dumps(bundle_meta(bundle))), **bundle_arrays(bundle)}
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    return path


def load_bundle(path: str | Path) -> InferenceBundle:
    """Read a bundle written by :func:`save_bundle`, checking its format and shapes."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k: npz[k] for k in npz.files if k != "meta"}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not an inference bundle: {err}") from err
    return bundle_of(meta, arrays, str(path))


def bundle_of(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str
) -> InferenceBundle:
    """A bundle from its metadata and arrays (a file's, or a device store's), checked."""
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{where}: format {meta.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    expected = {
        "item_codes", "item_scales", "column_scales", "user_weight", "user_bias", "head_weight",
    }  # fmt: skip
    if set(arrays) != expected:
        raise ValueError(f"{where}: arrays {sorted(arrays)}, expected {sorted(expected)}")
    codes, dim = arrays["item_codes"], arrays["user_bias"].shape[0]
    shapes_ok = (
        codes.dtype in [np.dtype(t) for t in CODES.values()]
        and codes.ndim == 2
        and codes.shape[1] == dim
        and arrays["item_scales"].shape == (codes.shape[0],)
        and arrays["column_scales"].shape == (dim,)
        and arrays["user_weight"].ndim == 2
        and arrays["user_weight"].shape[0] == dim
        and arrays["head_weight"].shape == (dim,)
    )
    if not shapes_ok:
        shapes = {k: (v.shape, str(v.dtype)) for k, v in arrays.items()}
        raise ValueError(f"{where}: the arrays do not form a bundle: {shapes}")
    return InferenceBundle(
        item_codes=codes,
        item_scales=arrays["item_scales"].astype(np.float32),
        column_scales=arrays["column_scales"].astype(np.float32),
        user_weight=arrays["user_weight"].astype(np.float32),
        user_bias=arrays["user_bias"].astype(np.float32),
        head_weight=arrays["head_weight"].astype(np.float32),
        head_bias=float(meta["head_bias"]),
        catalog_sha256=str(meta["catalog_sha256"]),
        model_round=int(meta["model_round"]),
    )


def bundle_meta(bundle: InferenceBundle) -> dict[str, Any]:
    """The metadata :func:`bundle_of` reads back (a device stores it beside the arrays)."""
    return {
        "format": BUNDLE_FORMAT,
        "catalog_sha256": bundle.catalog_sha256,
        "model_round": bundle.model_round,
        "head_bias": bundle.head_bias,
    }


def bundle_arrays(bundle: InferenceBundle) -> dict[str, np.ndarray]:
    return {
        "item_codes": bundle.item_codes,
        "item_scales": bundle.item_scales,
        "column_scales": bundle.column_scales,
        "user_weight": bundle.user_weight,
        "user_bias": bundle.user_bias,
        "head_weight": bundle.head_weight,
    }
