"""Interaction inference by the server (simulations/audit/interaction.py): it finds a planted
leak, stays at chance where nothing leaks by construction, and on real observed rounds reads
plain uploads and not masked ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.audit.interaction import (
    Observation,
    attack_sums,
    attack_uploads,
    item_scores,
    observe_uploads,
)

ITEMS, DIM, DEVICES = 400, 8, 40


def _observation(upload: str, seed: int = 0) -> Observation:
    """Devices with 20 items each; ``touched``: each uploads exactly its own rows (and a
    few negatives) — the leak; ``noise``: an update independent of its items."""
    rng = np.random.default_rng(seed)
    items = {u: rng.choice(ITEMS, 20, replace=False) for u in range(DEVICES)}
    deltas = {}
    for u, mine in items.items():
        table = np.zeros((ITEMS, DIM))
        if upload == "touched":
            table[mine] = rng.normal(0, 1, (len(mine), DIM))
            negatives = rng.choice(ITEMS, 5, replace=False)
            table[negatives] += rng.normal(0, 0.3, (5, DIM))
        else:
            table = rng.normal(0, 1, (ITEMS, DIM))
        deltas[u] = {"item_embedding.weight": table, "head.bias": rng.normal(0, 1, 1)}
    return Observation(deltas, items, ITEMS, round=1)


def test_item_scores_are_row_norms_of_the_item_indexed_arrays() -> None:
    delta = {"e": np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]), "b": np.ones(1)}
    assert item_scores(delta, 3).tolist() == [5.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="indexed by the 7 items"):
        item_scores(delta, 7)


def test_a_device_uploading_its_touched_rows_is_read() -> None:
    result = attack_uploads(_observation("touched"), reps=200).to_dict()
    assert result["auc"]["value"] > 0.97
    assert result["tpr_at_1pct_fpr"]["value"] > 0.9


def test_an_upload_independent_of_the_items_is_at_chance() -> None:
    aucs = [attack_uploads(_observation("noise", s), reps=50).result.auc.value for s in range(3)]
    assert all(0.45 < a < 0.55 for a in aucs), aucs


def test_sums_reveal_the_cohorts_items_and_strong_noise_hides_them() -> None:
    sums = attack_sums(_observation("touched"), cohort=5, clip_norm=1.0, noise_multiplier=50.0,
                       reps=100)  # fmt: skip
    by_view = {a.view: a.result.auc.value for a in sums}
    assert by_view["cohort-sum"] > 0.9  # the sum of 5 still shows which rows moved
    assert 0.45 < by_view["released"] < 0.55  # noise std 50·C swamps rows of norm ≤ C
    with pytest.raises(ValueError, match="at least 2 devices"):
        attack_sums(_observation("touched"), cohort=1)


def test_on_a_real_round_plain_uploads_leak_and_masked_ones_do_not(protected_run: Path) -> None:
    config = FederationConfig.from_mapping(
        json.loads((protected_run / "config.json").read_text())["config"]
    )
    plain = observe_uploads(config, protected_run, targets=30, seed=0)
    masked = observe_uploads(config, protected_run, targets=30, seed=0, secure=True)
    assert len(plain.deltas) == 30 and len(masked.deltas) == 30 and masked.secure
    assert plain.round == 5  # one round after the run's checkpoint
    read = attack_uploads(plain, clip_norm=0.5, reps=200).result.auc.value
    hidden = attack_uploads(masked, reps=200).result.auc.value
    assert read > 0.8, read
    assert abs(hidden - 0.5) < 0.05, hidden


def test_without_item_ids_the_item_tower_still_tells_the_items() -> None:
    """item-ids = "none": no array of an upload is item-indexed, but W_v's update lies along
    the features of the items the device trained on. Real device updates (the device's own
    local_train, 40 synthetic users, genre features only: many items share a genre set, so
    items with a trained item's genres score as it does). Measured AUC 0.64."""
    from fedrec.client.local import LocalTrainConfig, build_local_model, local_train
    from fedrec.common.data.catalog import Catalog
    from fedrec.common.data.shard import user_shard
    from fedrec.common.data.sources import load_interactions
    from fedrec.common.data.split import temporal_leave_one_out
    from fedrec.common.data.synthetic import SyntheticConfig
    from fedrec.common.model import initial_shared_state

    data = load_interactions("synthetic", synthetic=SyntheticConfig(num_users=DEVICES,
                             num_items=ITEMS))  # fmt: skip
    split, catalog = temporal_leave_one_out(data), Catalog.of(data)
    start = initial_shared_state(catalog, DIM, 0, item_ids=False)
    deltas, items = {}, {}
    for u in range(DEVICES):
        shard = user_shard(data, split, u)
        model = build_local_model(catalog, shard, DIM, start, None, seed=u)
        local_train(model, shard, LocalTrainConfig(lr=1.0), np.random.default_rng(u))
        deltas[u] = {k: v - start[k].numpy() for k, v in model.shared_state().items()}
        items[u] = shard.train_items
    model = {k: v.numpy() for k, v in start.items()}
    observed = Observation(deltas, items, ITEMS, round=1,
                           item_features=catalog.item_features, model=model)  # fmt: skip
    auc = attack_uploads(observed, reps=200).result.auc.value
    assert auc > 0.6, auc
    with pytest.raises(ValueError, match="no item tower over the catalog's features"):
        attack_uploads(Observation(deltas, items, ITEMS, round=1), reps=10)
