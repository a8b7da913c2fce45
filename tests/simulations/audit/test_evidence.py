"""What the server received, checked against the shared model (simulations/audit/evidence.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fedrec.common.data.catalog import load_catalog
from fedrec.common.model import shared_shapes
from fedrec.simulations.audit.evidence import merge_received


def _inputs(run: Path) -> tuple[list[dict], dict]:
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    return rounds, shared_shapes(load_catalog(run / "catalog.npz"), 64)


def test_a_plain_run_received_only_shared_arrays_and_scalars(plain_run: Path) -> None:
    rounds, shared = _inputs(plain_run)
    evidence = merge_received(rounds, shared)
    assert evidence.holds, evidence.findings
    train = evidence.received["train"]
    arrays = {k.split("/", 1)[1] for k, e in train.items() if e["kind"] == "array"}
    assert arrays == set(shared)
    assert train["metrics/train-loss"]["messages"] == 4 * 10  # 4 rounds of 10 replies


def test_a_secure_run_received_no_array_in_the_clear(protected_run: Path) -> None:
    rounds, shared = _inputs(protected_run)
    evidence = merge_received(rounds, shared)
    assert evidence.holds, evidence.findings
    assert "train" not in evidence.received
    assert {"setup", "share_keys", "collect_masked_vectors", "unmask"} <= set(evidence.received)
    for stage in ("setup", "share_keys", "collect_masked_vectors", "unmask"):
        assert all(e["kind"] == "config" for e in evidence.received[stage].values())


def test_a_private_key_or_a_foreign_array_is_a_finding(plain_run: Path) -> None:
    rounds, shared = _inputs(plain_run)
    leaked = dict(rounds[1]["received"]["train"])
    leaked["arrays/user_embedding.weight"] = {"kind": "array", "shape": [1, 32], "messages": 1}
    leaked["arrays/item_embedding.weight"] = {"kind": "array", "shape": [3, 64], "messages": 1}
    leaked["config/items"] = {"kind": "config", "type": "list", "messages": 1}
    rounds[1] = {**rounds[1], "received": {"train": leaked}}
    findings = merge_received(rounds, shared).findings
    assert any("user_embedding.weight names the device's private state" in f for f in findings)
    assert any("user_embedding.weight is not a shared parameter" in f for f in findings)
    assert any("item_embedding.weight has shape" in f for f in findings)


def test_a_run_that_recorded_nothing_proves_nothing() -> None:
    evidence = merge_received([{"round": 1}], {"w": (2,)})
    assert not evidence.holds and "recorded no received messages" in evidence.findings[0]


def test_a_second_form_within_a_round_is_a_finding(plain_run: Path) -> None:
    rounds, shared = _inputs(plain_run)
    train = dict(rounds[1]["received"]["train"])
    entry = dict(train["arrays/item_embedding.weight"])
    entry.update(other_shapes=[[3, 64]], other_dtypes=["float64"])
    train["arrays/item_embedding.weight"] = entry
    rounds[1] = {**rounds[1], "received": {"train": train}}
    findings = merge_received(rounds, shared).findings
    assert any("more than one form (dtypes)" in f for f in findings)
    assert any("item_embedding.weight has shape" in f for f in findings)
