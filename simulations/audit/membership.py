"""Membership inference against the released model: did this user's interactions train it?

Threat model: anyone who holds the released model (the final shared group: the item side,
W_u and the head; every user row stays on its device) and a candidate user's interaction
history, and asks whether that user was a device of the federation. User-level DP bounds
exactly this question; SecAgg+ does not touch it (the released model is the same sum).

Method. ``targets`` users (seeded, among those with at least :data:`MIN_ITEMS` train items)
are the candidates; the run's scenario is trained ``shadows + 1`` more times (``rerun.py``),
each time leaving out an independent random half of the candidates (every other user always
trains). In each rerun r, each candidate u gets a score s_r(u): a fresh user row is fitted to
u's train items against rerun r's item side, as a device joining late would (the private
epochs of ``fedrec.client.local.refresh_user``, Adam at the run's private-lr, the same seeded
start and negatives in every rerun), and then
  * ``loss``: minus the mean binary cross-entropy over u's train items and a fixed set of
    negatives (items u never touched, four per train item);
  * ``rank``: minus the mean fraction of the catalog scored above each of u's train items.
A member's items were trained towards its own user vector, so one vector fits them better.
The score-based attacks take every (rerun, candidate) pair; ``lira`` is the offline LiRA of
Carlini et al. (S&P 2022, §VI) with a fixed variance: s_r(u) minus the mean of s_o(u) over
the other reruns o that left u out, over the pooled spread of those out-scores; it removes
how well u's history fits any model (popular items fit everywhere), which is most of the
variance of a raw score. Pairs without an out-rerun are skipped. Each view reports AUC and
TPR at low FPR with bootstrap intervals (:func:`~fedrec.simulations.audit.stats.summarize_attack`;
the pairs of one candidate share it, so the intervals are somewhat narrow).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.client.local import LocalTrainConfig, build_local_model, refresh_user
from fedrec.common.data.catalog import Catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.shard import UserShard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import NO_ITEM, temporal_leave_one_out
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.rerun import Rerun, Retrained, train_again, write_data
from fedrec.simulations.audit.stats import AttackResult, summarize_attack

__all__ = ["MIN_ITEMS", "VIEWS", "MembershipAudit", "membership_audit", "score_candidates"]

MIN_ITEMS = 3  # train items a candidate needs (fewer: nothing to fit a row to)
NEGATIVES = 4  # fixed negatives per train item in the loss score
VIEWS = ("loss", "rank", "lira")


@dataclass(frozen=True)
class Candidate:
    """A candidate user's history in item ids (the reruns' catalogs index them)."""

    user: str
    train: tuple[str, ...]
    negatives: tuple[str, ...]


@dataclass(frozen=True)
class MembershipAudit:
    targets: int
    reruns: int
    fit_epochs: int
    views: dict[str, AttackResult]
    claimed_epsilons: tuple[float | None, ...]  # each rerun's own user-level ε
    rerun_seconds: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "reruns": self.reruns,
            "fit_epochs": self.fit_epochs,
            "claimed_epsilons": list(self.claimed_epsilons),
            "rerun_seconds": list(self.rerun_seconds),
            **{view: result.to_dict() for view, result in self.views.items()},
        }


def _candidates(
    data: Interactions, targets: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[Candidate]]:
    """``targets`` seeded users with at least :data:`MIN_ITEMS` train items, each with its
    train items and fixed negatives (outside its whole history)."""
    split = temporal_leave_one_out(data, seed=0)
    counts = np.diff(split.train_indptr)
    eligible = np.flatnonzero(counts >= MIN_ITEMS)
    if len(eligible) < 4:
        raise ValueError(
            f"membership inference needs at least 4 users with {MIN_ITEMS}+ train items;"
            f" the data has {len(eligible)}"
        )
    chosen = np.sort(rng.choice(eligible, size=min(targets, len(eligible)), replace=False))
    found = []
    for u in chosen:
        train = split.train_items_of(int(u))
        history = np.concatenate([train, [split.val_item[u], split.test_item[u]]])
        free = np.setdiff1d(np.arange(data.num_items), history[history != NO_ITEM])
        negatives = rng.choice(free, size=min(NEGATIVES * len(train), len(free)), replace=False)
        found.append(
            Candidate(
                user=data.user_ids[u],
                train=tuple(data.item_ids[i] for i in train),
                negatives=tuple(data.item_ids[i] for i in negatives),
            )
        )
    return chosen, found


def score_candidates(
    catalog: Catalog,
    shared: Mapping[str, np.ndarray],
    candidates: Sequence[Candidate],
    config: FederationConfig,
    *,
    fit_epochs: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """The ``loss`` and ``rank`` score of each candidate under one released model (see the
    module docstring): higher means "fits like a member"."""
    index = {item: i for i, item in enumerate(catalog.item_ids)}
    weights = {k: np.asarray(v, np.float32) for k, v in shared.items()}
    fit = LocalTrainConfig(
        epochs=0,
        batch_size=config.local.batch_size,
        negatives=config.local.negatives,
        private_lr=config.local.private_lr,
        private_weight_decay=config.local.private_weight_decay,
    )
    features = np.zeros(catalog.user_feature_dim, np.float32)  # reruns have no user features
    scores: dict[str, list[float]] = {"loss": [], "rank": []}
    for c, candidate in enumerate(candidates):
        train = np.array([index[i] for i in candidate.train], np.int64)
        negatives = np.array([index[i] for i in candidate.negatives], np.int64)
        shard = UserShard(features, train, NO_ITEM, NO_ITEM, np.empty(0, np.int64), len(index))
        model = build_local_model(catalog, shard, config.model.dim, weights, None, seed + c)
        refresh_user(model, shard, fit, fit_epochs, np.random.default_rng(seed + c))
        logits = model.score_all().astype(np.float64)
        positive, negative = logits[train], logits[negatives]
        bce = np.concatenate([np.logaddexp(0, -positive), np.logaddexp(0, negative)])
        scores["loss"].append(-float(bce.mean()))
        above = (logits[None, :] > positive[:, None]).sum(axis=1) / len(logits)
        scores["rank"].append(-float(above.mean()))
    return {view: np.array(values) for view, values in scores.items()}


def _lira(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offline LiRA with a fixed variance over (reruns × candidates) ``scores``: per pair,
    the score less the candidate's mean out-score in the other reruns, over the pooled
    spread; returns (statistics, mask of the pairs that have an out-rerun)."""
    runs = scores.shape[0]
    out = ~included
    statistic = np.zeros_like(scores)
    usable = np.zeros_like(included)
    for r in range(runs):
        others = np.delete(np.arange(runs), r)
        count = out[others].sum(axis=0)
        total = np.where(out[others], scores[others], 0.0).sum(axis=0)
        usable[r] = count > 0
        statistic[r] = scores[r] - total / np.maximum(count, 1)
    mean_out = np.where(out, scores, 0.0).sum(axis=0) / np.maximum(out.sum(axis=0), 1)
    residuals = (scores - mean_out)[out & (out.sum(axis=0) >= 2)]
    spread = float(residuals.std()) if residuals.size >= 2 else float(scores[out].std())
    return statistic / max(spread, 1e-12), usable


def membership_audit(
    config: FederationConfig,
    rerun: Rerun,
    *,
    targets: int = 200,
    shadows: int = 2,
    fit_epochs: int = 20,
    seed: int = 0,
) -> MembershipAudit:
    """Train ``config``'s scenario ``shadows + 1`` times, each without a random half of
    ``targets`` candidates, and attack each released model (see the module docstring)."""
    if shadows < 1:
        raise ValueError("membership inference needs at least 1 shadow rerun (LiRA compares)")
    if targets < 4:
        raise ValueError(f"membership inference needs at least 4 targets, got {targets}")
    rng = np.random.default_rng(seed)
    data = load_interactions(
        config.data.data, threshold=config.data.threshold, synthetic=config.synthetic()
    )
    chosen, candidates = _candidates(data, targets, rng)
    runs = shadows + 1
    included = rng.random((runs, len(chosen))) < 0.5
    retrained: list[Retrained] = []
    scores: dict[str, list[np.ndarray]] = {"loss": [], "rank": []}
    for r in range(runs):
        left_out = np.zeros(data.num_users, bool)
        left_out[chosen[~included[r]]] = True
        with tempfile.TemporaryDirectory(prefix="fedrec-membership-") as scratch:
            folder = Path(scratch)
            write_data(data, folder / "data", left_out=left_out)
            users = data.num_users - int(left_out.sum())
            retrained.append(train_again(config, rerun, folder, users))
        found = score_candidates(
            retrained[-1].catalog,
            retrained[-1].shared,
            candidates,
            config,
            fit_epochs=fit_epochs,
            seed=seed,
        )
        for view, values in found.items():
            scores[view].append(values)
    views: dict[str, AttackResult] = {}
    for view in ("loss", "rank"):
        table = np.stack(scores[view])
        views[view] = summarize_attack(table[included], table[~included], seed=seed)
    statistic, usable = _lira(np.stack(scores["loss"]), included)
    if (usable & included).any() and (usable & ~included).any():
        views["lira"] = summarize_attack(
            statistic[usable & included], statistic[usable & ~included], seed=seed
        )
    return MembershipAudit(
        targets=len(chosen),
        reruns=runs,
        fit_epochs=fit_epochs,
        views=views,
        claimed_epsilons=tuple(r.claimed_epsilon for r in retrained),
        rerun_seconds=tuple(r.seconds for r in retrained),
    )
