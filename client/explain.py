"""Why an item is recommended to a user: computed on the device, from the inference bundle
(fedrec.common.bundle) and the public catalog, in NumPy alone.

**Past items.** The model's only trace of the user is its private id row e_u, fitted to the
user's own history (positives) against sampled negatives. A gradient step on past item j
(label 1) moves the row by η·(1 − σ(r_j))·g_j, where

    g_i = ∂r_i/∂e_u = W_eᵀ · (1[u > 0] ⊙ w_r ⊙ v_i)      (W_e: the id columns of W_u)

so, to first order, it raises item i's logit by η·(1 − σ(r_j))·⟨g_i, g_j⟩. That is j's
**influence** on i (TracIn's, at the model the device holds; exact to first order for an SGD
step, an approximation of the device's Adam fit of the row): the past items with the largest
influence are the ones whose training made i score high. Removing them from the history and
refitting the row lowers i's score more than removing as many random past items
(benchmarks/explain.py measures it on ml-100k; tests/common/test_explain.py pins it).

**Features.** The item's genres (the catalog's ``genres`` block), each with its share of the
positive influence of the past items that share it: "Sci-Fi: 0.6" says that past Sci-Fi items
carry 60 % of what lifts this item. And, where the catalog has a ``text`` block, the past items
nearest to it in the text encoder's space (cosine): the ones described alike.

Nothing here leaves the device or needs the server: the history, the row and the explanation
stay local.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.common.bundle import InferenceBundle

__all__ = ["Explanation", "explain", "influence"]


@dataclass(frozen=True)
class Explanation:
    """One recommended item's reasons (catalog row indices; the device names them)."""

    item: int
    past_items: tuple[int, ...]  # the user's items with the largest influence, largest first
    influence: tuple[float, ...]  # their influence on the item's logit (per unit step)
    genres: tuple[tuple[str, float], ...]  # the item's genres and their share, largest first
    text_neighbours: tuple[int, ...]  # the user's items nearest in the text block (cosine)


def _row_gradients(
    bundle: InferenceBundle, u: np.ndarray, items: np.ndarray, id_dim: int
) -> np.ndarray:
    """(len(items), id_dim): ∂r_i/∂e_u = W_eᵀ·(1[u > 0] ⊙ w_r ⊙ v_i) for each item."""
    active = (np.asarray(u) > 0).astype(np.float32)
    w_e = bundle.user_weight[:, :id_dim]  # (d, id_dim)
    scaled = bundle.item_vectors()[items] * (active * bundle.head_weight)[None, :]
    return scaled @ w_e


def influence(
    bundle: InferenceBundle, u: np.ndarray, items: np.ndarray, history: np.ndarray, id_dim: int
) -> np.ndarray:
    """(len(items), len(history)): the first-order rise of each item's logit from one unit
    gradient step on each past item, (1 − σ(r_j))·⟨g_i, g_j⟩."""
    items, history = np.asarray(items, np.int64), np.asarray(history, np.int64)
    if id_dim < 1 or id_dim > bundle.input_dim:
        raise ValueError(f"id_dim {id_dim} outside [1, {bundle.input_dim}] (the user tower)")
    g_items = _row_gradients(bundle, u, items, id_dim)
    g_past = _row_gradients(bundle, u, history, id_dim)
    logits = bundle.item_vectors()[history] @ (bundle.head_weight * u) + bundle.head_bias
    residual = 1.0 / (1.0 + np.exp(logits))  # 1 − σ(r_j): what is left to learn from j
    return (g_items @ g_past.T) * residual[None, :]


def explain(
    bundle: InferenceBundle,
    u: np.ndarray,
    items: np.ndarray,
    history: np.ndarray,
    id_dim: int,
    *,
    genres: tuple[np.ndarray, tuple[str, ...]] | None = None,
    text: np.ndarray | None = None,
    k: int = 3,
) -> list[Explanation]:
    """The reasons of each of ``items`` for the user of vector ``u`` and past ``history``.

    ``genres``: the catalog's genre block (items × G, non-zero where an item has a genre) and
    the genres' names; ``text``: its text block (items × D); either may be None (no block).
    """
    items, history = np.asarray(items, np.int64), np.asarray(history, np.int64)
    if not len(history):
        return [Explanation(int(i), (), (), (), ()) for i in items]
    scores = influence(bundle, u, items, history, id_dim)
    similar = _cosine(text[items], text[history]) if text is not None else None
    out = []
    for row, item in enumerate(items):
        order = np.argsort(-scores[row], kind="stable")[:k]
        order = order[scores[row, order] > 0]
        neighbours = (
            tuple(int(history[j]) for j in np.argsort(-similar[row], kind="stable")[:k])
            if similar is not None
            else ()
        )
        out.append(
            Explanation(
                item=int(item),
                past_items=tuple(int(history[j]) for j in order),
                influence=tuple(float(scores[row, j]) for j in order),
                genres=_genre_shares(int(item), history, scores[row], genres),
                text_neighbours=neighbours,
            )
        )
    return out


def _genre_shares(
    item: int,
    history: np.ndarray,
    scores: np.ndarray,
    genres: tuple[np.ndarray, tuple[str, ...]] | None,
) -> tuple[tuple[str, float], ...]:
    """Each of the item's genres with the share of the positive influence that past items of
    that genre carry, largest first (genres no past item shares are left out)."""
    if genres is None:
        return ()
    matrix, names = genres
    positive = np.maximum(scores, 0.0)
    total = float(positive.sum())
    if total <= 0:
        return ()
    own = np.flatnonzero(matrix[item] > 0)
    shares = [(names[g], float(positive[matrix[history, g] > 0].sum() / total)) for g in own]
    return tuple(sorted((s for s in shares if s[1] > 0), key=lambda s: -s[1]))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray(a @ b.T)
