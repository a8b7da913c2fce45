"""``fedrec data prepare``: read a raw data set, de-identify it, write a copy that can be shared.

The input is anything :func:`fedrec.common.data.loaders.load_ratings` reads except MovieLens 1M (its
ages are already coded ranges): a MovieLens 100K folder, a MovieLens latest folder, or a
generic CSV with optional ``user_features`` / ``item_features`` files. Bad input stops with the
loaders' errors (file, line, problem). :func:`fedrec.simulations.anonymize.anonymize` does the work;
the output folder uses the generic CSV layout::

    DIR/ratings.csv         user,item,rating,timestamp  (pseudonyms; coarsened timestamps)
    DIR/users.csv           user,<generalized quasi-identifiers>  (if the input has user data)
    DIR/items.csv           item,title,genres  (if the input has item metadata)
    DIR/data-handling.json  what was dropped, generalized and suppressed (for the audit report)

It reads back with ``load_interactions(DIR / "ratings.csv", user_features=DIR / "users.csv",
item_features=DIR / "items.csv")``; ``--data DIR/ratings.csv`` reads the ratings alone.

The pseudonym key lives in its own file: created with 32 random bytes and mode 0600 when
missing, read when present. It is never written into DIR or printed (only the first 8 hex
characters of its SHA-256 are recorded, to tell keys apart), and a key file inside DIR is
refused. DIR is written in a staging folder next to it and moved into place at the end, so a
failed run leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedrec.common.crypto import load_or_create_key_file
from fedrec.common.data.dataset import RawRatings
from fedrec.common.data.loaders import RATING_COLUMNS, load_ratings
from fedrec.simulations.anonymize import (
    SUPPRESSED,
    AnonymizeConfig,
    Anonymized,
    anonymize,
    drop_reason,
    key_fingerprint,
)

__all__ = [
    "ITEMS_FILE",
    "RATINGS_FILE",
    "SUMMARY_FILE",
    "SUPPORTED_FORMATS",
    "USERS_FILE",
    "PrepareConfig",
    "prepare",
    "summary_lines",
]

RATINGS_FILE = "ratings.csv"
USERS_FILE = "users.csv"
ITEMS_FILE = "items.csv"
SUMMARY_FILE = "data-handling.json"
SUPPORTED_FORMATS = ("ml-100k", "ml-latest", "csv")


@dataclass(frozen=True)
class PrepareConfig:
    """One ``fedrec data prepare`` run: where to read, where to write, which key, how much."""

    source: Path  # RAW: a data set folder or a ratings .csv
    out: Path  # DIR: created; must be missing or empty
    key_file: Path  # pseudonym key, outside DIR; created if missing
    anonymize: AnonymizeConfig = field(default_factory=AnonymizeConfig)
    user_features: Path | None = None  # generic CSV only: user,<attributes...>
    item_features: Path | None = None  # generic CSV only: item,genres[,title]

    def __post_init__(self) -> None:
        key, out = Path(self.key_file).expanduser().resolve(), Path(self.out).expanduser().resolve()
        if key == out or out in key.parents:
            raise ValueError(
                f"key file {self.key_file} is inside the output folder {self.out}: keep the key "
                "outside the data set you share (e.g. ~/.config/fedrec/prepare.key)"
            )


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run the command: read, de-identify, write DIR; return the data-handling summary."""
    out = Path(config.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {out} exists and is not empty: pass a new folder")
    raw = load_ratings(
        config.source, item_features=config.item_features, user_features=config.user_features
    )
    if raw.format not in SUPPORTED_FORMATS:
        raise ValueError(
            f"{config.source}: prepare reads {', '.join(SUPPORTED_FORMATS)} data, not "
            f"{raw.format} (its ages are coded ranges)"
        )
    key, created = load_or_create_key_file(config.key_file)
    data = anonymize(raw, key, config.anonymize)
    files = _files(data, raw)
    summary = _summary(config, raw, data, key, created, [*files, SUMMARY_FILE])
    files[SUMMARY_FILE] = json.dumps(summary, indent=2) + "\n"
    _write_folder(out, files)
    return summary


def summary_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """A short human account of a :func:`prepare` summary, one line per fact."""
    i, o, k = summary["input"], summary["output"], summary["k_anonymity"]
    p = summary["pseudonymization"]
    action = {"attributes": f"quasi-identifiers masked as {SUPPRESSED!r}", "users": "dropped"}
    dropped = ", ".join(f"{d['field']} ({d['file']})" for d in summary["fields_dropped"])
    generalized = "; ".join(
        f"{name} -> {how}" for name, how in summary["fields_generalized"].items() if name != "user"
    )
    qis = ", ".join(k["quasi_identifiers"]) or "(none)"
    return [
        f"users {i['users']} -> {o['users']} ({k['users_suppressed']} suppressed: "
        f"{action[k['suppression']]}), ratings {i['ratings']} -> {o['ratings']}, "
        f"items {o['items']}",
        f"pseudonyms: HMAC-SHA256, key file {p['key_file']} (fingerprint {p['key_fingerprint']});"
        " keep it private, and keep it to get the same pseudonyms next time",
        f"dropped: {dropped or '(nothing)'}",
        f"generalized: {generalized}",
        f"k-anonymity over {qis}: smallest class {k['smallest_class_before']} -> "
        f"{k['k_achieved']} (k = {k['k_requested']})",
        f"written: {out} ({', '.join(o['files'])})",
    ]


# --- output ----------------------------------------------------------------------------------


def _files(data: Anonymized, raw: RawRatings) -> dict[str, str]:
    """The text of every output file but the summary, by name."""
    files = {
        RATINGS_FILE: _csv_text(
            RATING_COLUMNS,
            zip(
                data.user.tolist(),
                data.item.tolist(),
                (_number(r) for r in data.rating.tolist()),
                data.timestamp.tolist(),
                strict=True,
            ),
        )
    }
    if data.user_columns:
        rows = ((user, *values) for user, values in data.users.items())
        files[USERS_FILE] = _csv_text(("user", *data.user_columns), rows)
    if raw.item_meta:
        rows = (
            (item, meta.get("title", ""), "|".join(meta.get("genres", ())))
            for item, meta in sorted(raw.item_meta.items(), key=lambda im: _id_order(im[0]))
        )
        files[ITEMS_FILE] = _csv_text(("item", "title", "genres"), rows)
    return files


def _csv_text(header: tuple[str, ...], rows: Any) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _id_order(item: str) -> tuple[int, int | str]:
    return (0, int(item)) if item.isdigit() else (1, item)


def _write_folder(out: Path, files: dict[str, str]) -> None:
    """Write ``files`` into a staging folder beside ``out``, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.partial"
    staging.mkdir()  # the usual permissions (umask), unlike a mkdtemp folder
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty before
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- the data-handling summary ---------------------------------------------------------------


def _summary(
    config: PrepareConfig,
    raw: RawRatings,
    data: Anonymized,
    key: bytes,
    created: bool,
    files: list[str],
) -> dict[str, Any]:
    a = config.anonymize
    users_in = set(raw.user.tolist())
    users_out = set(data.user.tolist())
    return {
        "tool": "fedrec data prepare",
        "input": {
            "format": raw.format,
            "name": Path(raw.source).name,
            "users": len(users_in),
            "ratings": len(raw.user),
            "duplicates_removed": int(raw.duplicates_removed),
            "items": len(set(raw.item.tolist()) | set(raw.item_meta)),
            "users_without_ratings_dropped": len(set(raw.user_meta) - users_in),
        },
        "output": {
            "layout": "csv",
            "files": files,
            "users": len(users_out),
            "ratings": len(data.user),
            "items": len(set(data.item.tolist()) | set(raw.item_meta)),
        },
        "pseudonymization": {
            "field": "user",
            "method": "HMAC-SHA256 (RFC 2104) of the UTF-8 user id, first 16 bytes as 32 hex",
            "key_fingerprint": key_fingerprint(key),
            "key_file": "created" if created else "existing",
        },
        "fields_dropped": _dropped(config, raw, data),
        "fields_generalized": data.generalized,
        "fields_kept": {
            "item": "public catalog id",
            "rating": "verbatim",
            **({"title": "public catalog", "genres": "public catalog"} if raw.item_meta else {}),
        },
        "k_anonymity": {
            "quasi_identifiers": list(data.user_columns),
            "k_requested": a.k,
            "k_achieved": data.k.smallest_after,
            "smallest_class_before": data.k.smallest_before,
            "classes_before": data.k.classes_before,
            "classes_after": data.k.classes_after,
            "suppression": a.suppress,
            "marker": SUPPRESSED if a.suppress == "attributes" else None,
            "users_suppressed": len(data.k.suppressed),
            "ratings_dropped": len(raw.user) - len(data.user),
        },
        "config": {
            k.replace("_", "-"): list(v) if isinstance(v, tuple) else v
            for k, v in asdict(a).items()
        },
    }


def _dropped(config: PrepareConfig, raw: RawRatings, data: Anonymized) -> list[dict[str, str]]:
    """Every input field that is not in the output, with the file it came from and why."""
    source = Path(raw.source)
    users_file = "u.user" if raw.format == "ml-100k" else Path(config.user_features or "").name
    dropped = [{"file": users_file, "field": c, "reason": why} for c, why in data.plan.dropped]
    if raw.format == "csv":
        extra = [c for c in _csv_header(source) if c not in RATING_COLUMNS]
        dropped += [
            _not_carried(source.name, c, "ratings keep " + ",".join(RATING_COLUMNS)) for c in extra
        ]
        if config.item_features is not None:
            path = Path(config.item_features)
            extra = [c for c in _csv_header(path) if c not in ("item", "title", "genres")]
            dropped += [_not_carried(path.name, c, "items keep item,title,genres") for c in extra]
    return dropped


def _not_carried(file: str, column: str, what: str) -> dict[str, str]:
    return {"file": file, "field": column, "reason": drop_reason(column) or f"not carried ({what})"}


def _csv_header(path: Path) -> list[str]:
    """The header of a CSV the loaders have already accepted."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        for fields in csv.reader(f):
            if fields and any(x.strip() for x in fields):
                return [x.strip() for x in fields]
    return []
