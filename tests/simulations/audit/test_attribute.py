"""Attribute inference from uploads (simulations/audit/attribute.py): a plain update gives
the user features away; a masked one and an update without them do not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedrec.common.data.catalog import load_catalog
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.attribute import USER_TOWER, attribute_inference
from fedrec.simulations.audit.interaction import Observation, observe_uploads


def _observed(run: Path, secure: bool) -> tuple[Observation, object]:
    config = FederationConfig.from_mapping(json.loads((run / "config.json").read_text())["config"])
    catalog = load_catalog(run / "catalog.npz")
    return observe_uploads(config, run, targets=30, seed=0, secure=secure), catalog.user_schema


def test_a_plain_update_gives_every_attribute_away(protected_run: Path) -> None:
    observation, schema = _observed(protected_run, secure=False)
    found = attribute_inference(observation, schema, observation.features or {})
    assert {"age", "gender", "occupation", "zip"} <= set(found)
    for attribute in ("gender", "occupation", "zip"):
        assert found[attribute]["accuracy"] == 1.0 > found[attribute]["baseline"]
    assert found["age"]["mean_abs_error"] < 1e-4 < found["age"]["baseline"]  # age/100, exactly


def test_a_masked_update_gives_nothing_away(protected_run: Path) -> None:
    observation, schema = _observed(protected_run, secure=True)
    found = attribute_inference(observation, schema, observation.features or {})
    for attribute in ("gender", "occupation"):
        assert found[attribute]["accuracy"] <= found[attribute]["baseline"] + 0.25
    assert found["age"]["mean_abs_error"] > found["age"]["baseline"] / 2


def test_an_update_without_feature_columns_is_at_the_baseline(protected_run: Path) -> None:
    observation, schema = _observed(protected_run, secure=False)
    width = schema.width  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    blind = {}
    for user, delta in observation.deltas.items():
        tower = delta[USER_TOWER].copy()
        tower[:, -width:] = rng.normal(0, 1, (tower.shape[0], width))  # unrelated to x_u
        blind[user] = {**delta, USER_TOWER: tower}
    planted = Observation(blind, observation.items, observation.num_items, 1,
                          features=observation.features)  # fmt: skip
    found = attribute_inference(planted, schema, observation.features or {})  # type: ignore[arg-type]
    assert found["gender"]["accuracy"] < 0.8 and found["occupation"]["accuracy"] < 0.5
