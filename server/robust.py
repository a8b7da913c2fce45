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
update only without secure aggregation; under SecAgg+ the config refuses these bounds.
:class:`NormBounding` reports how many updates and rows it clipped in the round's aggregate
metrics (``bounded-updates``, ``bounded-rows``), which the recorder writes to the round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrec.common import keys
from fedrec.common.model import ITEM_TABLE  # the rows a promotion attack pushes
from fedrec.common.privacy import clip_delta, clip_update
from fedrec.common.records import arrays_of
from fedrec.server.wrapper import StrategyWrapper

__all__ = ["BOUNDED_ROWS", "BOUNDED_UPDATES", "ITEM_TABLE", "Bounds", "NormBounding", "bound"]

BOUNDED_UPDATES = "bounded-updates"  # aggregate metrics: updates clipped as a whole
BOUNDED_ROWS = "bounded-rows"  # item-table rows clipped


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


class NormBounding(StrategyWrapper[Strategy]):
    """Clips every train reply's update (reply − the round's model) to ``bounds``."""

    def __init__(self, inner: Strategy, bounds: Bounds) -> None:
        if not bounds:
            raise ValueError("NormBounding needs a norm bound or a row-norm bound")
        super().__init__(inner)
        self.bounds = bounds
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = rows = 0
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                continue
            sent = {k: a.numpy() for k, a in arrays_of(reply.content).items()}
            delta, _ = clip_delta(self._global, sent, None)
            bounded, whole, clipped_rows = bound(delta, self.bounds)
            updates, rows = updates + whole, rows + clipped_rows
            if whole or clipped_rows:
                reply.content[keys.ARRAYS] = ArrayRecord(
                    {k: Array((self._global[k] + bounded[k]).astype(np.float32)) for k in delta}
                )
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if metrics is not None:
            metrics = MetricRecord({**metrics, BOUNDED_UPDATES: updates, BOUNDED_ROWS: rows})
        return arrays, metrics
