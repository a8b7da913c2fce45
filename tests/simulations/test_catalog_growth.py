"""A catalog that grows between runs of a federation (server/app.py, common/data/catalog.py):
the resumed model keeps every trained row and starts each new item from its features, so a
new item is recommendable before anyone has interacted with it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import federation

from fedrec.client.app import make_client_app
from fedrec.client.store import ContextStateStore
from fedrec.common import keys
from fedrec.common.bundle import build_bundle, load_bundle
from fedrec.common.data.catalog import Catalog, save_catalog
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.fedconfig import FederationConfig
from fedrec.server import runs
from fedrec.server.app import ServerRandomness, run_federation
from fedrec.server.checkpoint import grow_item_rows, read_checkpoint
from fedrec.simulations.inprocess import InProcessGrid, seeded_task

USERS, ITEMS, OLD = 30, 400, 360  # the first catalog lists 360 items; 40 arrive later


def _write(folder: Path, items: int) -> tuple[Path, Catalog]:
    """A data folder (ratings.csv, items.csv) of the synthetic users' interactions with the
    first ``OLD`` items, its catalog listing the first ``items`` items; and that catalog."""
    data = load_interactions(
        "synthetic", synthetic=SyntheticConfig(num_users=USERS, num_items=ITEMS)
    )
    folder.mkdir()
    keep = data.item < OLD
    with (folder / "ratings.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user", "item", "rating", "timestamp"])
        for u, i, t in zip(data.user[keep], data.item[keep], data.timestamp[keep], strict=True):
            out.writerow([data.user_ids[u], data.item_ids[i], 5, int(t)])
    names = [n.removeprefix("genre=") for n in data.item_feature_names]
    with (folder / "items.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item", "title", "genres"])
        for i in range(items):
            genres = [names[j] for j in np.flatnonzero(data.item_features[i] > 0)]
            out.writerow([data.item_ids[i], data.item_titles[i], "|".join(genres)])
    catalog = Catalog.of(load_interactions(str(folder)))
    return folder, catalog


def test_a_grown_catalog_extends_its_earlier_version(tmp_path: Path) -> None:
    _, old = _write(tmp_path / "old", OLD)
    _, new = _write(tmp_path / "new", ITEMS)
    assert new.num_items == ITEMS and new.hash != old.hash
    assert new.extends(old.hash, OLD) and new.prefix(OLD).hash == old.hash
    assert not new.extends(old.hash, OLD - 1) and not old.extends(new.hash, ITEMS)


def test_growing_pads_the_table_and_its_optimizer_moments_with_zeros() -> None:
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    arrays = {"item_embedding.weight": table, "head.bias": np.ones(1)}
    state = {"m_t/item_embedding.weight": table + 1, "m_t/head.bias": np.ones(1)}
    grown, moments = grow_item_rows(arrays, state, 5)
    assert grown["item_embedding.weight"].shape == (5, 2)
    assert grown["item_embedding.weight"].dtype == np.float32
    np.testing.assert_array_equal(grown["item_embedding.weight"][:3], table)
    assert not grown["item_embedding.weight"][3:].any()
    np.testing.assert_array_equal(grown["head.bias"], np.ones(1))
    assert moments["m_t/item_embedding.weight"].shape == (5, 2)
    assert not moments["m_t/item_embedding.weight"][3:].any()
    np.testing.assert_array_equal(moments["m_t/head.bias"], np.ones(1))
    with pytest.raises(ValueError, match="cannot hold"):
        grow_item_rows(arrays, state, 2)


@dataclass
class Grown:
    """A federation run on the old catalog, then resumed on the grown one."""

    first_grid: InProcessGrid  # the first run's devices (their stored rows)
    trained: dict[str, np.ndarray]  # the first run's checkpointed model
    second: FederationConfig  # the resumed run's settings
    metrics: dict[str, Any]  # what the resumed run reported
    old: Catalog
    new: Catalog


def _grow(tmp_path: Path, base: FederationConfig, rounds: int) -> Grown:
    """``base`` for ``rounds`` rounds on the first ``OLD`` items' catalog, then resumed on
    the ``ITEMS``-item one for ``rounds`` more; run folders run1 and run2."""
    old_data, old = _write(tmp_path / "old", OLD)
    new_data, new = _write(tmp_path / "new", ITEMS)
    first = base.replace(
        data=str(old_data), catalog=str(save_catalog(old, tmp_path / "old.npz")),
        out_dir=str(tmp_path / "run1"), num_rounds=rounds, eval_every=rounds,
    )  # fmt: skip
    grid1 = InProcessGrid(make_client_app(first), USERS)
    with seeded_task(1):
        run_federation(grid1, first, randomness=ServerRandomness.seeded(1))
    trained = read_checkpoint(tmp_path / "run1").model
    second = first.replace(
        data=str(new_data), catalog=str(save_catalog(new, tmp_path / "new.npz")),
        out_dir=str(tmp_path / "run2"), resume=str(tmp_path / "run1"), num_rounds=2 * rounds,
    )  # fmt: skip
    with seeded_task(2):
        metrics = run_federation(InProcessGrid(make_client_app(second), USERS), second,
                                 randomness=ServerRandomness.seeded(2))  # fmt: skip
    assert metrics["resumed"]["catalog_grew"] == {"from": OLD, "to": ITEMS}
    return Grown(grid1, trained, second, metrics, old, new)


BASE = federation(
    synthetic_users=USERS, dim=8, clients_per_round=10, strategy="fedadam", server_lr=0.05,
)  # fmt: skip


def test_a_federation_resumes_on_a_grown_catalog_and_ranks_the_new_items(tmp_path: Path) -> None:
    grown = _grow(tmp_path, BASE, rounds=3)
    grid1, trained, second, metrics = grown.first_grid, grown.trained, grown.second, grown.metrics
    old, new = grown.old, grown.new
    with pytest.raises(ValueError, match="cold-items draws its cold set"):  # another cold set
        run_federation(InProcessGrid(make_client_app(second), USERS),
                       second.replace(cold_items=0.3, out_dir=""))  # fmt: skip
    edited = Catalog(new.item_ids, new.item_features.copy(), new.user_schema,
                     (*new.item_titles[:5], "renamed", *new.item_titles[6:]),
                     new.item_feature_names, new.item_blocks, new.source)  # fmt: skip
    assert not edited.extends(old.hash, OLD)  # an earlier item changed: not a growth
    with pytest.raises(ValueError, match="was trained on catalog"):
        changed = second.replace(
            catalog=str(save_catalog(edited, tmp_path / "edited.npz")), out_dir=""
        )
        run_federation(InProcessGrid(make_client_app(changed), USERS), changed)
    assert [r["clients_replied"] for r in metrics["rounds"][-2:]] == [10, 10]  # devices agree
    header = json.loads((tmp_path / "run2" / runs.CONFIG_FILE).read_text())
    assert header["catalog_sha256"] == new.hash
    with np.load(tmp_path / "run2" / runs.FINAL_MODEL) as final:
        assert final["item_embedding.weight"].shape == (ITEMS, 8)
    bundle = load_bundle(tmp_path / "run2" / runs.INFERENCE_BUNDLE)
    assert bundle.catalog_sha256 == new.hash and bundle.num_items == ITEMS
    # the new items have vectors from their features (never all zero) and each ranks
    vectors = bundle.item_vectors()[OLD:]
    assert (np.abs(vectors).sum(axis=1) > 0).all()
    # recommendable at once: right after the growth, before any round, each device's own
    # row ranks the new items from their features (zero id rows) among the trained ones
    grown, _ = grow_item_rows(trained, {}, ITEMS)
    assert not grown["item_embedding.weight"][OLD:].any()
    at_once = build_bundle(grown, new.item_features, new.hash)
    tops = []
    for context in grid1.contexts.values():
        private = ContextStateStore(context.state).load(keys.STATE_PRIVATE)
        if private is not None:
            row = private["user_embedding.weight"][0]
            tops.append(at_once.top_k(at_once.user_vector(row, np.zeros(0)), 10)[0])
    assert len(tops) >= 10
    with_new = sum(bool((top >= OLD).any()) for top in tops)
    # measured: 19 of 20 devices, 33 of the 200 places (the new items are 10 % of the catalog)
    assert with_new >= len(tops) // 2, f"{with_new} of {len(tops)} devices rank a new item"


def test_without_item_ids_a_grown_catalog_needs_no_new_rows(tmp_path: Path) -> None:
    """item-ids = "none": nothing in the model is per item, so the resumed model is the
    checkpoint's, unchanged, over the grown catalog (the checkpoint records its catalog's
    size, which a table would otherwise give); a catalog that changed an earlier item is
    still refused."""
    grown = _grow(tmp_path, BASE.replace(item_ids="none"), rounds=2)
    assert "item_embedding.weight" not in grown.trained
    meta = json.loads((tmp_path / "run1" / runs.CHECKPOINT_META).read_text())
    assert (meta["catalog_items"], meta["item-ids"]) == (OLD, "none")
    assert grown.metrics["rounds"][-1]["clients_replied"] == 10
    new, second = grown.new, grown.second
    bundle = load_bundle(tmp_path / "run2" / runs.INFERENCE_BUNDLE)
    assert bundle.num_items == ITEMS
    assert (np.abs(bundle.item_vectors()[OLD:]).sum(axis=1) > 0).all()
    edited = Catalog(new.item_ids, new.item_features.copy(), new.user_schema,
                     (*new.item_titles[:5], "renamed", *new.item_titles[6:]),
                     new.item_feature_names, new.item_blocks, new.source)  # fmt: skip
    changed = second.replace(catalog=str(save_catalog(edited, tmp_path / "e.npz")), out_dir="")
    with pytest.raises(ValueError, match=r"was trained on catalog .* features would differ"):
        run_federation(InProcessGrid(make_client_app(changed), USERS), changed)
