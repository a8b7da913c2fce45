"""Tests for fedrec.simulations.audit.stats: ROC, AUC, TPR at low FPR, bootstrap CIs, one-run ε."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm, rankdata

from fedrec.simulations.audit.stats import (
    DEFAULT_K_FRACTIONS,
    AttackResult,
    auc,
    best_one_run_audit,
    bootstrap_ci,
    epsilon_lower_bound,
    one_run_audit,
    one_run_p_value,
    roc_curve,
    summarize_attack,
    thin_roc,
    tpr_at_fpr,
)

# Hand example with ties: members [3, 2, 2], non-members [2, 1].
MEMBER = [3.0, 2.0, 2.0]
NONMEMBER = [2.0, 1.0]


def _pairwise_auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """The O(n·m) definition: P[member > non-member] + 1/2 P[tie]."""
    diff = member[:, None] - nonmember[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def _roc_max_tpr(member: np.ndarray, nonmember: np.ndarray, fpr: float) -> float:
    roc = roc_curve(member, nonmember)
    return float(roc.tpr[roc.fpr <= fpr].max())


# ---------------------------------------------------------------- ROC and AUC


def test_roc_hand_example_with_ties() -> None:
    # distinct thresholds, decreasing: +inf, 3, 2, 1
    #   t = inf: nothing is "member"                          -> (0, 0)
    #   t = 3:   TP = 1 (the 3), FP = 0                        -> (0, 1/3)
    #   t = 2:   TP = 3, FP = 1 (the tied non-member 2)        -> (1/2, 1)
    #   t = 1:   everything                                    -> (1, 1)
    roc = roc_curve(MEMBER, NONMEMBER)
    np.testing.assert_allclose(roc.fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(roc.tpr, [0.0, 1 / 3, 1.0, 1.0])
    assert roc.thresholds.tolist() == [math.inf, 3.0, 2.0, 1.0]
    assert len(roc) == 4
    with pytest.raises(ValueError):  # read-only
        roc.fpr[0] = 1.0


def test_auc_hand_example_with_ties() -> None:
    # pairs (member, non-member): (3,2)=1 (3,1)=1 (2,2)=1/2 (2,1)=1 (2,2)=1/2 (2,1)=1 -> 5/6
    # trapezoid under the ROC above: 0 + 1/2·(1/3 + 1)/2 + 1/2·(1 + 1)/2 = 1/3 + 1/2 = 5/6
    assert auc(MEMBER, NONMEMBER) == pytest.approx(5 / 6, abs=1e-15)
    roc = roc_curve(MEMBER, NONMEMBER)
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(5 / 6, abs=1e-15)


def test_auc_extremes_and_symmetry() -> None:
    assert auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=37), rng.normal(size=23)
    assert auc(a, b) + auc(b, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_definition_and_trapezoid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # integer-valued scores: many ties, within and across the two groups
    member = rng.integers(0, 12, size=rng.integers(1, 80)).astype(float) + 1.0
    nonmember = rng.integers(0, 12, size=rng.integers(1, 80)).astype(float)
    expected = _pairwise_auc(member, nonmember)
    assert auc(member, nonmember) == pytest.approx(expected, abs=1e-12)
    ranks = rankdata(np.concatenate([member, nonmember]))  # U from scipy's average ranks
    u = ranks[: member.size].sum() - member.size * (member.size + 1) / 2
    assert auc(member, nonmember) == pytest.approx(u / (member.size * nonmember.size), abs=1e-12)
    roc = roc_curve(member, nonmember)
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(expected, abs=1e-12)
    assert len(roc) == np.unique(np.concatenate([member, nonmember])).size + 1
    assert (np.diff(roc.fpr) >= 0).all() and (np.diff(roc.tpr) >= 0).all()
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


# ---------------------------------------------------------------- TPR at FPR


def test_tpr_at_fpr_hand_example() -> None:
    # fpr = 0: only thresholds above the top non-member (2): members > 2 -> {3} -> 1/3
    assert tpr_at_fpr(MEMBER, NONMEMBER, 0.0) == pytest.approx(1 / 3)
    # one false positive of two is FPR 1/2: admitted at 0.5, not at 0.49
    assert tpr_at_fpr(MEMBER, NONMEMBER, 0.49) == pytest.approx(1 / 3)
    assert tpr_at_fpr(MEMBER, NONMEMBER, 0.5) == 1.0
    assert tpr_at_fpr(MEMBER, NONMEMBER, 1.0) == 1.0


def test_tpr_at_fpr_exact_boundaries() -> None:
    nonmember = np.arange(100.0)  # 0 .. 99
    member = np.array([99.5, 98.5, 97.5])
    assert tpr_at_fpr(member, nonmember, 0.0) == pytest.approx(1 / 3)  # above 99 only
    assert tpr_at_fpr(member, nonmember, 0.0099) == pytest.approx(1 / 3)
    assert tpr_at_fpr(member, nonmember, 0.01) == pytest.approx(2 / 3)  # exactly 1 FP
    assert tpr_at_fpr(member, nonmember, 0.02) == 1.0  # 2 FPs
    # 0.1 % of 1000 non-members and 1 % of 300 are exact in floating point too
    #   1 FP allowed: above 998 (the 2nd highest non-member) -> only 999.5
    assert tpr_at_fpr([999.5, 997.5], np.arange(1000.0), 0.001) == 0.5
    #   3 FPs allowed at 0.01 (above 296), 2 at 0.0099 (above 297)
    assert tpr_at_fpr([299.5, 296.5], np.arange(300.0), 0.01) == 1.0
    assert tpr_at_fpr([299.5, 296.5], np.arange(300.0), 0.0099) == 0.5
    # a member tied with the top non-member is not reachable at FPR 0
    assert tpr_at_fpr([5.0, 5.0], [5.0, 1.0], 0.0) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_tpr_at_fpr_matches_roc_maximum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    member = rng.integers(0, 30, size=200).astype(float) + 2.0
    nonmember = rng.integers(0, 30, size=160).astype(float)
    grid = [0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, *(k / 160 for k in range(0, 161, 7))]
    for fpr in grid:
        assert tpr_at_fpr(member, nonmember, fpr) == pytest.approx(
            _roc_max_tpr(member, nonmember, fpr), abs=1e-15
        ), fpr


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_true_auc_shrinks_with_n_and_is_fast() -> None:
    mu = 1.0
    true_auc = float(norm.cdf(mu / math.sqrt(2)))  # P[N(mu,1) > N(0,1)] = 0.7602...
    widths = []
    for n, reps in ((200, 300), (2000, 1000)):
        rng = np.random.default_rng(n)
        member, nonmember = rng.normal(mu, 1, n), rng.normal(0, 1, n)
        low, high = bootstrap_ci(member, nonmember, auc, reps=reps, seed=3)
        assert low <= auc(member, nonmember) <= high
        assert low <= true_auc <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): a factor ~3.2


def test_bootstrap_ci_seed_determinism_and_level() -> None:
    rng = np.random.default_rng(0)
    member, nonmember = rng.normal(0.5, 1, 100), rng.normal(0, 1, 100)
    a = bootstrap_ci(member, nonmember, auc, reps=100, seed=7)
    assert a == bootstrap_ci(member, nonmember, auc, reps=100, seed=7)
    assert a != bootstrap_ci(member, nonmember, auc, reps=100, seed=8)
    narrow = bootstrap_ci(member, nonmember, auc, reps=100, level=0.5, seed=7)
    assert a[0] < narrow[0] < narrow[1] < a[1]


def test_bootstrap_ci_resamples_groups_separately() -> None:
    # a statistic of the sizes only: each group keeps its size in every replicate
    def sizes(m: np.ndarray, n: np.ndarray) -> float:
        return float(m.size * 1000 + n.size)

    assert bootstrap_ci(np.arange(7.0), np.arange(3.0), sizes, reps=20) == (7003.0, 7003.0)
    # separable data stays separable under any resample
    assert bootstrap_ci([5.0, 6.0], [1.0, 2.0, 3.0], auc, reps=50) == (1.0, 1.0)


# ---------------------------------------------------------------- attack summary


def test_summarize_attack_contents_and_json() -> None:
    rng = np.random.default_rng(5)
    member, nonmember = rng.normal(1.5, 1, 1500), rng.normal(0, 1, 1200)
    result = summarize_attack(member, nonmember, reps=100, seed=2)
    assert isinstance(result, AttackResult)
    assert (result.n_members, result.n_nonmembers) == (1500, 1200)
    assert result.auc.value == pytest.approx(auc(member, nonmember))
    assert (result.auc.ci_low, result.auc.ci_high) == bootstrap_ci(
        member, nonmember, auc, reps=100, seed=2
    )
    for est, fpr in (
        (result.tpr_at_1pct_fpr, 0.01),
        (result.tpr_at_0p1pct_fpr, 0.001),
        (result.tpr_at_0pct_fpr, 0.0),
    ):
        assert est.value == tpr_at_fpr(member, nonmember, fpr)
        assert est.ci_low <= est.ci_high
    assert result.tpr_at_0pct_fpr.value <= result.tpr_at_0p1pct_fpr.value
    assert result.tpr_at_0p1pct_fpr.value <= result.tpr_at_1pct_fpr.value
    # the ROC for figures: thinned, a subset of the full curve, both ends kept
    full = roc_curve(member, nonmember)
    assert len(full) > 200 >= len(result.roc_fpr) == len(result.roc_tpr)
    points = set(zip(full.fpr.tolist(), full.tpr.tolist(), strict=True))
    assert set(zip(result.roc_fpr, result.roc_tpr, strict=True)) <= points
    assert (result.roc_fpr[0], result.roc_tpr[0]) == (0.0, 0.0)
    assert (result.roc_fpr[-1], result.roc_tpr[-1]) == (1.0, 1.0)
    # JSON without nan/inf, and round-trips to the same numbers
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["auc"]["value"] == result.auc.value
    assert back["roc"]["fpr"] == list(result.roc_fpr)
    assert back["bootstrap_reps"] == 100 and back["ci_level"] == 0.95


def test_thin_roc_keeps_low_fpr_end() -> None:
    rng = np.random.default_rng(9)
    member, nonmember = rng.normal(2, 1, 5000), rng.normal(0, 1, 5000)
    full = roc_curve(member, nonmember)
    thin = thin_roc(full, 50)
    assert len(thin) <= 50
    # the log grid starts at the smallest positive FPR (1/5000): its highest point is kept
    assert thin.fpr[thin.fpr > 0][0] == pytest.approx(1 / 5000)
    assert thin.tpr[thin.fpr > 0][0] == full.tpr[full.fpr <= 1 / 5000].max()
    # and the highest point at FPR 0
    assert thin.tpr[thin.fpr == 0].max() == full.tpr[full.fpr == 0].max()
    # half the kept points lie below FPR 3 %: a linear thinning would keep ~1
    assert np.count_nonzero(thin.fpr < 0.03) >= len(thin) // 2
    short = roc_curve(MEMBER, NONMEMBER)
    assert thin_roc(short, 200) is short
    with pytest.raises(ValueError, match="max_points must be >= 3"):
        thin_roc(full, 2)


# ---------------------------------------------------------------- invalid inputs


@pytest.mark.parametrize(
    ("member", "nonmember", "match"),
    [
        ([], [1.0], "member scores are empty"),
        ([1.0], [], "non-member scores are empty"),
        ([1.0, math.nan], [0.0], "member scores contain non-finite"),
        ([1.0], [0.0, math.inf], "non-member scores contain non-finite"),
        ([[1.0, 2.0]], [0.0], r"member scores must be 1-D, got shape \(1, 2\)"),
        ([1.0], 0.0, r"non-member scores must be 1-D, got shape \(\)"),
    ],
)
def test_invalid_scores_are_refused(member: object, nonmember: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auc(member, nonmember)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        roc_curve(member, nonmember)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        tpr_at_fpr(member, nonmember, 0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        summarize_attack(member, nonmember, reps=5)  # type: ignore[arg-type]


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match=r"fpr must be in \[0, 1\], got 1.5"):
        tpr_at_fpr(MEMBER, NONMEMBER, 1.5)
    with pytest.raises(ValueError, match="fpr must be in"):
        tpr_at_fpr(MEMBER, NONMEMBER, math.nan)
    with pytest.raises(ValueError, match="reps must be a positive integer, got 0"):
        bootstrap_ci(MEMBER, NONMEMBER, auc, reps=0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 1.0"):
        bootstrap_ci(MEMBER, NONMEMBER, auc, level=1.0)


# ---------------------------------------------------------------- one-run ε lower bound


def _binomial_tail(r: int, v: int, q: float) -> float:
    """P[Binomial(r, q) >= v] by summing math.comb terms."""
    return math.fsum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(v, r + 1))


def _eps_by_comb_bisection(v: int, r: int, alpha: float) -> float:
    """Largest ε with P[Binomial(r, e^ε/(1+e^ε)) >= v] <= alpha, by bisection on q."""
    lo, hi = 0.5, 1.0  # tail(lo) <= alpha < tail(hi)
    if _binomial_tail(r, v, lo) > alpha:
        return 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _binomial_tail(r, v, mid) <= alpha:
            lo = mid
        else:
            hi = mid
    return math.log(lo / (1 - lo))


@pytest.mark.parametrize(("v", "r"), [(60, 80), (80, 100), (15, 20), (35, 40), (170, 200)])
def test_epsilon_delta0_matches_binomial_sum(v: int, r: int) -> None:
    expected = _eps_by_comb_bisection(v, r, 0.05)
    assert expected > 0
    got = epsilon_lower_bound(v, r, 1000)
    assert got == pytest.approx(expected, abs=1e-7)
    q = 1 / (1 + math.exp(-got))
    assert _binomial_tail(r, v, q) == pytest.approx(0.05, rel=1e-6)
    # and the same as bisection on the module's own p-value
    assert one_run_p_value(v, r, 1000, got) == pytest.approx(0.05, rel=1e-6)
    assert one_run_p_value(v, r, 1000, got + 1e-3) > 0.05 > one_run_p_value(v, r, 1000, got - 1e-3)


@pytest.mark.parametrize("r", [1, 5, 10, 100, 1000])
def test_epsilon_perfect_guesses(r: int) -> None:
    # v = r: P[Binomial(r, q) >= r] = q^r <= 0.05  <=>  q <= p = 0.05^(1/r); ε = log(p/(1-p))
    p = 0.05 ** (1 / r)
    expected = max(0.0, math.log(p / (1 - p)))
    assert epsilon_lower_bound(r, r, r) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # r = 5: 0.05^(1/5) = 0.549280... -> ε = log(0.549280 / 0.450720) = 0.197763...
    if r == 5:
        assert epsilon_lower_bound(5, 5, 5) == pytest.approx(0.1977631, abs=1e-6)
    if r == 1:  # one right guess certifies nothing at 95 %
        assert epsilon_lower_bound(1, 1, 1) == 0.0


@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_epsilon_monotone_in_correct_guesses(delta: float) -> None:
    bounds = [epsilon_lower_bound(v, 100, 1000, delta=delta) for v in range(0, 101)]
    assert all(b == 0.0 for b in bounds[:51])  # accuracy <= 1/2 certifies nothing
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    positive = [b for b in bounds if b > 0]
    assert positive and all(a < b for a, b in itertools.pairwise(positive))


def test_epsilon_zero_cases() -> None:
    assert epsilon_lower_bound(0, 0, 10) == 0.0  # no guesses
    assert epsilon_lower_bound(50, 100, 100) == 0.0
    assert epsilon_lower_bound(30, 100, 100) == 0.0
    assert epsilon_lower_bound(55, 100, 100) == 0.0  # above 1/2, but not significant


def test_epsilon_more_confidence_or_delta_gives_smaller_bound() -> None:
    base = epsilon_lower_bound(80, 100, 1000)
    assert epsilon_lower_bound(80, 100, 1000, confidence=0.99) < base
    assert epsilon_lower_bound(80, 100, 1000, confidence=0.9) > base
    with_delta = epsilon_lower_bound(80, 100, 1000, delta=1e-5)
    assert with_delta < base
    assert epsilon_lower_bound(80, 100, 1000, delta=1e-14) == pytest.approx(base, abs=1e-6)
    # the δ term grows with the number of canaries m
    assert epsilon_lower_bound(80, 100, 100_000, delta=1e-5) < with_delta


@pytest.mark.parametrize(
    ("canaries", "guesses", "correct", "delta", "reference"),
    [
        # ML Privacy Meter, audit.py get_eps_audit(m, r, v, delta, p=0.05) at commit
        # e384af8fd9319b8eeb1303aa82474df1441e3c59 (the paper's listing): it bisects to 1e-5
        # and returns the lower end, so it lies within 1e-5 below the exact bound
        (1000, 100, 80, 1e-5, 0.9553146362304688),
        (10_000, 200, 150, 1e-5, 0.8065109252929688),
        (100, 100, 90, 1e-2, 0.3884735107421875),
        (1000, 1000, 700, 1e-5, 0.7317352294921875),
        (1000, 100, 80, 0.0, 0.9583892822265625),
        (1000, 100, 100, 0.0, 3.4929580688476562),
    ],
)
def test_epsilon_matches_ml_privacy_meter(
    canaries: int, guesses: int, correct: int, delta: float, reference: float
) -> None:
    got = epsilon_lower_bound(correct, guesses, canaries, delta=delta, confidence=0.95)
    assert reference - 1e-9 <= got <= reference + 1.1e-5


def test_p_value_with_delta_by_hand() -> None:
    # r = 4, v = 3, ε = 0 (q = 1/2): β = P[B >= 3] = 5/16; P[B = 2] = 6/16, P[B = 1] = 4/16,
    # P[B = 0] = 1/16: α = max(6/16 / 1, 10/16 / 2, 11/16 / 3) = 6/16; p = 5/16 + 2·m·δ·6/16
    assert one_run_p_value(3, 4, 10, 0.0, delta=0.001) == pytest.approx(5 / 16 + 20e-3 * 6 / 16)
    assert one_run_p_value(3, 4, 10, 0.0) == pytest.approx(5 / 16)
    assert one_run_p_value(3, 4, 10, 0.0, delta=0.5) == 1.0  # capped


@pytest.mark.parametrize(
    ("m", "r", "v", "delta"),
    [(1000, 100, 80, 1e-5), (100, 100, 90, 1e-2), (1000, 50, 40, 1e-3), (10_000, 400, 300, 1e-6)],
)
def test_p_value_nondecreasing_in_epsilon(m: int, r: int, v: int, delta: float) -> None:
    # the monotonicity that bisection on ε relies on for δ > 0
    p = [one_run_p_value(v, r, m, eps, delta=delta) for eps in np.linspace(0, 8, 401)]
    assert all(a <= b + 1e-15 for a, b in itertools.pairwise(p))


@pytest.mark.parametrize("delta", [0.0, 1e-4])
def test_epsilon_bound_is_valid_for_randomized_response(delta: float) -> None:
    # ε-DP randomized response on each canary is the worst case of the null: V ~ Bin(r, q).
    # Exactly, P[ε_lb(V) > ε] must be <= 1 - confidence = 0.05.
    eps, r = 1.0, 60
    q = 1 / (1 + math.exp(-eps))
    miss = math.fsum(
        math.comb(r, v) * q**v * (1 - q) ** (r - v)
        for v in range(r + 1)
        if epsilon_lower_bound(v, r, 200, delta=delta) > eps
    )
    assert 0 < miss <= 0.05


def _gaussian_mu(eps: float, delta: float) -> float:
    """μ of the Gaussian mechanism that is exactly (ε, δ)-DP (analytic Gaussian / μ-GDP):
    δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) (Balle & Wang 2018; Dong, Roth, Su 2022)."""

    def gap(mu: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    return float(brentq(lambda mu: gap(mu) - delta, 1e-3, 50.0))


def _gaussian_canaries(mu: float, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    return included * mu + rng.normal(size=m), included


def test_gaussian_mechanism_bound_below_true_epsilon() -> None:
    eps, delta = 2.0, 1e-5
    mu = _gaussian_mu(eps, delta)
    assert mu == pytest.approx(0.50155, abs=1e-4)
    bounds = []
    for seed in range(20):
        scores, included = _gaussian_canaries(mu, 1000, seed)
        result = one_run_audit(scores, included, k_plus=50, k_minus=50, delta=delta)
        assert result.guesses == 100 and result.canaries == 1000
        bounds.append(result.epsilon_lb)
    assert max(bounds) < eps
    assert min(bounds) > 0  # the signal is there at m = 1000


def test_gaussian_mechanism_strong_signal_certifies_epsilon() -> None:
    eps, delta = 8.0, 1e-5
    mu = _gaussian_mu(eps, delta)
    for seed in range(3):
        scores, included = _gaussian_canaries(mu, 1000, seed)
        result = one_run_audit(scores, included, k_plus=50, k_minus=50, delta=delta)
        assert 2.0 < result.epsilon_lb < eps
        assert result.accuracy > 0.9


# ---------------------------------------------------------------- one_run_audit


def test_one_run_audit_hand_example() -> None:
    scores = [0.9, 0.1, 0.8, 0.2, 0.5, 0.7]
    included = [True, False, True, True, False, False]
    # top 2 -> "in": 0.9 (in, right), 0.8 (in, right); bottom 2 -> "out": 0.1 (out, right),
    # 0.2 (in, wrong): 3 right of 4
    result = one_run_audit(scores, included, k_plus=2, k_minus=2)
    assert (result.canaries, result.guesses, result.correct) == (6, 4, 3)
    assert result.accuracy == 0.75
    assert result.epsilon_lb == 0.0  # P[Bin(4, 1/2) >= 3] = 5/16 > 0.05
    only_in = one_run_audit(scores, [1, 0, 1, 1, 0, 0], k_plus=3, k_minus=0)
    assert (only_in.guesses, only_in.correct) == (3, 2)  # 0.9, 0.8 in; 0.7 out
    json.dumps(result.to_dict(), allow_nan=False)


def test_one_run_audit_perfect_separation() -> None:
    included = np.arange(200) % 2 == 0
    scores = included.astype(float) + np.linspace(0, 0.5, 200)
    result = one_run_audit(scores, included, k_plus=100, k_minus=100)
    assert result.correct == 200
    assert result.epsilon_lb == pytest.approx(epsilon_lower_bound(200, 200, 200))


def test_best_one_run_audit_is_max_over_grid() -> None:
    scores, included = _gaussian_canaries(_gaussian_mu(6.0, 0.0 + 1e-5), 1000, seed=4)
    best = best_one_run_audit(scores, included)
    ks = sorted({min(500, max(1, math.floor(f * 1000))) for f in DEFAULT_K_FRACTIONS})
    each = [one_run_audit(scores, included, k_plus=k, k_minus=k) for k in ks]
    assert best.epsilon_lb == max(r.epsilon_lb for r in each) > 0
    assert best.k_plus == best.k_minus and best.k_plus in ks
    small = best_one_run_audit([3.0, 1.0, 2.0], [1, 0, 0], fractions=(0.5,))
    assert (small.k_plus, small.k_minus, small.correct) == (1, 1, 2)


def test_one_run_invalid_inputs() -> None:
    with pytest.raises(ValueError, match=r"same 1-D shape, got \(3,\) and \(2,\)"):
        one_run_audit([1.0, 2.0, 3.0], [True, False], k_plus=1, k_minus=1)
    with pytest.raises(ValueError, match=r"canary scores must be 1-D"):
        one_run_audit([[1.0, 2.0]], [[True, False]], k_plus=1, k_minus=1)
    with pytest.raises(ValueError, match="canary scores contain non-finite"):
        one_run_audit([1.0, math.nan], [True, False], k_plus=1, k_minus=1)
    with pytest.raises(ValueError, match="canary scores are empty"):
        one_run_audit([], [], k_plus=0, k_minus=0)
    with pytest.raises(ValueError, match=r"included must be boolean \(or 0/1\)"):
        one_run_audit([1.0, 2.0], [0.5, 1.0], k_plus=1, k_minus=1)
    with pytest.raises(ValueError, match="k_plus \\+ k_minus = 3 exceeds the 2 canaries"):
        one_run_audit([1.0, 2.0], [True, False], k_plus=2, k_minus=1)
    with pytest.raises(ValueError, match="k_minus must be a non-negative integer, got -1"):
        one_run_audit([1.0, 2.0], [True, False], k_plus=1, k_minus=-1)
    with pytest.raises(ValueError, match=r"fractions must lie in \(0, 0.5\]"):
        best_one_run_audit([1.0, 2.0], [True, False], fractions=(0.6,))
    with pytest.raises(ValueError, match="need at least 2 canaries"):
        best_one_run_audit([1.0], [True])
    with pytest.raises(ValueError, match="need 0 <= correct <= guesses <= canaries"):
        epsilon_lower_bound(11, 10, 100)
    with pytest.raises(ValueError, match="need 0 <= correct <= guesses <= canaries"):
        epsilon_lower_bound(5, 10, 9)
    with pytest.raises(ValueError, match=r"correct must be an integer, got 2\.5"):
        epsilon_lower_bound(2.5, 10, 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\], got -0.1"):
        epsilon_lower_bound(8, 10, 100, delta=-0.1)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.0"):
        epsilon_lower_bound(8, 10, 100, confidence=1.0)
    with pytest.raises(ValueError, match=r"epsilon must be >= 0, got -1\.0"):
        one_run_p_value(8, 10, 100, -1.0)
