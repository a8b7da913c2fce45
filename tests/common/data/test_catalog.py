"""Tests for fedrec.common.data.catalog: the published catalog holds nothing about any user."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from builders import ML100K

from fedrec.common.data.catalog import (
    Catalog,
    CatalogError,
    build_catalog,
    load_catalog,
    read_catalog,
    save_catalog,
)
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.features import UserFeatureSchema
from fedrec.common.data.sources import load_interactions


def test_the_catalog_is_the_items_and_the_schema_of_the_data(
    data: Interactions, catalog: Catalog
) -> None:
    assert catalog.item_ids == data.item_ids and catalog.num_items == 400
    assert catalog.item_titles == data.item_titles
    np.testing.assert_array_equal(catalog.item_features, data.item_features)
    assert catalog.item_feature_names == data.item_feature_names
    assert [b.name for b in catalog.item_blocks] == ["genres"]
    assert catalog.user_schema == data.user_schema
    assert catalog.user_feature_dim == data.user_features.shape[1] > 0
    assert catalog.source == {"format": "synthetic", "threshold": 0.0}


def test_a_device_encodes_its_own_attributes_as_the_data_set_did() -> None:
    from fedrec.common.data.synthetic import SyntheticConfig, generate

    raw = generate(SyntheticConfig(num_users=30, num_items=200))
    data = load_interactions("synthetic", synthetic=SyntheticConfig(num_users=30, num_items=200))
    schema = build_catalog("synthetic", synthetic=SyntheticConfig(num_users=30, num_items=200))
    for index, user in enumerate(data.user_ids):
        own = schema.user_schema.encode_one(raw.user_meta[user])  # on the device, alone
        np.testing.assert_array_equal(own, data.user_features[index])
    with pytest.raises(ValueError, match=r"\['shoe-size'\] are not in the catalog's schema"):
        schema.user_schema.encode_one({"shoe-size": "44"})


def test_save_and_load_round_trip(catalog: Catalog, tmp_path: Path) -> None:
    path = save_catalog(catalog, tmp_path / "catalog.npz")
    loaded = load_catalog(path)
    assert loaded.hash == catalog.hash and len(catalog.hash) == 64
    assert loaded.item_ids == catalog.item_ids and loaded.user_schema == catalog.user_schema
    np.testing.assert_array_equal(loaded.item_features, catalog.item_features)
    assert loaded.item_features.dtype == np.float32
    assert [(b.name, b.width) for b in loaded.item_blocks] == [("genres", 12)]
    assert load_catalog(path) is loaded  # one read per file version (every node reads it)


def test_the_hash_names_the_content(catalog: Catalog, tmp_path: Path) -> None:
    again = build_catalog("synthetic", synthetic=_synthetic(60, 400))
    assert again.hash == catalog.hash  # the same data gives the same catalog
    other = build_catalog("synthetic", synthetic=_synthetic(60, 401))
    assert other.hash != catalog.hash
    text = catalog.with_item_block(
        "text", np.ones((400, 3), np.float32), {"model": "test", "sha256": "0" * 64}
    )
    assert text.hash != catalog.hash and text.item_feature_dim == catalog.item_feature_dim + 3
    assert [b.name for b in text.item_blocks] == ["genres", "text"]
    assert load_catalog(save_catalog(text, tmp_path / "t.npz")).item_blocks[1].provenance == {
        "model": "test", "sha256": "0" * 64,
    }  # fmt: skip
    with pytest.raises(ValueError, match="already has an item block 'text'"):
        text.with_item_block("text", np.ones((400, 1), np.float32), {})


def test_nothing_about_any_user_is_in_the_file(data: Interactions, tmp_path: Path) -> None:
    """No user id, no interaction and no user's feature row: only the items and the schema."""
    path = save_catalog(Catalog.of(data), tmp_path / "catalog.npz")
    with np.load(path) as stored:
        assert sorted(stored.files) == ["item_features", "meta"]
        meta = json.loads(bytes(stored["meta"]).decode("utf-8"))
        features = stored["item_features"]
    assert set(meta) == {"kind", "format", "item_ids", "item_titles", "item_feature_names",
                         "item_blocks", "user_schema", "source", "sha256"}  # fmt: skip
    assert features.shape == (data.num_items, data.item_features.shape[1])
    raw_ids = set(data.user_ids) - set(data.item_ids)  # user ids that are not also item ids
    text = json.dumps(meta)
    assert not any(f'"{u}"' in text for u in raw_ids)
    assert "user_features" not in text and "interactions" not in text
    assert meta["user_schema"]["width"] == data.user_features.shape[1]


@pytest.mark.parametrize("damage", ["feature", "meta", "hash"])
def test_a_damaged_or_edited_catalog_is_refused(
    catalog: Catalog, tmp_path: Path, damage: str
) -> None:
    path = save_catalog(catalog, tmp_path / "catalog.npz")
    with np.load(path) as stored:
        meta = json.loads(bytes(stored["meta"]).decode("utf-8"))
        features = stored["item_features"].copy()
    if damage == "feature":
        features[3, 1] += 1.0
    elif damage == "meta":
        meta["item_ids"][0] = "forged"
    else:
        meta["sha256"] = "0" * 64
    encoded = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    np.savez(tmp_path / "edited.npz", meta=encoded, item_features=features)
    with pytest.raises(CatalogError, match="does not match its sha256"):
        load_catalog(tmp_path / "edited.npz")


def test_other_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such file: build it with `fedrec catalog build"):
        load_catalog(tmp_path / "missing.npz")
    with pytest.raises(CatalogError, match="not a readable catalog file"):
        read_catalog(b"not a zip at all", "junk.npz")
    np.savez(tmp_path / "arrays.npz", x=np.zeros(3))
    with pytest.raises(CatalogError, match=r"holds \['x'\], not a fedrec catalog"):
        load_catalog(tmp_path / "arrays.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(CatalogError, match="not a fedrec catalog"):
        load_catalog(tmp_path / "empty.npz")


def test_a_catalog_must_be_consistent() -> None:
    schema = UserFeatureSchema()
    with pytest.raises(ValueError, match="one row per item id"):
        Catalog(("a", "b"), np.zeros((3, 2), np.float32), schema)
    with pytest.raises(ValueError, match="float32"):
        Catalog(("a",), np.zeros((1, 2)), schema)
    with pytest.raises(ValueError, match="unique"):
        Catalog(("a", "a"), np.zeros((2, 2), np.float32), schema)
    with pytest.raises(ValueError, match="3 feature names for 2 columns"):
        Catalog(("a",), np.zeros((1, 2), np.float32), schema, item_feature_names=("x", "y", "z"))


@pytest.mark.ml100k
@pytest.mark.skipif(
    not ML100K.exists(), reason="MovieLens 100K not found at ../shared/data/ml-100k"
)
def test_movielens_100k_catalog() -> None:
    catalog = build_catalog(ML100K)
    assert catalog.num_items == 1682 and catalog.item_feature_dim == 19
    assert catalog.item_titles[0] == "Toy Story (1995)"
    columns = {c.attribute: c for c in catalog.user_schema.columns}
    assert set(columns) == {"age", "gender", "occupation", "zip"}
    assert (
        columns["occupation"].encoding == "one-hot" and len(columns["occupation"].categories) == 21
    )
    assert catalog.user_feature_dim == 1 + 2 + 21 + 11


def _synthetic(users: int, items: int):  # type: ignore[no-untyped-def]
    from fedrec.common.data.synthetic import SyntheticConfig

    return SyntheticConfig(num_users=users, num_items=items)


def test_schema_disclosures_name_rare_categories_and_thin_range_ends() -> None:
    from fedrec.common.data.catalog import schema_disclosures
    from fedrec.common.data.features import UserFeatureSchema

    meta = {str(u): {"score": str(u % 3 if u else 100), "team": "a" if u < 9 else "b",
                     "age": str(20 + u)} for u in range(12)}  # fmt: skip
    users = [str(u) for u in range(12)]
    schema = UserFeatureSchema.fit(meta, users)
    features = schema.encode(meta, users)
    problems = schema_disclosures(schema, features, min_users=3)
    # score: its maximum 100 is one user's; team "b" is held by 3 users: fine at 3; age: fixed
    assert len(problems) == 1 and problems[0].startswith(
        "score: the maximum of its range [0, 100] is"
    )
    assert len(schema_disclosures(schema, features, min_users=4)) == 2  # now team too


def test_a_rewritten_catalog_is_read_again_even_with_the_same_size_and_time(
    catalog: Catalog, tmp_path: Path
) -> None:
    import os

    path = save_catalog(catalog, tmp_path / "catalog.npz")
    first = load_catalog(path)
    stat = path.stat()
    changed = Catalog(
        catalog.item_ids, catalog.item_features + 1.0, catalog.user_schema,
        catalog.item_titles, catalog.item_feature_names, catalog.item_blocks, catalog.source,
    )  # fmt: skip
    save_catalog(changed, path)  # an atomic replace: same size, a new inode
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a coarse clock: same time
    assert path.stat().st_size == stat.st_size
    assert load_catalog(path).hash == changed.hash != first.hash


def test_a_block_can_be_read_and_left_out(catalog: Catalog) -> None:
    found = catalog.block("genres")
    assert found is not None and found[0].shape == (catalog.num_items, catalog.item_feature_dim)
    assert catalog.block("text") is None
    id_only = catalog.without_item_block("genres")
    assert id_only.item_feature_dim == 0 and id_only.item_blocks == ()
    assert id_only.hash != catalog.hash and id_only.item_ids == catalog.item_ids
    with pytest.raises(ValueError, match="no item block 'text'"):
        catalog.without_item_block("text")
