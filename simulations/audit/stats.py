"""Statistics for a privacy audit report: membership-inference metrics and a one-run DP audit.

Pure math, no I/O: everything here takes attack scores (already computed by some attack on a
federated run) and returns numbers that a report can print or plot.

Conventions
  * **Higher score = "member".** A threshold rule predicts "member" for every score ``>= t``;
    members are the positives, non-members the negatives.
  * Scores are 1-D arrays of finite floats; empty or non-finite input is refused with a
    :class:`ValueError`, never silently dropped.
  * Ties are exact: the ROC has one point per distinct score, and AUC counts a tied
    (member, non-member) pair as 1/2.
  * ``tpr_at_fpr(..., fpr)`` is the best TPR of a threshold rule whose FPR (false positives
    divided by the number of non-members, in floating point) is ``<= fpr``; no interpolation.
    At ``fpr=0`` it is the fraction of members scored strictly above every non-member.

Membership-inference metrics (AUC, TPR at 1 %, 0.1 % and 0 % FPR, a log-scale ROC) follow ML
Privacy Meter (privacytrustlab/ml_privacy_meter, ``audit.py``: ``compute_attack_results``) and
"Membership Inference Attacks From First Principles" (Carlini et al., IEEE S&P 2022), which
argues for TPR at low FPR over AUC. Confidence intervals are percentile bootstraps that
resample members and non-members independently.

The one-run audit is from Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023 (arXiv:2305.08846): ``m`` canaries are each included in training
independently with probability 1/2; the auditor guesses "in" for the ``k_plus`` highest scores
and "out" for the ``k_minus`` lowest, abstaining on the rest; if ``v`` of the ``r`` guesses are
correct, every ε for which that many correct guesses is too unlikely under (ε, δ)-DP is
rejected. The p-value (with its δ term) and the bisection on ε follow the paper's Python
listing, as ported (and credited to the paper) in ML Privacy Meter's ``audit.py``
(``p_value_DP_audit`` / ``get_eps_audit``); for δ = 0 the bound is computed in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special  # type: ignore[import-untyped]
import scipy.stats  # type: ignore[import-untyped]
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_K_FRACTIONS",
    "AttackResult",
    "Estimate",
    "OneRunAudit",
    "Roc",
    "auc",
    "average_ranks",
    "best_one_run_audit",
    "bootstrap_ci",
    "epsilon_lower_bound",
    "one_run_audit",
    "one_run_p_value",
    "roc_curve",
    "summarize_attack",
    "thin_roc",
    "tpr_at_fpr",
]

FloatArray = NDArray[np.float64]
Statistic = Callable[[FloatArray, FloatArray], float]

#: FPRs reported by :func:`summarize_attack` (as in ML Privacy Meter).
REPORTED_FPRS: tuple[float, float, float] = (0.01, 0.001, 0.0)

#: Fractions of the canaries guessed on *each* side by :func:`best_one_run_audit`:
#: ``k_plus = k_minus = max(1, floor(f * m))``, capped at ``floor(m / 2)``.
DEFAULT_K_FRACTIONS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

# Bisection on ε stops when the bracket is this narrow (absolute, in nats).
_EPS_TOL = 1e-9


# ---------------------------------------------------------------------------- validation


def _scores(values: ArrayLike, name: str) -> FloatArray:
    """``values`` as a 1-D float64 array, refusing empty, non-1-D and non-finite input."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} are empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain non-finite values (nan or inf)")
    return arr


def _pair(member: ArrayLike, nonmember: ArrayLike) -> tuple[FloatArray, FloatArray]:
    return _scores(member, "member scores"), _scores(nonmember, "non-member scores")


def _check_fpr(fpr: float) -> float:
    fpr = float(fpr)
    if not 0.0 <= fpr <= 1.0:  # also refuses nan
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    return fpr


# ---------------------------------------------------------------------------- ROC and AUC


@dataclass(frozen=True, eq=False)
class Roc:
    """ROC points of a threshold rule ``score >= threshold`` -> "member".

    ``thresholds[0]`` is ``+inf`` (point (0, 0)); then one point per distinct score, in
    decreasing order, the last (the smallest score) being (1, 1). ``fpr`` and ``tpr`` are
    nondecreasing. The arrays are read-only.
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray

    def __len__(self) -> int:
        return int(self.fpr.size)


def _readonly(arr: FloatArray) -> FloatArray:
    arr.setflags(write=False)
    return arr


def roc_curve(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> Roc:
    """ROC of the rule ``score >= t`` -> "member", one point per distinct threshold ``t``.

    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` (members are
    the positive class): starts at (0, 0) with ``t = +inf`` and ends at (1, 1) with ``t`` the
    smallest score. Tied scores move TPR and FPR together in one step.
    """
    member, nonmember = _pair(member_scores, nonmember_scores)
    scores = np.concatenate([member, nonmember])
    is_member = np.concatenate([np.ones(member.size), np.zeros(nonmember.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # last index of each run of equal scores: the point after all of them are "member"
    last = np.flatnonzero(np.append(np.diff(scores) != 0, True))
    tp = np.cumsum(is_member)[last]
    fp = (last + 1) - tp
    fpr = np.concatenate([[0.0], fp / nonmember.size])
    tpr = np.concatenate([[0.0], tp / member.size])
    thresholds = np.concatenate([[np.inf], scores[last]])
    return Roc(fpr=_readonly(fpr), tpr=_readonly(tpr), thresholds=_readonly(thresholds))


def average_ranks(scores: FloatArray) -> FloatArray:
    """1-based ranks of ``scores`` (1-D, not empty), ties sharing their mean rank: what
    scipy.stats.rankdata(method="average") gives, from one argsort (~3x faster, which the
    bootstrap feels)."""
    order = np.argsort(scores)
    ordered = scores[order]
    starts_run = np.empty(scores.size, dtype=np.bool_)
    starts_run[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_run[1:])
    first = np.flatnonzero(starts_run)  # 0-based position of each run of equal scores
    end = np.append(first[1:], scores.size)  # one past its last position
    average_rank = (first + end + 1) / 2.0  # mean of the 1-based ranks first+1 .. end
    ranks = np.empty(scores.size)
    ranks[order] = average_rank[np.cumsum(starts_run) - 1]
    return ranks


def _auc(member: FloatArray, nonmember: FloatArray) -> float:
    # Mann–Whitney U from average ranks
    n1, n0 = member.size, nonmember.size
    ranks = average_ranks(np.concatenate([member, nonmember]))
    u = float(np.sum(ranks[:n1])) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def auc(member: ArrayLike, nonmember: ArrayLike) -> float:
    """Area under the ROC: P[member score > non-member score] + 1/2 P[tie].

    Computed exactly as the Mann–Whitney U statistic from average ranks (one sort,
    O(n log n)), divided by ``n_members * n_nonmembers``; equal to the trapezoid area under
    :func:`roc_curve`.
    """
    return _auc(*_pair(member, nonmember))


def _allowed_false_positives(fpr: float, n_nonmember: int) -> int:
    """Largest count ``k`` in [0, n] with ``k / n <= fpr`` in floating point (as ROC's fpr)."""
    k = min(n_nonmember, math.floor(fpr * n_nonmember))
    while k < n_nonmember and (k + 1) / n_nonmember <= fpr:
        k += 1
    while k > 0 and k / n_nonmember > fpr:
        k -= 1
    return k


def _tpr_at_fpr(member: FloatArray, nonmember: FloatArray, fpr: float) -> float:
    k = _allowed_false_positives(fpr, nonmember.size)
    if k >= nonmember.size:
        return 1.0
    # a threshold admits at most k false positives iff it lies above the (k+1)-th largest
    # non-member score; the best such rule counts the members strictly above that score
    cutoff = np.partition(nonmember, nonmember.size - k - 1)[nonmember.size - k - 1]
    return float(np.count_nonzero(member > cutoff)) / member.size


def tpr_at_fpr(member: ArrayLike, nonmember: ArrayLike, fpr: float) -> float:
    """Highest TPR of a threshold rule ``score >= t`` whose FPR is ``<= fpr``.

    Convention: the maximum TPR over the points of :func:`roc_curve` with
    ``fpr_point <= fpr`` (the FPR being false positives / non-members, compared in floating
    point, so ``fpr=0.01`` with 100 non-members admits exactly 1 false positive); no
    interpolation between points. This is ML Privacy Meter's ``tpr[fpr <= x][-1]``. At
    ``fpr=0`` it is the fraction of members scored strictly above the highest non-member.
    Computed in O(n) with a partial sort.
    """
    return _tpr_at_fpr(*_pair(member, nonmember), _check_fpr(fpr))


def thin_roc(roc: Roc, max_points: int = 200) -> Roc:
    """A subset of at most ``max_points`` points of ``roc`` for figures, dense at low FPR.

    Keeps (0, 0), the highest point at FPR 0 and (1, 1), and for each FPR value of a
    log-spaced grid from the smallest positive FPR to 1 the highest point at or below it, so
    that a log-scale FPR axis stays faithful. Every kept point is a point of ``roc``.
    """
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")
    n = len(roc)
    if n <= max_points:
        return roc
    fpr = np.asarray(roc.fpr)
    positive = fpr[fpr > 0]
    keep = [0, n - 1, int(np.searchsorted(fpr, 0.0, side="right")) - 1]
    if positive.size:
        grid = np.geomspace(float(positive[0]), 1.0, max_points - 2)
        keep.extend((np.searchsorted(fpr, grid, side="right") - 1).tolist())
    idx = np.unique(np.asarray(keep, dtype=np.int64))
    return Roc(
        fpr=_readonly(roc.fpr[idx].copy()),
        tpr=_readonly(roc.tpr[idx].copy()),
        thresholds=_readonly(roc.thresholds[idx].copy()),
    )


# ---------------------------------------------------------------------------- bootstrap


def _check_bootstrap(reps: int, level: float) -> None:
    if isinstance(reps, bool) or not isinstance(reps, int | np.integer) or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _bootstrap(
    member: FloatArray,
    nonmember: FloatArray,
    statistics: Sequence[Statistic],
    reps: int,
    level: float,
    seed: int,
) -> list[tuple[float, float]]:
    """Percentile intervals of several statistics from the same resamples."""
    _check_bootstrap(reps, level)
    rng = np.random.default_rng(seed)
    values = np.empty((reps, len(statistics)))
    for rep in range(reps):
        m = member[rng.integers(0, member.size, member.size)]
        n = nonmember[rng.integers(0, nonmember.size, nonmember.size)]
        for j, statistic in enumerate(statistics):
            values[rep, j] = statistic(m, n)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail], axis=0)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]


def bootstrap_ci(
    member: ArrayLike,
    nonmember: ArrayLike,
    statistic: Callable[[FloatArray, FloatArray], float],
    *,
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(member, nonmember)``.

    Each replicate resamples the members and the non-members independently, with
    replacement and at their own sizes, from ``numpy.random.default_rng(seed)``; the interval
    is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates. The same
    seed gives the same interval.
    """
    m, n = _pair(member, nonmember)
    return _bootstrap(m, n, [statistic], reps, level, seed)[0]


# ---------------------------------------------------------------------------- attack summary


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class AttackResult:
    """Summary of one membership (or interaction) inference attack.

    ``roc_fpr`` / ``roc_tpr`` are the ROC thinned by :func:`thin_roc` for figures; the
    metrics are computed on the full scores.
    """

    n_members: int
    n_nonmembers: int
    auc: Estimate
    tpr_at_1pct_fpr: Estimate
    tpr_at_0p1pct_fpr: Estimate
    tpr_at_0pct_fpr: Estimate
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    ci_level: float
    bootstrap_reps: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable numbers (floats, ints, lists, dicts)."""
        return {
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "auc": self.auc.to_dict(),
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr.to_dict(),
            "tpr_at_0p1pct_fpr": self.tpr_at_0p1pct_fpr.to_dict(),
            "tpr_at_0pct_fpr": self.tpr_at_0pct_fpr.to_dict(),
            "roc": {"fpr": list(self.roc_fpr), "tpr": list(self.roc_tpr)},
            "ci_level": self.ci_level,
            "bootstrap_reps": self.bootstrap_reps,
            "seed": self.seed,
        }


def _tpr_statistic(fpr: float) -> Statistic:
    def statistic(member: FloatArray, nonmember: FloatArray) -> float:
        return _tpr_at_fpr(member, nonmember, fpr)

    return statistic


def summarize_attack(
    member: ArrayLike,
    nonmember: ArrayLike,
    *,
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    max_roc_points: int = 200,
) -> AttackResult:
    """AUC and TPR at 1 %, 0.1 % and 0 % FPR, each with a bootstrap CI, and a thinned ROC.

    All intervals come from the same ``reps`` resamples (see :func:`bootstrap_ci`), so the
    AUC interval equals ``bootstrap_ci(member, nonmember, auc, reps=reps, level=level,
    seed=seed)``.
    """
    m, n = _pair(member, nonmember)
    roc = thin_roc(roc_curve(m, n), max_roc_points)
    statistics: list[Statistic] = [_auc, *(_tpr_statistic(f) for f in REPORTED_FPRS)]
    intervals = _bootstrap(m, n, statistics, reps, level, seed)
    estimates = [
        Estimate(value=float(stat(m, n)), ci_low=lo, ci_high=hi)
        for stat, (lo, hi) in zip(statistics, intervals, strict=True)
    ]
    return AttackResult(
        n_members=int(m.size),
        n_nonmembers=int(n.size),
        auc=estimates[0],
        tpr_at_1pct_fpr=estimates[1],
        tpr_at_0p1pct_fpr=estimates[2],
        tpr_at_0pct_fpr=estimates[3],
        roc_fpr=tuple(float(x) for x in roc.fpr),
        roc_tpr=tuple(float(x) for x in roc.tpr),
        ci_level=float(level),
        bootstrap_reps=int(reps),
        seed=int(seed),
    )


# ---------------------------------------------------------------------------- one-run audit


def _check_counts(correct: int, guesses: int, canaries: int) -> None:
    for name, value in (("correct", correct), ("guesses", guesses), ("canaries", canaries)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(
            f"need 0 <= correct <= guesses <= canaries, got correct={correct}, "
            f"guesses={guesses}, canaries={canaries}"
        )


def _check_delta(delta: float) -> None:
    if not 0.0 <= delta <= 1.0:  # also refuses nan
        raise ValueError(f"delta must be in [0, 1], got {delta}")


def _check_delta_confidence(delta: float, confidence: float) -> None:
    _check_delta(delta)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _p_value(correct: int, guesses: int, canaries: int, epsilon: float, delta: float) -> float:
    v, r = int(correct), int(guesses)
    q = float(scipy.special.expit(epsilon))  # accuracy of ε-DP randomized response
    beta = float(scipy.stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    # alpha = max over i = 1..v of P[v - i <= Binomial(r, q) < v] / i
    pmf = scipy.stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # at v-1, v-2, ..., 0
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * int(canaries), 1.0)


def one_run_p_value(
    correct: int, guesses: int, canaries: int, epsilon: float, *, delta: float = 0.0
) -> float:
    """Upper bound on P[>= ``correct`` of ``guesses`` right] for any (ε, δ)-DP training run.

    Steinke et al.'s bound: with ``q = e^ε / (1 + e^ε)``,
    ``p = P[Binomial(r, q) >= v] + 2 m δ · max_{1<=i<=v} P[v - i <= Binomial(r, q) < v] / i``,
    capped at 1 (the second term vanishes for δ = 0).
    """
    _check_counts(correct, guesses, canaries)
    if not epsilon >= 0.0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    _check_delta(delta)
    return _p_value(correct, guesses, canaries, float(epsilon), float(delta))


def epsilon_lower_bound(
    correct: int,
    guesses: int,
    canaries: int,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> float:
    """Steinke et al.'s one-run lower bound on ε from ``correct`` of ``guesses`` right.

    If the training run is (ε, δ)-DP in each canary, the bound exceeds ε with probability at
    most ``1 - confidence`` over the canaries' random inclusion. It is the supremum of the ε
    with :func:`one_run_p_value` ``<= 1 - confidence``; 0.0 when not even ε = 0 is rejected
    (e.g. whenever at most half the guesses are right and ``confidence >= 1/2``).

    * δ = 0: the p-value is the binomial tail ``P[Binomial(r, q) >= v] = I_q(v, r - v + 1)``
      (regularized incomplete beta), strictly increasing in ``q`` and so in ε, and the bound
      is exact: ``ε = logit(q*)`` with ``q* = betaincinv(v, r - v + 1, 1 - confidence)`` (the
      one-sided Clopper–Pearson lower limit of the accuracy). For ``v = r`` this is
      ``q* = (1 - confidence)^(1/r)``.
    * δ > 0: bisection on ε, as in the paper's listing, which presumes the p-value is
      nondecreasing in ε (its first term is; the tests check the whole on a grid). The
      bracket keeps ``p(lo) <= 1 - confidence < p(hi)`` and the lower end is returned, so
      the result errs low (by < 1e-9).

    ``canaries`` (m) only enters through the δ term.
    """
    _check_counts(correct, guesses, canaries)
    _check_delta_confidence(delta, confidence)
    alpha = 1.0 - float(confidence)
    v, r, m, d = int(correct), int(guesses), int(canaries), float(delta)
    if v == 0 or _p_value(v, r, m, 0.0, d) > alpha:
        return 0.0
    if d == 0.0:
        q_star = float(scipy.special.betaincinv(v, r - v + 1, alpha))
        return max(0.0, float(scipy.special.logit(q_star)))
    lo, hi = 0.0, 1.0
    while _p_value(v, r, m, hi, d) <= alpha:  # terminates: p -> 1 as ε -> ∞ (q -> 1)
        lo, hi = hi, 2.0 * hi
    while hi - lo > _EPS_TOL:
        mid = (lo + hi) / 2.0
        if _p_value(v, r, m, mid, d) <= alpha:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunAudit:
    """Result of one set of guesses of a one-run audit."""

    canaries: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    epsilon_lb: float

    @property
    def accuracy(self) -> float:
        """Fraction of the guesses that are right (nan with no guesses)."""
        return self.correct / self.guesses if self.guesses else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "canaries": self.canaries,
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "guesses": self.guesses,
            "correct": self.correct,
            "delta": self.delta,
            "confidence": self.confidence,
            "epsilon_lb": self.epsilon_lb,
        }


def _canaries(scores: ArrayLike, included: ArrayLike) -> tuple[FloatArray, NDArray[np.bool_]]:
    s = _scores(scores, "canary scores")
    inc = np.asarray(included)
    if inc.shape != s.shape:
        raise ValueError(
            f"scores and included must have the same 1-D shape, got {s.shape} and {inc.shape}"
        )
    if inc.dtype != np.bool_:
        if not np.isin(inc, (0, 1)).all():
            raise ValueError("included must be boolean (or 0/1)")
        inc = inc.astype(np.bool_)
    return s, inc


def _audit(
    order: NDArray[np.intp],
    included: NDArray[np.bool_],
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float,
) -> OneRunAudit:
    m = int(order.size)
    top = order[m - k_plus :] if k_plus else order[:0]
    bottom = order[:k_minus]
    correct = int(np.count_nonzero(included[top])) + int(np.count_nonzero(~included[bottom]))
    guesses = k_plus + k_minus
    return OneRunAudit(
        canaries=m,
        k_plus=k_plus,
        k_minus=k_minus,
        guesses=guesses,
        correct=correct,
        delta=float(delta),
        confidence=float(confidence),
        epsilon_lb=epsilon_lower_bound(correct, guesses, m, delta=delta, confidence=confidence),
    )


def one_run_audit(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    k_plus: int,
    k_minus: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> OneRunAudit:
    """Guess "in" for the ``k_plus`` highest canary scores and "out" for the ``k_minus``
    lowest, count the right guesses and bound ε with :func:`epsilon_lower_bound`.

    ``included[i]`` says whether canary ``i`` was really inserted (each with probability 1/2,
    independently, for the bound to hold). Tied scores are ordered by index (a stable sort):
    harmless as long as the index carries no information about inclusion.
    """
    s, inc = _canaries(scores, included)
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {k!r}")
    if k_plus + k_minus > s.size:
        raise ValueError(f"k_plus + k_minus = {k_plus + k_minus} exceeds the {s.size} canaries")
    _check_delta_confidence(delta, confidence)
    order = np.argsort(s, kind="stable")
    return _audit(order, inc, int(k_plus), int(k_minus), delta, confidence)


def best_one_run_audit(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    fractions: Sequence[float] = DEFAULT_K_FRACTIONS,
) -> OneRunAudit:
    """The largest ε lower bound of :func:`one_run_audit` over a fixed grid of guess counts.

    For each ``f`` in ``fractions``, ``k_plus = k_minus = max(1, floor(f * m))``, capped at
    ``floor(m / 2)`` (duplicates are tried once); the first best result, in grid order, is
    returned. Like ML Privacy Meter and the paper's experiments, this picks k after seeing
    the results, which is **optimistic**: the maximum over the grid is not itself a
    ``confidence``-level bound. The grid must be fixed before looking at the scores; for a
    bound valid over the choice, pass ``confidence = 1 - (1 - c) / len(fractions)``
    (Bonferroni).
    """
    s, inc = _canaries(scores, included)
    _check_delta_confidence(delta, confidence)
    if s.size < 2:
        raise ValueError(f"need at least 2 canaries, got {s.size}")
    if not fractions:
        raise ValueError("fractions must not be empty")
    if not all(0.0 < f <= 0.5 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 0.5], got {tuple(fractions)}")
    ks = dict.fromkeys(min(s.size // 2, max(1, math.floor(f * s.size))) for f in fractions)
    order = np.argsort(s, kind="stable")
    best: OneRunAudit | None = None
    for k in ks:
        result = _audit(order, inc, k, k, delta, confidence)
        if best is None or result.epsilon_lb > best.epsilon_lb:
            best = result
    assert best is not None
    return best
