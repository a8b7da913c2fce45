"""Tests for fedrec.simulations.anonymize: pseudonyms, generalization, k-anonymity, one pass."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.data.dataset import RawRatings
from fedrec.simulations import anonymize as anon
from fedrec.simulations.anonymize import (
    SUPPRESSED,
    AnonymizeConfig,
    age_band,
    anonymize,
    coarsen_timestamps,
    equivalence_classes,
    k_anonymize,
    key_fingerprint,
    plan_user_columns,
    pseudonym,
    pseudonymize,
    zip_prefix,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
IDS = [str(i) for i in range(1, 1001)]
DAY, WEEK = 86_400, 7 * 86_400


# --- pseudonyms ------------------------------------------------------------------------------


def test_pseudonym_is_the_stdlib_hmac_sha256_truncated_to_16_bytes() -> None:
    reference = hmac.new(KEY_A, b"196", hashlib.sha256).hexdigest()[:32]
    assert pseudonym(KEY_A, "196") == reference == "bad20b2eaee3b3fa9c9fb015059d910f"


def test_pseudonyms_are_stable_under_one_key() -> None:
    first, again = pseudonymize(KEY_A, IDS), pseudonymize(KEY_A, reversed(IDS))
    assert first == again
    assert all(len(p) == 32 and int(p, 16) >= 0 for p in first.values())
    assert len(set(first.values())) == len(IDS)


def test_pseudonyms_under_two_keys_are_unlinkable() -> None:
    a, b = pseudonymize(KEY_A, IDS), pseudonymize(KEY_B, IDS)
    assert not set(a.values()) & set(b.values())  # no pseudonym shared between the keys
    # nor is one an order-preserving relabelling of the other: the ranks are uncorrelated
    rank_a = np.argsort(np.argsort([a[u] for u in IDS]))
    rank_b = np.argsort(np.argsort([b[u] for u in IDS]))
    assert abs(np.corrcoef(rank_a, rank_b)[0, 1]) < 0.1


def test_pseudonymize_needs_a_32_byte_key() -> None:
    with pytest.raises(ValueError, match="must be 32 bytes, got 16"):
        pseudonymize(KEY_A[:16], IDS)


def test_a_collision_stops_rather_than_merging_two_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anon, "pseudonym", lambda key, user_id: "same")
    with pytest.raises(ValueError, match="share a pseudonym"):
        pseudonymize(KEY_A, ["1", "2"])


def test_key_fingerprint_is_a_sha256_prefix_not_the_key() -> None:
    assert key_fingerprint(KEY_A) == hashlib.sha256(KEY_A).hexdigest()[:8] == "630dcd29"
    assert key_fingerprint(KEY_A) not in KEY_A.hex()


# --- generalization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "ts", "start"),
    [
        ("day", 881250949, 881193600),  # Thu 1997-12-04 15:55:49 -> 1997-12-04 00:00 UTC
        ("week", 881250949, 880934400),  # -> Mon 1997-12-01
        ("month", 881250949, 880934400),  # -> 1997-12-01 (a Monday too)
        ("day", 874965758, 874886400),  # Mon 1997-09-22 22:02:38 -> 1997-09-22
        ("week", 874965758, 874886400),  # a Monday is its own week start
        ("month", 874965758, 873072000),  # -> 1997-09-01
        ("week", 881539199, 880934400),  # Sun 1997-12-07 23:59:59 -> Mon 1997-12-01
        ("day", -1, -86_400),  # 1969-12-31 23:59:59 -> 1969-12-31
        ("week", -1, -3 * 86_400),  # -> Mon 1969-12-29
        ("month", -1, -31 * 86_400),  # -> 1969-12-01
    ],
)
def test_coarsen_timestamps_pins(unit: str, ts: int, start: int) -> None:
    assert coarsen_timestamps(np.array([ts]), unit).tolist() == [start]


@settings(max_examples=200, deadline=None)
@given(
    ts=st.lists(st.integers(-(10**10), 10**10), min_size=1, max_size=20),
    unit=st.sampled_from(["day", "week", "month"]),
)
def test_coarsening_floors_to_an_idempotent_unit_start(ts: list[int], unit: str) -> None:
    x = np.array(ts, dtype=np.int64)
    start = coarsen_timestamps(x, unit)
    longest = {"day": DAY, "week": WEEK, "month": 31 * DAY}[unit]
    assert ((start <= x) & (x - start < longest)).all()
    assert (start % DAY == 0).all()
    assert (coarsen_timestamps(start, unit) == start).all()


def test_coarsen_rejects_an_unknown_unit() -> None:
    with pytest.raises(ValueError, match="time unit must be one of day, week, month"):
        coarsen_timestamps(np.array([0]), "hour")


@pytest.mark.parametrize(
    ("age", "width", "band"),
    [
        ("24", 10, "20-29"),
        ("20", 10, "20-29"),
        ("29", 10, "20-29"),
        ("7", 10, "0-9"),
        ("73", 20, "60-79"),
        ("24.9", 10, "20-29"),
        (" 24 ", 5, "20-24"),
        ("24", 1, "24"),
        ("", 10, ""),  # missing stays missing
    ],
)
def test_age_bands(age: str, width: int, band: str) -> None:
    assert age_band(age, width) == band


@pytest.mark.parametrize("bad", ["abc", "-3", "nan", "inf"])
def test_age_band_rejects_what_is_not_an_age(bad: str) -> None:
    with pytest.raises(ValueError, match="age"):
        age_band(bad, 10)


def test_zip_prefix() -> None:
    assert zip_prefix("85711", 3) == "857"
    assert zip_prefix(" t8h1n", 2) == "T8"
    assert zip_prefix("12", 5) == "12"


def test_column_plan_drops_direct_identifiers_and_unknown_columns() -> None:
    columns = ["Name", "E-Mail", "age", "sex", "occupation", "zip", "country", "Free Text"]
    plan = plan_user_columns(columns, AnonymizeConfig())
    assert plan.kept == (("age", "age"), ("sex", "gender"), ("occupation", "occupation"))
    reasons = dict(plan.dropped)
    assert reasons["Name"] == "direct identifier (name)"
    assert reasons["E-Mail"] == "direct identifier (contact detail)"
    assert reasons["Free Text"] == "direct identifier (user-provided free text)"
    assert reasons["zip"] == "quasi-identifier dropped (zip-digits 0)"
    assert reasons["country"].startswith("not an allowed quasi-identifier")


def test_column_plan_keeps_what_is_asked() -> None:
    config = AnonymizeConfig(zip_digits=3, occupation="drop", keep_columns=("country",))
    plan = plan_user_columns(["age", "zip", "occupation", "country"], config)
    assert plan.output_columns == ("age", "zip", "country")
    assert dict(plan.dropped) == {"occupation": "quasi-identifier dropped (occupation drop)"}
    with pytest.raises(ValueError, match="keep-column planet not among the user columns"):
        plan_user_columns(["age"], AnonymizeConfig(keep_columns=("planet",)))
    with pytest.raises(ValueError, match="both mean 'gender'"):
        plan_user_columns(["sex", "gender"], AnonymizeConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be >= 1"),
        ({"time_unit": "hour"}, "time-unit must be one of day, week, month"),
        ({"age_band": 0}, "age-band must be >= 1"),
        ({"zip_digits": 6}, r"zip-digits must be in 0\.\.5"),
        ({"occupation": "group"}, "occupation must be one of keep, drop"),
        ({"suppress": "none"}, "suppress must be one of attributes, users"),
        ({"keep_columns": ("email",)}, "'email' is a direct identifier"),
    ],
)
def test_config_names_the_broken_constraint(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnonymizeConfig(**kwargs)


# --- k-anonymity -----------------------------------------------------------------------------


def records(sizes: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """Users ``{class}{i}`` in classes of the given sizes, one quasi-identifier column."""
    return {f"{c}{i}": (c,) for c, n in sizes.items() for i in range(n)}


def test_attribute_suppression_masks_small_classes() -> None:
    result = k_anonymize(records({"a": 5, "b": 3, "c": 1, "d": 2}), k=3, suppress="attributes")
    assert result.suppressed == ("c0", "d0", "d1")  # classes of 1 and 2 < 3
    assert equivalence_classes(result.records) == Counter({("a",): 5, ("b",): 3, ("*",): 3})
    assert (result.smallest_before, result.smallest_after) == (1, 3)
    assert (result.classes_before, result.classes_after) == (4, 3)


def test_a_too_small_suppressed_class_absorbs_the_smallest_others() -> None:
    # c (1 user) alone would form a '*' class of 1 < 3: b, the smallest other class, joins it
    result = k_anonymize(records({"a": 5, "b": 3, "c": 1}), k=3, suppress="attributes")
    assert result.suppressed == ("b0", "b1", "b2", "c0")
    assert equivalence_classes(result.records) == Counter({("a",): 5, (SUPPRESSED,): 4})
    assert result.smallest_after == 4


def test_user_suppression_drops_small_classes() -> None:
    result = k_anonymize(records({"a": 5, "b": 3, "c": 1}), k=3, suppress="users")
    assert result.suppressed == ("c0",)
    assert set(result.records) == {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(3)}
    assert result.smallest_after == 3


@pytest.mark.parametrize("suppress", ["attributes", "users"])
def test_k_larger_than_the_population_is_refused(suppress: str) -> None:
    with pytest.raises(ValueError, match="k-anonymity with k=5 cannot hold: only 2 user"):
        k_anonymize(records({"a": 1, "b": 1}), k=5, suppress=suppress)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12),
    k=st.integers(1, 8),
    suppress=st.sampled_from(["attributes", "users"]),
)
def test_every_output_class_has_at_least_k_users(sizes: list[int], k: int, suppress: str) -> None:
    recs = records({f"q{j}": n for j, n in enumerate(sizes)})
    try:
        result = k_anonymize(recs, k=k, suppress=suppress)
    except ValueError:
        assert sum(sizes) < k or all(n < k for n in sizes)  # only when k is unreachable
        return
    classes = equivalence_classes(result.records)
    assert min(classes.values()) == result.smallest_after >= k
    assert result.smallest_before == min(sizes)
    if suppress == "attributes":
        assert set(result.records) == set(recs)  # nobody disappears, only their attributes
    else:
        assert len(result.records) == len(recs) - len(result.suppressed)


# --- the whole pass --------------------------------------------------------------------------


def raw_ratings(ages: dict[str, str], timestamps: list[int] | None = None) -> RawRatings:
    """Every user rates items 10 and 11; ``user_meta`` from ``ages`` (gender M throughout)."""
    users = [u for u in ages for _ in range(2)]
    n = len(users)
    ts = timestamps or [881250949 + i for i in range(n)]
    return RawRatings(
        source="mem.csv",
        format="csv",
        user=np.array(users),
        item=np.array(["11", "10"] * len(ages)),
        rating=np.arange(n, dtype=np.float64),
        timestamp=np.array(ts, dtype=np.int64),
        user_meta={u: {"age": a, "gender": "M", "email": f"{u}@x.org"} for u, a in ages.items()},
    )


def test_anonymize_pseudonymizes_generalizes_and_sorts() -> None:
    raw = raw_ratings({"1": "21", "2": "25", "3": "28", "4": "61", "5": "45"})
    out = anonymize(raw, KEY_A, AnonymizeConfig(k=2))
    names = pseudonymize(KEY_A, ["1", "2", "3", "4", "5"])
    assert out.user_columns == ("age", "gender")
    assert out.users == {
        **{names[u]: ("20-29", "M") for u in "123"},
        **{names[u]: ("*", "*") for u in "45"},  # alone in 60-69 and 40-49: masked together
    }
    assert out.k.suppressed == tuple(sorted([names["4"], names["5"]]))
    assert set(out.user.tolist()) == set(names.values())
    assert (out.timestamp == 881193600).all()  # all on 1997-12-04
    assert sorted(out.rating.tolist()) == list(range(10))  # every rating kept
    assert out.user.tolist() == sorted(out.user.tolist())  # grouped by pseudonym
    # each user rated 11, then 10, on one day: the order survives (the split needs it), the
    # times do not (every timestamp is the day's start)
    assert out.item.tolist() == ["11", "10"] * 5
    assert ("email", "direct identifier (contact detail)") in out.plan.dropped


def test_strict_suppression_drops_the_users_ratings() -> None:
    raw = raw_ratings({"1": "21", "2": "25", "3": "28", "4": "61"})
    out = anonymize(raw, KEY_A, AnonymizeConfig(k=3, suppress="users"))
    assert len(out.users) == 3 and len(out.user) == 6 and len(out.k.suppressed) == 1
    assert set(out.user.tolist()) == set(out.users)


def test_milliseconds_are_refused() -> None:
    raw = raw_ratings({"1": "21"}, timestamps=[881250949000, 881250949001])
    with pytest.raises(
        ValueError, match=re.escape("mem.csv: timestamp 881250949001 is after the year 3000")
    ):
        anonymize(raw, KEY_A, AnonymizeConfig(k=1))


def test_a_bad_age_names_the_source_and_user() -> None:
    with pytest.raises(ValueError, match=re.escape("mem.csv: user '2': age 'old' is not a number")):
        anonymize(raw_ratings({"1": "21", "2": "old"}), KEY_A, AnonymizeConfig(k=1))
