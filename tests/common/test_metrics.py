"""Tests for fedrec.common.metrics: ranks with pessimistic ties, HR@K, NDCG@K, both protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.common.metrics import (
    exposure,
    full_ranks,
    hit_ratio,
    loo_ranks,
    ndcg,
    rank_among,
    summarize,
)

# ---------------------------------------------------------------- rank_among / loo_ranks


def test_rank_among_hand_computed() -> None:
    # row 0: target 0.5, others [0.9, 0.1, 0.7] -> 0.9 and 0.7 beat it -> rank 2
    # row 1: target 1.0, others [0.9, 0.1, 0.7] -> nothing beats it      -> rank 0
    # row 2: target 0.0, others [0.9, 0.1, 0.7] -> all three beat it     -> rank 3
    ranks = rank_among(np.array([0.5, 1.0, 0.0]), np.array([[0.9, 0.1, 0.7]] * 3))
    assert ranks.tolist() == [2, 0, 3]
    assert ranks.dtype == np.int64


def test_rank_among_ties_count_against_the_target() -> None:
    # target 0.5, others [0.5, 0.5, 0.2]: two ties counted above it -> rank 2 (not 0)
    assert rank_among(np.array([0.5]), np.array([[0.5, 0.5, 0.2]])).tolist() == [2]


def test_constant_scorer_gets_rank_c_and_no_hit() -> None:
    # 1 target + 99 candidates all scored 0.3: every candidate ties -> rank 99 = C
    scores = np.full((4, 100), 0.3)
    ranks = loo_ranks(scores)
    assert ranks.tolist() == [99, 99, 99, 99]
    assert hit_ratio(ranks, 10) == 0.0
    assert ndcg(ranks, 10) == 0.0
    # even with K = C the constant model does not hit (rank 99 is not < 99)
    assert hit_ratio(ranks, 99) == 0.0
    assert hit_ratio(ranks, 100) == 1.0


def test_loo_ranks_target_in_column_zero() -> None:
    # row 0: target 3.0 vs [1, 2, 4] -> only 4 beats it -> rank 1
    # row 1: target 5.0 vs [1, 2, 4] -> rank 0
    scores = np.array([[3.0, 1.0, 2.0, 4.0], [5.0, 1.0, 2.0, 4.0]])
    assert loo_ranks(scores).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("target", "others"),
    [
        (np.array([np.nan]), np.array([[0.1, 0.2]])),
        (np.array([0.1]), np.array([[0.1, np.nan]])),
    ],
)
def test_rank_among_rejects_nan(target: np.ndarray, others: np.ndarray) -> None:
    with pytest.raises(ValueError, match="NaN"):
        rank_among(target, others)


def test_loo_ranks_rejects_nan_anywhere() -> None:
    scores = np.zeros((2, 5))
    scores[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loo_ranks(scores)


def test_infinite_scores_are_ranked_not_rejected() -> None:
    # +inf target beats everything finite; a -inf target is beaten by everything (rank 2)
    assert rank_among(np.array([np.inf]), np.array([[1e300, -1.0]])).tolist() == [0]
    assert rank_among(np.array([-np.inf]), np.array([[-1e300, 0.0]])).tolist() == [2]


# ---------------------------------------------------------------- hit_ratio / ndcg


def test_hit_ratio_and_ndcg_hand_computed() -> None:
    ranks = np.array([0, 2, 9, 10])
    # hits@10: ranks 0, 2, 9 are < 10; rank 10 is not -> 3/4
    assert hit_ratio(ranks, 10) == pytest.approx(0.75)
    # gains: rank 0 -> 1/log2(2) = 1; rank 2 -> 1/log2(4) = 0.5;
    #        rank 9 -> 1/log2(11); rank 10 -> 0 (outside top 10)
    expected = (1.0 + 0.5 + 1.0 / math.log2(11) + 0.0) / 4
    assert ndcg(ranks, 10) == pytest.approx(expected)


def test_single_rank_gains() -> None:
    # rank 0 -> ndcg = 1/log2(2) = 1
    assert ndcg(np.array([0]), 10) == pytest.approx(1.0)
    # rank 1 -> ndcg = 1/log2(3) ~ 0.6309
    assert ndcg(np.array([1]), 10) == pytest.approx(0.6309297535714575)
    # rank 2 -> ndcg = 1/log2(4) = 0.5
    assert ndcg(np.array([2]), 10) == pytest.approx(0.5)
    # rank 6 -> ndcg = 1/log2(8) = 1/3
    assert ndcg(np.array([6]), 10) == pytest.approx(1 / 3)
    # rank 6 but k = 6 -> outside the top 6 -> 0
    assert ndcg(np.array([6]), 6) == 0.0
    assert hit_ratio(np.array([6]), 6) == 0.0
    assert hit_ratio(np.array([5]), 6) == 1.0


def test_empty_input_gives_zero() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert hit_ratio(empty, 10) == 0.0
    assert ndcg(empty, 10) == 0.0
    assert summarize(empty, 10) == {"hr@10": 0.0, "ndcg@10": 0.0}
    assert loo_ranks(np.zeros((0, 100))).shape == (0,)
    out = full_ranks(np.zeros((0, 7)), np.zeros(0, np.int64), np.zeros((0, 7), bool))
    assert out.shape == (0,)


def test_summarize_keys_and_prefix() -> None:
    ranks = np.array([0, 4])
    # hr@5 = 1 (both < 5); ndcg@5 = (1 + 1/log2(6)) / 2
    out = summarize(ranks, 5, prefix="full_")
    assert set(out) == {"full_hr@5", "full_ndcg@5"}
    assert out["full_hr@5"] == 1.0
    assert out["full_ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 2)
    assert all(isinstance(v, float) for v in out.values())
    assert set(summarize(ranks)) == {"hr@10", "ndcg@10"}


# ---------------------------------------------------------------- full_ranks


def test_full_ranks_hand_computed_with_exclusions() -> None:
    # 5 items; user 0's target is item 2 (score 0.5).
    # item 0 (0.9) is excluded (a train item) -> never competes; item 4 (0.8) beats it;
    # item 1 (0.1), item 3 (0.2) do not -> rank 1
    scores = np.array([[0.9, 0.1, 0.5, 0.2, 0.8]])
    excluded = np.array([[True, False, False, False, False]])
    assert full_ranks(scores, np.array([2]), excluded).tolist() == [1]
    # without the exclusion item 0 also beats it -> rank 2
    assert full_ranks(scores, np.array([2]), np.zeros_like(excluded)).tolist() == [2]


def test_full_ranks_excluded_items_never_beat_the_target_even_on_ties() -> None:
    # target item 0 scores 0.0; every other item is excluded and scores higher or equal
    scores = np.array([[0.0, 5.0, 0.0, 1e9]])
    excluded = np.array([[False, True, True, True]])
    assert full_ranks(scores, np.array([0]), excluded).tolist() == [0]


def test_full_ranks_pessimistic_ties() -> None:
    # constant scores over 6 items, 2 excluded: the other 3 non-excluded items tie -> rank 3
    scores = np.full((1, 6), 0.7)
    excluded = np.array([[True, False, False, True, False, False]])
    assert full_ranks(scores, np.array([5]), excluded).tolist() == [3]


def test_full_ranks_several_users() -> None:
    scores = np.array(
        [
            [0.1, 0.2, 0.3, 0.4],  # target 3 (0.4): nothing above -> rank 0
            [0.4, 0.3, 0.2, 0.1],  # target 3 (0.1): items 1, 2 beat it, item 0 excluded -> 2
        ]
    )
    excluded = np.array([[False, False, False, False], [True, False, False, False]])
    assert full_ranks(scores, np.array([3, 3]), excluded).tolist() == [0, 2]


def test_full_ranks_target_excluded_is_an_error() -> None:
    scores = np.zeros((2, 4))
    excluded = np.zeros((2, 4), dtype=bool)
    excluded[1, 2] = True
    with pytest.raises(ValueError, match="excluded"):
        full_ranks(scores, np.array([0, 2]), excluded)


def test_full_ranks_rejects_nan_target_score() -> None:
    scores = np.array([[0.1, np.nan, 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        full_ranks(scores, np.array([1]), np.zeros((1, 3), bool))


def test_full_ranks_does_not_mutate_inputs() -> None:
    scores = np.array([[0.3, 0.2, 0.1]])
    excluded = np.array([[False, True, False]])
    before = scores.copy()
    full_ranks(scores, np.array([0]), excluded)
    np.testing.assert_array_equal(scores, before)
    assert excluded.tolist() == [[False, True, False]]


# ---------------------------------------------------------------- invariants (hypothesis)

_finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def _score_matrices(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(2, 12))
    # a small value pool makes ties frequent
    pool = draw(st.lists(_finite, min_size=1, max_size=4))
    return draw(arrays(np.float64, (rows, cols), elements=st.sampled_from(pool)))


@settings(max_examples=60, deadline=None)
@given(scores=_score_matrices())
def test_loo_rank_range_and_brute_force(scores: np.ndarray) -> None:
    ranks = loo_ranks(scores)
    c = scores.shape[1] - 1
    assert ((ranks >= 0) & (ranks <= c)).all()
    for row, r in zip(scores, ranks, strict=True):
        # pessimistic: everything else >= target counts above it
        assert r == sum(1 for s in row[1:] if s >= row[0])


@settings(max_examples=60, deadline=None)
@given(ranks=arrays(np.int64, st.integers(0, 30), elements=st.integers(0, 120)))
def test_metric_invariants(ranks: np.ndarray) -> None:
    prev_hr, prev_ndcg = 0.0, 0.0
    for k in (1, 2, 5, 10, 20, 50, 100, 200):
        hr, nd = hit_ratio(ranks, k), ndcg(ranks, k)
        assert 0.0 <= nd <= hr + 1e-12 <= 1.0 + 1e-12
        assert hr >= prev_hr  # monotone in k
        assert nd >= prev_ndcg - 1e-12
        prev_hr, prev_ndcg = hr, nd


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_full_ranks_range_and_brute_force(data: st.DataObject) -> None:
    scores = data.draw(_score_matrices())
    u, n = scores.shape
    target = data.draw(arrays(np.int64, u, elements=st.integers(0, n - 1)))
    excluded = data.draw(arrays(np.bool_, (u, n)))
    excluded[np.arange(u), target] = False
    ranks = full_ranks(scores, target, excluded)
    for row in range(u):
        competitors = [
            scores[row, j] for j in range(n) if j != target[row] and not excluded[row, j]
        ]
        assert 0 <= ranks[row] <= len(competitors)
        assert ranks[row] == sum(1 for s in competitors if s >= scores[row, target[row]])


# --- exposure of target items ------------------------------------------------------------------
def test_exposure_hand_computed() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    seen = np.array([True, False, False, False, False, False])
    # unseen ranking: 1, 2, 3, 4, 5; target 1 is first, target 4 fourth, target 0 is seen
    assert exposure(scores, np.array([1, 4, 0]), seen, (1, 3, 4)) == {1: 0.5, 3: 0.5, 4: 1.0}


def test_exposure_counts_ties_against_the_target_and_skips_seen_competitors() -> None:
    scores = np.array([9.0, 2.0, 2.0, 1.0])
    seen = np.array([True, False, False, False])  # the best item is seen: not a competitor
    assert exposure(scores, np.array([1]), seen, (1, 2)) == {1: 0.0, 2: 1.0}  # a tie: rank 1
    assert exposure(scores, np.array([3]), seen, (2, 3)) == {2: 0.0, 3: 1.0}


def test_exposure_of_a_user_who_has_seen_every_target_is_none() -> None:
    seen = np.array([True, True, False])
    assert exposure(np.array([1.0, 2.0, 3.0]), np.array([0, 1]), seen) is None
    with pytest.raises(ValueError, match="NaN"):
        exposure(np.array([np.nan, 2.0, 3.0]), np.array([2]), seen)
