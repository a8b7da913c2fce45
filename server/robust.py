"""Norm bounding: each device's update is clipped before anything averages it.

A poisoning device (simulations/poisoning.py) moves a few target items' rows of the shared
item table as far as the server lets one update go; averaged in, that row moves by its whole
push divided by the cohort. Two bounds limit what one device can do, without the robust
aggregates that fit recommenders badly (a coordinate-wise median or Krum of whole item tables
keeps the rows only a few devices touch where they are — every tail item — so the model
stalls on exactly the items a promotion attack picks):

* ``row_norm_bound``: the L2 norm of each item-table row of an update, so no device moves one
  item's embedding further than an honest device that trained on it does (honest row
  updates: benchmarks/update_norms.py);
* ``norm_bound``: the L2 norm of the whole update (the DP-FedAvg clip without its noise).

Rows first, then the whole: an update within both is passed on unchanged, bit for bit, so an
honest run with bounds above its updates is the run without them. Clipping scales a vector
by ``bound / norm`` and nothing else, so honest directions are kept. The server sees each
update only without secure aggregation; under SecAgg+ the config refuses these bounds. The
plain aggregation (``server/plain.py``) bounds each accepted update with :func:`bound` and
reports how many updates and rows it clipped, which the round's record states (``bounded``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedrec.common.model import ITEM_TABLE  # the rows a promotion attack pushes
from fedrec.common.privacy import clip_update

__all__ = ["Bounds", "bound"]


@dataclass(frozen=True)
class Bounds:
    norm: float = 0.0  # whole update (0: none)
    row_norm: float = 0.0  # each item-table row (0: none)

    def __post_init__(self) -> None:
        for name in ("norm", "row_norm"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} bound must be a finite number >= 0, got {value}")

    def __bool__(self) -> bool:
        return bool(self.norm or self.row_norm)


def bound(
    update: Mapping[str, np.ndarray], bounds: Bounds
) -> tuple[dict[str, np.ndarray], bool, int]:
    """(``update`` within ``bounds``, whether the whole was clipped, rows clipped); float64."""
    out = {k: np.asarray(v, dtype=np.float64) for k, v in update.items()}
    rows = 0
    if bounds.row_norm and ITEM_TABLE in out:
        table = out[ITEM_TABLE]
        norms = np.linalg.norm(table, axis=1)
        over = norms > bounds.row_norm
        rows = int(over.sum())
        if rows:
            table = table.copy()
            table[over] *= (bounds.row_norm / norms[over])[:, None]
            out[ITEM_TABLE] = table
    whole = False
    if bounds.norm:
        out, norm = clip_update(out, bounds.norm)
        whole = norm > bounds.norm
    return out, whole, rows
