"""What the server received in a run, from its own record (``rounds.jsonl``: ``received``).

The ServerApp's aggregators describe every reply they received by record and key — an
array's shape and dtype, a metric's or config value's type, never a value — and a SecAgg+
round's four stages each. Here those rounds are merged per message type and checked against
what the model allows a device to send: the shared arrays of the catalog's model, at their
shapes, and scalars. A key that names the private state (the user embedding, the user
features), an array the shared model does not have, or an array of another shape is a
finding, and so is a run that recorded nothing to check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedrec.common.model import PRIVATE_KEYS

__all__ = ["MessageEvidence", "merge_received"]


@dataclass(frozen=True)
class MessageEvidence:
    """Per message type (``train``, ``evaluate``, a SecAgg+ stage) the keys received, and
    what in them breaks the rule."""

    received: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    findings: tuple[str, ...] = ()
    rounds: int = 0

    @property
    def holds(self) -> bool:
        return self.rounds > 0 and not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "received": self.received,
            "findings": list(self.findings),
            "holds": self.holds,
        }


def merge_received(
    records: Sequence[Mapping[str, Any]], shared: Mapping[str, tuple[int, ...]]
) -> MessageEvidence:
    """Merge ``records``' ``received`` entries and check them against ``shared`` (the shared
    arrays' names and shapes, :func:`fedrec.common.model.shared_shapes`)."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    rounds = 0
    for record in records:
        received = record.get("received")
        if not received:
            continue
        rounds += 1
        for kind, entries in received.items():
            into = merged.setdefault(kind, {})
            for key, entry in entries.items():
                seen = into.setdefault(key, {**entry, "messages": 0})
                seen["messages"] += int(entry.get("messages", 0))
                if entry.get("shape") != seen.get("shape"):
                    seen.setdefault("other_shapes", []).append(entry.get("shape"))
                for other in ("other_shapes", "other_dtypes", "other_kinds", "other_types"):
                    if entry.get(other):  # the recorder saw a second form within a round
                        seen.setdefault(other, []).extend(entry[other])
    findings = []
    for kind, entries in merged.items():
        for key, entry in entries.items():
            name = key.split("/", 1)[-1]
            if any(p in name for p in PRIVATE_KEYS) or name.startswith("user_embedding"):
                findings.append(f"{kind}: {key} names the device's private state")
            for other in ("other_dtypes", "other_kinds", "other_types"):
                if entry.get(other):
                    findings.append(f"{kind}: {key} arrived in more than one form ({other[6:]})")
            if entry.get("kind") != "array":
                continue
            if key.split("/", 1)[0] != "arrays":
                findings.append(f"{kind}: array {key} came under an unexpected record")
            if name not in shared:
                findings.append(f"{kind}: array {key} is not a shared parameter of the model")
            elif tuple(entry.get("shape", ())) != tuple(shared[name]) or "other_shapes" in entry:
                findings.append(
                    f"{kind}: array {key} has shape {entry.get('shape')}"
                    f" {entry.get('other_shapes', '')}, the model's is {list(shared[name])}"
                )
    if not rounds:
        findings.append(
            "the run recorded no received messages (a run from before fedrec recorded them)"
        )
    return MessageEvidence(merged, tuple(findings), rounds)
