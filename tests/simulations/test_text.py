"""Tests for fedrec.simulations.text: the pinned text encoder, embeddings and their cache."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.data.catalog import build_catalog
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.simulations import text
from fedrec.simulations.text import (
    PINNED_FILES,
    TEXT_DIM,
    EncoderError,
    TextFeatures,
    catalog_texts,
    embed_texts,
    encoder_folder,
    item_texts,
    load_text_features,
    verify_encoder,
    with_text_block,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(text.ENCODER_PACKAGE) is None,
    reason="the text encoder is not installed: pip install -e '.[text]'",
)

TOY = "Toy Story (1995). Genres: Animation, Children's, Comedy."
ALADDIN = "Aladdin (1992). Genres: Animation, Children's, Comedy, Musical."
HEAT = "Heat (1995). Genres: Action, Crime, Thriller."


def _copy_of_encoder(tmp_path: Path) -> Path:
    """A folder of links to the installed encoder's files (nothing copied: 90 MB)."""
    source, folder = encoder_folder(), tmp_path / "model"
    for name in PINNED_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(source / name)
    return folder


def test_the_installed_encoder_matches_every_pinned_hash() -> None:
    assert verify_encoder(encoder_folder()) == text.WEIGHTS_SHA256


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_a_file_that_is_not_the_pinned_one_refuses_to_load(tmp_path: Path, name: str) -> None:
    folder = _copy_of_encoder(tmp_path)
    (folder / name).unlink()
    (folder / name).write_bytes(b"not the model")
    with pytest.raises(EncoderError, match=rf"{name} has SHA-256 .* not the pinned"):
        embed_texts([TOY], folder=folder)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    folder = _copy_of_encoder(tmp_path)
    (folder / "vocab.txt").unlink()
    with pytest.raises(EncoderError, match=r"vocab\.txt is missing"):
        verify_encoder(folder)


def test_the_embeddings_are_unit_vectors_that_place_similar_items_together(
    tmp_path: Path,
) -> None:
    """A check that the weights are a working sentence encoder, not only the right bytes:
    two animated children's comedies are closer to each other than to a crime thriller."""
    vectors = embed_texts([TOY, ALADDIN, HEAT], cache_dir=tmp_path)
    assert vectors.shape == (3, TEXT_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, other = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > other + 0.1, (similar, other)


def test_the_cache_embeds_each_text_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = embed_texts([TOY, HEAT], cache_dir=tmp_path)
    encoded: list[list[str]] = []
    real = text._encode

    def counting(folder: Path, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        encoded.append(texts)
        return real(folder, texts, batch_size, progress)

    monkeypatch.setattr(text, "_encode", counting)
    again = embed_texts([HEAT, ALADDIN, TOY], cache_dir=tmp_path)
    assert encoded == [[ALADDIN]]  # only the new text
    np.testing.assert_array_equal(again[[2, 0]], first)
    (tmp_path / next(p.name for p in tmp_path.iterdir())).write_bytes(b"damaged")
    embed_texts([TOY], cache_dir=tmp_path)  # a damaged cache is rebuilt, not trusted
    assert encoded[-1] == [TOY]


@pytest.mark.slow  # a subprocess in a network namespace
def test_the_embed_step_works_with_networking_disabled(tmp_path: Path) -> None:
    """`fedrec features embed` in a process with the hub offline and no usable proxy, and,
    where the machine allows it, in a network namespace without any interface but lo."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}  # fmt: skip
    fedrec = Path(sys.executable).parent / "fedrec"
    command = [str(fedrec), "features", "embed", "--data", "synthetic", "--set",
               "synthetic-items=60", "--set", "synthetic-users=30", "--out",
               str(tmp_path / "text.npz")]  # fmt: skip
    isolated = (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode
        == 0
    )
    if isolated:
        command = ["unshare", "-n", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    features = load_text_features(tmp_path / "text.npz")
    assert features.vectors.shape == (60, TEXT_DIM)
    assert features.provenance["weights_sha256"] == text.WEIGHTS_SHA256
    assert features.provenance["template"] == text.TEMPLATE
    assert list((tmp_path / "xdg" / "fedrec").iterdir())  # cached for the next catalog


def test_a_catalog_takes_the_text_block_with_its_provenance(tmp_path: Path) -> None:
    small = SyntheticConfig(num_users=30, num_items=25, interactions_per_user=10)
    catalog = build_catalog("synthetic", synthetic=small)
    texts = catalog_texts(catalog)
    assert len(texts) == 25 and all(t.endswith(".") and "Genres: " in t for t in texts)
    features = TextFeatures.of(catalog.item_ids, texts, cache_dir=tmp_path)
    features.save(tmp_path / "text.npz")
    loaded = load_text_features(tmp_path / "text.npz")
    grown = with_text_block(catalog, loaded)
    assert grown.item_feature_dim == catalog.item_feature_dim + TEXT_DIM
    assert grown.item_blocks[-1].name == "text"
    assert grown.item_blocks[-1].provenance["weights_sha256"] == text.WEIGHTS_SHA256
    assert grown.hash != catalog.hash
    np.testing.assert_array_equal(grown.item_features[:, -TEXT_DIM:], features.vectors)
    shuffled = TextFeatures(features.item_ids[::-1], features.vectors[::-1], features.provenance)
    np.testing.assert_array_equal(shuffled.aligned(catalog.item_ids), features.vectors)
    with pytest.raises(ValueError, match="no vector for items"):
        TextFeatures(features.item_ids[1:], features.vectors[1:]).aligned(catalog.item_ids)


def test_text_features_of_other_weights_are_refused(tmp_path: Path) -> None:
    vectors = np.zeros((2, TEXT_DIM), np.float32)
    TextFeatures(("a", "b"), vectors, {"weights_sha256": "0" * 64}).save(tmp_path / "t.npz")
    with pytest.raises(ValueError, match="computed with weights '0000"):
        load_text_features(tmp_path / "t.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a fedrec text-features file"):
        load_text_features(tmp_path / "junk.npz")


def test_item_texts_follow_the_template() -> None:
    assert item_texts(["Heat (1995)", ""], [["Action", "Crime"], []]) == [
        "Heat (1995). Genres: Action, Crime.",
        "Untitled. Genres: none.",
    ]
    with pytest.raises(ValueError, match="2 titles for 1 genre lists"):
        item_texts(["a", "b"], [[]])


def test_a_file_beside_the_pinned_ones_is_refused(tmp_path: Path) -> None:
    """The libraries would load an adapter, added tokens or a chat template if present:
    anything not pinned (but the model card) refuses the folder."""
    folder = _copy_of_encoder(tmp_path)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(EncoderError, match=r"not pinned: \['adapter_config.json'\]"):
        embed_texts([TOY], folder=folder)


def test_text_features_of_another_catalogs_texts_are_refused(tmp_path: Path) -> None:
    """Same item ids, other titles (another data set, a renamed item): refused, not joined."""
    small = SyntheticConfig(num_users=30, num_items=25, interactions_per_user=10)
    catalog = build_catalog("synthetic", synthetic=small)
    texts = catalog_texts(catalog)
    texts[3] = "Another film (2001). Genres: Drama."
    features = TextFeatures.of(catalog.item_ids, texts, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=f"item '{catalog.item_ids[3]}' were embedded from"):
        with_text_block(catalog, features)


def test_a_cache_that_is_not_unit_vectors_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = embed_texts([TOY], cache_dir=tmp_path)
    (cache,) = tmp_path.iterdir()
    with np.load(cache) as npz:
        keys = npz["keys"]
    np.savez(cache, keys=keys, vectors=np.full((1, TEXT_DIM), 5.0, np.float32))
    np.testing.assert_allclose(embed_texts([TOY], cache_dir=tmp_path), first, atol=1e-6)


def test_the_text_block_projects_on_its_principal_components() -> None:
    """Vectors that vary along 2 directions of 6 (plus a little noise) keep their distances
    projected on 2 components; the other blocks and the items are untouched."""
    from fedrec.simulations.text import project_text_block

    catalog = build_catalog(
        "synthetic", synthetic=SyntheticConfig(num_users=30, num_items=40, interactions_per_user=10)
    )
    rng = np.random.default_rng(0)
    planar = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 6)) + rng.normal(0, 1e-3, (40, 6))
    with_text = catalog.with_item_block("text", planar.astype(np.float32), {"encoder": "x"})
    projected = project_text_block(with_text, 2)
    block = projected.item_blocks[-1]
    assert (block.name, block.width, block.provenance["encoder"]) == ("text", 2, "x")
    assert block.provenance["explained_variance"] > 0.9999
    np.testing.assert_array_equal(projected.item_features[:, :-2], catalog.item_features)
    distances = np.linalg.norm(planar[:, None] - planar[None], axis=-1)
    kept = projected.item_features[:, -2:].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(kept[:, None] - kept[None], axis=-1), distances,
                               atol=1e-2)  # fmt: skip
    assert projected.hash != with_text.hash and projected.item_ids == catalog.item_ids
    with pytest.raises(ValueError, match=r"text dim 6 must be in \[1, 6\)"):
        project_text_block(with_text, 6)
    with pytest.raises(ValueError, match="no text block to project"):
        project_text_block(catalog, 2)
