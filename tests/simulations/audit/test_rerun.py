"""The audit's extra training runs (simulations/audit/rerun.py): the data they write keeps every
item whoever is left out, and the rerun keeps the run's settings with SecAgg+ off."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from builders import federation

from fedrec.common.data.sources import load_interactions
from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.rerun import rerun_config, write_data


def test_left_out_users_lose_their_ratings_and_no_item_is_lost(tmp_path: Path) -> None:
    data = load_interactions("synthetic", synthetic=federation().synthetic())
    left_out = np.zeros(data.num_users, bool)
    left_out[[0, 3, 7]] = True
    write_data(data, tmp_path, left_out=left_out, extra_items=["x-1"],
               extra_ratings=[("x", "x-1", 9)])  # fmt: skip
    with (tmp_path / "ratings.csv").open() as f:
        rows = list(csv.DictReader(f))
    users = {r["user"] for r in rows}
    assert not users & {data.user_ids[u] for u in (0, 3, 7)} and "x" in users
    assert len(rows) == int((~left_out[data.user]).sum()) + 1
    written = load_interactions(tmp_path)
    assert set(written.item_ids) == set(data.item_ids) | {"x-1"}  # items of the left-out too
    assert written.num_users == data.num_users - 3 + 1
    genre = data.item_feature_names.index(written.item_feature_names[0])
    first = written.item_ids.index(data.item_ids[0])
    assert written.item_features[first, 0] == data.item_features[0, genre]


def test_the_rerun_keeps_the_scenario_with_secure_aggregation_off(tmp_path: Path) -> None:
    settings = {"num-rounds": 7, "secure-aggregation": "secagg+", "client-weighting": "uniform",
                "dp-clip-norm": 0.5, "dp-noise-multiplier": 1.0, "resume": "old"}  # fmt: skip
    config = FederationConfig.from_mapping(settings)
    again = rerun_config(config, tmp_path)
    assert not again.secure.enabled and again.rounds.num_rounds == 7
    assert again.user_dp.noise_multiplier == 1.0
    assert again.data.data == str(tmp_path / "data")
    assert again.outputs.out_dir == str(tmp_path / "run")
    assert again.outputs.resume == "" and again.data.catalog == ""
