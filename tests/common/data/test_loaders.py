"""Tests for fedrec.common.data.loaders: every format, every bad-input message, de-duplication."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from builders import ML100K

from fedrec.common.data.dataset import RawRatings, to_implicit
from fedrec.common.data.errors import DataFormatError
from fedrec.common.data.loaders import (
    ML1M_GENRES,
    ML100K_GENRES,
    load_csv,
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_latest,
    load_ratings,
)

GENRE_FILE = "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n"


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


def item_line(item_id: int, title: str, genres: tuple[str, ...]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
    return f"{item_id}|{title}|01-Jan-1995||http://example.org|{flags}\n"


def ml100k(tmp_path: Path, data: str | bytes, **extra: str | bytes) -> Path:
    """A MovieLens 100K folder with u.data and the given optional files (u_item=..., ...)."""
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", data, "latin-1")
    for name, text in extra.items():
        write(folder / name.replace("_", "."), text, "latin-1")
    return folder


def check_raw(raw: RawRatings, n: int) -> None:
    assert len(raw.user) == len(raw.item) == len(raw.rating) == len(raw.timestamp) == n
    assert raw.user.dtype.kind in "UO" and raw.item.dtype.kind in "UO"
    assert raw.rating.dtype == np.float64 and raw.timestamp.dtype == np.int64


def error_match(name: str, line: int | None, problem: str) -> str:
    where = f"{name} line {line}" if line is not None else name
    return "^" + re.escape(f"{where}: {problem}")


# --- MovieLens 100K ---------------------------------------------------------------------------


def test_ml100k_full_folder(tmp_path: Path) -> None:
    items = item_line(1, "Toy Story (1995)", ("Animation", "Comedy")) + item_line(
        2, "Misérables, Les (1995)", ("Drama", "War")
    )
    folder = ml100k(
        tmp_path,
        "1\t1\t5\t100\n1\t2\t3\t200\n2\t1\t4\t150\n",
        u_item=items,
        u_user="1|24|M|technician|85711\n2|53|F|other|94043\n",
        u_genre=GENRE_FILE,
    )
    raw = load_movielens_100k(folder)
    check_raw(raw, 3)
    assert raw.format == "ml-100k" and raw.source == str(folder)
    assert raw.user.tolist() == ["1", "1", "2"] and raw.item.tolist() == ["1", "2", "1"]
    assert raw.rating.tolist() == [5.0, 3.0, 4.0]
    assert raw.timestamp.tolist() == [100, 200, 150]
    assert raw.genres == ML100K_GENRES and len(raw.genres) == 19
    assert raw.item_meta["1"] == {"title": "Toy Story (1995)", "genres": ["Animation", "Comedy"]}
    assert raw.item_meta["2"] == {"title": "Misérables, Les (1995)", "genres": ["Drama", "War"]}
    assert raw.user_meta["2"] == {"age": "53", "gender": "F", "occupation": "other", "zip": "94043"}
    assert raw.duplicates_removed == 0


def test_ml100k_latin1_title_round_trip(tmp_path: Path) -> None:
    line = item_line(7, "Misérables, Les (1995)", ("Drama",)).encode("latin-1")
    assert b"Mis\xe9rables" in line  # really Latin-1 bytes, not UTF-8
    raw = load_movielens_100k(ml100k(tmp_path, "1\t7\t4\t1\n", u_item=line))
    assert raw.item_meta["7"]["title"] == "Misérables, Les (1995)"


def test_ml100k_only_u_data(tmp_path: Path) -> None:
    raw = load_movielens_100k(ml100k(tmp_path, "10\t20\t4\t1000\r\n\n11\t20\t2\t999\r\n"))
    check_raw(raw, 2)
    assert raw.item_meta == {} and raw.user_meta == {} and raw.genres == ()


def test_ml100k_u_item_without_u_genre_uses_documented_genres(tmp_path: Path) -> None:
    folder = ml100k(tmp_path, "1\t1\t4\t1\n", u_item=item_line(1, "X (1990)", ("unknown",)))
    raw = load_movielens_100k(folder)
    assert raw.genres == ML100K_GENRES and raw.item_meta["1"]["genres"] == ["unknown"]


def test_ml100k_catalog_keeps_unrated_items(tmp_path: Path) -> None:
    items = item_line(1, "A (1990)", ()) + item_line(2, "B (1991)", ("Drama",))
    inter = to_implicit(load_movielens_100k(ml100k(tmp_path, "1\t1\t4\t1\n", u_item=items)))
    assert inter.item_ids == ("1", "2") and inter.item_titles == ("A (1990)", "B (1991)")


@pytest.mark.parametrize(
    ("data", "line", "problem"),
    [
        ("1\t1\t5\t1\n1\t2\t3\n", 2, "expected 4 tab-separated fields, got 3"),
        ("1\t1\t5\t1\t9\n", 1, "expected 4 tab-separated fields, got 5"),
        ("1\t1\t5\t1\n\n\nabc\t2\t3\t4\n", 4, "user id 'abc' is not an integer"),
        ("1\t1.5\t5\t1\n", 1, "item id '1.5' is not an integer"),
        ("1\t1\t5\t1\n1\t2\tgood\t2\n", 2, "rating 'good' is not a number"),
        ("1\t1\tnan\t1\n", 1, "rating 'nan' is not a finite number"),
        ("1\t1\t5\t12.5\n", 1, "timestamp '12.5' is not an integer"),
        ("1\t1\t5\t99999999999999999999999\n", 1, "timestamp '99999999999999999999999'"),
    ],
)
def test_ml100k_bad_u_data(tmp_path: Path, data: str, line: int, problem: str) -> None:
    folder = ml100k(tmp_path, data)
    with pytest.raises(DataFormatError, match=error_match("u.data", line, problem)) as info:
        load_movielens_100k(folder)
    assert info.value.line == line and info.value.path == str(folder / "u.data")
    assert str(folder / "u.data") in str(info.value)


@pytest.mark.parametrize("data", ["", "\n\n", "  \n"])
def test_ml100k_empty_u_data(tmp_path: Path, data: str) -> None:
    with pytest.raises(DataFormatError, match=error_match("u.data", None, "file is empty")):
        load_movielens_100k(ml100k(tmp_path, data))


@pytest.mark.parametrize(
    ("name", "text", "line", "problem"),
    [
        ("u.item", "1|Toy Story|x\n", 1, "expected 24 '|'-separated fields, got 3"),
        ("u.item", item_line(1, "A", ()) + item_line(1, "B", ()), 2, "item id '1' appears more"),
        ("u.item", item_line(1, "A", ()).replace("|0|", "|2|", 1), 1, "genre flag '2' is not 0"),
        ("u.item", "", None, "file is empty"),
        ("u.user", "1|24|M|technician\n", 1, "expected 5 '|'-separated fields, got 4"),
        ("u.user", "1|24|M|x|1\nuser2|30|F|y|2\n", 2, "user id 'user2' is not an integer"),
        ("u.genre", "unknown|0\nAction|x\n", 2, "genre index 'x' is not an integer"),
        ("u.genre", "unknown|0\nAction|1\n\n", None, "expected genre indices 0-18, got [0, 1]"),
    ],
)
def test_ml100k_bad_metadata(
    tmp_path: Path, name: str, text: str, line: int | None, problem: str
) -> None:
    folder = ml100k(tmp_path, "1\t1\t5\t1\n", **{name.replace(".", "_"): text})
    with pytest.raises(DataFormatError, match=error_match(name, line, problem)):
        load_movielens_100k(folder)


def test_ml100k_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MovieLens 100K folder not found"):
        load_movielens_100k(tmp_path / "nope")


# --- duplicates --------------------------------------------------------------------------------


def test_duplicates_keep_latest_timestamp_not_latest_line(tmp_path: Path) -> None:
    data = "1\t1\t3\t200\n2\t1\t4\t10\n1\t1\t5\t100\n1\t1\t1\t150\n"
    raw = load_movielens_100k(ml100k(tmp_path, data))
    assert raw.duplicates_removed == 2
    assert list(zip(raw.user, raw.item, raw.rating, raw.timestamp, strict=True)) == [
        ("1", "1", 3.0, 200),  # the latest timestamp wins although it came first in the file
        ("2", "1", 4.0, 10),
    ]


def test_duplicates_with_equal_timestamps_keep_last_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user,item,rating,timestamp\na,x,1,5\na,x,2,5\nb,x,3,5\n")
    raw = load_csv(path)
    assert raw.duplicates_removed == 1
    assert raw.user.tolist() == ["a", "b"] and raw.rating.tolist() == [2.0, 3.0]


def test_duplicate_ids_are_compared_as_integers_in_movielens(tmp_path: Path) -> None:
    raw = load_movielens_100k(ml100k(tmp_path, "01\t2\t3\t1\n1\t02\t4\t2\n"))
    assert raw.duplicates_removed == 1 and raw.user.tolist() == ["1"] and raw.item.tolist() == ["2"]


# --- MovieLens 1M --------------------------------------------------------------------------------


def ml1m(tmp_path: Path, ratings: str, **extra: str) -> Path:
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", ratings, "latin-1")
    for name, text in extra.items():
        write(folder / name.replace("_", "."), text, "latin-1")
    return folder


def test_ml1m_full_folder(tmp_path: Path) -> None:
    folder = ml1m(
        tmp_path,
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n1::661::4::978302110\n",
        movies_dat=(
            "1193::Misérables, Les (1995)::Drama\n661::James (1996)::Animation|Musical|Zany\n"
        ),
        users_dat="1::F::1::10::48067\n2::M::56::99::70072\n",
    )
    raw = load_movielens_1m(folder)
    check_raw(raw, 3)
    assert raw.format == "ml-1m" and raw.duplicates_removed == 1
    assert raw.rating.tolist() == [5.0, 4.0, 4.0]  # the later (1, 661) rating is kept
    assert raw.genres == (*ML1M_GENRES, "Zany") and len(ML1M_GENRES) == 18
    assert raw.item_meta["1193"] == {"title": "Misérables, Les (1995)", "genres": ["Drama"]}
    assert raw.item_meta["661"]["genres"] == ["Animation", "Musical", "Zany"]
    assert raw.user_meta["1"] == {
        "gender": "F",
        "age": "1",
        "occupation": "K-12 student",
        "zip": "48067",
    }
    assert raw.user_meta["2"]["occupation"] == "99"  # unknown code kept as is


@pytest.mark.parametrize(
    ("name", "text", "line", "problem"),
    [
        ("ratings.dat", "1::2::3::4\n1::2::3\n", 2, "expected 4 '::'-separated fields, got 3"),
        ("ratings.dat", "1::2::3::4\n1:2::3::4\n", 2, "expected 4 '::'-separated fields, got 3"),
        ("ratings.dat", "1::x2::3::4\n", 1, "item id 'x2' is not an integer"),
        ("ratings.dat", "1::2::five::4\n", 1, "rating 'five' is not a number"),
        ("ratings.dat", "", None, "file is empty"),
        ("movies.dat", "1::Title\n", 1, "expected 3 '::'-separated fields, got 2"),
        ("users.dat", "u::F::1::10::48067\n", 1, "user id 'u' is not an integer"),
    ],
)
def test_ml1m_bad_input(
    tmp_path: Path, name: str, text: str, line: int | None, problem: str
) -> None:
    files = {"ratings.dat": "1::2::3::4\n", name: text}
    folder = ml1m(
        tmp_path, files.pop("ratings.dat"), **{k.replace(".", "_"): v for k, v in files.items()}
    )
    with pytest.raises(DataFormatError, match=error_match(name, line, problem)):
        load_movielens_1m(folder)


# --- MovieLens latest ---------------------------------------------------------------------------

LATEST_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
LATEST_MOVIES = (
    "movieId,title,genres\n"
    '1,"American President, The (1995)",Comedy|Drama|Romance\n'
    "3,Amélie (2001),(no genres listed)\n"
)


def latest(
    tmp_path: Path, ratings: str | bytes = LATEST_RATINGS, movies: str | bytes = LATEST_MOVIES
) -> Path:
    folder = tmp_path / "ml-latest-small"
    write(folder / "ratings.csv", ratings)
    write(folder / "movies.csv", movies)
    return folder


def test_ml_latest(tmp_path: Path) -> None:
    raw = load_movielens_latest(latest(tmp_path))
    check_raw(raw, 2)
    assert raw.format == "ml-latest" and raw.rating.tolist() == [4.0, 4.5]
    assert raw.item_meta["1"] == {
        "title": "American President, The (1995)",
        "genres": ["Comedy", "Drama", "Romance"],
    }
    assert raw.item_meta["3"] == {"title": "Amélie (2001)", "genres": []}
    assert raw.genres == ("Comedy", "Drama", "Romance")


@pytest.mark.parametrize(
    ("ratings", "movies", "name", "line", "problem"),
    [
        (
            LATEST_RATINGS.encode() + b"2,1,3.0,5\n3,\xff\xfe,1,2\n",
            LATEST_MOVIES,
            "ratings.csv",
            5,
            "invalid UTF-8: byte 0xff at byte offset "
            + str(len(LATEST_RATINGS) + 12),  # + len("2,1,3.0,5\n3,")
        ),
        (
            LATEST_RATINGS,
            b"movieId,title,genres\n1,Am\xe9lie,Drama\n",
            "movies.csv",
            2,
            "invalid UTF-8",
        ),
        ("", LATEST_MOVIES, "ratings.csv", None, "file is empty"),
        ("userId,movieId,rating,timestamp\n\n", LATEST_MOVIES, "ratings.csv", None, "no data rows"),
        (
            "userId,movieId,rating\n1,1,4\n",
            LATEST_MOVIES,
            "ratings.csv",
            1,
            "missing header column(s): timestamp",
        ),
        (
            LATEST_RATINGS + "u7,1,4,1\n",
            LATEST_MOVIES,
            "ratings.csv",
            4,
            "user id 'u7' is not an integer",
        ),
        (
            LATEST_RATINGS + "1,1,4\n",
            LATEST_MOVIES,
            "ratings.csv",
            4,
            "expected 4 comma-separated fields, got 3",
        ),
        (
            LATEST_RATINGS,
            "movieId,title\n1,A\n",
            "movies.csv",
            1,
            "missing header column(s): genres",
        ),
    ],
)
def test_ml_latest_bad_input(
    tmp_path: Path,
    ratings: str | bytes,
    movies: str | bytes,
    name: str,
    line: int | None,
    problem: str,
) -> None:
    with pytest.raises(DataFormatError, match=error_match(name, line, problem)):
        load_movielens_latest(latest(tmp_path, ratings, movies))


# --- generic CSV ---------------------------------------------------------------------------------


def test_csv_with_features(tmp_path: Path) -> None:
    ratings = write(
        tmp_path / "r.csv",
        "\ufeffitem,user,extra,timestamp,rating\nbook-1,alice,?,10,5\nbook-2, bob ,?,11,2.5\n",
    )
    items = write(
        tmp_path / "items.csv",
        'item,title,genres\nbook-1,"Dune, Part 1",SF|Classic\nbook-2,Ça,Horror\nbook-3,Emma,\n',
    )
    users = write(tmp_path / "users.csv", "user,age,country\nalice,30,FR\nbob,41,DE\n")
    raw = load_csv(ratings, item_features=items, user_features=users)
    check_raw(raw, 2)
    assert raw.format == "csv" and raw.source == str(ratings)
    assert raw.user.tolist() == ["alice", "bob"] and raw.item.tolist() == ["book-1", "book-2"]
    assert raw.rating.tolist() == [5.0, 2.5] and raw.timestamp.tolist() == [10, 11]
    assert raw.genres == ("Classic", "Horror", "SF")
    assert raw.item_meta["book-1"] == {"title": "Dune, Part 1", "genres": ["SF", "Classic"]}
    assert raw.item_meta["book-3"] == {"title": "Emma", "genres": []}
    assert raw.user_meta == {
        "alice": {"age": "30", "country": "FR"},
        "bob": {"age": "41", "country": "DE"},
    }
    inter = to_implicit(raw)
    assert inter.num_items == 3 and inter.item_features.shape == (3, 3)


def test_csv_item_features_without_title(tmp_path: Path) -> None:
    ratings = write(tmp_path / "r.csv", "user,item,rating,timestamp\nu,i,1,1\n")
    items = write(tmp_path / "items.csv", "item,genres\ni,A|B\n")
    assert load_csv(ratings, item_features=items).item_meta == {
        "i": {"title": "", "genres": ["A", "B"]}
    }


HEADER = "user,item,rating,timestamp\n"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (b"", None, "file is empty"),
        (HEADER.encode(), None, "no data rows after the header"),
        (b"user,item\nu,i\n", 1, "missing header column(s): rating, timestamp"),
        (b"user,item,user,rating,timestamp\n", 1, "column 'user' appears twice in the header"),
        ((HEADER + "u,i,1,1,9\n").encode(), 2, "expected 4 comma-separated fields, got 5"),
        ((HEADER + "u,i,1,1\n,i,1,1\n").encode(), 3, "user id is empty"),
        ((HEADER + "u,,1,1\n").encode(), 2, "item id is empty"),
        ((HEADER + "u,i,bad,1\n").encode(), 2, "rating 'bad' is not a number"),
        ((HEADER + "u,i,1,yesterday\n").encode(), 2, "timestamp 'yesterday' is not an integer"),
        (
            HEADER.encode() + b"u,i,1,1\nJos\xe9,i,1,1\n",
            3,
            "invalid UTF-8: byte 0xe9 at byte offset "
            + str(len(HEADER) + 11),  # + len("u,i,1,1\nJos")
        ),
        ((HEADER + 'u,"i,1,1\n').encode(), 2, "expected 4 comma-separated fields, got 2"),
    ],
)
def test_csv_bad_input(tmp_path: Path, text: bytes, line: int | None, problem: str) -> None:
    path = write(tmp_path / "ratings.csv", text)
    with pytest.raises(DataFormatError, match=error_match("ratings.csv", line, problem)):
        load_csv(path)


@pytest.mark.parametrize(
    ("kind", "text", "line", "problem"),
    [
        ("items", "item,title\ni,T\n", 1, "missing header column(s): genres"),
        ("items", "item,genres\ni,A\ni,B\n", 3, "item id 'i' appears more than once"),
        ("users", "id,age\nu,3\n", 1, "missing header column(s): user"),
        ("users", "user,age\n,3\n", 2, "user id is empty"),
        ("users", "user,age\nu,3,4\n", 2, "expected 2 comma-separated fields, got 3"),
    ],
)
def test_csv_bad_feature_files(
    tmp_path: Path, kind: str, text: str, line: int | None, problem: str
) -> None:
    ratings = write(tmp_path / "r.csv", HEADER + "u,i,1,1\n")
    features = write(tmp_path / f"{kind}.csv", text)
    with pytest.raises(DataFormatError, match=error_match(f"{kind}.csv", line, problem)):
        load_csv(ratings, **{f"{kind[:-1]}_features": features})


# --- format detection ---------------------------------------------------------------------------


def test_load_ratings_detects_each_layout(tmp_path: Path) -> None:
    assert load_ratings(ml100k(tmp_path, "1\t1\t1\t1\n")).format == "ml-100k"
    assert load_ratings(str(ml1m(tmp_path, "1::1::1::1\n"))).format == "ml-1m"
    assert load_ratings(latest(tmp_path)).format == "ml-latest"
    csv_path = write(tmp_path / "mine.CSV", HEADER + "u,i,1,1\n")
    assert load_ratings(csv_path).format == "csv"
    items = write(tmp_path / "items.csv", "item,genres\ni,A\n")
    assert load_ratings(csv_path, item_features=items).genres == ("A",)


def test_load_ratings_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    text_file = write(tmp_path / "ratings.txt", "1\t1\t1\t1\n")
    for path in (tmp_path / "empty", text_file):
        with pytest.raises(DataFormatError, match=f"^{path.name}: unknown format") as info:
            load_ratings(path)
        for layout in ("u.data", "ratings.dat", "ratings.csv and movies.csv", ".csv file"):
            assert layout in str(info.value)


def test_a_latest_ratings_csv_without_movies_csv_is_read_as_generic_csv(tmp_path: Path) -> None:
    """A folder with only ratings.csv is the generic CSV folder layout: its header must then
    be user,item,...; MovieLens latest's userId,movieId gets that specific error."""
    only_ratings = write(tmp_path / "half" / "ratings.csv", LATEST_RATINGS).parent
    with pytest.raises(DataFormatError, match=r"missing header column.*user, item"):
        load_ratings(only_ratings)


def test_load_ratings_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data source not found: .*nowhere"):
        load_ratings(tmp_path / "nowhere")


def test_load_ratings_features_need_a_csv_source(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item,genres\ni,A\n")
    with pytest.raises(ValueError, match=r"only to a generic \.csv source"):
        load_ratings(ml100k(tmp_path, "1\t1\t1\t1\n"), item_features=items)


# --- the real MovieLens 100K ---------------------------------------------------------------------


@pytest.mark.ml100k
@pytest.mark.skipif(
    not ML100K.exists(), reason="MovieLens 100K not found at ../shared/data/ml-100k"
)
def test_real_movielens_100k() -> None:
    raw = load_ratings(ML100K)
    check_raw(raw, 100_000)
    assert raw.format == "ml-100k" and raw.duplicates_removed == 0
    assert len(set(raw.user.tolist())) == 943 and len(set(raw.item.tolist())) == 1682
    assert len(raw.item_meta) == 1682 and len(raw.user_meta) == 943
    assert len(raw.genres) == 19 and raw.genres[0] == "unknown"
    assert raw.item_meta["1"]["title"] == "Toy Story (1995)"
    assert raw.item_meta["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert raw.user_meta["1"] == {
        "age": "24",
        "gender": "M",
        "occupation": "technician",
        "zip": "85711",
    }
    all_ratings = to_implicit(raw, threshold=0)
    assert len(all_ratings) == 100_000
    assert (all_ratings.num_users, all_ratings.num_items) == (943, 1682)
    liked = to_implicit(raw, threshold=4)
    assert len(liked) == 55_375 == 34_174 + 21_201
    assert liked.stats["below_threshold"] == 100_000 - 55_375


def test_a_generic_csv_folder_reads_its_item_and_user_files(tmp_path: Path) -> None:
    """The layout `fedrec data prepare` writes: ratings.csv + items.csv + users.csv."""
    (tmp_path / "ratings.csv").write_text("user,item,rating,timestamp\na1,i1,5,10\nb2,i2,3,20\n")
    (tmp_path / "items.csv").write_text("item,title,genres\ni1,One,Drama\ni2,Two,Comedy|Drama\n")
    (tmp_path / "users.csv").write_text("user,age,gender\na1,20-29,F\nb2,*,M\n")
    raw = load_ratings(tmp_path)
    assert raw.format == "csv" and list(raw.user) == ["a1", "b2"]
    assert raw.item_meta["i2"]["genres"] == ["Comedy", "Drama"]
    assert raw.user_meta["a1"] == {"age": "20-29", "gender": "F"}
