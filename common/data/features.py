"""Turn raw user and item attributes into dense float feature matrices.

User features (private: they stay on the device with the user's embedding) follow a
:class:`UserFeatureSchema` — per attribute, how its raw text becomes columns:
  * ``age`` -> one number, age / 100 (a band "20-29" counts as its midpoint; missing -> 0)
  * ``zip`` -> one-hot of its first character (US zip regions; "other" for non-digits)
  * any other attribute -> numeric columns are min-max scaled, text columns one-hot encoded
The schema is fitted once on a data set (:meth:`UserFeatureSchema.fit`) and published in the
catalog (names, encodings, category vocabularies and numeric ranges: the *encoding*, no user's
value), so that a device encodes its own attributes exactly as the model expects.

Item features (shared): multi-hot genres now; a text-embedding block can be appended later with
:func:`append_item_block` without touching the model code (it reads the width from the matrix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = [
    "ENCODINGS",
    "FeatureColumn",
    "UserFeatureSchema",
    "append_item_block",
    "encode_item_features",
    "encode_user_features",
]

MISSING = ""
ZIP_REGIONS = (*"0123456789", "other")
ENCODINGS = ("age", "zip-region", "scaled", "one-hot")


@dataclass(frozen=True)
class FeatureColumn:
    """How one raw user attribute becomes columns of the user feature vector."""

    attribute: str  # the raw attribute, e.g. "age", "occupation"
    encoding: str  # one of ENCODINGS
    categories: tuple[str, ...] = ()  # one-hot / zip-region: the columns, in order
    low: float = 0.0  # scaled: (x - low) / (high - low); 0 when high == low
    high: float = 0.0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"user attribute {self.attribute!r}: encoding must be one of {ENCODINGS},"
                f" got {self.encoding!r}"
            )

    @cached_property
    def names(self) -> tuple[str, ...]:
        if self.encoding == "age":
            return ("age/100",)
        if self.encoding == "scaled":
            return (f"{self.attribute}(scaled)",)
        return tuple(f"{self.attribute}={c}" for c in self.categories)

    @cached_property
    def width(self) -> int:
        return len(self.names)

    @classmethod
    def fit(cls, attribute: str, values: Sequence[str]) -> FeatureColumn:
        """The encoding of ``attribute`` given every user's (stripped) raw value."""
        if attribute == "age":
            return cls(attribute, "age")
        if attribute == "zip":
            return cls(attribute, "zip-region", ZIP_REGIONS)
        numbers = [_to_float(v) for v in values]
        if all(not np.isnan(x) for x in numbers):
            column = np.array(numbers, dtype=np.float64)
            return cls(attribute, "scaled", low=float(np.min(column)), high=float(np.max(column)))
        return cls(attribute, "one-hot", tuple(sorted({v for v in values if v != MISSING})))

    def encode(self, values: Sequence[str]) -> np.ndarray:
        """(n, width) float64 columns of ``values`` (stripped raw strings, MISSING if absent)."""
        if self.encoding == "age":
            ages = np.array([_age(v) for v in values], dtype=np.float64)
            return np.nan_to_num(ages / 100.0, nan=0.0)[:, None]
        if self.encoding == "scaled":  # a missing or non-numeric value (a device's) scales to 0
            column = np.array([_to_float(v) for v in values], dtype=np.float64)
            if self.high > self.low:
                scaled = (column - self.low) / (self.high - self.low)
            else:
                scaled = np.zeros_like(column)
            return np.where(np.isnan(scaled), 0.0, scaled)[:, None]
        if self.encoding == "zip-region":
            values = [v[:1] if v[:1].isdigit() else "other" for v in values]
        index = {c: j for j, c in enumerate(self.categories)}
        out = np.zeros((len(values), len(self.categories)), dtype=np.float64)
        for row, value in enumerate(values):
            if value in index:
                out[row, index[value]] = 1.0
        return out

    def decode(self, row: np.ndarray) -> str:
        """A raw value whose encoding is ``row`` (this column's slice); MISSING for zeros
        of a categorical column. ``encode([decode(row)])`` gives ``row`` back (float32)."""
        if self.encoding == "age":
            return repr(float(row[0]) * 100.0)
        if self.encoding == "scaled":
            return repr(self.low + float(row[0]) * (self.high - self.low))
        hot = np.flatnonzero(row)
        return self.categories[int(hot[0])] if len(hot) else MISSING

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attribute": self.attribute, "encoding": self.encoding}
        if self.encoding in ("one-hot", "zip-region"):
            out["categories"] = list(self.categories)
        if self.encoding == "scaled":
            out.update(low=self.low, high=self.high)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureColumn:
        try:
            return cls(
                attribute=str(data["attribute"]),
                encoding=str(data["encoding"]),
                categories=tuple(str(c) for c in data.get("categories", ())),
                low=float(data.get("low", 0.0)),
                high=float(data.get("high", 0.0)),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"user feature column {dict(data)!r} is malformed: {err}") from err


@dataclass(frozen=True)
class UserFeatureSchema:
    """The user feature vector: its columns in order (attributes sorted by name)."""

    columns: tuple[FeatureColumn, ...] = ()

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(name for column in self.columns for name in column.names)

    @cached_property
    def width(self) -> int:
        return sum(column.width for column in self.columns)

    @classmethod
    def anonymous(cls, width: int) -> UserFeatureSchema:
        """``width`` numeric columns ``x0``, ``x1``, … in [0, 1] (tests and benchmarks)."""
        return cls(tuple(FeatureColumn(f"x{j}", "scaled", low=0.0, high=1.0) for j in range(width)))

    @classmethod
    def fit(
        cls, user_meta: Mapping[str, Mapping[str, str]], user_ids: Sequence[str]
    ) -> UserFeatureSchema:
        """The schema of ``user_meta[raw_id][attribute]`` over the users ``user_ids``."""
        attributes = sorted({k for meta in user_meta.values() for k in meta})
        return cls(tuple(FeatureColumn.fit(a, _values(user_meta, user_ids, a)) for a in attributes))

    def encode(
        self, user_meta: Mapping[str, Mapping[str, str]], user_ids: Sequence[str]
    ) -> np.ndarray:
        """``(len(user_ids), width)`` float32 feature rows."""
        if not self.columns:
            return np.zeros((len(user_ids), 0), dtype=np.float32)
        blocks = [c.encode(_values(user_meta, user_ids, c.attribute)) for c in self.columns]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def encode_one(self, attributes: Mapping[str, str]) -> np.ndarray:
        """One user's ``(width,)`` float32 row from its own raw attributes (on its device)."""
        unknown = sorted(set(attributes) - {c.attribute for c in self.columns})
        if unknown:
            known = [c.attribute for c in self.columns]
            raise ValueError(f"user attributes {unknown} are not in the catalog's schema {known}")
        return self.encode({"me": dict(attributes)}, ["me"])[0]

    def decode_one(self, row: np.ndarray) -> dict[str, str]:
        """Raw attributes that :meth:`encode_one` turns into ``row`` (a data set's user
        becoming a device: ``fedrec deploy local``); missing ones are left out."""
        if len(row) != self.width:
            raise ValueError(f"a user feature row of width {len(row)}, the schema has {self.width}")
        out, start = {}, 0
        for column in self.columns:
            value = column.decode(np.asarray(row[start : start + column.width]))
            start += column.width
            if value != MISSING:
                out[column.attribute] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserFeatureSchema:
        schema = cls(tuple(FeatureColumn.from_dict(c) for c in data.get("columns", ())))
        if "width" in data and int(data["width"]) != schema.width:
            raise ValueError(
                f"user feature schema declares width {data['width']}, its columns give"
                f" {schema.width}"
            )
        return schema


def encode_user_features(
    user_meta: Mapping[str, Mapping[str, str]], user_ids: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Fit the schema on ``user_meta`` and encode ``(num_users, F_u)`` float32 rows."""
    schema = UserFeatureSchema.fit(user_meta, user_ids)
    return schema.encode(user_meta, user_ids), schema.names


def encode_item_features(
    item_meta: Mapping[str, Mapping[str, Any]], item_ids: Sequence[str], genres: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Multi-hot genre matrix ``(num_items, len(genres))`` in the order of ``genres``."""
    index = {g: j for j, g in enumerate(genres)}
    out = np.zeros((len(item_ids), len(genres)), dtype=np.float32)
    for row, item in enumerate(item_ids):
        for g in item_meta.get(item, {}).get("genres", ()):
            if g in index:
                out[row, index[g]] = 1.0
    return out, tuple(f"genre={g}" for g in genres)


def append_item_block(
    features: np.ndarray, names: tuple[str, ...], block: np.ndarray, prefix: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Append a dense per-item block (e.g. a text embedding ``(num_items, D)``) to the features."""
    if block.shape[0] != features.shape[0]:
        raise ValueError(
            f"item feature block has {block.shape[0]} rows, the catalog has {features.shape[0]}"
        )
    new_names = tuple(f"{prefix}[{j}]" for j in range(block.shape[1]))
    return np.concatenate([features, block.astype(np.float32)], axis=1), names + new_names


def _values(
    user_meta: Mapping[str, Mapping[str, str]], user_ids: Sequence[str], attribute: str
) -> list[str]:
    return [user_meta.get(u, {}).get(attribute, MISSING).strip() for u in user_ids]


def _age(v: str) -> float:
    low, dash, high = v.partition("-")
    if dash and low.strip().isdigit() and high.strip().isdigit():
        return (float(low) + float(high)) / 2.0
    return _to_float(v)  # "*" (suppressed) and other text: missing


def _to_float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")
