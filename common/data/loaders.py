"""Read rating data from disk into a :class:`~fedrec.common.data.dataset.RawRatings`.

Accepted layouts (:func:`load_ratings` picks one from the path):

* **MovieLens 100K** (``ml-100k``), a folder with ``u.data``: tab-separated
  ``user item rating timestamp``. Optional: ``u.item`` (``|``-separated, 24 fields:
  ``id|title|release date|video release date|IMDb URL|`` then 19 genre flags 0/1), ``u.genre``
  (``name|index`` lines; without it the 19 documented genre names are used) and ``u.user``
  (``user|age|gender|occupation|zip``). All files are Latin-1.
* **MovieLens 1M** (``ml-1m``), a folder with ``ratings.dat``
  (``UserID::MovieID::Rating::Timestamp``). Optional: ``movies.dat`` (``MovieID::Title::Genres``,
  genres ``|``-separated) and ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``; the
  occupation code is replaced by its documented name). All files are Latin-1. Genres are the
  18 documented ones in the README's order, then any other name seen, sorted.
* **MovieLens latest** (``ml-latest``), a folder with ``ratings.csv``
  (``userId,movieId,rating,timestamp``) and ``movies.csv`` (``movieId,title,genres``; genres
  ``|``-separated, ``(no genres listed)`` means none). UTF-8. Genres are sorted by name.
* **Generic CSV** (``csv``), a ``.csv`` file whose header has ``user,item,rating,timestamp``
  (any order, extra columns ignored). Ids are any non-empty strings. Optional item features CSV
  ``item,genres[,title]`` and user features CSV ``user,<attribute columns...>``. UTF-8 (a BOM
  is allowed). Genres are sorted by name. A folder holding such a ``ratings.csv`` (without a
  ``movies.csv``) is read with its ``items.csv`` and ``users.csv`` when present: the layout
  ``fedrec data prepare`` writes.

Rules shared by all formats: blank lines are skipped; MovieLens ids must be integers (they are
stored in canonical decimal form); ratings are finite numbers and timestamps integers. When a
(user, item) pair occurs more than once only the last rating in timestamp order is kept (ties:
the later line), and the number dropped is reported in ``duplicates_removed``. Malformed input
raises :class:`~fedrec.common.data.errors.DataFormatError` naming the file, the 1-based line and the
problem; a missing required file raises :class:`FileNotFoundError`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedrec.common.data.dataset import RawRatings
from fedrec.common.data.errors import DataFormatError

__all__ = [
    "LAYOUTS",
    "ML1M_GENRES",
    "ML1M_OCCUPATIONS",
    "ML100K_GENRES",
    "NO_GENRES",
    "RATING_COLUMNS",
    "Columns",
    "Rows",
    "load_csv",
    "load_movielens_1m",
    "load_movielens_100k",
    "load_movielens_latest",
    "load_ratings",
]

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML1M_GENRES = ML100K_GENRES[1:]
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
RATING_COLUMNS = ("user", "item", "rating", "timestamp")
LAYOUTS = (
    "a folder with u.data (MovieLens 100K), a folder with ratings.dat (MovieLens 1M), "
    "a folder with ratings.csv and movies.csv (MovieLens latest), "
    "a .csv file with columns user,item,rating,timestamp, "
    "or a folder with such a ratings.csv (+ items.csv, users.csv)"
)
_SEP_NAMES = {"\t": "tab", "|": "'|'", "::": "'::'"}

Rows = list[list[str]]
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # user, item, rating, timestamp
_RATING_DTYPE = np.dtype([("user", "i8"), ("item", "i8"), ("rating", "f8"), ("timestamp", "i8")])


def load_ratings(
    source: str | Path, *, item_features: Path | None = None, user_features: Path | None = None
) -> RawRatings:
    """Detect the layout of ``source`` (see the module docstring) and load it."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path} (expected {LAYOUTS})")
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_csv(path, item_features=item_features, user_features=user_features)
    if item_features is not None or user_features is not None:
        raise ValueError("item_features/user_features apply only to a generic .csv source")
    if path.is_dir():
        if (path / "u.data").is_file():
            return load_movielens_100k(path)
        if (path / "ratings.dat").is_file():
            return load_movielens_1m(path)
        if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
            return load_movielens_latest(path)
        if (path / "ratings.csv").is_file():  # a generic CSV folder (`fedrec data prepare`)
            items, users = path / "items.csv", path / "users.csv"
            return load_csv(
                path / "ratings.csv",
                item_features=items if items.is_file() else None,
                user_features=users if users.is_file() else None,
            )
    raise DataFormatError(path, f"unknown format: expected {LAYOUTS}")


def load_movielens_100k(folder: Path) -> RawRatings:
    """Load a MovieLens 100K folder (``u.data`` required; ``u.item``/``u.genre``/``u.user``)."""
    folder = _folder(folder, "MovieLens 100K")
    ratings = _dat_ratings(folder / "u.data", "\t")
    genres: tuple[str, ...] = ()
    if (folder / "u.genre").is_file():
        genres = _ml100k_genres(folder / "u.genre")
    items: dict[str, dict] = {}
    if (folder / "u.item").is_file():
        genres = genres or ML100K_GENRES
        items = _ml100k_items(folder / "u.item", genres)
    users: dict[str, dict[str, str]] = {}
    if (folder / "u.user").is_file():
        keys = ("age", "gender", "occupation", "zip")
        for uid, (row, _) in _meta_rows(folder / "u.user", "|", 5, "user id").items():
            users[uid] = dict(zip(keys, row[1:], strict=True))
    return _build(folder, "ml-100k", ratings, genres, items, users)


def load_movielens_1m(folder: Path) -> RawRatings:
    """Load a MovieLens 1M folder (``ratings.dat`` required; ``movies.dat``/``users.dat``)."""
    folder = _folder(folder, "MovieLens 1M")
    ratings = _dat_ratings(folder / "ratings.dat", "::")
    items: dict[str, dict] = {}
    if (folder / "movies.dat").is_file():
        for iid, (row, _) in _meta_rows(folder / "movies.dat", "::", 3, "movie id").items():
            items[iid] = {"title": row[1], "genres": _genre_list(row[2])}
    seen = {g for meta in items.values() for g in meta["genres"]}
    genres = ML1M_GENRES + tuple(sorted(seen - set(ML1M_GENRES)))
    users: dict[str, dict[str, str]] = {}
    if (folder / "users.dat").is_file():
        for uid, (row, _) in _meta_rows(folder / "users.dat", "::", 5, "user id").items():
            occupation = row[3]
            if occupation.isdigit() and int(occupation) < len(ML1M_OCCUPATIONS):
                occupation = ML1M_OCCUPATIONS[int(occupation)]
            users[uid] = {"gender": row[1], "age": row[2], "occupation": occupation, "zip": row[4]}
    return _build(folder, "ml-1m", ratings, genres, items, users)


def load_movielens_latest(folder: Path) -> RawRatings:
    """Load a MovieLens latest / latest-small folder (``ratings.csv``; ``movies.csv``)."""
    folder = _folder(folder, "MovieLens latest")
    path = folder / "ratings.csv"
    header, rows, lines = _read_csv(path, ("userId", "movieId", "rating", "timestamp"))
    cols = tuple(header.index(c) for c in ("userId", "movieId", "rating", "timestamp"))
    items: dict[str, dict] = {}
    if (folder / "movies.csv").is_file():
        items = _item_features(folder / "movies.csv", "movieId", integer_ids=True)
    genres = tuple(sorted({g for meta in items.values() for g in meta["genres"]}))
    return _build(folder, "ml-latest", _ratings(path, rows, lines, cols, True), genres, items, {})


def load_csv(
    path: Path, item_features: Path | None = None, user_features: Path | None = None
) -> RawRatings:
    """Load a generic ``user,item,rating,timestamp`` CSV plus optional feature files."""
    path = Path(path)
    header, rows, lines = _read_csv(path, RATING_COLUMNS)
    cols = tuple(header.index(c) for c in RATING_COLUMNS)
    items = _item_features(Path(item_features), "item") if item_features is not None else {}
    genres = tuple(sorted({g for meta in items.values() for g in meta["genres"]}))
    users: dict[str, dict[str, str]] = {}
    if user_features is not None:
        users = _user_features(Path(user_features))
    return _build(path, "csv", _ratings(path, rows, lines, cols, False), genres, items, users)


# --- reading files -------------------------------------------------------------------------


def _folder(folder: Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    return folder


def _read_text(path: Path, encoding: str) -> str:
    """Decode the whole file; a decoding error names the line and byte offset."""
    if not path.is_file():
        raise FileNotFoundError(f"required file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problem = f"invalid {encoding.upper()}: byte 0x{data[e.start]:02x} at byte offset {e.start}"
        raise DataFormatError(path, problem, line) from e


def _split_lines(path: Path, sep: str, nfields: int) -> tuple[Rows, list[int]]:
    """Split a Latin-1 file into rows of exactly ``nfields`` fields, with their line numbers."""
    rows: Rows = []
    lines: list[int] = []
    for lineno, line in enumerate(_read_text(path, "latin-1").split("\n"), start=1):
        if not line or line.isspace():
            continue
        fields = line.rstrip("\r").split(sep)
        if len(fields) != nfields:
            problem = f"expected {nfields} {_SEP_NAMES[sep]}-separated fields, got {len(fields)}"
            raise DataFormatError(path, problem, lineno)
        rows.append(fields)
        lines.append(lineno)
    if not rows:
        raise DataFormatError(path, "file is empty")
    return rows, lines


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], Rows, list[int]]:
    """Read a UTF-8 CSV with a header; check required columns and every row's field count."""
    reader = csv.reader(io.StringIO(_read_text(path, "utf-8").lstrip("\ufeff"), newline=""))
    header: list[str] | None = None
    rows: Rows = []
    lines: list[int] = []
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if header is None:
                header = [f.strip() for f in fields]
                _check_header(path, header, required, reader.line_num)
            elif len(fields) != len(header):
                problem = f"expected {len(header)} comma-separated fields, got {len(fields)}"
                raise DataFormatError(path, problem, reader.line_num)
            else:
                rows.append(fields)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise DataFormatError(path, f"malformed CSV: {e}", reader.line_num) from e
    if header is None:
        raise DataFormatError(path, "file is empty")
    if not rows:
        raise DataFormatError(path, "no data rows after the header")
    return header, rows, lines


def _check_header(path: Path, header: list[str], required: Sequence[str], line: int) -> None:
    dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if dup is not None:
        raise DataFormatError(path, f"column {dup!r} appears twice in the header", line)
    missing = [c for c in required if c not in header]
    if missing:
        problem = (
            f"missing header column(s): {', '.join(missing)} "
            f"(found: {','.join(header)}; required: {','.join(required)})"
        )
        raise DataFormatError(path, problem, line)


# --- metadata files --------------------------------------------------------------------------


def _meta_rows(path: Path, sep: str, nfields: int, what: str) -> dict[str, tuple[list[str], int]]:
    """Rows of a Latin-1 metadata file keyed by their integer id (first field), stripped."""
    rows, lines = _split_lines(path, sep, nfields)
    keys = _id_keys(path, [r[0] for r in rows], lines, what, True)
    out: dict[str, tuple[list[str], int]] = {}
    for key, row, line in zip(keys, rows, lines, strict=True):
        _unique(path, out, key, line, what)
        out[key] = ([f.strip() for f in row], line)
    return out


def _ml100k_genres(path: Path) -> tuple[str, ...]:
    """``name|index`` lines; the indices must be exactly 0..18."""
    rows, lines = _split_lines(path, "|", 2)
    indices = _ints(path, [r[1] for r in rows], lines, "genre index")
    by_index = {int(i): row[0].strip() for i, row in zip(indices, rows, strict=True)}
    if sorted(by_index) != list(range(len(ML100K_GENRES))):
        problem = f"expected genre indices 0-{len(ML100K_GENRES) - 1}, got {sorted(by_index)}"
        raise DataFormatError(path, problem)
    return tuple(by_index[i] for i in range(len(by_index)))


def _ml100k_items(path: Path, genres: Sequence[str]) -> dict[str, dict]:
    items: dict[str, dict] = {}
    for iid, (row, line) in _meta_rows(path, "|", 5 + len(genres), "item id").items():
        bad = next((f for f in row[5:] if f not in ("0", "1")), None)
        if bad is not None:
            raise DataFormatError(path, f"genre flag {bad!r} is not 0 or 1", line)
        flagged = [g for g, flag in zip(genres, row[5:], strict=True) if flag == "1"]
        items[iid] = {"title": row[1], "genres": flagged}
    return items


def _item_features(path: Path, id_column: str, integer_ids: bool = False) -> dict[str, dict]:
    """``id,title,genres`` CSV (title optional) -> ``{id: {"title", "genres"}}``."""
    header, rows, lines = _read_csv(path, (id_column, "genres"))
    idx, gcol = header.index(id_column), header.index("genres")
    tcol = header.index("title") if "title" in header else None
    keys = _id_keys(path, [r[idx] for r in rows], lines, "item id", integer_ids)
    items: dict[str, dict] = {}
    for key, row, line in zip(keys, rows, lines, strict=True):
        _unique(path, items, key, line, "item id")
        title = row[tcol].strip() if tcol is not None else ""
        items[key] = {"title": title, "genres": _genre_list(row[gcol])}
    return items


def _user_features(path: Path) -> dict[str, dict[str, str]]:
    """``user,<attributes...>`` CSV -> ``{user: {attribute: value}}``."""
    header, rows, lines = _read_csv(path, ("user",))
    idx = header.index("user")
    keys = _id_keys(path, [r[idx] for r in rows], lines, "user id", False)
    users: dict[str, dict[str, str]] = {}
    for key, row, line in zip(keys, rows, lines, strict=True):
        _unique(path, users, key, line, "user id")
        users[key] = {c: v.strip() for c, v in zip(header, row, strict=True) if c != "user"}
    return users


def _genre_list(field: str) -> list[str]:
    return [g.strip() for g in field.split("|") if g.strip() and g.strip() != NO_GENRES]


def _unique(path: Path, seen: dict, key: str, line: int, what: str) -> None:
    if key in seen:
        raise DataFormatError(path, f"{what} {key!r} appears more than once", line)


# --- columns -----------------------------------------------------------------------------------


def _dat_ratings(path: Path, sep: str) -> Columns:
    """MovieLens ``.dat``-style ratings: fast ``np.loadtxt``; on any problem, exact re-parse."""
    text = _read_text(path, "latin-1")
    table = None
    if text.strip():
        try:
            data = io.StringIO(text.replace(sep, "\t"))
            table = np.loadtxt(data, delimiter="\t", dtype=_RATING_DTYPE, comments=None, ndmin=1)
        except ValueError:
            table = None
    if table is None or not np.isfinite(table["rating"]).all():
        rows, lines = _split_lines(path, sep, 4)  # raises the precise DataFormatError
        return _ratings(path, rows, lines, (0, 1, 2, 3), True)
    return table["user"], table["item"], table["rating"], table["timestamp"]


def _ratings(
    path: Path, rows: Rows, lines: list[int], cols: Sequence[int], integer_ids: bool
) -> Columns:
    """The (user, item, rating, timestamp) arrays from the given columns of ``rows``."""
    u, i, r, t = ([row[c] for row in rows] for c in cols)
    return (
        _ids(path, u, lines, "user id", integer_ids),
        _ids(path, i, lines, "item id", integer_ids),
        _floats(path, r, lines, "rating"),
        _ints(path, t, lines, "timestamp"),
    )


def _ints(path: Path, values: list[str], lines: list[int], what: str) -> np.ndarray:
    return _numbers(path, values, lines, what, np.int64)


def _floats(path: Path, values: list[str], lines: list[int], what: str) -> np.ndarray:
    return _numbers(path, values, lines, what, np.float64)


def _numbers(path: Path, values: list[str], lines: list[int], what: str, dtype: type) -> np.ndarray:
    """An int64/float64 column, vectorized; on failure the first bad value gives the message."""
    out: np.ndarray
    try:
        out = np.array(values, dtype=str).astype(dtype)
    except (ValueError, OverflowError):
        out = _numbers_one_by_one(path, values, lines, what, dtype)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        problem = f"{what} {values[bad[0]].strip()!r} is not a finite number"
        raise DataFormatError(path, problem, lines[bad[0]])
    return out


def _numbers_one_by_one(
    path: Path, values: list[str], lines: list[int], what: str, dtype: type
) -> np.ndarray:
    convert, noun = (int, "an integer") if dtype is np.int64 else (float, "a number")
    numbers = []
    for value, line in zip(values, lines, strict=True):
        try:
            numbers.append(convert(value))
        except ValueError:
            raise DataFormatError(path, f"{what} {value.strip()!r} is not {noun}", line) from None
        if dtype is np.int64 and not -(2**63) <= numbers[-1] < 2**63:
            raise DataFormatError(path, f"{what} {value.strip()!r} is out of range", line)
    return np.array(numbers, dtype=dtype)


def _ids(path: Path, values: list[str], lines: list[int], what: str, integer: bool) -> np.ndarray:
    """Ids as int64 (MovieLens) or as non-empty strings (generic CSV)."""
    if integer:
        return _ints(path, values, lines, what)
    values = [v.strip() for v in values]
    empty = next((line for v, line in zip(values, lines, strict=True) if not v), None)
    if empty is not None:
        raise DataFormatError(path, f"{what} is empty", empty)
    return np.array(values, dtype=str)


def _id_keys(
    path: Path, values: list[str], lines: list[int], what: str, integer: bool
) -> list[str]:
    """Metadata ids as the strings used in ``RawRatings`` (canonical decimal for integers)."""
    return [str(v) for v in _ids(path, values, lines, what, integer).tolist()]


def _build(
    source: Path,
    fmt: str,
    columns: Columns,
    genres: tuple[str, ...],
    item_meta: dict[str, dict],
    user_meta: dict[str, dict[str, str]],
) -> RawRatings:
    """De-duplicate (user, item) pairs and turn the ids into strings."""
    user, item, rating, timestamp = columns
    user_ids, user_code = np.unique(user, return_inverse=True)
    item_ids, item_code = np.unique(item, return_inverse=True)
    keep = _keep_last(user_code, item_code, timestamp)
    return RawRatings(
        source=str(source),
        format=fmt,
        user=_as_str(user_ids)[user_code[keep]],
        item=_as_str(item_ids)[item_code[keep]],
        rating=rating[keep].astype(np.float64),
        timestamp=timestamp[keep].astype(np.int64),
        genres=genres,
        item_meta=item_meta,
        user_meta=user_meta,
        duplicates_removed=len(user) - len(keep),
    )


def _as_str(ids: np.ndarray) -> np.ndarray:
    return np.array([str(v) for v in ids.tolist()], dtype=str)


def _keep_last(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Row indices (file order) keeping, per (user, item) code, the latest timestamp, then line."""
    key = user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    sorted_key = np.sort(key)
    if not (sorted_key[1:] == sorted_key[:-1]).any():
        return np.arange(len(key))  # no duplicates: the common case, cheap to detect
    order = np.lexsort((timestamp, key))  # stable: equal (key, timestamp) stay in file order
    grouped = key[order]
    last = np.append(grouped[1:] != grouped[:-1], True)  # last row of each (user, item) group
    return np.sort(order[last])
