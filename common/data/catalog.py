"""The public catalog: what the server and every device share, and nothing about any user.

A catalog is a published artifact (``fedrec catalog build --data PATH|synthetic --out FILE``):

* the items — their ids (the row order of every item table), titles and feature matrix, in
  named blocks (``genres`` now; room for a ``text`` embedding block with its provenance);
* the user-feature **schema** — attribute names, encodings, category vocabularies and numeric
  ranges, and the width of the vector (:class:`~fedrec.common.data.features.UserFeatureSchema`):
  how a device encodes its own attributes, never anyone's values;
* where it was built from (data format and rating threshold, not the path) and a SHA-256
  content hash over all of the above.

The ServerApp loads only this file; it sends the hash with every round and a device refuses a
round whose hash differs from its own catalog's (``client/mods.py: CatalogCheck``).

File layout: a NumPy ``.npz`` read with ``allow_pickle=False`` holding ``item_features``
(float32, items × features) and ``meta`` (the UTF-8 JSON below as uint8). The hash is
SHA-256 over the canonical JSON of ``meta`` without its ``sha256`` field, a NUL byte, the
matrix's dtype and shape, and its bytes; :func:`load_catalog` recomputes it and refuses a file
whose content does not match (damaged, edited, or written by another tool).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.data.dataset import Interactions
from fedrec.common.data.features import UserFeatureSchema, append_item_block
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.synthetic import SyntheticConfig
from fedrec.common.files import write_atomic

__all__ = [
    "CATALOG_FORMAT",
    "Catalog",
    "CatalogError",
    "ItemBlock",
    "build_catalog",
    "dump_catalog",
    "load_catalog",
    "read_catalog",
    "save_catalog",
    "schema_disclosures",
]

CATALOG_FORMAT = 1  # bumped with any change to the layout or the hash
_KIND = "fedrec-catalog"
_FEATURES, _META = "item_features", "meta"


class CatalogError(ValueError):
    """A catalog file cannot be used; the message names the file and the problem."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        super().__init__(f"catalog {source}: {problem}")


@dataclass(frozen=True)
class ItemBlock:
    """A named run of columns of the item feature matrix, and where its values came from."""

    name: str  # "genres", "text", ...
    width: int
    provenance: Mapping[str, Any] = field(default_factory=dict)  # e.g. encoder, weights sha256

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "provenance": dict(self.provenance)}


@dataclass(frozen=True, eq=False)
class Catalog:
    """Public item metadata and the user-feature schema: identical on the server and devices."""

    item_ids: tuple[str, ...]  # dense item index -> raw id
    item_features: np.ndarray  # (num_items, F_i) float32: the blocks side by side
    user_schema: UserFeatureSchema  # the private user features' encoding (not their values)
    item_titles: tuple[str, ...] = ()  # empty, or one per item
    item_feature_names: tuple[str, ...] = ()  # empty (unnamed), or one per column
    item_blocks: tuple[ItemBlock, ...] = ()  # empty: one unnamed block of every column
    source: Mapping[str, Any] = field(default_factory=dict)  # data format, threshold

    def __post_init__(self) -> None:
        features = self.item_features
        if features.ndim != 2 or features.shape[0] != len(self.item_ids):
            raise ValueError(
                f"item_features must be (items, features) with one row per item id: got"
                f" {features.shape} for {len(self.item_ids)} ids"
            )
        if features.dtype != np.float32:
            raise ValueError(f"item_features must be float32, got {features.dtype}")
        if self.item_titles and len(self.item_titles) != len(self.item_ids):
            raise ValueError(f"{len(self.item_titles)} titles for {len(self.item_ids)} items")
        if self.item_feature_names and len(self.item_feature_names) != features.shape[1]:
            raise ValueError(
                f"{len(self.item_feature_names)} feature names for {features.shape[1]} columns"
            )
        if self.item_blocks and sum(b.width for b in self.item_blocks) != features.shape[1]:
            raise ValueError(
                f"item blocks {[b.name for b in self.item_blocks]} cover"
                f" {sum(b.width for b in self.item_blocks)} of {features.shape[1]} columns"
            )
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ValueError("item ids must be unique")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_feature_dim(self) -> int:
        return int(self.item_features.shape[1])

    @property
    def user_feature_dim(self) -> int:
        return self.user_schema.width

    def block(self, name: str) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """The columns of item block ``name`` and their names (None: the catalog has none)."""
        columns = self._columns(name)
        if columns is None:
            return None
        width = columns.stop - columns.start
        names = self.item_feature_names[columns] or tuple(f"{name}[{j}]" for j in range(width))
        return self.item_features[:, columns], names

    def _columns(self, name: str) -> slice | None:
        """Where item block ``name`` lies in the feature matrix (None: no such block)."""
        offset = 0
        for block in self.item_blocks:
            if block.name == name:
                return slice(offset, offset + block.width)
            offset += block.width
        return None

    def prefix(self, count: int) -> Catalog:
        """The catalog of its first ``count`` items: the earlier version, if it grew by
        appending items (same schema, blocks and provenance, so the same hash)."""
        if not 1 <= count <= self.num_items:
            raise ValueError(f"a prefix of 1 to {self.num_items} items, not {count}")
        return Catalog(
            item_ids=self.item_ids[:count],
            item_features=np.ascontiguousarray(self.item_features[:count]),
            user_schema=self.user_schema,
            item_titles=self.item_titles[:count],
            item_feature_names=self.item_feature_names,
            item_blocks=self.item_blocks,
            source=self.source,
        )

    def extends(self, sha256: str, count: int) -> bool:
        """Whether this catalog is the catalog ``sha256`` of ``count`` items with new items
        appended: every earlier item keeps its row, id, title and features."""
        return 1 <= count < self.num_items and self.prefix(count).hash == sha256

    def indices_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The dense indices of ``item_ids``; an id the catalog does not list is an error."""
        index = self._index
        unknown = [item for item in item_ids if item not in index]
        if unknown:
            raise ValueError(
                f"item ids {unknown[:5]} are not in catalog {self.hash[:12]}"
                f" ({self.num_items} items, e.g. {list(self.item_ids[:3])})"
            )
        return np.array([index[item] for item in item_ids], dtype=np.int64)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    @cached_property
    def hash(self) -> str:
        """SHA-256 (hex) of the catalog's content: the version a round is trained on."""
        return _content_hash(self._meta(), self.item_features)

    @classmethod
    def of(cls, data: Interactions) -> Catalog:
        """The public part of a data set: its items and its user-feature schema."""
        return cls(
            item_ids=data.item_ids,
            item_features=np.ascontiguousarray(data.item_features, dtype=np.float32),
            user_schema=data.user_schema,
            item_titles=data.item_titles,
            item_feature_names=data.item_feature_names,
            item_blocks=(ItemBlock("genres", data.item_features.shape[1]),),
            source={"format": data.format, "threshold": float(data.stats.get("threshold", 0.0))},
        )

    @classmethod
    def of_features(cls, item_features: np.ndarray, user_feature_dim: int) -> Catalog:
        """An anonymous catalog of the given shapes (benchmarks and tests of model code)."""
        ids = tuple(str(i) for i in range(len(item_features)))
        schema = UserFeatureSchema.anonymous(user_feature_dim)
        return cls(ids, np.ascontiguousarray(item_features, dtype=np.float32), schema)

    def with_item_block(
        self, name: str, block: np.ndarray, provenance: Mapping[str, Any]
    ) -> Catalog:
        """A new catalog (a new hash) with ``block`` (items × D) appended to the features."""
        if any(b.name == name for b in self.item_blocks):
            raise ValueError(f"the catalog already has an item block {name!r}")
        names = self.item_feature_names or tuple(f"f[{j}]" for j in range(self.item_feature_dim))
        features, names = append_item_block(self.item_features, names, block, name)
        blocks = self.item_blocks or (ItemBlock("features", self.item_feature_dim),)
        return Catalog(
            item_ids=self.item_ids,
            item_features=features,
            user_schema=self.user_schema,
            item_titles=self.item_titles,
            item_feature_names=names,
            item_blocks=(*blocks, ItemBlock(name, int(block.shape[1]), dict(provenance))),
            source=self.source,
        )

    def without_item_block(self, name: str) -> Catalog:
        """A new catalog (a new hash) without the block ``name``'s columns: e.g. an ID-only
        or a text-only item tower, for comparing feature sets."""
        columns = self._columns(name)
        if columns is None:
            found = [b.name for b in self.item_blocks] or "none"
            raise ValueError(f"the catalog has no item block {name!r} (its blocks: {found})")
        keep = np.ones(self.item_feature_dim, dtype=bool)
        keep[columns] = False
        names = tuple(n for n, k in zip(self.item_feature_names, keep, strict=True) if k)
        return Catalog(
            item_ids=self.item_ids,
            item_features=np.ascontiguousarray(self.item_features[:, keep]),
            user_schema=self.user_schema,
            item_titles=self.item_titles,
            item_feature_names=names if self.item_feature_names else (),
            item_blocks=tuple(b for b in self.item_blocks if b.name != name),
            source=self.source,
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "format": CATALOG_FORMAT,
            "item_ids": list(self.item_ids),
            "item_titles": list(self.item_titles),
            "item_feature_names": list(self.item_feature_names),
            "item_blocks": [b.to_dict() for b in self.item_blocks],
            "user_schema": self.user_schema.to_dict(),
            "source": dict(self.source),
        }


def schema_disclosures(
    schema: UserFeatureSchema, user_features: np.ndarray, min_users: int
) -> list[str]:
    """What the schema would tell about fewer than ``min_users`` users if published.

    A one-hot attribute lists every category found in the data, a scaled one its minimum and
    maximum: a category only a few users hold, or a range end only a few users reach, names
    those users' values. (Age and zip region use fixed encodings and publish nothing of the
    data.) ``user_features`` are the encoded rows of the data the schema was fitted on.
    """
    problems, start = [], 0
    for column in schema.columns:
        block = user_features[:, start : start + column.width]
        start += column.width
        if column.encoding == "one-hot":
            counts = block.sum(axis=0)
            rare = [c for c, n in zip(column.categories, counts, strict=True) if n < min_users]
            if rare:
                problems.append(
                    f"{column.attribute}: {len(rare)} of {len(column.categories)} categories are"
                    f" held by fewer than {min_users} users (e.g. {rare[:3]})"
                )
        elif column.encoding == "scaled" and column.high > column.low:
            ends = {"minimum": (block == 0.0).sum(), "maximum": (block == 1.0).sum()}
            thin = [name for name, n in ends.items() if n < min_users]
            if thin:
                verb = "is" if len(thin) == 1 else "are"
                problems.append(
                    f"{column.attribute}: the {' and the '.join(thin)} of its range"
                    f" [{column.low:g}, {column.high:g}] {verb} reached by fewer than"
                    f" {min_users} users"
                )
    return problems


def build_catalog(
    data: str | Path, *, threshold: float = 0.0, synthetic: SyntheticConfig | None = None
) -> Catalog:
    """The catalog of a data source (``"synthetic"`` or a path ``load_interactions`` reads)."""
    return Catalog.of(load_interactions(data, threshold=threshold, synthetic=synthetic))


def dump_catalog(catalog: Catalog) -> bytes:
    """The bytes of ``catalog``'s file (what :func:`save_catalog` writes)."""
    meta = {**catalog._meta(), "sha256": catalog.hash}
    encoded = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, meta=encoded, item_features=catalog.item_features)  # _META, _FEATURES
    return buffer.getvalue()


def save_catalog(catalog: Catalog, path: str | Path) -> Path:
    """Write ``catalog`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    return write_atomic(path, dump_catalog(catalog))


def load_catalog(path: str | Path) -> Catalog:
    """Read and verify a catalog file; a file that changed is read again (the cache is keyed
    by its path, device, inode, size and modification time: every node of a simulation asks
    for it in every call, so a call costs one ``stat`` once the file is read, and a rewrite —
    atomic, so a new inode — is always seen)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError as err:
        raise CatalogError(
            path, "no such file: build it with `fedrec catalog build --data PATH --out FILE`"
        ) from err
    except OSError as err:
        raise CatalogError(path, f"cannot be read ({err.strerror})") from err
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return _load_cached(*key)


def read_catalog(data: bytes, source: str | Path = "<bytes>") -> Catalog:
    """Parse and verify the bytes of a catalog file."""
    if not data.startswith(b"PK"):  # every .npz is a zip archive
        raise CatalogError(source, "not a readable catalog file (not an .npz archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            names = set(stored.files)
            if names != {_META, _FEATURES}:
                raise CatalogError(source, f"holds {sorted(names)}, not a fedrec catalog")
            meta = json.loads(bytes(stored[_META]).decode("utf-8"))
            features = stored[_FEATURES]
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        if isinstance(err, CatalogError):
            raise
        # (numpy's own message advises loading the file with pickle: never for a catalog)
        raise CatalogError(
            source, "not a readable catalog file (a damaged or foreign .npz)"
        ) from err
    if not isinstance(meta, dict) or meta.get("kind") != _KIND:
        raise CatalogError(source, "not a fedrec catalog (no 'kind' marker)")
    if meta.get("format") != CATALOG_FORMAT:
        raise CatalogError(
            source, f"format {meta.get('format')!r}; this fedrec reads format {CATALOG_FORMAT}"
        )
    if features.dtype != np.float32 or features.ndim != 2:
        raise CatalogError(
            source, f"item features are {features.dtype} {features.shape}, not 2-D float32"
        )
    stored_hash = meta.pop("sha256", None)
    if _content_hash(meta, features) != stored_hash:
        raise CatalogError(
            source,
            "its content does not match its sha256 (damaged or edited): rebuild it with"
            " `fedrec catalog build`",
        )
    try:
        return Catalog(
            item_ids=tuple(str(i) for i in meta["item_ids"]),
            item_features=features,
            user_schema=UserFeatureSchema.from_dict(meta["user_schema"]),
            item_titles=tuple(str(t) for t in meta["item_titles"]),
            item_feature_names=tuple(str(n) for n in meta["item_feature_names"]),
            item_blocks=tuple(
                ItemBlock(str(b["name"]), int(b["width"]), dict(b.get("provenance", {})))
                for b in meta["item_blocks"]
            ),
            source=dict(meta["source"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CatalogError(source, f"malformed metadata: {err}") from err


@lru_cache(maxsize=4)
def _load_cached(path: str, device: int, inode: int, size: int, mtime_ns: int) -> Catalog:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CatalogError(path, f"cannot be read ({err.strerror})") from err
    return read_catalog(data, path)


def _content_hash(meta: Mapping[str, Any], features: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    digest.update(b"\0")
    array = np.ascontiguousarray(features, dtype="<f4")
    digest.update(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()
