"""The Flower ServerApp: coordinates rounds of the shared model and writes the run folder.

The server holds only the public catalog (``catalog = "PATH"``: item ids and features, the
user-feature schema, a content hash; ``fedrec catalog build``) and the shared group of the
seed model (item side, W_u, head). It never reads interactions or user features, and never
sees a user embedding, a user feature or an item id list: clients keep those and reply with
shared parameters and scalar metrics. Every round's model goes out with the catalog's hash,
and a device whose own catalog differs refuses it. What it writes into ``out-dir``: see
:mod:`fedrec.common.runs` (config.json, rounds.jsonl, checkpoint.npz every round,
metrics.json, model.npz and its inference bundle, bundle.npz, at the end).

The same :func:`run_federation` serves a deployment (``flwr run``: the grid is Flower's, the
cohort is drawn from the nodes connected when a round starts), the simulation engine (the
runner wraps the grid for the engine's in-memory link) and the in-process research grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedrec.common import keys
from fedrec.common.bundle import build_bundle, save_bundle
from fedrec.common.colr import factored_shapes
from fedrec.common.data.catalog import Catalog, load_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import initial_shared_state, shared_shapes
from fedrec.common.privacy import PrivacyLedger, check_accountant, global_norm
from fedrec.common.runs import (
    CONFIG_FILE,
    FINAL_MODEL,
    INFERENCE_BUNDLE,
    METRICS_FILE,
    ROUNDS_LOG,
    read_rounds,
    run_header,
    write_arrays,
    write_json,
)
from fedrec.common.secagg.grid import SecureAggregationGrid
from fedrec.common.secagg.primitives import MIN_SECURE_CLIENTS
from fedrec.server.checkpoint import grow_item_rows, load_checkpoint, load_checkpoint_meta
from fedrec.server.cohorts import connected_nodes
from fedrec.server.dp_fedavg import UserLevelDP
from fedrec.server.exchange import Exchange
from fedrec.server.factory import ServerRandomness, make_strategy, resume_identity
from fedrec.server.robust import ITEM_TABLE
from fedrec.server.summary import privacy_summary, secure_summary, summarize_rounds
from fedrec.server.validation import ReplyValidator

__all__ = ["app", "make_server_app", "run_federation"]

RoundCallback = Callable[[dict[str, Any]], None]
GridWrapper = Callable[[Grid], Grid]


def make_server_app(
    fixed_config: FederationConfig | None = None,
    on_round: RoundCallback | None = None,
    results: dict[str, Any] | None = None,
    wrap_grid: GridWrapper | None = None,
) -> ServerApp:
    """Build the ServerApp; ``fixed_config`` overrides ``context.run_config`` (simulation).

    ``results`` (if given) receives the final metrics dict: the ServerApp runs in a thread of
    the caller's process under the simulation engine, so the runner reads it from there.
    ``wrap_grid`` adapts Flower's grid to where it runs (the simulation engine's chunking).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = fixed_config or FederationConfig.from_mapping(context.run_config)
        metrics = run_federation(wrap_grid(grid) if wrap_grid else grid, config, on_round)
        if results is not None:
            results.update(metrics)

    return app


def run_federation(
    grid: Grid,
    config: FederationConfig,
    on_round: RoundCallback | None = None,
    randomness: ServerRandomness | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``config.num_rounds`` rounds (fewer if resuming) and write the run folder.

    ``randomness`` (research runs only, ``simulations/inprocess.py``): seeded server draws.
    None, as in every deployment: OS entropy, so no one who knows the run's config can
    regenerate the cohorts or the noise. ``provenance``: extra top-level entries of
    metrics.json (how a research run was made reproducible), written with it, once.
    """
    randomness = randomness or ServerRandomness.fresh()
    secure: SecureAggregationGrid | None = None
    if config.secure:  # every train fan-out becomes a SecAgg+ round (common/secagg/grid.py)
        secure = SecureAggregationGrid(grid, config.secagg_settings(), rng=randomness.graph)
        grid = secure
    run_dir = Path(config.out_dir) if config.out_dir else None
    catalog = _catalog(config)
    if config.tail_targets():
        raise ValueError(
            f'target-items = "{config.target_items}" is drawn from the data by the simulation'
            " runner; here name the items by id"
        )
    catalog.indices_of(config.target_item_ids())  # every target is in the catalog
    initial = ArrayRecord(
        initial_shared_state(catalog, config.dim, config.seed, item_ids=config.item_id_table)
    )
    if secure is not None:
        _check_secure_sizing(config, initial, secure)
    start_round, optimizer_state, grew_from = 0, dict[str, np.ndarray](), 0
    if config.resume:
        fresh = initial
        initial, optimizer_state, start_round = load_checkpoint(Path(config.resume))
        meta = load_checkpoint_meta(Path(config.resume))
        grew_from = _earlier_version(config, catalog, initial, meta)
        if grew_from:  # new items appended to the catalog: they start from their features
            initial, optimizer_state = grow_item_rows(initial, optimizer_state, catalog.num_items)
        _check_resumed_model(config, catalog, fresh, initial, meta, grew=bool(grew_from))
    remaining = config.num_rounds - start_round
    if remaining < 1:
        raise ValueError(
            f"checkpoint is at round {start_round}; num-rounds {config.num_rounds} leaves none"
        )
    wanted = max(config.min_clients, config.expected_nodes)
    num_nodes = len(connected_nodes(grid, wanted, config.round_timeout, what="run start"))
    user_dp, ledger, budget_stop = None, None, None
    if config.user_level_dp:  # the central stop: never start a round the budget cannot pay
        user_dp = UserLevelDP.from_config(config, num_nodes)
        ledger = _restored_ledger(config, user_dp)
        allowed = user_dp.rounds_within_budget(ledger, remaining)
        if allowed < 1:
            raise ValueError(
                f"user-level ε is already {ledger.epsilon(user_dp.delta):.4f} after"
                f" {ledger.steps} rounds: one more exceeds dp-target-epsilon"
                f" {config.dp_target_epsilon}"
            )
        if allowed < remaining:
            budget_stop = start_round + allowed
            remaining = allowed
    exchange = Exchange.of(
        config, shared_shapes(catalog, config.dim, item_ids=config.item_id_table)
    )
    strategy = make_strategy(
        config,
        randomness=randomness,
        num_rounds=remaining,
        round_offset=start_round,
        run_dir=run_dir,
        on_round=on_round,
        user_dp=user_dp,
        user_ledger=ledger,
        secure=secure,
        catalog_hash=catalog.hash,
        catalog_items=catalog.num_items,
        validator=_validator(config, catalog, initial),
        exchange=exchange,
    )
    strategy.step.load_state_dict(optimizer_state, list(initial.keys()))
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        header = {
            "job": "federation",
            "config": config.to_mapping(),
            "nodes": num_nodes,
            "strategy": repr(strategy),
            "catalog_sha256": catalog.hash,
            **run_header(),
        }
        write_json(run_dir / CONFIG_FILE, header)
    # every model the server sends names the catalog it is built on (client/mods.py)
    # and, with a compressed exchange, its form (server/exchange.py)
    form = exchange.config() if exchange is not None else {}
    train_config = ConfigRecord(
        {"proximal-mu": config.proximal_mu, keys.CATALOG_HASH: catalog.hash, **form}
    )
    evaluate_config = ConfigRecord({keys.CATALOG_HASH: catalog.hash, **form})
    started = time.perf_counter()
    if start_round == 0:
        strategy.evaluate_initial(grid, initial, evaluate_config, config.round_timeout)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=remaining,
        timeout=config.round_timeout,
        train_config=train_config,
        evaluate_config=evaluate_config,
    )
    earlier = _earlier_rounds(Path(config.resume), start_round) if config.resume else []
    metrics = summarize_rounds(earlier + strategy.records)  # a resumed run: all its rounds
    if config.resume:
        metrics["resumed"] = {"from": config.resume, "round": start_round, "logged": len(earlier)}
        if grew_from:
            metrics["resumed"]["catalog_grew"] = {"from": grew_from, "to": catalog.num_items}
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["nodes"] = num_nodes
    metrics["shared_parameters"] = int(sum(a.numpy().size for a in result.arrays.values()))
    metrics["privacy"] = privacy_summary(strategy.records, config, budget_stop)
    metrics["secure_aggregation"] = secure_summary(strategy.records, config)
    metrics.update(provenance or {})
    if run_dir is not None:
        final = {k: v.numpy() for k, v in result.arrays.items()}
        write_arrays(run_dir / FINAL_MODEL, final)
        last = max((int(r.get("round", 0)) for r in strategy.records), default=start_round)
        bundle = build_bundle(final, catalog.item_features, catalog.hash, last)
        save_bundle(bundle, run_dir / INFERENCE_BUNDLE)  # what a device ranks with, torch-free
        write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def _earlier_rounds(resume: Path, start_round: int) -> list[dict[str, Any]]:
    """The resumed run's logged rounds up to its checkpoint (empty if it kept no log)."""
    folder = resume if resume.is_dir() else resume.parent
    if not (folder / ROUNDS_LOG).exists():
        return []
    return [r for r in read_rounds(folder) if r.get("round", 0) <= start_round]


def _catalog(config: FederationConfig) -> Catalog:
    if not config.catalog:
        raise ValueError(
            "the server needs the published catalog: build it with `fedrec catalog build"
            " --data PATH|synthetic --out FILE` and set catalog = FILE (fedrec simulate builds"
            " one itself)"
        )
    return load_catalog(config.catalog)


def _validator(config: FederationConfig, catalog: Catalog, start: ArrayRecord) -> ReplyValidator:
    """The check of every reply (server/validation.py); the update-norm bound defaults to the
    norm of the model the run starts from."""
    bound = config.max_update_norm or global_norm({k: v.numpy() for k, v in start.items()})
    return ReplyValidator(
        shared_shapes(catalog, config.dim, item_ids=config.item_id_table),
        max_update_norm=bound,
        weigh_by_examples=config.client_weighting == "examples",
    )


def _check_secure_sizing(
    config: FederationConfig, initial: ArrayRecord, secure: SecureAggregationGrid
) -> None:
    """Fail now, not as failed or noise-only rounds: a compact round (upload-compression =
    int8) needs a quantization bit for the largest cohort likely to come, and under DP the
    device clips to C minus the rounding margin of that cohort's step."""
    m = config.clients_per_round or MIN_SECURE_CLIENTS
    cohort = max(MIN_SECURE_CLIENTS, m + math.ceil(4 * math.sqrt(m)))  # a Poisson cohort's top
    sizing = config.secagg_settings().for_round(cohort)  # raises for a compact round too large
    if not config.user_level_dp:
        return
    shapes = {k: tuple(a.shape) for k, a in initial.items()}
    if config.colr_rank:  # what the devices mask: the table's factor
        shapes = factored_shapes(shapes, config.colr_rank)
    length = sum(math.prod(s) for s in shapes.values()) + len(secure.metric_bounds)
    margin = sizing.rounding_norm(length)
    if config.dp_clip_norm <= margin:
        raise ValueError(
            f"dp-clip-norm {config.dp_clip_norm} is within the quantization error"
            f" {margin:.3g} of a {length}-coordinate update: raise"
            " secagg-quantization-bits or dp-clip-norm, or lower secagg-clip-range (a compact"
            " round, upload-compression = int8, has the bits its cohort leaves)"
        )


# resume-identity keys older checkpoints lack
IDENTITY_DEFAULTS: dict[str, Any] = {"cold-items": 0.0, "item-ids": "all"}


def _earlier_version(
    config: FederationConfig, catalog: Catalog, resumed: ArrayRecord, meta: dict[str, Any]
) -> int:
    """The item count of the checkpoint's catalog if ``catalog`` grew from it by appending
    items (``Catalog.extends``: every earlier item keeps its row and features), else 0."""
    saved = meta.get("catalog_sha256")
    if not saved or saved == catalog.hash:
        return 0
    # the table's rows; a model without item ids records its catalog's size instead
    rows = (
        int(resumed[ITEM_TABLE].numpy().shape[0])
        if ITEM_TABLE in resumed
        else int(meta.get("catalog_items", 0))
    )
    if rows < 1 or not catalog.extends(saved, rows):
        return 0
    if config.cold_items:
        raise ValueError(
            "cold-items draws its cold set over the catalog's size: a grown catalog would hold"
            " out other items, some of them trained; resume a cold-start run on its catalog"
        )
    return rows


def _check_resumed_model(
    config: FederationConfig,
    catalog: Catalog,
    fresh: ArrayRecord,
    resumed: ArrayRecord,
    meta: dict[str, Any],
    *,
    grew: bool = False,
) -> None:
    """The checkpoint (``meta``: its record) continues this run's model: same catalog (or,
    ``grew``, an earlier version of it), same arrays and shapes."""
    saved = meta.get("catalog_sha256")
    if saved and saved != catalog.hash and not grew:
        why = (
            "its item rows would mean other items"
            if ITEM_TABLE in resumed
            else "its items' features would differ"
        )
        raise ValueError(
            f"checkpoint {config.resume} was trained on catalog {saved[:12]}, this run's"
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
            f"checkpoint {config.resume} comes from another experiment: {said}; resume with"
            " the settings the run started with"
        )
    want = {k: tuple(v.shape) for k, v in fresh.items()}
    got = {k: tuple(v.shape) for k, v in resumed.items()}
    if want != got:
        differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise ValueError(
            f"checkpoint {config.resume} holds a model that does not fit dim {config.dim} over"
            f" this catalog ({catalog.num_items} items): {differ} differ"
        )


def _restored_ledger(config: FederationConfig, dp: UserLevelDP) -> PrivacyLedger:
    """A resumed run continues its ε from the checkpoint: it never starts again at zero."""
    if not config.resume:
        return PrivacyLedger(dp.accountant)
    meta = load_checkpoint_meta(Path(config.resume))
    if "user_level_ledger" not in meta:
        raise ValueError(
            f"checkpoint {config.resume} has no user-level privacy ledger: it comes from a run"
            " without user-level DP and cannot be resumed with it"
        )
    ledger = PrivacyLedger.from_dict(meta["user_level_ledger"])
    check_accountant(ledger, dp.accountant, f"checkpoint {config.resume}")
    return ledger


# Entry point for `flwr run` (settings from [tool.flwr.app.config] in pyproject.toml)
app = make_server_app()
