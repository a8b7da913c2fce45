"""The Flower ServerApp: coordinates rounds of the shared model and writes the run folder.

The server holds only the shared group of the seed model (item side, W_u, head). It never
sees a user embedding, a user feature or an item id list: clients keep those and reply with
shared parameters and scalar metrics. What it writes into ``out-dir``:
  config.json, metrics.json (per-round records, final metrics, bytes per client per round),
  checkpoint.npz (+ .json) after every round, model.npz (the final shared model).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedrec.common import keys
from fedrec.common.data.shard import initial_shared_state, load_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.runs import CONFIG_FILE, METRICS_FILE, run_header, write_json
from fedrec.common.secagg.grid import SecureAggregationGrid
from fedrec.server.dp_fedavg import UserLevelDP
from fedrec.server.grid import ChunkedGrid
from fedrec.server.strategy import load_checkpoint, load_checkpoint_meta, make_strategy

FINAL_MODEL = "model.npz"
SELECTION = keys.VAL_PREFIX + keys.HR  # the best round is picked on validation HR@10
ROUND_TIMEOUT_S = 3600.0

RoundCallback = Callable[[dict[str, Any]], None]


def make_server_app(
    fixed_config: FederationConfig | None = None,
    on_round: RoundCallback | None = None,
    results: dict[str, Any] | None = None,
) -> ServerApp:
    """Build the ServerApp; ``fixed_config`` overrides ``context.run_config`` (simulation).

    ``results`` (if given) receives the final metrics dict: the ServerApp runs in a thread of
    the caller's process under the simulation engine, so the runner reads it from there.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = fixed_config or FederationConfig.from_mapping(context.run_config)
        metrics = run_federation(grid, config, on_round)
        if results is not None:
            results.update(metrics)

    return app


def run_federation(
    grid: Grid,
    config: FederationConfig,
    on_round: RoundCallback | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Run ``config.num_rounds`` rounds (fewer if resuming) and write the run folder.

    ``rng`` (research runs only, ``simulations/inprocess.py``): the generator of the server's
    Poisson cohorts and DP noise, and (an independent stream, so that turning SecAgg+ on
    leaves the cohorts and noise as they were) of the SecAgg+ graph. None, as in every
    deployment: OS entropy, so no one who knows the run's config can regenerate the noise.
    """
    dp_rng, graph_rng = rng.spawn(2) if rng is not None else (None, None)
    grid = ChunkedGrid(grid)  # type: ignore[assignment]
    secure: SecureAggregationGrid | None = None
    if config.secure:  # every train fan-out becomes a SecAgg+ round (server/secagg.py)
        secure = SecureAggregationGrid(grid, config.secagg_settings(), rng=graph_rng)
        grid = secure  # type: ignore[assignment]
    run_dir = Path(config.out_dir) if config.out_dir else None
    catalog = load_catalog(config)
    initial = ArrayRecord(initial_shared_state(catalog, config.dim, config.seed))
    if secure is not None and config.user_level_dp:  # fail now, not as noise-only rounds
        length = sum(a.numpy().size for a in initial.values()) + len(secure.metric_bounds)
        margin = config.secagg_settings().for_round(3).rounding_norm(length)
        if config.dp_clip_norm <= margin:
            raise ValueError(
                f"dp-clip-norm {config.dp_clip_norm} is within the quantization error"
                f" {margin:.3g} of a {length}-coordinate update: raise"
                " secagg-quantization-bits or dp-clip-norm"
            )
    start_round, optimizer_state = 0, {}
    if config.resume:
        initial, optimizer_state, start_round = load_checkpoint(Path(config.resume))
    remaining = config.num_rounds - start_round
    if remaining < 1:
        raise ValueError(
            f"checkpoint is at round {start_round}; num-rounds {config.num_rounds} leaves none"
        )
    num_nodes = _wait_for_nodes(grid, max(config.min_clients, config.expected_nodes))
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
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            run_dir / CONFIG_FILE,
            {"job": "simulate", "config": config.to_mapping(), "nodes": num_nodes, **run_header()},
        )
    strategy = make_strategy(
        config,
        num_nodes=num_nodes,
        run_dir=run_dir,
        round_offset=start_round,
        num_rounds=remaining,
        on_round=on_round,
        user_dp=user_dp,
        user_ledger=ledger,
        secure_report=(lambda: secure.report) if secure is not None else None,
        dp_rng=dp_rng,
    )
    strategy.restore_optimizer_state(optimizer_state)
    started = time.perf_counter()
    if start_round == 0:
        strategy.evaluate_initial(grid, initial, ROUND_TIMEOUT_S)
    result = strategy.start(  # type: ignore[attr-defined]
        grid=grid,
        initial_arrays=initial,
        num_rounds=remaining,
        timeout=ROUND_TIMEOUT_S,
        train_config=ConfigRecord({"proximal-mu": config.proximal_mu}),
        evaluate_config=ConfigRecord(),
    )
    metrics = summarize_rounds(strategy.records)
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["nodes"] = num_nodes
    metrics["shared_parameters"] = int(sum(a.numpy().size for a in result.arrays.values()))
    metrics["privacy"] = privacy_summary(strategy.records, config, budget_stop)
    metrics["secure_aggregation"] = secure_summary(strategy.records, config)
    if run_dir is not None:
        np.savez(run_dir / FINAL_MODEL, **{k: v.numpy() for k, v in result.arrays.items()})
        write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def summarize_rounds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json content: rounds, the best-validation round's test metrics, bytes."""
    evaluated = [r for r in records if "eval" in r and SELECTION in r["eval"]]
    final: dict[str, float] = {}
    best_round = None
    if evaluated:
        best = max(evaluated, key=lambda r: (r["eval"][SELECTION], r["round"]))
        best_round = best["round"]
        final = {k: best["eval"][k] for k in (keys.HR, keys.NDCG, keys.FULL_HR, keys.FULL_NDCG)}
        final["users"] = best["eval"].get(keys.USERS, 0.0)
    down = [r["bytes_down_per_client"] for r in records if r.get("clients_sampled")]
    up = [r["bytes_up_per_client"] for r in records if r.get("clients_replied")]
    return {
        "rounds": records,
        "final": final,
        "final_split": "test",
        "best_round": best_round,
        "selection": f"federated {SELECTION}",
        "last": records[-1].get("eval", {}) if records else {},
        "bytes_per_client_round": {
            "down": float(sum(down) / len(down)) if down else 0.0,
            "up": float(sum(up) / len(up)) if up else 0.0,
        },
    }


def privacy_summary(
    records: list[dict[str, Any]], config: FederationConfig, budget_stop: int | None
) -> dict[str, Any]:
    """metrics.json ``privacy``: the last round's ledgers, and why the run ended."""
    last = next((r["privacy"] for r in reversed(records) if "privacy" in r), {})
    summary: dict[str, Any] = {
        "user_level": last.get("user_level"),
        "record_level": last.get("record_level"),
    }
    if config.user_level_dp:
        summary["stopped_by_budget"] = budget_stop is not None
        summary["stop_round"] = budget_stop
    return summary


def secure_summary(records: list[dict[str, Any]], config: FederationConfig) -> dict[str, Any]:
    """metrics.json ``secure_aggregation``: whether it was on, its parameters, its cost."""
    if not config.secure:
        return {"enabled": False}
    rounds = [r["secagg"] for r in records if "secagg" in r]
    ok = [r for r in rounds if r["status"] == "ok"]

    def mean(key: str) -> float | None:
        return float(sum(r[key] for r in ok) / len(ok)) if ok else None

    return {
        "enabled": True,
        "protocol": "SecAgg+ (Bell et al. 2020), semi-honest; server/secagg.py",
        **config.secagg_settings().describe(),
        "rounds": len(rounds),
        "rounds_failed_closed": sum(r["status"].startswith("failed") for r in rounds),
        "rounds_skipped": sum(r["status"].startswith("skipped") for r in rounds),
        "mean_neighbours": mean("neighbours"),
        "mean_threshold": mean("threshold"),
        "dropouts": sum(sum(r["dropped"].values()) for r in rounds),
    }


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
    if ledger.accountant != dp.accountant:
        raise ValueError(
            f"checkpoint {config.resume} accounts with {ledger.accountant!r}, the run asks for"
            f" {dp.accountant!r}: one run's ε must come from one accountant"
        )
    return ledger


def _wait_for_nodes(grid: Grid, minimum: int, timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        count = len(list(grid.get_node_ids()))
        if count >= minimum or time.monotonic() > deadline:
            if count < minimum:
                raise RuntimeError(f"only {count} nodes connected, {minimum} needed")
            return count
        time.sleep(0.5)


# Entry point for `flwr run` (settings from [tool.flwr.app.config] in pyproject.toml)
app = make_server_app()
