"""The one-run canary audit (Steinke, Nasr and Jagielski, NeurIPS 2023): an empirical lower
bound on ε from a single extra training run.

The audit writes the run's data again with ``canaries`` extra users, each holding its own
``items`` fresh catalog items that nobody else has; every canary is included (it becomes a
device of the federation) independently with probability ½, and the items of excluded
canaries stay in the catalog, so the model's shape does not depend on the draw. It then runs
the run's scenario once on that data (``rerun``: the simulation engine by default) and scores
each canary by how coherently its items' embedding rows moved from their initial values (the
mean pairwise cosine of the movements): the rows of an included canary are trained towards the
same user every round it joins, those of an excluded one move only as other users' sampled
negatives and through the server optimizer (whose adaptive step moves every row, so a row's
distance alone says little). The auditor guesses "in" for the highest scores and "out" for the
lowest (:func:`fedrec.simulations.audit.stats.best_one_run_audit`, over a fixed grid of guess
counts at a Bonferroni-corrected confidence, so the maximum over the grid stays a valid 95 %
bound) and the number of correct guesses gives ε_lb: if the run is (ε, δ)-DP, ε ≥ ε_lb with
95 % confidence. A lower bound above the claimed ε is a violation.

The rerun is the scenario with the item genres kept and the user features dropped (canaries
have none) and SecAgg+ off (``rerun.py``); its own ledger gives the ε it claims (N, and so q,
include the canaries).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.data.dataset import Interactions
from fedrec.common.data.sources import load_interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import ITEM_TABLE, initial_shared_state
from fedrec.simulations.audit.rerun import Rerun, train_again, write_data
from fedrec.simulations.audit.stats import DEFAULT_K_FRACTIONS, best_one_run_audit

__all__ = ["CANARY_DELTA", "CanaryAudit", "canary_audit", "write_canary_data"]

CANARY_DELTA = 1e-5  # δ of the bound for a run that claims none


@dataclass(frozen=True)
class CanaryAudit:
    canaries: int
    included: int
    items_per_canary: int
    claimed_epsilon: float | None  # the rerun's own user-level ε (None: no user-level DP)
    delta: float
    epsilon_lower_bound: float
    guesses: int
    correct: int
    confidence: float
    rerun_seconds: float

    @property
    def violates(self) -> bool:
        claim = self.claimed_epsilon
        return claim is not None and self.epsilon_lower_bound > claim

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "violates": self.violates}


def write_canary_data(
    data: Interactions, folder: Path, canaries: int, items: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[list[str]]]:
    """``folder/ratings.csv`` and ``items.csv``: ``data`` plus the included canaries; returns
    the inclusion draw and each canary's item ids."""
    included = rng.random(canaries) < 0.5
    canary_items = [[f"canary-{c}-{t}" for t in range(items)] for c in range(canaries)]
    last = int(data.timestamp.max()) if len(data) else 0
    write_data(
        data,
        folder,
        extra_items=[item for row in canary_items for item in row],
        extra_ratings=[
            (f"canary-{c}", item, last + 1 + t)
            for c in np.flatnonzero(included)
            for t, item in enumerate(canary_items[c])
        ],
    )
    return included, canary_items


def _coherence(moved: np.ndarray, drift_components: int = 3) -> np.ndarray:
    """Per canary (``moved``: canaries × items × dim), the mean pairwise cosine of its items'
    movements once the directions every canary item shares are projected out (the top
    principal directions of all canary items' movements: others' negatives push every
    rarely-seen row the same way, more or less often): a canary's own items are trained
    towards its user and keep moving together; an excluded canary's keep nothing in common."""
    flat = moved.reshape(-1, moved.shape[-1])
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    basis = vt[:drift_components]
    residual = moved - (moved @ basis.T) @ basis
    unit = residual / np.maximum(np.linalg.norm(residual, axis=-1, keepdims=True), 1e-12)
    n = unit.shape[1]
    summed = unit.sum(axis=1)  # canaries × dim
    return (np.einsum("cd,cd->c", summed, summed) - n) / (n * (n - 1))


def canary_audit(
    config: FederationConfig,
    rerun: Rerun,
    *,
    canaries: int = 200,
    items: int = 8,
    seed: int = 0,
    confidence: float = 0.95,
) -> CanaryAudit:
    """Run ``config``'s scenario once with canaries (see the module docstring)."""
    if canaries < 2 or items < 3:
        raise ValueError("the canary audit needs at least 2 canaries of at least 3 items each")
    if not config.model.item_id_table:
        raise ValueError(
            "the canary audit scores how the canaries' item-table rows moved, and item-ids ="
            ' "none" has no item table: run the membership audit on this model instead'
        )
    rng = np.random.default_rng(seed)
    data = load_interactions(
        config.data.data, threshold=config.data.threshold, synthetic=config.synthetic()
    )
    with tempfile.TemporaryDirectory(prefix="fedrec-canary-") as scratch:
        folder = Path(scratch)
        included, canary_items = write_canary_data(data, folder / "data", canaries, items, rng)
        users = data.num_users + int(included.sum())  # the included canaries join
        retrained = train_again(config, rerun, folder, users)
    catalog = retrained.catalog
    final = retrained.shared[ITEM_TABLE].astype(np.float64)
    start = initial_shared_state(catalog, config.model.dim, config.data.seed)[ITEM_TABLE].numpy()
    moved = final - start.astype(np.float64)
    moved -= moved.mean(axis=0)  # the drift every row shares (the server step moves them all)
    index = {item: i for i, item in enumerate(catalog.item_ids)}
    rows = np.array([[index[i] for i in row] for row in canary_items])
    scores = _coherence(moved[rows])
    claimed = retrained.claimed_epsilon
    delta = retrained.delta or CANARY_DELTA
    corrected = 1 - (1 - confidence) / len(DEFAULT_K_FRACTIONS)  # valid over the grid
    found = best_one_run_audit(scores, included, delta=delta, confidence=corrected)
    return CanaryAudit(
        canaries=canaries,
        included=int(included.sum()),
        items_per_canary=items,
        claimed_epsilon=claimed,
        delta=delta,
        epsilon_lower_bound=found.epsilon_lb,
        guesses=found.guesses,
        correct=found.correct,
        confidence=confidence,
        rerun_seconds=retrained.seconds,
    )
