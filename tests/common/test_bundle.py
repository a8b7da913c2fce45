"""Tests for fedrec.common.bundle: the NumPy inference bundle ranks as the torch model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.common.bundle import (
    build_bundle,
    load_bundle,
    quantize_rows,
    save_bundle,
)
from fedrec.common.data.catalog import Catalog
from fedrec.common.model import SeedModel, device_model, initial_shared_state

DIM = 16


def _trained_like(catalog: Catalog, seed: int) -> dict[str, torch.Tensor]:
    """A shared group with the spread of a trained one (larger than the initial 0.1 std)."""
    state = initial_shared_state(catalog, DIM, seed)
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def _model(catalog: Catalog, shared: dict[str, torch.Tensor], row: np.ndarray) -> SeedModel:
    model = device_model(catalog, DIM, np.zeros(catalog.user_feature_dim, np.float32))
    model.load_state_dict({**model.state_dict(), **shared}, strict=True)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(row).reshape(1, -1))
    return model


@pytest.mark.parametrize(("bits", "dtype"), [(8, np.uint8), (16, np.uint16)])
def test_quantized_rows_are_within_half_a_level(bits: int, dtype: type) -> None:
    rng = np.random.default_rng(0)
    rows = np.maximum(rng.normal(size=(50, 8)), 0).astype(np.float32)
    rows[3] = 0.0  # an all-zero row decodes to zeros
    codes, scales = quantize_rows(rows, bits)
    levels = 2**bits - 1
    assert codes.dtype == dtype and codes.max() == levels
    np.testing.assert_allclose(scales, rows.max(axis=1) / levels, rtol=1e-6)
    error = np.abs(rows - codes * scales[:, None].astype(np.float64))
    assert (error <= scales[:, None] / 2 * (1 + 1e-3) + 1e-9).all()
    assert not codes[3].any()
    with pytest.raises(ValueError, match="non-negative"):
        quantize_rows(-rows - 1)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_rows(rows, 4)


@pytest.mark.parametrize(("bits", "agreeing"), [(16, 200), (8, 192)])
def test_bundle_logits_are_the_models_and_its_top_10_agrees(
    catalog: Catalog, bits: int, agreeing: int
) -> None:
    """Logits within the rounding bound of the float model's, and the top 10 of 200 random
    users (densely packed scores: 400 items, random weights) as sets: all of them with 16-bit
    codes, 192 with 8 bits (pinned; the 8 others' 10th and 11th float scores differ by less
    than the 8-bit rounding)."""
    shared = _trained_like(catalog, 1)
    bundle = build_bundle({k: v.numpy() for k, v in shared.items()},
                          catalog.item_features, catalog.hash, 7, bits=bits)  # fmt: skip
    assert (bundle.num_items, bundle.dim, bundle.model_round, bundle.bits) == (
        catalog.num_items, DIM, 7, bits,
    )  # fmt: skip
    rng = np.random.default_rng(2)
    features = np.zeros(catalog.user_feature_dim, np.float32)
    agree = 0
    for _ in range(200):
        row = rng.normal(0, 0.5, DIM).astype(np.float32)
        model = _model(catalog, shared, row)
        with torch.no_grad():
            expected = model.score_all(torch.zeros(1, dtype=torch.long))[0].numpy()
            u = model.user_vectors(torch.zeros(1, dtype=torch.long))[0].numpy()
        np.testing.assert_allclose(bundle.user_vector(row, features), u, rtol=1e-5, atol=1e-6)
        logits = bundle.logits(bundle.user_vector(row, features))
        step = bundle.item_vectors().max(axis=0) / bundle.levels  # at most one level per entry
        assert np.abs(logits - expected).max() <= np.abs(bundle.head_weight * u) @ step + 1e-5
        top, scores = bundle.top_k(u, 10)
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits[top])), rtol=1e-6)
        agree += set(top) == set(np.argsort(-expected)[:10])
    assert agree == agreeing


def test_top_k_excludes_and_stops_at_the_catalog(catalog: Catalog) -> None:
    shared = {k: v.numpy() for k, v in _trained_like(catalog, 3).items()}
    bundle = build_bundle(shared, catalog.item_features, catalog.hash)
    u = np.abs(np.random.default_rng(0).normal(size=DIM)).astype(np.float32)
    best, _ = bundle.top_k(u, 5)
    again, _ = bundle.top_k(u, 5, exclude=best[:2])
    assert not set(again) & set(best[:2]) and list(again[:3]) == list(best[2:5])
    everything, scores = bundle.top_k(u, catalog.num_items + 10, exclude=np.arange(3))
    assert len(everything) == catalog.num_items - 3 and (np.diff(scores) <= 0).all()
    with pytest.raises(ValueError, match="user tower takes"):
        bundle.user_vector(np.zeros(DIM + 1, np.float32), np.zeros(catalog.user_feature_dim))


def test_a_bundle_file_round_trips_and_bad_ones_are_refused(
    catalog: Catalog, tmp_path: Path
) -> None:
    shared = {k: v.numpy() for k, v in _trained_like(catalog, 4).items()}
    bundle = build_bundle(shared, catalog.item_features, catalog.hash, 3)
    path = save_bundle(bundle, tmp_path / "bundle.npz")
    back = load_bundle(path)
    u = np.ones(DIM, np.float32)
    np.testing.assert_array_equal(back.logits(u), bundle.logits(u))
    assert (back.catalog_sha256, back.model_round) == (catalog.hash, 3)
    assert bundle.item_codes.nbytes == 2 * catalog.num_items * DIM  # half of float32 V
    assert path.stat().st_size < sum(a.nbytes for a in shared.values())  # the float32 model's
    small = build_bundle(shared, catalog.item_features, catalog.hash, bits=8)
    assert small.item_codes.nbytes == catalog.num_items * DIM

    with pytest.raises(ValueError, match="the model was trained on another catalog"):
        build_bundle(shared, catalog.item_features[:-1], catalog.hash)
    with pytest.raises(ValueError, match=r"lacks \['head\.bias'\]"):
        build_bundle({k: v for k, v in shared.items() if k != "head.bias"},
                     catalog.item_features, catalog.hash)  # fmt: skip
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(
        tmp_path / "int8.npz", **{**arrays, "item_codes": arrays["item_codes"].astype(np.int8)}
    )
    with pytest.raises(ValueError, match="do not form a bundle"):
        load_bundle(tmp_path / "int8.npz")
    np.savez(tmp_path / "old.npz", **{**arrays, "meta": np.array('{"format": "x/0"}')})
    with pytest.raises(ValueError, match="format 'x/0'"):
        load_bundle(tmp_path / "old.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not an inference bundle"):
        load_bundle(tmp_path / "junk.npz")


def test_a_bundle_of_a_model_without_item_ids_ranks_as_the_model(catalog: Catalog) -> None:
    """item-ids = "none": the shared group has no item table and the bundle scores items
    from their features alone, the torch model's logits within the 16-bit rounding."""
    state = initial_shared_state(catalog, DIM, 3, item_ids=False)
    assert "item_embedding.weight" not in state
    generator = torch.Generator().manual_seed(3)
    shared = {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    bundle = build_bundle({k: v.numpy() for k, v in shared.items()},
                          catalog.item_features, catalog.hash)  # fmt: skip
    zeros = np.zeros(catalog.user_feature_dim, np.float32)
    model = device_model(catalog, DIM, zeros, item_ids=False)
    model.load_state_dict({**model.state_dict(), **shared}, strict=True)
    row = np.random.default_rng(4).normal(0, 0.5, DIM).astype(np.float32)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(row).reshape(1, -1))
        expected = model.score_all(torch.zeros(1, dtype=torch.long))[0].numpy()
    logits = bundle.logits(bundle.user_vector(row, zeros))
    np.testing.assert_allclose(logits, expected, atol=1e-3)
    assert bundle.num_items == catalog.num_items
    with pytest.raises(ValueError, match="do not fit the model"):  # a catalog of other width
        build_bundle({k: v.numpy() for k, v in shared.items()},
                     catalog.item_features[:, 1:], catalog.hash)  # fmt: skip
