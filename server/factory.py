"""The strategy of a run, composed from named parts a reader can follow.

Every run is one of two compositions (printed in ``config.json`` under ``strategy``)::

    RoundRecorder(ServerStep(FedAdam))               no user-level DP
    RoundRecorder(DPFedAvg(ServerStep(FedAdam)))     user-level DP-FedAvg

either with ``NormBounding(...)`` right inside the recorder when ``norm-bound`` or
``row-norm-bound`` is set. Read from the outside in: the recorder picks each round's cohort
and records the round (``server/recorder.py``); norm bounding clips each update
(``server/robust.py``); DP-FedAvg clips, noises and averages the replies into one
(``server/dp_fedavg.py``); the server step applies Flower's optimizer to that average, with a
step-size schedule and weight decay (``server/optimizer.py``). ``FedAdam`` stands for the
configured Flower strategy: FedAvg, FedAvgM, FedAdam, FedYogi or FedProx. Secure aggregation
is not a layer of the strategy but of the grid it talks to
(``common/secagg/grid.py: SecureAggregationGrid``), so it composes with both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from fedrec.common.fedconfig import SERVER_LR_STRATEGIES, FederationConfig
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.secagg.grid import SecureAggregationGrid
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS
from fedrec.server.checkpoint import Checkpointer
from fedrec.server.cohorts import CohortSampler, EvaluationPanel, FractionCohort, UniformCohort
from fedrec.server.dp_fedavg import DPFedAvg, RecordLevelTally, UserLevelDP
from fedrec.server.exchange import Exchange
from fedrec.server.optimizer import ServerStep, flower_strategy, scheduled_lr
from fedrec.server.recorder import RoundPlan, RoundRecorder
from fedrec.server.robust import Bounds, NormBounding
from fedrec.server.validation import ReplyValidator

__all__ = ["ServerRandomness", "make_strategy", "resume_identity"]


@dataclass(frozen=True)
class ServerRandomness:
    """The server's random draws, as three independent streams, so that turning one feature
    on (SecAgg+, say) leaves the others' draws as they were."""

    cohorts: random.Random  # who trains and who is evaluated (no DP)
    noise: np.random.Generator  # DP-FedAvg's Poisson cohorts and its noise
    graph: np.random.Generator  # the SecAgg+ neighbour graph

    @classmethod
    def fresh(cls) -> ServerRandomness:
        """From OS entropy, as in every deployment: nobody who knows the run's config can
        regenerate the cohorts or the noise."""
        noise, graph = np.random.default_rng().spawn(2)
        return cls(random.Random(), noise, graph)

    @classmethod
    def seeded(cls, seed: int) -> ServerRandomness:
        """Reproducible draws (research runs only: predictable noise protects nobody)."""
        noise, graph = np.random.default_rng(seed).spawn(2)
        return cls(random.Random(seed), noise, graph)


def make_strategy(
    config: FederationConfig,
    *,
    randomness: ServerRandomness,
    num_rounds: int,
    round_offset: int = 0,
    run_dir: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    user_dp: UserLevelDP | None = None,
    user_ledger: PrivacyLedger | None = None,
    secure: SecureAggregationGrid | None = None,
    catalog_hash: str = "",
    catalog_items: int = 0,
    validator: ReplyValidator | None = None,
    exchange: Exchange | None = None,
) -> RoundRecorder:
    """The run's composition (see the module docstring)."""
    step = ServerStep(
        flower_strategy(config),
        step_size=_step_schedule(config),
        weight_decay=config.server_weight_decay,
    )
    aggregate: Strategy = step
    dp_layer: DPFedAvg | None = None
    train_cohorts: CohortSampler = (
        UniformCohort(config.clients_per_round, randomness.cohorts)
        if config.clients_per_round
        else FractionCohort(config.fraction_train, config.min_clients, randomness.cohorts)
    )
    if user_dp is not None:  # DP-FedAvg noises the average before the server step
        subspaces = exchange.subspaces if exchange is not None else None
        dp_layer = DPFedAvg(step, user_dp, user_ledger, randomness.noise, subspaces)
        aggregate, train_cohorts = dp_layer, dp_layer.cohorts  # the sampling ε assumes
    bounds = Bounds(norm=config.norm_bound, row_norm=config.row_norm_bound)
    if bounds:  # each update clipped before anything averages it
        aggregate = NormBounding(aggregate, bounds)
    eval_count = config.eval_clients or None  # None: every connected node
    return RoundRecorder(
        aggregate,
        plan=RoundPlan(
            num_rounds=num_rounds,
            eval_every=config.eval_every,
            round_offset=round_offset,
            # a secure round needs MIN_SECURE_CLIENTS: it would skip a smaller cohort
            min_clients=(
                max(config.min_clients, MIN_SECURE_CLIENTS) if config.secure else config.min_clients
            ),
            timeout=config.round_timeout,
        ),
        step=step,
        train_cohorts=train_cohorts,
        eval_cohorts=EvaluationPanel(eval_count, randomness.cohorts),
        run_dir=run_dir,
        on_round=on_round,
        checkpoint=(
            Checkpointer(
                run_dir,
                step,
                dp_layer.ledger if dp_layer else None,
                model={
                    "catalog_sha256": catalog_hash,
                    "catalog_items": catalog_items,  # what a grown catalog appends to
                    **resume_identity(config),
                },
            )
            if run_dir is not None
            else None
        ),
        user_dp=dp_layer,
        record_tally=(
            RecordLevelTally(config.local_dp_delta, config.local_epsilon_budget)
            if config.record_level_dp
            else None
        ),
        secure=secure,
        validator=validator,
        exchange=exchange,
    )


def resume_identity(config: FederationConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (written into it): the
    model's width, the seed of the split, candidates and initialization, and what selects
    the interactions (the catalog hash covers the items)."""
    identity: dict[str, Any] = {"dim": config.dim, "seed": config.seed}
    identity["threshold"] = config.threshold
    identity["cold-items"] = config.cold_items  # which items trained (absent: 0, see app.py)
    identity["item-ids"] = config.item_ids  # the model's shape (absent: "all")
    if config.data == "synthetic":
        identity["synthetic-users"] = config.synthetic_users
        identity["synthetic-items"] = config.synthetic_items
    return identity


def _step_schedule(config: FederationConfig) -> Callable[[int], float] | None:
    """The server step size by absolute round, over the run's whole ``num-rounds``."""
    if config.strategy not in SERVER_LR_STRATEGIES:
        return None
    base, schedule, total = config.server_lr, config.server_lr_schedule, config.num_rounds
    return lambda round_: scheduled_lr(base, schedule, round_, total)
