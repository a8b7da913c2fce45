"""``fedrec audit report RUN_DIR``: the privacy audit of one run (audit.json, report.html).

:func:`audit_run` reads the run folder (config.json, rounds.jsonl, metrics.json, the
checkpoint, and ``deployment/deployment.json`` for a deployed run), recomputes the ε ledger
(``ledger.py``), merges the server's record of every message it received (``evidence.py``),
runs the attacks asked for (``interaction.py``: it needs the run's data, ``--data`` when the
path in config.json is not readable here) and states each protection with its evidence
(``protections.py``). :func:`write_report` writes the JSON (schema :data:`SCHEMA`) and one
self-contained HTML file: inline CSS and SVG figures, no script, nothing fetched, printable.

``violations`` lists what contradicts a claim (an ε that does not recompute, a private key
received, a masked upload an attack reads); the command exits 1 when it is not empty.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment

from fedrec.common.data.catalog import load_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import PRIVATE_KEYS, shared_shapes
from fedrec.server.runs import CATALOG_FILE, CHECKPOINT, METRICS_FILE, ROUNDS_LOG, read_rounds
from fedrec.simulations.audit.at_rest import inspect_folder, inspect_key_file
from fedrec.simulations.audit.attribute import attribute_inference
from fedrec.simulations.audit.canary import canary_audit
from fedrec.simulations.audit.evidence import merge_received
from fedrec.simulations.audit.interaction import (
    Observation,
    attack_sums,
    attack_uploads,
    observe_uploads,
)
from fedrec.simulations.audit.ledger import recompute_user_level
from fedrec.simulations.audit.membership import VIEWS, membership_audit
from fedrec.simulations.audit.protections import CHANCE_AUC, NOT_COVERED, protections
from fedrec.simulations.audit.rerun import Rerun

__all__ = ["ATTACKS", "SCHEMA", "applicable_attacks", "audit_run", "write_report"]

SCHEMA = "fedrec-audit/1"
NAMES = {
    "interaction": "interaction inference by the server",
    "attribute": "attribute inference by the server",
    "membership": "membership inference against the released model",
    "canary": "the canary audit (ε lower bound)",
}
ATTACKS = ("interaction", "attribute", "membership", "canary")


def _read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / ROUNDS_LOG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a fedrec run folder")
    return read_rounds(run_dir)


def _data_handling(data: str) -> dict[str, Any] | None:
    path = Path(data) / "data-handling.json" if data not in ("synthetic", "") else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def applicable_attacks(config: FederationConfig, attacks: Sequence[str] | None) -> tuple[str, ...]:
    """The attacks to run on ``config``'s run: those named, or (None) every one that applies
    (the canary audit scores item-table rows: not on a model without item ids, where naming
    it is refused before any attack's work)."""
    if attacks is None:
        return tuple(a for a in ATTACKS if config.model.item_id_table or a != "canary")
    if "canary" in attacks and not config.model.item_id_table:
        raise ValueError(
            'the canary audit scores item-table rows and this run has item-ids = "none":'
            " audit it with --attacks interaction,attribute,membership"
        )
    return tuple(attacks)


def audit_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    attacks: Sequence[str] | None = None,
    targets: int = 100,
    seed: int = 0,
    canaries: int = 200,
    canary_items: int = 20,
    members: int = 200,
    shadows: int = 2,
    rerun: Rerun | None = None,
) -> dict[str, Any]:
    """The audit document of ``run_dir`` (see the module docstring). ``rerun`` runs the
    extra training runs of the membership attack (``shadows + 1`` runs, ``members``
    candidates) and of the canary audit (one run; default: the simulation engine, as
    ``fedrec simulate``). ``attacks`` None: every attack that applies to the run (the
    canary audit scores item-table rows, so not on a model without item ids)."""
    started = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    unknown = sorted(set(attacks or ()) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}: choose from {ATTACKS} (or none)")
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir / 'config.json'} not found: not a fedrec run folder")
    described = json.loads((run_dir / "config.json").read_text())
    config = FederationConfig.from_mapping(described["config"], recorded=True)
    if data is not None:
        config = config.replace(data=data)
    attacks = applicable_attacks(config, attacks)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    records = _read_rounds(run_dir)
    local = run_dir / CATALOG_FILE
    catalog = load_catalog(local if local.exists() else config.data.catalog)
    population = int(described.get("nodes") or 0)
    ledger = recompute_user_level(records, population)
    evidence = merge_received(
        records, shared_shapes(catalog, config.model.dim, item_ids=config.model.item_id_table)
    )
    deployment_file = run_dir / "deployment" / "deployment.json"
    deployment = json.loads(deployment_file.read_text()) if deployment_file.exists() else None
    handling = _data_handling(config.data.data)
    at_rest = _at_rest(config)
    results: dict[str, Any] = {}
    replayed = set(attacks) & {"interaction", "attribute"}
    observed = _observe(config, run_dir, targets, seed) if replayed else {}
    if "interaction" in attacks:
        z = ledger.rounds[-1].z if ledger.rounds else 0.0
        results["interaction"] = _interaction(config, records, observed, z, seed)
    if "attribute" in attacks:
        results["attribute"] = {
            view: attribute_inference(o, catalog.user_schema, o.features or {})
            for view, o in observed.items()
        }
    if "membership" in attacks:
        membership = membership_audit(
            config, rerun or _engine, targets=members, shadows=shadows, seed=seed
        )
        results["membership"] = membership.to_dict()
    if "canary" in attacks:
        found = canary_audit(
            config, rerun or _engine, canaries=canaries, items=canary_items, seed=seed
        )
        results["canary"] = found.to_dict()
    seeded = "reproducible" in metrics
    summary = protections(
        config,
        ledger=ledger,
        evidence=evidence,
        attacks=results,
        data_handling=handling,
        deployment=deployment,
        seeded=seeded,
        at_rest=at_rest,
    )
    violations = [f"ε: round {r.round} recorded {r.recorded}, recomputed {r.recomputed}"
                  for r in ledger.disagreements]  # fmt: skip
    violations += [f for f in evidence.findings if evidence.rounds]
    storage = _storage(run_dir)
    violations += [
        f"the checkpoint holds a private array: {k}" for k in storage["checkpoint_private_arrays"]
    ]
    if ledger.delta_too_large:
        violations.append(f"δ = {ledger.delta:g} ≥ 1/N = {1 / ledger.population:.3g}")
    if results.get("canary", {}).get("violates"):
        c = results["canary"]
        violations.append(
            f"the canary audit's ε lower bound {c['epsilon_lower_bound']:.3f} exceeds the"
            f" claimed ε {c['claimed_epsilon']:.3f}"
        )
    masked = results.get("interaction", {}).get("masked-upload")
    if masked and masked["auc"]["value"] > CHANCE_AUC:
        violations.append(f"masked uploads are readable: AUC {masked['auc']['value']:.3f}")
    return {
        "schema": SCHEMA,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": {
            "dir": str(run_dir),
            "job": described.get("job"),
            "strategy": described.get("strategy"),
            "nodes": population,
            "rounds": len([r for r in records if r.get("round", 0) > 0]),
            "catalog_sha256": catalog.hash,
            "final": metrics.get("final", {}),
            "seeded": seeded,
            "deployed": deployment is not None,
            "config": described["config"],
        },
        "summary": [p.to_dict() for p in summary],
        "not_covered": list(NOT_COVERED),
        "ledger": ledger.to_dict(),
        "data_handling": handling,
        "storage": storage,
        "at_rest": at_rest,
        "evidence": evidence.to_dict(),
        "attacks": results,
        "not_run": [NAMES[a] for a in ATTACKS if a not in attacks],
        "record_of_processing": _record_of_processing(config, catalog.user_schema.names, summary),
        "violations": violations,
        "audit_seconds": time.perf_counter() - started,
    }


def _observe(
    config: FederationConfig, run_dir: Path, targets: int, seed: int
) -> dict[str, Observation]:
    """The observed round: plain uploads, and masked ones when the run had SecAgg+."""
    observed = {"upload": observe_uploads(config, run_dir, targets, seed)}
    if config.secure.enabled:
        observed["masked-upload"] = observe_uploads(config, run_dir, targets, seed, secure=True)
    return observed


def _interaction(
    config: FederationConfig,
    records: Sequence[dict[str, Any]],
    observed: dict[str, Observation],
    noise_multiplier: float,
    seed: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    plain = observed["upload"]
    sampled = [r["clients_sampled"] for r in records if r.get("round", 0) > 0]
    typical = round(float(np.mean(sampled))) if sampled else config.rounds.clients_per_round
    cohort = max(2, min(typical, len(plain.deltas)))  # the run's mean train cohort
    clip = config.user_dp.clip_norm
    found = [attack_uploads(plain, clip_norm=clip, seed=seed)]
    if len(plain.deltas) >= 2:  # a sum needs two devices
        found += attack_sums(
            plain, cohort=cohort, clip_norm=clip, noise_multiplier=noise_multiplier, seed=seed
        )
    if "masked-upload" in observed:
        found.append(attack_uploads(observed["masked-upload"]))
    out: dict[str, Any] = {a.view: a.to_dict() for a in found}
    out["observed_round"] = plain.round
    out["seconds"] = time.perf_counter() - started
    return out


def _engine(config: FederationConfig) -> dict[str, Any]:
    from fedrec.simulations.runner import simulate

    return simulate(config)


def _at_rest(config: FederationConfig) -> dict[str, Any] | None:
    """The run's sealed folders and key file, read without the key (``at_rest.py``)."""
    folders = [f for f in (config.storage.shard_dir, config.storage.state_dir) if f]
    if not folders:
        return None
    key_file = (
        inspect_key_file(config.storage.key_file, folders) if config.storage.key_file else None
    )
    return {
        "folders": [inspect_folder(f).to_dict() for f in folders],
        "key_file": key_file.to_dict() if key_file else None,
    }


def _storage(run_dir: Path) -> dict[str, Any]:
    checkpoint = run_dir / CHECKPOINT
    arrays = {}
    if checkpoint.exists():
        with np.load(checkpoint) as saved:
            arrays = {k: list(saved[k].shape) for k in saved.files}
    private = sorted(k for k in arrays if any(p in k for p in PRIVATE_KEYS))
    return {
        "run_folder": sorted(p.name for p in run_dir.iterdir()),
        "checkpoint_arrays": arrays,
        "checkpoint_private_arrays": private,  # must be empty: no user row on the server
        "retention": "kept until the operator deletes the run folder (controller: set a period)",
    }


CONTROLLER = "(controller to fill)"


def _record_of_processing(
    config: FederationConfig, user_features: Sequence[str], summary: Sequence[Any]
) -> list[dict[str, str]]:
    """GDPR Art. 30(1) fields: what the run can fill, and what the controller must."""
    measures = "; ".join(f"{p.name}: {p.status}" for p in summary)
    return [
        {"field": "Name and contact of the controller (Art. 30(1)(a))", "value": CONTROLLER},
        {"field": "Purposes of the processing (b)",
         "value": "training a recommendation model on devices; recommendations computed on"
                  " each device"},
        {"field": "Categories of data subjects (c)", "value": "users of the devices in the run"},
        {"field": "Categories of personal data (c)",
         "value": "interactions (item, time) and user features "
                  f"({', '.join(user_features) or 'none'}), kept on the device; model updates"
                  " sent to the server"},
        {"field": "Recipients (d)", "value": "the federation server's operator" + (
            " (sees only sums: SecAgg+)" if config.secure.enabled
            else " (sees each device's update)")},
        {"field": "Transfers to third countries (e)", "value": CONTROLLER},
        {"field": "Time limits for erasure (f)",
         "value": "on the device: until `fedrec client erase`; on the server: " + CONTROLLER},
        {"field": "Technical and organisational security measures (g)", "value": measures},
    ]  # fmt: skip


# --- the HTML report --------------------------------------------------------------------------


def _epsilon_figure(ledger: dict[str, Any]) -> str:
    from fedrec.server.plots import plt, svg_of

    figure, axis = plt.subplots(figsize=(6, 3))
    rounds = ledger["rounds"]
    axis.plot([r["round"] for r in rounds], [r["recomputed"] for r in rounds], label="recomputed")
    axis.plot([r["round"] for r in rounds], [r["recorded"] for r in rounds], "--", label="run")
    if ledger.get("target_epsilon"):
        axis.axhline(ledger["target_epsilon"], color="grey", lw=0.8, label="budget")
    axis.set(xlabel="round", ylabel=f"ε (δ = {ledger['delta']:g})")
    axis.legend()
    return svg_of(figure)


def _record_level_figure(summary: dict[str, Any]) -> str:
    """The devices' record-level ε as a distribution: the fraction of devices at or under ε."""
    from fedrec.server.plots import plt, svg_of

    deciles = summary.get("epsilon_deciles") or []
    if not deciles:
        return ""
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(deciles, np.linspace(0, 1, len(deciles)), marker=".", label="devices")
    if summary.get("budget"):
        axis.axvline(summary["budget"], color="grey", lw=0.8, label="budget")
    axis.set(xlabel=f"record-level ε (δ = {summary['delta']:g})", ylabel="fraction of devices ≤ ε")
    axis.legend()
    return svg_of(figure)


def _roc_figure(attacks: dict[str, Any]) -> str:
    from fedrec.server.plots import plt, svg_of

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    floor = 1e-4
    for view, result in attacks.items():
        if not isinstance(result, dict) or "roc" not in result:
            continue
        fpr = np.maximum(result["roc"]["fpr"], floor)
        tpr = np.maximum(result["roc"]["tpr"], floor)
        axis.plot(fpr, tpr, label=f"{view} (AUC {result['auc']['value']:.3f})")
    axis.plot([floor, 1], [floor, 1], color="grey", lw=0.8, ls=":", label="chance")
    axis.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate")
    axis.legend(fontsize=8)
    return svg_of(figure)


def write_report(audit: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """``out/audit.json`` and ``out/report.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "audit.json"
    json_path.write_text(json.dumps(audit, indent=2, default=str) + "\n")
    figures = {
        "epsilon": _epsilon_figure(audit["ledger"]) if audit["ledger"]["rounds"] else "",
        "record_level": _record_level_figure(audit["ledger"].get("record_level") or {}),
        "roc": _roc_figure(audit["attacks"].get("interaction", {})),
        "membership_roc": _roc_figure(
            {v: r for v, r in audit["attacks"]["membership"].items() if v in VIEWS}
        )
        if "membership" in audit["attacks"]
        else "",
    }
    template = (resources.files(__package__) / "report.html").read_text()
    html = Environment(autoescape=True).from_string(template).render(a=audit, figures=figures)
    html_path = out / "report.html"
    html_path.write_text(html)
    return json_path, html_path
