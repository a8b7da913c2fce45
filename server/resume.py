"""Resuming a run from its checkpoint: read it once, check it continues this run, grow it.

``resume = PATH`` (``--resume DIR``) continues the run whose checkpoint that is:
:func:`resume_from` reads it once and returns a :class:`Resumed` — the model and optimizer
state to start from, the round, the user-level ledger to continue (ε never starts again at
zero) and the rounds already logged — or refuses, naming what differs: another catalog
(unless this one only appends items: the table grows zero rows, ``grow_item_rows``),
another experiment (:func:`resume_identity`: width, seed, data selection, the item table),
or a model of other shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.data.catalog import Catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import ITEM_TABLE
from fedrec.common.privacy import PrivacyLedger
from fedrec.server.checkpoint import Checkpoint, grow_item_rows, read_checkpoint
from fedrec.server.runs import ROUNDS_LOG, read_rounds

__all__ = ["IDENTITY_DEFAULTS", "Resumed", "resume_from", "resume_identity"]

# resume-identity keys older checkpoints lack
IDENTITY_DEFAULTS: dict[str, Any] = {"cold-items": 0.0, "item-ids": "all"}


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run starts."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    round: int  # the checkpoint's round: the run continues with the next
    ledger: PrivacyLedger | None  # the user-level ledger, if the run had DP-FedAvg
    earlier: list[dict[str, Any]] = field(default_factory=list)  # rounds logged up to it
    grew_from: int = 0  # the item count of the catalog it was trained on, if that grew

    def provenance(self, source: str, catalog: Catalog) -> dict[str, Any]:
        """metrics.json's ``resumed`` entry."""
        out: dict[str, Any] = {"from": source, "round": self.round, "logged": len(self.earlier)}
        if self.grew_from:
            out["catalog_grew"] = {"from": self.grew_from, "to": catalog.num_items}
        return out


def resume_identity(config: FederationConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (written into it): the
    model's width, the seed of the split, candidates and initialization, and what selects
    the interactions (the catalog hash covers the items)."""
    identity: dict[str, Any] = {"dim": config.model.dim, "seed": config.data.seed}
    identity["threshold"] = config.data.threshold
    identity["cold-items"] = config.simulation.cold_items  # which items trained (absent: 0)
    identity["item-ids"] = config.model.item_ids  # the model's shape (absent: "all")
    if config.data.data == "synthetic":
        identity["synthetic-users"] = config.simulation.synthetic_users
        identity["synthetic-items"] = config.simulation.synthetic_items
    return identity


def resume_from(
    path: str, config: FederationConfig, catalog: Catalog, fresh: Mapping[str, np.ndarray]
) -> Resumed:
    """The checkpoint at ``path``, checked to continue this run (``fresh``: the model a new
    run would start from, for its shapes)."""
    checkpoint = read_checkpoint(Path(path))
    model, optimizer = checkpoint.model, checkpoint.optimizer
    grew_from = _earlier_version(config, catalog, checkpoint)
    if grew_from:  # new items appended to the catalog: they start from their features
        model, optimizer = grow_item_rows(model, optimizer, catalog.num_items)
    _check_continues(path, config, catalog, fresh, model, checkpoint.meta, grew=bool(grew_from))
    ledger = None
    if config.user_dp.enabled:
        if "user_level_ledger" not in checkpoint.meta:
            raise ValueError(
                f"checkpoint {path} has no user-level privacy ledger: it comes from a run"
                " without user-level DP and cannot be resumed with it"
            )
        ledger = PrivacyLedger.from_dict(checkpoint.meta["user_level_ledger"])
    return Resumed(
        model, optimizer, checkpoint.round, ledger, _earlier_rounds(Path(path), checkpoint.round),
        grew_from,
    )  # fmt: skip


def _earlier_rounds(resume: Path, start_round: int) -> list[dict[str, Any]]:
    """The resumed run's logged rounds up to its checkpoint (empty if it kept no log)."""
    folder = resume if resume.is_dir() else resume.parent
    if not (folder / ROUNDS_LOG).exists():
        return []
    return [r for r in read_rounds(folder) if r.get("round", 0) <= start_round]


def _earlier_version(config: FederationConfig, catalog: Catalog, checkpoint: Checkpoint) -> int:
    """The item count of the checkpoint's catalog if ``catalog`` grew from it by appending
    items (``Catalog.extends``: every earlier item keeps its row and features), else 0."""
    saved = checkpoint.meta.get("catalog_sha256")
    if not saved or saved == catalog.hash:
        return 0
    # the table's rows; a model without item ids records its catalog's size instead
    model = checkpoint.model
    rows = (
        int(model[ITEM_TABLE].shape[0])
        if ITEM_TABLE in model
        else int(checkpoint.meta.get("catalog_items", 0))
    )
    if rows < 1 or not catalog.extends(saved, rows):
        return 0
    if config.simulation.cold_items:
        raise ValueError(
            "cold-items draws its cold set over the catalog's size: a grown catalog would hold"
            " out other items, some of them trained; resume a cold-start run on its catalog"
        )
    return rows


def _check_continues(
    path: str,
    config: FederationConfig,
    catalog: Catalog,
    fresh: Mapping[str, np.ndarray],
    resumed: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    grew: bool = False,
) -> None:
    """The checkpoint (``meta``: its record) continues this run's model: same catalog (or,
    ``grew``, an earlier version of it), same experiment, same arrays and shapes."""
    saved = meta.get("catalog_sha256")
    if saved and saved != catalog.hash and not grew:
        why = (
            "its item rows would mean other items"
            if ITEM_TABLE in resumed
            else "its items' features would differ"
        )
        raise ValueError(
            f"checkpoint {path} was trained on catalog {saved[:12]}, this run's"
            f" catalog is {catalog.hash[:12]}: {why}; resume with the catalog the run started"
            " with, or with a version of it that only appends items"
        )
    identity = resume_identity(config)
    recorded = {**IDENTITY_DEFAULTS, **meta}  # a checkpoint from before a key was recorded
    changed = {
        k: (recorded[k], v) for k, v in identity.items() if k in recorded and recorded[k] != v
    }
    if changed:
        said = "; ".join(
            f"{k} {was} in the checkpoint, {now} now" for k, (was, now) in changed.items()
        )
        raise ValueError(
            f"checkpoint {path} comes from another experiment: {said}; resume with"
            " the settings the run started with"
        )
    want = {k: tuple(np.shape(v)) for k, v in fresh.items()}
    got = {k: tuple(np.shape(v)) for k, v in resumed.items()}
    if want != got:
        differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise ValueError(
            f"checkpoint {path} holds a model that does not fit dim {config.model.dim} over"
            f" this catalog ({catalog.num_items} items): {differ} differ"
        )
