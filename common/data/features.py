"""Turn raw user and item attributes into dense float feature matrices.

User features (private: they stay on the device with the user's embedding):
  * ``age`` -> one number, age / 100
  * ``zip`` -> one-hot of its first character (US zip regions; "other" for non-digits)
  * any other attribute -> numeric columns are min-max scaled, text columns one-hot encoded
Item features (shared): multi-hot genres now; a text-embedding block can be appended later with
:func:`append_item_block` without touching the model code (it reads the width from the matrix).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MISSING = ""


def encode_user_features(
    user_meta: dict[str, dict[str, str]], user_ids: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Encode ``user_meta[raw_id][attribute]`` strings into ``(num_users, F_u)`` float32."""
    keys = sorted({k for meta in user_meta.values() for k in meta})
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for key in keys:
        values = [user_meta.get(u, {}).get(key, MISSING).strip() for u in user_ids]
        block, block_names = _encode_column(key, values)
        blocks.append(block)
        names.extend(block_names)
    if not blocks:
        return np.zeros((len(user_ids), 0), dtype=np.float32), ()
    return np.concatenate(blocks, axis=1).astype(np.float32), tuple(names)


def encode_item_features(
    item_meta: dict[str, dict], item_ids: Sequence[str], genres: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Multi-hot genre matrix ``(num_items, len(genres))`` in the order of ``genres``."""
    index = {g: j for j, g in enumerate(genres)}
    out = np.zeros((len(item_ids), len(genres)), dtype=np.float32)
    for row, item in enumerate(item_ids):
        for g in item_meta.get(item, {}).get("genres", ()):
            if g in index:
                out[row, index[g]] = 1.0
    return out, tuple(f"genre={g}" for g in genres)


def append_item_block(
    features: np.ndarray, names: tuple[str, ...], block: np.ndarray, prefix: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Append a dense per-item block (e.g. a text embedding ``(num_items, D)``) to the features."""
    if block.shape[0] != features.shape[0]:
        raise ValueError(
            f"item feature block has {block.shape[0]} rows, the catalog has {features.shape[0]}"
        )
    new_names = tuple(f"{prefix}[{j}]" for j in range(block.shape[1]))
    return np.concatenate([features, block.astype(np.float32)], axis=1), names + new_names


def _encode_column(key: str, values: list[str]) -> tuple[np.ndarray, list[str]]:
    if key == "age":  # a number, or a band "20-29" (fedrec data prepare): its midpoint
        ages = np.array([_age(v) for v in values], dtype=np.float64)
        return np.nan_to_num(ages / 100.0, nan=0.0)[:, None], ["age/100"]
    if key == "zip":
        values = [v[:1] if v[:1].isdigit() else "other" for v in values]
        return _one_hot(key, values, fixed=[*"0123456789", "other"])
    numbers = [_to_float(v) for v in values]
    if all(not np.isnan(x) for x in numbers):
        col = np.array(numbers, dtype=np.float64)
        lo, hi = float(np.min(col)), float(np.max(col))
        scaled = (col - lo) / (hi - lo) if hi > lo else np.zeros_like(col)
        return scaled[:, None], [f"{key}(scaled)"]
    return _one_hot(key, values)


def _one_hot(
    key: str, values: list[str], fixed: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    cats = fixed if fixed is not None else sorted({v for v in values if v != MISSING})
    index = {c: j for j, c in enumerate(cats)}
    out = np.zeros((len(values), len(cats)), dtype=np.float64)
    for row, v in enumerate(values):
        if v in index:
            out[row, index[v]] = 1.0
    return out, [f"{key}={c}" for c in cats]


def _age(v: str) -> float:
    low, dash, high = v.partition("-")
    if dash and low.strip().isdigit() and high.strip().isdigit():
        return (float(low) + float(high)) / 2.0
    return _to_float(v)  # "*" (suppressed) and other text: missing


def _to_float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")
