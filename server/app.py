"""The Flower ServerApp: composes a run's layers once, runs its rounds, writes the run folder.

The server holds only the public catalog (``catalog = "PATH"``: item ids and features, the
user-feature schema, a content hash; ``fedrec catalog build``) and the shared group of the
seed model (item side, W_u, head). It never reads interactions or user features, and never
sees a user embedding, a user feature or an item id list: clients keep those and reply with
shared parameters and scalar metrics. Every round's model goes out with the catalog's hash,
and a device whose own catalog differs refuses it. What it writes into ``out-dir``: see
:mod:`fedrec.server.runs` (config.json, rounds.jsonl, checkpoint.npz every round,
metrics.json, model.npz and its inference bundle, bundle.npz, at the end).

:func:`run_federation` composes the run (:func:`compose`: the aggregator, DP-FedAvg, the
server step, the evaluation, the recorder) and hands it to the round loop
(``server/rounds.py``). The same function serves a deployment (``flwr run``: the grid is
Flower's, the cohort is drawn from the nodes connected when a round starts), the simulation
engine (the runner wraps the grid for the engine's in-memory link) and the in-process
research grid.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from fedrec.common import keys
from fedrec.common.bundle import build_bundle, save_bundle
from fedrec.common.channel import Channel
from fedrec.common.data.catalog import Catalog, build_catalog, load_catalog, save_catalog
from fedrec.common.fedconfig import SERVER_LR_STRATEGIES, SYNTHETIC, FederationConfig
from fedrec.common.model import initial_shared_state, shared_shapes
from fedrec.common.privacy import check_accountant, global_norm
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS
from fedrec.server.aggregate import Aggregator
from fedrec.server.checkpoint import Checkpointer
from fedrec.server.cohorts import (
    CohortSampler,
    EvaluationPanel,
    FractionCohort,
    UniformCohort,
    connected_nodes,
)
from fedrec.server.dp_fedavg import DPFedAvg, RecordLevelTally, UserLevelDP
from fedrec.server.errors import RunError, report_in_one_line
from fedrec.server.evaluation import FederatedEvaluation
from fedrec.server.grid import deployed_grid
from fedrec.server.optimizer import WEIGHT_KEYS, ServerStep, scheduled_lr, server_optimizer
from fedrec.server.plain import PlainAggregation
from fedrec.server.recorder import RoundRecorder
from fedrec.server.resume import Resumed, resume_from, resume_identity
from fedrec.server.robust import Bounds
from fedrec.server.rounds import RoundPlan, Rounds
from fedrec.server.runs import (
    CATALOG_FILE,
    CONFIG_FILE,
    FINAL_MODEL,
    INFERENCE_BUNDLE,
    METRICS_FILE,
    run_header,
    write_arrays,
    write_json,
)
from fedrec.server.secagg import SecureAggregation, check_secure_sizing
from fedrec.server.summary import privacy_summary, secure_summary, summarize_rounds
from fedrec.server.validation import ReplyValidator

__all__ = ["ServerRandomness", "app", "compose", "make_server_app", "run_federation"]

RoundCallback = Callable[[dict[str, Any]], None]
GridWrapper = Callable[[Grid], Grid]


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


def make_server_app(
    fixed_config: FederationConfig | None = None,
    on_round: RoundCallback | None = None,
    results: dict[str, Any] | None = None,
    wrap_grid: GridWrapper | None = None,
    expected_nodes: int = 0,
) -> ServerApp:
    """Build the ServerApp; ``fixed_config`` overrides ``context.run_config`` (simulation).

    ``results`` (if given) receives the final metrics dict: the ServerApp runs in a thread of
    the caller's process under the simulation engine, so the runner reads it from there.
    ``wrap_grid`` adapts Flower's grid to where it runs (the simulation engine's chunking);
    ``expected_nodes``: wait for this many nodes before round 1 (a simulation: every user).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if fixed_config is not None:  # fedrec's own runner: it reports errors itself
            metrics = run_federation(
                wrap_grid(grid) if wrap_grid else grid, fixed_config, on_round,
                expected_nodes=expected_nodes,
            )  # fmt: skip
        else:
            metrics = _run_under_flower(grid, context, on_round)
        if results is not None:
            results.update(metrics)

    return app


def _run_under_flower(
    grid: Grid, context: Context, on_round: RoundCallback | None
) -> dict[str, Any]:
    """The ServerApp as ``flwr run`` starts it: the settings are the run config, parsed as a
    deployment's (a simulation setting refused, naming it) unless Flower's simulation
    runtime hands it its in-memory grid; an error in them is one line in Flower's log."""
    report_in_one_line()
    simulated = isinstance(grid, InMemoryGrid)
    try:
        config = FederationConfig.from_mapping(context.run_config, deployed=not simulated)
        if simulated:
            _check_simulated_population(config, len(list(grid.get_node_ids())))
        prompt = deployed_grid(grid)
        return run_federation(prompt, config, on_round, synthetic_catalog=simulated)
    except (ValueError, OSError, RuntimeError) as err:
        raise RunError(str(err)) from err


def _check_simulated_population(config: FederationConfig, nodes: int) -> None:
    """``flwr run`` on a simulation SuperLink: one SuperNode per synthetic user."""
    users = config.simulation.synthetic_users
    if config.data.data == SYNTHETIC and nodes != users:
        raise ValueError(
            f"data = synthetic has {users} users, one simulated node each, but this"
            f" federation has {nodes} SuperNodes: run `flwr run . --federation-config"
            f' "num-supernodes={users}"`, or set synthetic-users = {nodes}'
        )


def run_federation(
    grid: Grid,
    config: FederationConfig,
    on_round: RoundCallback | None = None,
    randomness: ServerRandomness | None = None,
    provenance: Mapping[str, Any] | None = None,
    *,
    expected_nodes: int = 0,
    synthetic_catalog: bool = False,
) -> dict[str, Any]:
    """Run ``config.num_rounds`` rounds (fewer if resuming) and write the run folder.

    ``randomness`` (research runs only, ``simulations/inprocess.py``): seeded server draws.
    None, as in every deployment: OS entropy, so no one who knows the run's config can
    regenerate the cohorts or the noise. ``provenance``: extra top-level entries of
    metrics.json (how a research run was made reproducible), written with it, once.
    ``synthetic_catalog``: a simulation of the synthetic data without a catalog set builds
    the generator's (``flwr run .`` with its defaults); a deployment never does: it needs
    the catalog its devices hold.
    """
    catalog = _catalog(config, synthetic=synthetic_catalog)
    _check_targets(config, catalog)
    fresh = {
        k: v.detach().cpu().numpy()
        for k, v in initial_shared_state(
            catalog, config.model.dim, config.data.seed, item_ids=config.model.item_id_table
        ).items()
    }
    resumed = (
        resume_from(config.outputs.resume, config, catalog, fresh)
        if config.outputs.resume
        else None
    )
    _check_before_waiting(config, catalog, resumed)  # fail now, not after the wait for nodes
    wanted = max(config.rounds.min_clients, expected_nodes)
    num_nodes = len(connected_nodes(grid, wanted, config.rounds.round_timeout, what="run start"))
    start = resumed.model if resumed is not None else fresh
    run = compose(grid, config, catalog, num_nodes, randomness or ServerRandomness.fresh(),
                  start=start, resumed=resumed, on_round=on_round)  # fmt: skip
    if run.dir is not None:
        run.dir.mkdir(parents=True, exist_ok=True)
        header = {
            "job": "federation",
            "config": config.to_mapping(),
            "nodes": num_nodes,
            "strategy": run.describe(),
            "catalog_sha256": catalog.hash,
            **run_header(),
        }
        write_json(run.dir / CONFIG_FILE, header)
    started = time.perf_counter()
    final = run.rounds.run({k: np.asarray(v) for k, v in start.items()})
    earlier = resumed.earlier if resumed is not None else []
    records = run.rounds.recorder.records
    metrics = summarize_rounds(earlier + records)  # a resumed run: all its rounds
    if resumed is not None:
        metrics["resumed"] = resumed.provenance(config.outputs.resume, catalog)
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["nodes"] = num_nodes
    metrics["shared_parameters"] = int(sum(v.size for v in final.values()))
    metrics["privacy"] = privacy_summary(records, config, run.budget_stop)
    metrics["secure_aggregation"] = secure_summary(records, config)
    metrics.update(provenance or {})
    if run.dir is not None:
        write_arrays(run.dir / FINAL_MODEL, final)
        last = max((int(r.get("round", 0)) for r in records), default=run.rounds.plan.first - 1)
        bundle = build_bundle(final, catalog.item_features, catalog.hash, last)
        save_bundle(bundle, run.dir / INFERENCE_BUNDLE)  # what a device ranks with, torch-free
        write_json(run.dir / METRICS_FILE, metrics)
    return metrics


@dataclass(frozen=True)
class ComposedRun:
    """A run's layers, composed: the round loop, and what its outputs need to say."""

    rounds: Rounds
    dir: Path | None
    budget_stop: int | None  # the round the ε budget ends the run after (None: num-rounds)

    def describe(self) -> str:
        """The composition, as config.json states it: aggregation, DP, the server step."""
        r = self.rounds
        parts = [repr(r.aggregator)]
        if r.dp is not None:
            parts.append("DPFedAvg")
        parts.append(repr(r.step))
        return " → ".join(parts)


def compose(
    grid: Grid,
    config: FederationConfig,
    catalog: Catalog,
    num_nodes: int,
    randomness: ServerRandomness,
    *,
    start: Mapping[str, np.ndarray],
    resumed: Resumed | None = None,
    on_round: RoundCallback | None = None,
) -> ComposedRun:
    """The run's layers over ``num_nodes`` connected nodes, for a run that starts from the
    model ``start`` (a fresh one, or ``resumed``'s; see the module docstring)."""
    _check_before_waiting(config, catalog, resumed)
    shapes = shared_shapes(catalog, config.model.dim, item_ids=config.model.item_id_table)
    start_round = resumed.round if resumed is not None else 0
    remaining = config.rounds.num_rounds - start_round
    dp, budget_stop = None, None
    if config.user_dp.enabled:  # the central stop: never start a round the budget cannot pay
        dp, budget_stop = _user_level_dp(config, num_nodes, randomness, resumed, remaining)
        if budget_stop is not None:
            remaining = budget_stop - start_round
    validator = _validator(config, shapes, start)
    aggregator: Aggregator
    if config.secure.enabled:
        aggregator = SecureAggregation(config.secagg_settings(), validator, rng=randomness.graph)
    else:
        aggregator = PlainAggregation(
            validator,
            weight_key=WEIGHT_KEYS[config.server.client_weighting],
            bounds=Bounds(norm=config.server.norm_bound, row_norm=config.server.row_norm_bound),
            clip_norm=config.user_dp.clip_norm if dp is not None else None,
        )
    step = ServerStep(
        server_optimizer(config),
        step_size=_step_schedule(config),
        weight_decay=config.server.weight_decay,
    )
    if resumed is not None:
        step.load_state_dict(resumed.optimizer)
    sampler: CohortSampler = (
        dp.cohorts  # the sampling ε assumes
        if dp is not None
        else UniformCohort(config.rounds.clients_per_round, randomness.cohorts)
        if config.rounds.clients_per_round
        else FractionCohort(
            config.rounds.fraction_train, config.rounds.min_clients, randomness.cohorts
        )
    )
    run_dir = Path(config.outputs.out_dir) if config.outputs.out_dir else None
    last = start_round + remaining
    rounds = Rounds(
        grid=grid,
        plan=RoundPlan(
            first=start_round + 1,
            last=last,
            # a secure round needs MIN_SECURE_CLIENTS: it would skip a smaller cohort
            min_clients=max(
                config.rounds.min_clients, MIN_SECURE_CLIENTS if config.secure.enabled else 0
            ),
            timeout=config.rounds.round_timeout,
        ),
        sampler=sampler,
        aggregator=aggregator,
        step=step,
        evaluation=FederatedEvaluation(
            EvaluationPanel(config.rounds.eval_clients or None, randomness.cohorts),
            validator,
            every=config.rounds.eval_every,
            last_round=last,
        ),
        recorder=RoundRecorder(run_dir, on_round),
        channel_for=_channels(config, shapes),
        train_config={"proximal-mu": config.local.proximal_mu, keys.CATALOG_HASH: catalog.hash},
        evaluate_config={keys.CATALOG_HASH: catalog.hash},
        dp=dp,
        tally=(
            RecordLevelTally(config.record_dp.delta, config.record_dp.epsilon_budget)
            if config.record_dp.enabled
            else None
        ),
        checkpointer=(
            Checkpointer(
                run_dir,
                model={
                    "catalog_sha256": catalog.hash,
                    "catalog_items": catalog.num_items,  # what a grown catalog appends to
                    **resume_identity(config),
                },
            )
            if run_dir is not None
            else None
        ),
    )
    return ComposedRun(rounds, run_dir, budget_stop)


def _user_level_dp(
    config: FederationConfig,
    num_nodes: int,
    randomness: ServerRandomness,
    resumed: Resumed | None,
    remaining: int,
) -> tuple[DPFedAvg, int | None]:
    """DP-FedAvg over ``num_nodes``, its ledger continued from the checkpoint, and the
    round the budget stops the run after (``None``: it lasts the run)."""
    user_dp = UserLevelDP.from_config(config, num_nodes)
    ledger = resumed.ledger if resumed is not None else None
    if ledger is not None:
        check_accountant(ledger, user_dp.accountant, f"checkpoint {config.outputs.resume}")
    dp = DPFedAvg(user_dp, ledger, randomness.noise)
    allowed = user_dp.rounds_within_budget(dp.ledger, remaining)
    if allowed < 1:
        raise ValueError(
            f"user-level ε is already {dp.ledger.epsilon(user_dp.delta):.4f} after"
            f" {dp.ledger.steps} rounds: one more exceeds dp-target-epsilon"
            f" {config.user_dp.target_epsilon}"
        )
    start_round = resumed.round if resumed is not None else 0
    return dp, (start_round + allowed if allowed < remaining else None)


def _channels(
    config: FederationConfig, shapes: Mapping[str, tuple[int, ...]]
) -> Callable[[int], Channel]:
    """Each round's channel: the run's compressions, and a fresh basis per round for a low
    rank; float32 weights both ways when nothing is encoded."""
    down, up, rank, seed = (
        config.exchange.download,
        config.exchange.upload,
        config.exchange.colr_rank,
        config.data.seed,
    )

    def channel(server_round: int) -> Channel:
        return Channel.for_round(shapes, down, up, rank=rank, seed=seed, server_round=server_round)

    return channel


def _catalog(config: FederationConfig, *, synthetic: bool = False) -> Catalog:
    """The published catalog the run is built on. Without one, in a simulation of the
    embedded synthetic data (``synthetic``), the generator's own (``flwr run .`` with its
    defaults: the generator is public, no user's data), written to the run folder as a
    simulation writes its catalog."""
    if config.data.catalog:
        return load_catalog(config.data.catalog)
    if not synthetic or config.data.data != SYNTHETIC:
        raise ValueError(
            "the server needs the published catalog: build it with `fedrec catalog build"
            " --data PATH|synthetic --out FILE` and set catalog = FILE (fedrec simulate builds"
            " one itself)"
        )
    catalog = build_catalog(
        SYNTHETIC, threshold=config.data.threshold, synthetic=config.synthetic()
    )
    if config.outputs.out_dir:
        save_catalog(catalog, Path(config.outputs.out_dir) / CATALOG_FILE)
    return catalog


def _check_targets(config: FederationConfig, catalog: Catalog) -> None:
    """Target items (exposure) are named by id here; ``tail:N`` is drawn from the data, by
    the simulation runner only. Every named target is in the catalog."""
    if config.simulation.tail_targets():
        raise ValueError(
            f'target-items = "{config.simulation.target_items}" is drawn from the data by the'
            " simulation runner (fedrec simulate); here name the items by id"
        )
    catalog.indices_of(config.simulation.target_item_ids())  # refuses an id not listed


def _check_before_waiting(
    config: FederationConfig, catalog: Catalog, resumed: Resumed | None
) -> None:
    """What the settings alone decide, checked before the wait for nodes: a resumed run
    with no round left, and a secure round that cannot be sized."""
    start_round = resumed.round if resumed is not None else 0
    if config.rounds.num_rounds - start_round < 1:
        raise ValueError(
            f"checkpoint is at round {start_round}; num-rounds {config.rounds.num_rounds}"
            " leaves none"
        )
    if config.secure.enabled:
        shapes = shared_shapes(catalog, config.model.dim, item_ids=config.model.item_id_table)
        check_secure_sizing(config, shapes)


def _validator(
    config: FederationConfig, shapes: Mapping[str, tuple[int, ...]], start: Mapping[str, Any]
) -> ReplyValidator:
    """The check of every reply (server/validation.py); the update-norm bound defaults to the
    norm of the model the run starts from."""
    bound = config.server.max_update_norm or global_norm(
        {k: np.asarray(v) for k, v in start.items()}
    )
    return ReplyValidator(
        shapes,
        max_update_norm=bound,
        weigh_by_examples=config.server.client_weighting == "examples",
    )


def _step_schedule(config: FederationConfig) -> Callable[[int], float] | None:
    """The server step size by absolute round, over the run's whole ``num-rounds``."""
    if config.server.strategy not in SERVER_LR_STRATEGIES:
        return None
    base, schedule, total = config.server.lr, config.server.lr_schedule, config.rounds.num_rounds
    return lambda round_: scheduled_lr(base, schedule, round_, total)


# Entry point for `flwr run` (settings from [tool.flwr.app.config] in pyproject.toml)
app = make_server_app()
