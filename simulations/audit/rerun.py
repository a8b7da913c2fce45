"""The audit's extra training runs: the run's scenario again, on data the audit writes.

The canary audit adds users of its own and the membership attack leaves some users out, so
both train the run's scenario again (``rerun``: the simulation engine by default, as
``fedrec simulate``) on a copy of the run's interactions that the audit writes as a generic
CSV folder (:func:`write_data`): ``items.csv`` lists every catalog item, with its genres,
whoever rated it, so the model's shape does not depend on who was left out; the user
features are dropped (the added users have none). The rerun keeps every setting of the run
but one: SecAgg+ is off, because it changes what the server sees, not the released model
(the server unmasks the exact sum of the quantized updates), and it makes a round several
times slower; and a cohort size above the rerun's population (some users left out) is
lowered to it. :func:`train_again` returns the rerun's released model and its metrics.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.server.runs import CATALOG_FILE, FINAL_MODEL

__all__ = ["Rerun", "Retrained", "rerun_config", "train_again", "write_data"]

Rerun = Callable[[FederationConfig], dict[str, Any]]
Rating = tuple[str, str, int]  # (user id, item id, timestamp)


@dataclass(frozen=True)
class Retrained:
    """One extra training run: its released model (the final shared group) and metrics."""

    catalog: Catalog
    shared: dict[str, np.ndarray]
    metrics: dict[str, Any]
    seconds: float

    @property
    def _user_level(self) -> dict[str, Any]:
        return (self.metrics.get("privacy") or {}).get("user_level") or {}

    @property
    def claimed_epsilon(self) -> float | None:
        epsilon = self._user_level.get("epsilon")
        return float(epsilon) if epsilon is not None else None

    @property
    def delta(self) -> float | None:
        delta = self._user_level.get("delta")
        return float(delta) if delta else None


def write_data(
    data: Interactions,
    folder: Path,
    *,
    left_out: np.ndarray | None = None,
    extra_items: Sequence[str] = (),
    extra_ratings: Iterable[Rating] = (),
) -> None:
    """``folder/items.csv`` (every item of ``data`` and ``extra_items``) and
    ``folder/ratings.csv``: ``data``'s interactions but those of the users marked in
    ``left_out`` (a mask over ``data``'s users), then ``extra_ratings``."""
    folder.mkdir(parents=True, exist_ok=True)
    if left_out is not None and left_out.shape != (data.num_users,):
        raise ValueError(f"left_out must mask the {data.num_users} users, got {left_out.shape}")
    genres = [
        (j, name.split("=", 1)[1])
        for j, name in enumerate(data.item_feature_names)
        if name.startswith("genre=")
    ]
    with (folder / "items.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item", "title", "genres"])
        for i, item in enumerate(data.item_ids):
            listed = [g for j, g in genres if data.item_features[i, j] > 0]
            out.writerow([item, data.item_titles[i], "|".join(listed)])
        out.writerows([item, item, ""] for item in extra_items)
    kept = np.ones(len(data), bool) if left_out is None else ~left_out[data.user]
    with (folder / "ratings.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user", "item", "rating", "timestamp"])
        out.writerows(
            [data.user_ids[u], data.item_ids[i], 5, int(t)]
            for u, i, t in zip(data.user[kept], data.item[kept], data.timestamp[kept], strict=True)
        )
        out.writerows([user, item, 5, t] for user, item, t in extra_ratings)


def rerun_config(
    config: FederationConfig, folder: Path, users: int | None = None
) -> FederationConfig:
    """``config`` on the data in ``folder/data``, writing to ``folder/run``, SecAgg+ off;
    cohort sizes above the rerun's ``users`` (fewer than the run's when some are left out)
    are lowered to it."""
    cap = (lambda n: min(n, users)) if users is not None else (lambda n: n)
    return config.replace(
        clients_per_round=cap(config.rounds.clients_per_round),
        min_clients=cap(config.rounds.min_clients),
        eval_clients=cap(config.rounds.eval_clients),
        data=str(folder / "data"),
        threshold=0.0,
        out_dir=str(folder / "run"),
        catalog="",
        resume="",
        state_dir="",
        shard_dir="",
        secure_aggregation="off",
    )


def train_again(config: FederationConfig, rerun: Rerun, folder: Path, users: int) -> Retrained:
    """Run ``config``'s scenario on ``folder/data``, which holds ``users`` users (see
    :func:`rerun_config`)."""
    started = time.perf_counter()
    metrics = rerun(rerun_config(config, folder, users))
    seconds = time.perf_counter() - started
    catalog = load_catalog(folder / "run" / CATALOG_FILE)
    with np.load(folder / "run" / FINAL_MODEL) as saved:
        shared = {k: saved[k] for k in saved.files}
    return Retrained(catalog=catalog, shared=shared, metrics=metrics, seconds=seconds)
