"""The report's summary: each protection a run could have, whether it had it, and the
evidence — a status of ``green`` (on, and the evidence holds), ``amber`` (on, but part of
it cannot be checked from here), ``red`` (off, or the evidence contradicts it) or ``n/a``.
Never green without evidence: a protection that is on but whose evidence is missing is amber.

The claims are docs/privacy.md's; :data:`NOT_COVERED` is that page's list of what no
configuration protects, in one line each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.evidence import MessageEvidence
from fedrec.simulations.audit.ledger import LedgerCheck

__all__ = ["ATTRIBUTE_ALPHA", "CHANCE_AUC", "NOT_COVERED", "Protection", "protections"]

CHANCE_AUC = 0.55  # an attack AUC at or under this is "near chance" for the summary
ATTRIBUTE_ALPHA = 1e-3  # an attribute attack beating the majority class at this p-value: a leak

NOT_COVERED = (
    "Without SecAgg+, a device's update gives its user features away: the user tower's update"
    " is the features scaled (the attribute attack reads them exactly).",
    "Evaluation replies (per-user hit and NDCG) reach the server in the clear; so do the"
    " scalar train metrics unless SecAgg+ is on.",
    "Without SecAgg+, user-level DP trusts the server with each device's clipped update: it"
    " protects the released models, not the uploads.",
    "Under SecAgg+ + DP the server adds the noise, so it sees the exact sum of the cohort's"
    " clipped updates (no distributed noise).",
    "SecAgg+ is the semi-honest protocol: keys are not signed, dropout lists not"
    " cross-checked; which devices took part, and when, is visible.",
    "Record-level ε is per training example; user features enter every example and are not"
    " protected at the record level.",
    "DP noise comes from NumPy generators, not a cryptographic generator; a run seeded with"
    " --server-seed makes no privacy claim at all.",
    "k-anonymity covers the demographic columns only; a rating history is itself a fingerprint.",
    "In a deployment, Flower 1.42's Control API is unauthenticated on the devices' port; keys"
    " are files protected by their mode.",
)


@dataclass(frozen=True)
class Protection:
    name: str
    status: str  # green | amber | red | n/a
    guarantee: str  # what it guarantees, one sentence
    evidence: str  # what the audit checked, or why it could not

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def protections(
    config: FederationConfig,
    *,
    ledger: LedgerCheck,
    evidence: MessageEvidence,
    attacks: Mapping[str, Mapping[str, Any]],
    data_handling: Mapping[str, Any] | None,
    deployment: Mapping[str, Any] | None,
    seeded: bool,
    at_rest: Mapping[str, Any] | None = None,
) -> list[Protection]:
    """The summary rows, in the order of the report (see the module docstring)."""
    rows = [_private_state(evidence), _features(config, attacks.get("attribute"))]
    rows.append(
        _user_level(config, ledger, seeded, attacks.get("canary"), attacks.get("membership"))
    )
    rows.append(_record_level(config, ledger))
    rows.append(_secure(config, attacks))
    rows.append(_pseudonymized(data_handling))
    rows.append(_at_rest(config, deployment, at_rest))
    rows.append(_transport(deployment))
    return rows


def _private_state(evidence: MessageEvidence) -> Protection:
    guarantee = (
        "Raw interactions, the user embedding and user features never leave the device; replies"
        " carry only the shared arrays and scalars."
    )
    if evidence.holds:
        kinds = ", ".join(sorted(evidence.received))
        return Protection(
            "Private state stays on the device",
            "green",
            guarantee,
            f"every key the server received in {evidence.rounds} rounds ({kinds}) is a shared"
            " array at its shape or a scalar",
        )
    return Protection(
        "Private state stays on the device", "red", guarantee, "; ".join(evidence.findings)
    )


def _features(config: FederationConfig, found: Mapping[str, Any] | None) -> Protection:
    name = "User features not inferable from what the server receives"
    guarantee = "The server cannot tell a device's attributes from the messages it receives."
    if found is None:
        return Protection(name, "amber", guarantee, "the attribute attack was not run")
    view = "masked-upload" if config.secure.enabled else "upload"
    scores = found.get(view, {})
    if not scores:
        return Protection(name, "n/a", guarantee, "the run has no user features")
    if any(s["kind"] == "numeric" and s.get("mean_abs_error") is None for s in scores.values()):
        return Protection(
            name,
            "amber",
            guarantee,
            "a numeric attribute could not be estimated (no one-hot scale)",
        )
    read = []
    for attribute, s in scores.items():
        if s["kind"] == "categorical" and s["accuracy"] is not None:
            if s["p_value"] < ATTRIBUTE_ALPHA:
                read.append(f"{attribute} {s['accuracy']:.0%} (baseline {s['baseline']:.0%})")
        elif s["kind"] == "numeric" and s["mean_abs_error"] < s["baseline"] / 2:
            read.append(
                f"{attribute} to ±{s['mean_abs_error']:.2g} (baseline ±{s['baseline']:.2g})"
            )
    where = "each masked upload" if config.secure.enabled else "each device's update"
    if read:
        return Protection(
            name,
            "red",
            guarantee,
            f"read from {where}: {'; '.join(read)} — the user tower's update is the"
            " features scaled (W_u's columns move by Σδ·x_j)",
        )
    return Protection(
        name, "green", guarantee, f"no attribute read from {where} beyond the baseline"
    )


def _user_level(
    config: FederationConfig,
    ledger: LedgerCheck,
    seeded: bool,
    canary: Mapping[str, Any] | None,
    membership: Mapping[str, Any] | None = None,
) -> Protection:
    name = "User-level DP (DP-FedAvg)"
    bound = (
        f"; canary audit: ε ≥ {canary['epsilon_lower_bound']:.3g} at 95 % from"
        f" {canary['correct']}/{canary['guesses']} correct guesses on {canary['canaries']}"
        " canaries"
        if canary
        else ""
    )
    strongest = max(
        ((v, r["auc"]["value"]) for v, r in (membership or {}).items() if isinstance(r, dict)),
        key=lambda pair: pair[1],
        default=None,
    )
    if strongest is not None:
        bound += f"; membership inference against the released model: AUC {strongest[1]:.3f}"
        bound += f" ({strongest[0]}, the strongest view)"
    if not config.user_dp.enabled:
        return Protection(
            name,
            "red",
            "(when on) the released models are (ε, δ)-DP with respect to any one user.",
            "off: the released models carry no ε guarantee" + bound,
        )
    guarantee = (
        f"The sequence of released models is ({ledger.epsilon:.3g}, {ledger.delta:g})-DP with"
        " respect to any one user's participation."
    )
    if ledger.disagreements:
        worst = ledger.disagreements[0]
        return Protection(
            name,
            "red",
            guarantee,
            f"the recorded ε does not match the recomputed one in {len(ledger.disagreements)}"
            f" rounds (round {worst.round}: {worst.recorded} vs {worst.recomputed})",
        )
    if not ledger.rounds:
        return Protection(
            name,
            "amber",
            "(on) released models (ε, δ)-DP per user",
            "on, but no round recorded a user-level ledger: nothing to recompute" + bound,
        )
    problems = []
    if ledger.assumed_rounds:
        problems.append(
            f"the {ledger.assumed_rounds} rounds before this log (a resumed run) are assumed"
            " to have used the first logged (z, q)"
        )
    if canary and canary.get("violates"):
        problems.append("the canary lower bound exceeds the claimed ε")
    if ledger.delta_too_large:
        problems.append(f"δ = {ledger.delta:g} ≥ 1/N = {1 / ledger.population:.3g}")
    if seeded:
        problems.append("the run was seeded (--server-seed): its noise is predictable")
    status = "red" if canary and canary.get("violates") else "amber" if problems else "green"
    checked = (
        f"ε recomputed with a fresh {ledger.accountant} accountant over {len(ledger.rounds)}"
        " rounds equals the run's own in every round"
    )
    return Protection(name, status, guarantee, "; ".join([checked, *problems]) + bound)


def _record_level(config: FederationConfig, ledger: LedgerCheck) -> Protection:
    name = "Record-level DP (DP-SGD on the device)"
    if not config.record_dp.enabled:
        return Protection(
            name, "red", "(when on) each update is (ε, δ)-DP per training example.", "off"
        )
    summary = ledger.record_level
    guarantee = "Every update is (ε_device, δ)-DP per training example of that device."
    if not summary:
        return Protection(name, "amber", guarantee, "on, but no device reported its ε")
    rolled = int(summary.get("rolled_back") or 0)
    if rolled:
        return Protection(
            name,
            "red",
            guarantee,
            f"{rolled} devices reported a lower ε than before: their ledgers were restored from"
            " an older copy, so their budget does not bound what they spent",
        )
    return Protection(
        name,
        "amber",
        guarantee,
        "devices' own ledgers as reported (the server cannot recompute them: the devices'"
        f" sampling rates stay on the devices): {summary}",
    )


def _secure(config: FederationConfig, attacks: Mapping[str, Mapping[str, Any]]) -> Protection:
    name = "Secure aggregation (SecAgg+)"
    if not config.secure.enabled:
        return Protection(
            name,
            "red",
            "(when on) the server learns only the sum of each cohort's updates.",
            "off: the server sees each device's update",
        )
    guarantee = "The server learns only the sum of each cohort's quantized updates."
    masked = attacks.get("interaction", {}).get("masked-upload")
    if masked is None:
        return Protection(name, "amber", guarantee, "on; the interaction attack was not run")
    auc = float(masked["auc"]["value"])
    status = "green" if auc <= CHANCE_AUC else "red"
    return Protection(
        name,
        status,
        guarantee,
        f"interaction inference from each device's masked upload: AUC {auc:.3f}"
        f" (near chance is ≤ {CHANCE_AUC})",
    )


def _pseudonymized(data_handling: Mapping[str, Any] | None) -> Protection:
    name = "Pseudonymization and k-anonymity"
    if not data_handling:
        return Protection(
            name,
            "red",
            "(when on) identifiers are keyed pseudonyms; demographics are k-anonymous.",
            "the data set was not prepared with fedrec data prepare",
        )
    anonymity = data_handling.get("k_anonymity", {})
    k, smallest = anonymity.get("k_requested"), anonymity.get("k_achieved")
    guarantee = "Identifiers are keyed pseudonyms; the demographic columns are k-anonymous."
    ok = k is not None and smallest is not None and int(smallest) >= int(k)
    return Protection(
        name,
        "green" if ok else "amber",
        guarantee,
        f"data-handling.json: k = {k} requested, smallest class {smallest}; pseudonym key"
        f" {data_handling.get('pseudonymization', {}).get('key_fingerprint', '?')}",
    )


def _at_rest(
    config: FederationConfig,
    deployment: Mapping[str, Any] | None,
    at_rest: Mapping[str, Any] | None,
) -> Protection:
    name = "Encryption at rest"
    guarantee = "Each device's data and state are sealed with AES-256-GCM."
    if deployment is not None:
        return Protection(
            name,
            "amber",
            guarantee,
            f"deployed with {len(deployment.get('devices', []))} device stores, sealed by the"
            " device SDK (tests/simulations/test_deploy_e2e.py); the stores are on the devices,"
            " not checked from here",
        )
    if not (config.storage.shard_dir or config.storage.state_dir):
        return Protection(name, "n/a", guarantee, "a simulation that keeps nothing on disk")
    if not at_rest:
        return Protection(name, "amber", guarantee, "sealed folders configured, not inspected")
    folders = at_rest["folders"]
    key_file = at_rest.get("key_file")
    problems = [p for f in folders for p in f["problems"]] + (
        key_file["problems"] if key_file else []
    )
    warnings = [w for f in folders for w in f["warnings"]]
    checked = "; ".join(
        f"{f['path']}: {f['sealed']} of {f['files']} files sealed"
        f" ({', '.join(f'{k}: {n}' for k, n in f['kdfs'].items()) or 'none'};"
        f" {len(f['key_fingerprints'])} key fingerprints)"
        for f in folders
    )
    if key_file and key_file["exists"]:
        checked += f"; key file mode {key_file['mode']}, outside the folders"
    if problems:
        return Protection(name, "red", guarantee, "; ".join([*problems, checked]))
    status = "amber" if warnings else "green"
    return Protection(name, status, guarantee, "; ".join([checked, *warnings]))


def _transport(deployment: Mapping[str, Any] | None) -> Protection:
    name = "TLS and node authentication"
    if deployment is None:
        return Protection(
            name,
            "n/a",
            "(deployed) devices reach the SuperLink over TLS; only registered keys join.",
            "a simulation: no network",
        )
    return Protection(
        name,
        "amber",
        "Devices reach the SuperLink over TLS to the operator's CA; only registered keys join.",
        f"SuperLink {deployment.get('superlink', {}).get('address', '?')} started by fedrec"
        " with TLS and --enable-supernode-auth (deploy/superlink.py; refusals tested in"
        " tests/deploy/test_local_e2e.py); the live link is not probed from here",
    )
