"""What ``metrics.json`` says about a run: its rounds, the test metrics at the best
validation round, bytes per client, the privacy ledgers and the secure-aggregation record."""

from __future__ import annotations

from typing import Any

from fedrec.common import keys
from fedrec.common.fedconfig import FederationConfig

__all__ = ["SELECTION", "privacy_summary", "secure_summary", "summarize_rounds", "traffic"]

SELECTION = keys.VAL_PREFIX + keys.HR  # the best round is picked on validation HR@10


def summarize_rounds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json content: rounds, the best-validation round's test metrics, bytes per
    client and round of training, and the run's whole :func:`traffic`."""
    evaluated = [r for r in records if "eval" in r and SELECTION in r["eval"]]
    final: dict[str, float] = {}
    best_round = None
    if evaluated:
        best = max(evaluated, key=lambda r: (r["eval"][SELECTION], r["round"]))
        best_round = best["round"]
        final = {k: best["eval"][k] for k in (keys.HR, keys.NDCG, keys.FULL_HR, keys.FULL_NDCG)}
        cold = [keys.COLD_PREFIX + r for r in keys.RATES]  # where the run holds out cold items
        final |= {k: best["eval"][k] for k in cold if k in best["eval"]}
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
        "traffic": traffic(records),
    }


def traffic(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Every byte of the run's payloads, by purpose: training (the cohorts' models and
    updates, SecAgg+'s four stages included) and evaluation (the model sent to each evaluated
    node, and their metric replies)."""
    train = {
        "down": sum(int(r.get("bytes_down_total", 0)) for r in records),
        "up": sum(int(r.get("bytes_up_total", 0)) for r in records),
    }
    evaluate = {
        "down": sum(int(r.get("eval_bytes_down_total", 0)) for r in records),
        "up": sum(int(r.get("eval_bytes_up_total", 0)) for r in records),
    }
    total = {k: train[k] + evaluate[k] for k in ("down", "up")}
    return {"train": train, "evaluate": evaluate, "total": total}


def privacy_summary(
    records: list[dict[str, Any]], config: FederationConfig, budget_stop: int | None
) -> dict[str, Any]:
    """metrics.json ``privacy``: the last round's ledgers, and why the run ended."""
    last: dict[str, Any] = next((r["privacy"] for r in reversed(records) if "privacy" in r), {})
    summary: dict[str, Any] = {
        "user_level": last.get("user_level"),
        "record_level": last.get("record_level"),
    }
    if config.user_dp.enabled:
        summary["stopped_by_budget"] = budget_stop is not None
        summary["stop_round"] = budget_stop
    return summary


def secure_summary(records: list[dict[str, Any]], config: FederationConfig) -> dict[str, Any]:
    """metrics.json ``secure_aggregation``: whether it was on, its parameters, its cost."""
    if not config.secure.enabled:
        return {"enabled": False}
    rounds = [r["secagg"] for r in records if "secagg" in r]
    ok = [r for r in rounds if r["status"] == "ok"]

    def mean(key: str) -> float | None:
        return float(sum(r[key] for r in ok) / len(ok)) if ok else None

    return {
        "enabled": True,
        "protocol": "SecAgg+ (Bell et al. 2020), semi-honest; fedrec.common.secagg",
        **config.secagg_settings().describe(),
        "rounds": len(rounds),
        "rounds_failed_closed": sum(r["status"].startswith("failed") for r in rounds),
        "rounds_skipped": sum(r["status"].startswith("skipped") for r in rounds),
        "mean_neighbours": mean("neighbours"),
        "mean_threshold": mean("threshold"),
        "dropouts": sum(sum(r["dropped"].values()) for r in rounds),
    }
