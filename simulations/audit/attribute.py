"""Attribute inference from uploads: what a device's update says about its user features.

Threat model: the honest-but-curious server reads one device's update (the ``upload`` view of
``interaction.py``). The user tower is W_u·[e_u; x_u] + b_u, so the update of W_u is a sum of
outer products δ·[e_u; x_u]ᵀ over the device's examples: the column of feature j is
(Σ δ)·x_j, the same vector scaled by the feature's value. A one-hot attribute is therefore
read off as the category whose column moved, and a scaled numeric attribute (age/100) as the
ratio of its column's norm to that of the active one-hot column (value 1). Each attribute's
accuracy (categorical, with the one-sided binomial p-value of beating the majority class) or
mean absolute error (numeric) is reported against the baseline that knows only the
population: the majority class, or the mean value.

Under SecAgg+ the server holds only sums; the masked uploads carry nothing to read, and the
attack is run on them too (``masked-upload``) as the check that it finds nothing there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import binomtest  # type: ignore[import-untyped]

from fedrec.common.data.features import UserFeatureSchema
from fedrec.simulations.audit.interaction import Observation

__all__ = ["USER_TOWER", "attribute_inference"]

USER_TOWER = "user_tower.weight"


def attribute_inference(
    observation: Observation,
    schema: UserFeatureSchema,
    features: Mapping[int, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Per attribute of ``schema``: the attack's score and the population baseline, over the
    devices of ``observation`` (``features``: each device's true encoded feature row)."""
    users = sorted(u for u in observation.deltas if u in features)
    if not users or not schema.columns:
        return {}
    width = schema.width
    columns = {u: observation.deltas[u][USER_TOWER][:, -width:] for u in users}
    norms = {u: np.linalg.norm(c, axis=0) for u, c in columns.items()}
    truth = np.stack([features[u] for u in users])
    out: dict[str, dict[str, Any]] = {}
    start = 0
    one_hot_blocks = []
    for column in schema.columns:
        block = slice(start, start + column.width)
        start += column.width
        if column.encoding in ("age", "scaled"):
            continue
        one_hot_blocks.append(block)
        actual = truth[:, block].argmax(axis=1)
        known = truth[:, block].max(axis=1) > 0  # a suppressed value has no category
        guess = np.array([norms[u][block].argmax() for u in users])
        counts = np.bincount(actual[known], minlength=column.width)
        baseline = float(counts.max() / max(known.sum(), 1))
        correct = int(np.sum(guess[known] == actual[known]))
        out[column.attribute] = {
            "kind": "categorical",
            "devices": int(known.sum()),
            "accuracy": correct / int(known.sum()) if known.any() else None,
            "baseline": baseline,
            # one-sided: is the attack better than always naming the majority class?
            "p_value": float(binomtest(correct, int(known.sum()), baseline, "greater").pvalue)
            if known.any() and baseline < 1
            else 1.0,
        }
    start = 0
    for column in schema.columns:
        block = slice(start, start + column.width)
        start += column.width
        if column.encoding not in ("age", "scaled"):
            continue
        actual = truth[:, block.start]
        # the active one-hot column has value 1: the scale of every column of this device
        # (a device with every one-hot value suppressed has none, and is left out)
        active = np.array(
            [any(truth[i, b].max() > 0 for b in one_hot_blocks) for i in range(len(users))],
            dtype=bool,
        )
        if not active.any():
            out[column.attribute] = {"kind": "numeric", "devices": 0, "mean_abs_error": None,
                                     "baseline": None}  # fmt: skip
            continue
        unit = np.array([max(norms[u][b].max() for b in one_hot_blocks) for u in users])
        guess = np.array([norms[u][block.start] for u in users]) / np.maximum(unit, 1e-12)
        out[column.attribute] = {
            "kind": "numeric",
            "devices": int(active.sum()),
            "mean_abs_error": float(np.mean(np.abs(guess - actual)[active])),
            "baseline": float(np.mean(np.abs(actual[active].mean() - actual[active]))),
        }
    return out
