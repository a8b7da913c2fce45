"""The ε ledgers of a run, recomputed from what the run recorded.

A run records, every DP round, the parameters it accounted (``rounds.jsonl``:
``privacy.user_level`` = z, q, C, m, δ, the accountant, and the ε it reports). The audit does
not trust that ε: it steps a fresh Opacus accountant once per recorded round with the recorded
(z, q) and asks it for ε at the recorded δ. The two must agree (to ``TOLERANCE``); a round
where they do not is listed, and the report says so first. It also gives ε at other δ, warns
when δ ≥ 1/N (a mechanism that publishes one user's data with probability δ would satisfy
the bound), and summarizes the devices' record-level ledgers as the server saw them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from opacus.accountants import create_accountant

from fedrec.common.privacy import RDP_ORDERS

__all__ = ["DELTAS", "TOLERANCE", "LedgerCheck", "RoundEpsilon", "recompute_user_level"]

TOLERANCE = 1e-6  # relative: the same accountant on the same steps gives the same float
DELTAS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)  # ε is also reported at these


@dataclass(frozen=True)
class RoundEpsilon:
    """One DP round: what the run said and what the audit recomputed."""

    round: int
    z: float
    q: float
    recorded: float
    recomputed: float

    @property
    def agrees(self) -> bool:
        return math.isclose(self.recorded, self.recomputed, rel_tol=TOLERANCE, abs_tol=1e-9)


@dataclass(frozen=True)
class LedgerCheck:
    """The user-level ledger of a run (empty ``rounds`` when the run had no user-level DP)."""

    accountant: str = ""
    delta: float = 0.0
    clip_norm: float = 0.0
    expected_clients: float = 0.0
    target_epsilon: float | None = None
    population: int = 0
    rounds: tuple[RoundEpsilon, ...] = ()
    at_deltas: dict[str, float] = field(default_factory=dict)
    record_level: dict[str, Any] = field(default_factory=dict)
    assumed_rounds: int = 0  # rounds before the log (a resumed run), composed with its first z, q

    @property
    def epsilon(self) -> float:
        return self.rounds[-1].recomputed if self.rounds else 0.0

    @property
    def disagreements(self) -> list[RoundEpsilon]:
        return [r for r in self.rounds if not r.agrees]

    @property
    def delta_too_large(self) -> bool:
        """δ ≥ 1/N: the guarantee would allow publishing one user's data outright."""
        return bool(self.rounds) and self.population > 0 and self.delta >= 1 / self.population

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rounds"] = [{**asdict(r), "agrees": r.agrees} for r in self.rounds]
        out.update(
            epsilon=self.epsilon,
            agrees=not self.disagreements,
            delta_too_large=self.delta_too_large,
        )
        return out


def _epsilon(accountant: Any, name: str, delta: float) -> float:
    if name == "rdp":  # the run's orders (Opacus's defaults and larger ones)
        return float(accountant.get_epsilon(delta, alphas=list(RDP_ORDERS)))
    return float(accountant.get_epsilon(delta))


def recompute_user_level(records: Sequence[dict[str, Any]], population: int) -> LedgerCheck:
    """Recompute every recorded user-level ε of ``records`` (rounds.jsonl, in order) for a
    population of ``population`` users; the last round's record-level summary rides along."""
    dp_rounds = [r for r in records if "user_level" in r.get("privacy", {})]
    record_level: dict[str, Any] = next(
        (r["privacy"]["record_level"] for r in reversed(records)
         if "record_level" in r.get("privacy", {})),
        {},
    )  # fmt: skip
    if not dp_rounds:
        return LedgerCheck(population=population, record_level=record_level)
    first = dp_rounds[0]["privacy"]["user_level"]
    name, delta = str(first["accountant"]), float(first["delta"])
    accountant = create_accountant(name)
    # a resumed run's log starts after the checkpoint: its first record counts every round
    # the ledger holds; the ones before it are composed with that record's (z, q), assumed
    prefix = max(int(first.get("rounds", 1)) - 1, 0)
    for _ in range(prefix):
        accountant.step(noise_multiplier=float(first["z"]), sample_rate=float(first["q"]))
    checked = []
    for record in dp_rounds:
        entry = record["privacy"]["user_level"]
        if entry["accountant"] != name or float(entry["delta"]) != delta:
            raise ValueError(
                f"round {record['round']}: accountant/δ changed within the run"
                f" ({entry['accountant']}, {entry['delta']} after {name}, {delta})"
            )
        z, q = float(entry["z"]), float(entry["q"])
        accountant.step(noise_multiplier=z, sample_rate=q)
        checked.append(
            RoundEpsilon(
                round=int(record["round"]),
                z=z,
                q=q,
                recorded=float(entry["epsilon"]),
                recomputed=_epsilon(accountant, name, delta),
            )
        )
    last = dp_rounds[-1]["privacy"]["user_level"]
    return LedgerCheck(
        accountant=name,
        delta=delta,
        clip_norm=float(last["C"]),
        expected_clients=float(last["m"]),
        target_epsilon=last.get("target_epsilon"),
        population=population,
        rounds=tuple(checked),
        at_deltas={f"{d:g}": _epsilon(accountant, name, d) for d in DELTAS},
        record_level=record_level,
        assumed_rounds=prefix,
    )
