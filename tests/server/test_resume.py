"""Tests for fedrec.server.resume: a resumed run continues its checkpoint — round, model,
optimizer state, ε ledger and logged rounds — or is refused, naming what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import StaticGrid, federation

from fedrec.common.data.catalog import Catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.model import ITEM_TABLE, shared_shapes
from fedrec.common.privacy import PrivacyLedger
from fedrec.server.app import ServerRandomness, compose
from fedrec.server.checkpoint import Checkpointer
from fedrec.server.optimizer import FedAdam
from fedrec.server.resume import resume_from, resume_identity
from fedrec.server.runs import CHECKPOINT, append_round

Arrays = dict[str, np.ndarray]
# 8 items of 3 features, a 2-wide user schema; its first 6 items are its earlier version
CATALOG = Catalog.of_features(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32), 2)
EARLIER = CATALOG.prefix(6)
CONFIG = federation(dim=4, seed=0, strategy="fedadam", num_rounds=6)


def _model(catalog: Catalog = CATALOG, fill: float = 0.0) -> Arrays:
    return {k: np.full(s, fill, np.float32) for k, s in shared_shapes(catalog, 4).items()}


def _moments(model: Arrays) -> Arrays:
    """FedAdam's state after one step to model + 0.5 (m_t, v_t of every array)."""
    adam = FedAdam()
    current = {k: v.astype(np.float64) for k, v in model.items()}
    adam.step(current, {k: v + 0.5 for k, v in current.items()}, 1)
    return adam.state_dict(list(model))


def _checkpoint(
    run: Path,
    *,
    round_: int = 4,
    catalog: Catalog = CATALOG,
    model: Arrays | None = None,
    config: FederationConfig = CONFIG,
    ledger: PrivacyLedger | None = None,
    **meta: Any,
) -> Arrays:
    """A checkpoint as compose()'s Checkpointer writes it (the catalog, its size and the
    resume identity, then ``meta``'s overrides: None leaves a key out, as an older
    checkpoint does); returns the model it holds."""
    model = model if model is not None else _model(catalog, fill=0.25)
    identity = {"catalog_sha256": catalog.hash, "catalog_items": catalog.num_items,
                **resume_identity(config), **meta}  # fmt: skip
    identity = {k: v for k, v in identity.items() if v is not None}
    Checkpointer(run, model=identity).write(
        model, round_, _moments(model), ledger.to_dict() if ledger else None
    )
    return model


def test_a_resumed_run_continues_from_the_checkpoints_round_model_and_state(
    tmp_path: Path,
) -> None:
    saved = _checkpoint(tmp_path, round_=4)
    for r in range(7):  # rounds 0..6 logged; the checkpoint is round 4's
        append_round(tmp_path, {"round": r})
    for where in (tmp_path, tmp_path / CHECKPOINT):
        resumed = resume_from(str(where), CONFIG, CATALOG, _model())
        assert resumed.round == 4 and resumed.ledger is None and resumed.grew_from == 0
        for k, v in saved.items():
            np.testing.assert_array_equal(resumed.model[k], v)
        assert set(resumed.optimizer) == set(_moments(saved))
        # earlier rounds are read up to the checkpoint: its run goes on from round 5
        assert [r["round"] for r in resumed.earlier] == [0, 1, 2, 3, 4]
    assert resumed.provenance(str(tmp_path), CATALOG) == {
        "from": str(tmp_path),
        "round": 4,
        "logged": 5,
    }
    run = compose(StaticGrid([1, 2, 3]), CONFIG, CATALOG, 3, ServerRandomness.seeded(0),  # type: ignore[arg-type]
                  start=resumed.model, resumed=resumed)  # fmt: skip
    assert (run.rounds.plan.first, run.rounds.plan.last) == (5, 6)
    optimizer = run.rounds.step.optimizer
    assert isinstance(optimizer, FedAdam)
    # the moments continue: m_1 = (1 − β₁)·0.5 = 0.05 in every coordinate
    np.testing.assert_allclose(optimizer.m_t["head.bias"], [0.05])
    with pytest.raises(ValueError, match="checkpoint is at round 4; num-rounds 4 leaves none"):
        compose(StaticGrid([1]), CONFIG.replace(num_rounds=4), CATALOG, 1,  # type: ignore[arg-type]
                ServerRandomness.seeded(0), start=resumed.model, resumed=resumed)  # fmt: skip


def test_a_checkpoint_of_a_run_that_kept_no_log_has_no_earlier_rounds(tmp_path: Path) -> None:
    _checkpoint(tmp_path, round_=2)
    assert resume_from(str(tmp_path), CONFIG, CATALOG, _model()).earlier == []


@pytest.mark.parametrize(
    ("meta", "config", "refusal"),
    [
        (
            {"catalog_sha256": "f" * 64},
            CONFIG,
            f"was trained on catalog ffffffffffff, this run's catalog is {CATALOG.hash[:12]}:"
            " its item rows would mean other items",
        ),
        ({"dim": 8}, CONFIG, "another experiment: dim 8 in the checkpoint, 4 now"),
        ({"seed": 3}, CONFIG, "another experiment: seed 3 in the checkpoint, 0 now"),
        (
            {"synthetic-users": 40},
            CONFIG.replace(synthetic_users=30),
            "synthetic-users 40 in the checkpoint, 30 now",
        ),
        # a checkpoint written before item-ids was recorded had the table ("all")
        (
            {"item-ids": None},
            CONFIG.replace(item_ids="none"),
            "item-ids all in the checkpoint, none now",
        ),
    ],
    ids=["catalog", "dim", "seed", "data", "item-ids-default"],
)
def test_a_resume_that_would_not_continue_the_run_is_refused_naming_what_differs(
    tmp_path: Path, meta: dict[str, Any], config: FederationConfig, refusal: str
) -> None:
    _checkpoint(tmp_path, **meta)
    with pytest.raises(ValueError, match=refusal):
        resume_from(str(tmp_path), config, CATALOG, _model())


def test_a_model_of_other_shapes_is_refused_naming_the_arrays(tmp_path: Path) -> None:
    """A checkpoint without a recorded identity (only its round): the shapes still decide."""
    model = _model(fill=0.25)
    model["head.bias"] = np.zeros(2, np.float32)
    del model["head.weight"]
    Checkpointer(tmp_path).write(model, 3, {})
    with pytest.raises(
        ValueError,
        match=r"does not fit dim 4 over this catalog \(8 items\): \['head.bias', 'head.weight'\]",
    ):
        resume_from(str(tmp_path), CONFIG, CATALOG, _model())


def test_a_grown_catalog_appends_zero_rows_to_the_resumed_table(tmp_path: Path) -> None:
    """Trained on the first 6 items; the catalog now appends 2: their rows start at zero (a
    new item scores from its features alone), with zero optimizer moments."""
    saved = _checkpoint(tmp_path, catalog=EARLIER)
    resumed = resume_from(str(tmp_path), CONFIG, CATALOG, _model())
    assert resumed.grew_from == 6
    table = resumed.model[ITEM_TABLE]
    assert table.shape == (8, 4)
    np.testing.assert_array_equal(table[:6], saved[ITEM_TABLE])
    np.testing.assert_array_equal(table[6:], np.zeros((2, 4)))
    np.testing.assert_array_equal(resumed.optimizer[f"m_t/{ITEM_TABLE}"][6:], np.zeros((2, 4)))
    assert resumed.provenance("run", CATALOG)["catalog_grew"] == {"from": 6, "to": 8}
    cold = CONFIG.replace(cold_items=0.25)
    _checkpoint(tmp_path, catalog=EARLIER, config=cold)
    with pytest.raises(ValueError, match="cold-items draws its cold set over the catalog's size"):
        resume_from(str(tmp_path), cold, CATALOG, _model())


def test_a_dp_resume_continues_the_ledger_and_without_one_is_refused(tmp_path: Path) -> None:
    private = CONFIG.replace(dp_clip_norm=0.5, dp_noise_multiplier=1.0, client_weighting="uniform")
    _checkpoint(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no user-level privacy ledger"):
        resume_from(str(tmp_path / "plain"), private, CATALOG, _model())
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.1, 4)
    _checkpoint(tmp_path / "private", ledger=ledger)
    resumed = resume_from(str(tmp_path / "private"), private, CATALOG, _model())
    assert resumed.ledger == ledger  # ε never starts again at zero
