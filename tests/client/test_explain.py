"""Tests for fedrec.client.explain: the device's reasons for a recommendation."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.client.explain import explain, influence
from fedrec.common.bundle import InferenceBundle

ID_DIM, FEATURES, DIM, ITEMS = 4, 2, 6, 12


def _bundle(seed: int = 0) -> InferenceBundle:
    """A bundle whose V is exactly representable (16-bit codes of small integers)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 8, size=(ITEMS, DIM)).astype(np.uint16)
    return InferenceBundle(
        item_codes=codes,
        item_scales=np.full(ITEMS, 0.25, np.float32),
        column_scales=np.ones(DIM, np.float32),
        user_weight=rng.normal(size=(DIM, ID_DIM + FEATURES)).astype(np.float32),
        user_bias=rng.normal(size=DIM).astype(np.float32),
        head_weight=rng.normal(size=DIM).astype(np.float32),
        head_bias=-0.3,
        catalog_sha256="0" * 64,
        model_round=1,
    )


def _logit(bundle: InferenceBundle, row: np.ndarray, features: np.ndarray, item: int) -> float:
    """The model's logit, in float64 (independent of the bundle's float32 arithmetic)."""
    h = np.concatenate([row, features]).astype(np.float64)
    u = np.maximum(bundle.user_weight.astype(np.float64) @ h + bundle.user_bias, 0.0)
    v = bundle.item_vectors()[item].astype(np.float64)
    return float(v @ (bundle.head_weight * u) + bundle.head_bias)


def test_influence_is_the_first_order_effect_of_a_step_on_the_past_item() -> None:
    """One BCE gradient step on past item j (label 1) raises item i's logit by η·influence."""
    bundle = _bundle()
    rng = np.random.default_rng(1)
    row, features = rng.normal(size=ID_DIM), rng.normal(size=FEATURES)
    u = bundle.user_vector(row, features)
    items, history = np.array([0, 5]), np.array([2, 7, 9])
    scores = influence(bundle, u, items, history, ID_DIM)
    eta, eps = 1e-4, 1e-3
    for col, j in enumerate(history):

        def r_j(e: np.ndarray, j: int = int(j)) -> float:
            return _logit(bundle, e, features, j)

        # ∂r_j/∂e by central differences; the BCE step on label 1 scales it by 1 − σ(r_j)
        grad = np.array([(r_j(row + eps * e) - r_j(row - eps * e)) / (2 * eps)
                         for e in np.eye(ID_DIM)])  # fmt: skip
        step = eta * grad / (1 + np.exp(r_j(row)))
        for r, i in enumerate(items):
            rise = _logit(bundle, row + step, features, i) - _logit(bundle, row, features, i)
            assert rise == pytest.approx(eta * scores[r, col], rel=1e-2, abs=1e-9)


def test_the_explanation_names_the_most_influential_past_items_with_positive_influence() -> None:
    bundle = _bundle(2)
    rng = np.random.default_rng(3)
    u = bundle.user_vector(rng.normal(size=ID_DIM), rng.normal(size=FEATURES))
    history = np.array([1, 3, 4, 8, 10, 11])
    (why,) = explain(bundle, u, np.array([6]), history, ID_DIM, k=3)
    scores = influence(bundle, u, np.array([6]), history, ID_DIM)[0]
    best = [int(history[j]) for j in np.argsort(-scores, kind="stable")[:3] if scores[j] > 0]
    assert list(why.past_items) == best
    assert list(why.influence) == sorted(why.influence, reverse=True) and min(why.influence) > 0
    assert why.genres == () and why.text_neighbours == ()  # the catalog gave neither block


def test_genre_shares_and_text_neighbours_by_hand() -> None:
    bundle = _bundle(4)
    rng = np.random.default_rng(5)
    u = bundle.user_vector(rng.normal(size=ID_DIM), rng.normal(size=FEATURES))
    history = np.array([1, 2, 3])
    genres = np.zeros((ITEMS, 3), np.float32)
    genres[0] = [1, 1, 0]  # the recommended item: genres a and b
    genres[1], genres[2], genres[3] = [1, 0, 0], [1, 1, 0], [0, 0, 1]
    text = np.zeros((ITEMS, 2), np.float32)
    text[0], text[1], text[2], text[3] = [1, 0], [0, 1], [1, 0.1], [0.7, 0.7]
    (why,) = explain(bundle, u, np.array([0]), history, ID_DIM,
                     genres=(genres, ("a", "b", "c")), text=text, k=2)  # fmt: skip
    positive = np.maximum(influence(bundle, u, np.array([0]), history, ID_DIM)[0], 0)
    expected = {
        "a": (positive[0] + positive[1]) / positive.sum(),
        "b": positive[1] / positive.sum(),
    }
    assert dict(why.genres) == pytest.approx({g: s for g, s in expected.items() if s > 0})
    assert why.text_neighbours == (2, 3)  # cosine 0.995 and 0.707; item 1 is orthogonal


def test_an_empty_history_explains_nothing() -> None:
    bundle = _bundle()
    u = bundle.user_vector(np.zeros(ID_DIM), np.zeros(FEATURES))
    (why,) = explain(bundle, u, np.array([3]), np.zeros(0, np.int64), ID_DIM)
    assert why.item == 3 and why.past_items == () and why.genres == ()


def test_an_id_width_outside_the_user_tower_is_refused() -> None:
    bundle = _bundle()
    u = bundle.user_vector(np.zeros(ID_DIM), np.zeros(FEATURES))
    with pytest.raises(ValueError, match="id_dim"):
        influence(bundle, u, np.array([0]), np.array([1]), ID_DIM + FEATURES + 1)
