"""`fedrec data prepare` end to end on tiny fixtures (and on MovieLens 100K when present).

Every check re-reads the written files: the k-anonymity of the output is recomputed from
ratings.csv + users.csv, and every output file is searched for the key.
"""

from __future__ import annotations

import csv
import json
import stat
from collections import Counter
from pathlib import Path

import pytest
from builders import ML100K
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.common.crypto import load_or_create_key_file
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.simulations.anonymize import AnonymizeConfig, pseudonym
from fedrec.simulations.prepare import PrepareConfig, prepare

runner = CliRunner()

# 11 users. After 10-year bands, with zip dropped: (20-29, M, student) x 5,
# (30-39, F, engineer) x 3 and three singletons -> with k = 3 the singletons are suppressed.
USERS = {
    **{str(u): (str(20 + u), "M", "student", f"8571{u}") for u in range(1, 6)},
    **{str(u): (str(25 + u), "F", "engineer", f"9404{u}") for u in range(6, 9)},
    "9": ("47", "M", "writer", "10001"),
    "10": ("52", "F", "artist", "02139"),
    "11": ("61", "M", "doctor", "T8H1N"),
}
T0 = 881250949  # Thu 1997-12-04 15:55:49 UTC


def ml100k_folder(tmp_path: Path) -> Path:
    """A MovieLens 100K folder: every user rates items 1..3, one hour apart from T0."""
    folder = tmp_path / "raw"
    folder.mkdir()
    data = "".join(
        f"{u}\t{i}\t{(int(u) + i) % 5 + 1}\t{T0 + 3600 * (i - 1) + int(u)}\n"
        for u in USERS
        for i in (1, 2, 3)
    )
    (folder / "u.data").write_text(data, encoding="latin-1")
    users = "".join(f"{u}|{'|'.join(v)}\n" for u, v in USERS.items())
    (folder / "u.user").write_text(users + "12|30|F|other|55555\n", encoding="latin-1")
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)  # Drama
    items = "".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in (1, 2, 3, 4))
    (folder / "u.item").write_text(items, encoding="latin-1")
    return folder


def run(tmp_path: Path, source: Path, **kwargs: object) -> dict:
    config = PrepareConfig(
        source=source,
        out=tmp_path / "out",
        key_file=tmp_path / "keys" / "prepare.key",
        anonymize=AnonymizeConfig(**{"k": 3, **kwargs}),  # type: ignore[arg-type]
    )
    return prepare(config)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def classes_on_disk(out: Path) -> Counter[tuple[str, ...]]:
    """Equivalence classes recomputed from the written files, over the users who rated."""
    users = {row["user"] for row in read_csv(out / "ratings.csv")}
    rows = {row.pop("user"): tuple(row.values()) for row in read_csv(out / "users.csv")}
    assert set(rows) == users  # one users.csv row per user in ratings.csv, no more
    return Counter(rows[u] for u in users)


def test_ml100k_layout_is_prepared(tmp_path: Path) -> None:
    summary = run(tmp_path, ml100k_folder(tmp_path))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "data-handling.json",
        "items.csv",
        "ratings.csv",
        "users.csv",
    ]
    assert json.loads((out / "data-handling.json").read_text()) == summary
    k = summary["k_anonymity"]
    classes = classes_on_disk(out)
    assert min(classes.values()) == k["k_achieved"] == 3 >= k["k_requested"]
    assert classes == Counter(
        {("20-29", "M", "student"): 5, ("30-39", "F", "engineer"): 3, ("*", "*", "*"): 3}
    )
    assert (k["smallest_class_before"], k["users_suppressed"], k["ratings_dropped"]) == (1, 3, 0)
    assert k["quasi_identifiers"] == ["age", "gender", "occupation"]
    assert summary["input"] == {
        "format": "ml-100k",
        "name": "raw",
        "users": 11,
        "ratings": 33,
        "duplicates_removed": 0,
        "items": 4,
        "users_without_ratings_dropped": 1,  # user 12 never rated
    }
    assert (summary["output"]["users"], summary["output"]["ratings"]) == (11, 33)
    assert summary["fields_dropped"] == [
        {"file": "u.user", "field": "zip", "reason": "quasi-identifier dropped (zip-digits 0)"}
    ]
    assert "zip" not in (out / "users.csv").read_text().splitlines()[0]


def test_output_reads_back_with_load_interactions(tmp_path: Path) -> None:
    run(tmp_path, ml100k_folder(tmp_path))
    out = tmp_path / "out"
    data = load_interactions(
        out / "ratings.csv", user_features=out / "users.csv", item_features=out / "items.csv"
    )
    assert (len(data), data.num_users, data.num_items) == (33, 11, 4)  # item 4: catalog only
    assert data.format == "csv" and all(len(u) == 32 for u in data.user_ids)
    assert "gender=F" in data.user_feature_names and "genre=Drama" in data.item_feature_names
    assert len(load_interactions(out / "ratings.csv")) == 33  # `--data DIR/ratings.csv`


def test_timestamps_are_floored_to_the_unit(tmp_path: Path) -> None:
    run(tmp_path, ml100k_folder(tmp_path), time_unit="week")
    rows = read_csv(tmp_path / "out" / "ratings.csv")
    assert {r["timestamp"] for r in rows} == {"880934400"}  # Mon 1997-12-01 00:00 UTC


def test_each_users_time_order_survives_the_coarse_timestamps(tmp_path: Path) -> None:
    """Same-day ratings in reverse item order: the split must still hold out the last ones."""
    folder = ml100k_folder(tmp_path)
    lines = [f"{u}\t{i}\t4\t{T0 + 60 * (4 - i) + int(u)}\n" for u in USERS for i in (1, 2, 3)]
    (folder / "u.data").write_text("".join(lines), encoding="latin-1")  # 3, then 2, then 1
    run(tmp_path, folder)
    out = tmp_path / "out"
    assert len({r["timestamp"] for r in read_csv(out / "ratings.csv")}) == 1  # one day
    raw = load_interactions(folder)
    prepared = load_interactions(out / "ratings.csv", item_features=out / "items.csv")
    for data in (raw, prepared):
        split = temporal_leave_one_out(data, num_candidates=1)
        held = {
            (data.item_ids[v], data.item_ids[t])
            for v, t in zip(split.val_item, split.test_item, strict=True)
        }
        assert held == {("2", "1")}, held  # validation: the second-last, test: the last


def test_pseudonyms_are_stable_under_one_key_and_unlinkable_across_keys(tmp_path: Path) -> None:
    source, key_file = ml100k_folder(tmp_path), tmp_path / "keys" / "prepare.key"

    def pseudonyms(out: str, key: Path) -> set[str]:
        prepare(PrepareConfig(source, tmp_path / out, key, AnonymizeConfig(k=3)))
        return {row["user"] for row in read_csv(tmp_path / out / "ratings.csv")}

    first = pseudonyms("first", key_file)
    assert first == {pseudonym(key_file.read_bytes(), u) for u in USERS}
    assert pseudonyms("again", key_file) == first  # the same key: the same pseudonyms
    assert not pseudonyms("other", tmp_path / "other.key") & first  # a new key: none shared


def test_strict_suppression_drops_users_with_their_ratings(tmp_path: Path) -> None:
    summary = run(tmp_path, ml100k_folder(tmp_path), suppress="users")
    k = summary["k_anonymity"]
    assert (k["users_suppressed"], k["ratings_dropped"], k["k_achieved"]) == (3, 9, 3)
    assert (summary["output"]["users"], summary["output"]["ratings"]) == (8, 24)
    assert min(classes_on_disk(tmp_path / "out").values()) == 3


def test_key_file_is_0600_and_never_in_the_output(tmp_path: Path) -> None:
    out, key_file = tmp_path / "out", tmp_path / "keys" / "prepare.key"
    source = ml100k_folder(tmp_path)
    args = ["data", "prepare", "--in", str(source), "--out", str(out), "--key-file", str(key_file)]
    result = runner.invoke(app, [*args, "--k", "3"])
    assert result.exit_code == 0, result.output
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    summary = json.loads((out / "data-handling.json").read_text())
    assert summary["pseudonymization"]["key_file"] == "created"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 4 and not list(out.rglob("*.key"))
    for path in files:
        blob = path.read_bytes()
        assert key not in blob and key.hex().encode() not in blob.lower(), path
    assert key.hex() not in result.output.lower()
    assert "k-anonymity over age, gender, occupation: smallest class 1 -> 3" in result.output


def test_key_file_inside_the_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"key file .* is inside the output folder"):
        PrepareConfig(ml100k_folder(tmp_path), out, out / "sub" / "k.key")
    args = ["--in", str(tmp_path / "raw"), "--out", str(out), "--key-file", str(out / "k.key")]
    result = runner.invoke(app, ["data", "prepare", *args])
    assert result.exit_code == 2 and "inside the output folder" in " ".join(result.output.split())
    assert not out.exists()


def test_an_existing_key_is_checked(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(ValueError, match="holds 16 bytes, expected 32 random bytes"):
        load_or_create_key_file(short)
    shared = tmp_path / "shared.key"
    shared.write_bytes(b"x" * 32)
    shared.chmod(0o644)
    with pytest.raises(ValueError, match=r"readable by other users .*chmod 600"):
        load_or_create_key_file(shared)
    key, created = load_or_create_key_file(tmp_path / "new" / "fresh.key")
    assert created and load_or_create_key_file(tmp_path / "new" / "fresh.key") == (key, False)


def test_a_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(FileExistsError, match="is not empty"):
        run(tmp_path, ml100k_folder(tmp_path))


def test_bad_input_gives_the_loader_error_and_creates_no_key(tmp_path: Path) -> None:
    source = ml100k_folder(tmp_path)
    (source / "u.data").write_text("1\t1\t5\t100\n1\t2\t5\n", encoding="latin-1")
    key_file = tmp_path / "k.key"
    args = ["--in", str(source), "--out", str(tmp_path / "out"), "--key-file", str(key_file)]
    result = runner.invoke(app, ["data", "prepare", *args])
    assert result.exit_code == 2
    assert "u.data line 2: expected 4 tab-separated fields, got 3" in " ".join(
        result.output.split()
    )
    assert not key_file.exists() and not (tmp_path / "out").exists()


def test_generic_csv_drops_direct_identifiers(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = [f"u{u},i{i},{i},{T0 + i},great film {u}" for u in range(6) for i in range(2)]
    ratings.write_text("user,item,rating,timestamp,review\n" + "\n".join(rows) + "\n")
    users = tmp_path / "people.csv"
    lines = [f"u{u},Person {u},p{u}@x.org,{30 + u},F,0210{u},NZ" for u in range(6)]
    users.write_text("user,Name,email,Age,sex,zip,country\n" + "\n".join(lines) + "\n")
    items = tmp_path / "films.csv"
    items.write_text("item,title,genres,budget\ni0,A,Drama,1\ni1,B,Comedy|Drama,2\n")
    config = PrepareConfig(
        ratings, tmp_path / "out", tmp_path / "k.key", AnonymizeConfig(k=3), users, items
    )
    summary = prepare(config)
    dropped = {(d["file"], d["field"]): d["reason"] for d in summary["fields_dropped"]}
    assert dropped == {
        ("people.csv", "Name"): "direct identifier (name)",
        ("people.csv", "email"): "direct identifier (contact detail)",
        ("people.csv", "zip"): "quasi-identifier dropped (zip-digits 0)",
        ("people.csv", "country"): "not an allowed quasi-identifier (keep it with keep-column)",
        ("ratings.csv", "review"): "direct identifier (user-provided free text)",
        ("films.csv", "budget"): "not carried (items keep item,title,genres)",
    }
    out = tmp_path / "out"
    text = "".join(p.read_text() for p in out.iterdir())
    assert "Person" not in text and "@x.org" not in text and "great film" not in text
    assert read_csv(out / "users.csv")[0].keys() == {"user", "age", "gender"}
    assert classes_on_disk(out) == Counter({("30-39", "F"): 6})
    assert len(load_interactions(out / "ratings.csv", user_features=out / "users.csv")) == 12


def test_movielens_1m_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1::5::100\n")
    with pytest.raises(ValueError, match="not ml-1m"):
        run(tmp_path, folder)


@pytest.mark.ml100k
@pytest.mark.skipif(
    not ML100K.exists(), reason="MovieLens 100K not found at ../shared/data/ml-100k"
)
def test_real_movielens_100k(tmp_path: Path) -> None:
    summary = run(tmp_path, ML100K, k=5)
    out = tmp_path / "out"
    k = summary["k_anonymity"]
    assert k["k_achieved"] >= 5 and min(classes_on_disk(out).values()) == k["k_achieved"]
    # 10-year bands x gender x occupation: 152 classes, the smallest of 1 user; 179 users in
    # classes under 5 have their attributes masked (their ratings stay)
    assert (k["classes_before"], k["smallest_class_before"], k["users_suppressed"]) == (152, 1, 179)
    assert (summary["input"]["users"], summary["output"]["users"]) == (943, 943)
    assert summary["output"]["ratings"] == 100_000
    data = load_interactions(
        out / "ratings.csv", user_features=out / "users.csv", item_features=out / "items.csv"
    )
    assert (len(data), data.num_users, data.num_items) == (100_000, 943, 1682)
    # the split is the raw data's: every user holds out the same items, in the same order
    raw = load_interactions(ML100K)
    key, _ = load_or_create_key_file(tmp_path / "keys" / "prepare.key")
    index = {u: i for i, u in enumerate(data.user_ids)}
    mine, theirs = temporal_leave_one_out(raw), temporal_leave_one_out(data)
    for u, user in enumerate(raw.user_ids):
        v = index[pseudonym(key, user)]
        assert raw.item_ids[mine.test_item[u]] == data.item_ids[theirs.test_item[v]], user
        assert raw.item_ids[mine.val_item[u]] == data.item_ids[theirs.val_item[v]], user
