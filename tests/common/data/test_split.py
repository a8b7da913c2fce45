"""Tests for fedrec.common.data.split: temporal leave-one-out, candidates, leak-free negatives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.data.dataset import Interactions, RawRatings, to_implicit
from fedrec.common.data.examples import (
    NegativeSampler,
    training_exclusions,
)
from fedrec.common.data.features import UserFeatureSchema
from fedrec.common.data.split import (
    MIN_INTERACTIONS_TO_EVALUATE,
    NO_ITEM,
    Split,
    check_evaluable,
    temporal_leave_one_out,
)

CATALOG = 150  # > 99 + any user's history, so the default 99 candidates always fit


def _excluded(split: Split, user: int) -> np.ndarray:
    """The training exclusions of ``user`` in a global split."""
    held = (split.val_item[user], split.test_item[user])
    return training_exclusions(split.train_items_of(user), held, split.candidates[user])


def _interactions(
    user: list[int], item: list[int], ts: list[int], num_users: int, num_items: int
) -> Interactions:
    """Interactions built directly, with dense ids "0".."n-1" and no features."""
    return Interactions(
        user=np.asarray(user, dtype=np.int64),
        item=np.asarray(item, dtype=np.int64),
        timestamp=np.asarray(ts, dtype=np.int64),
        user_ids=tuple(str(u) for u in range(num_users)),
        item_ids=tuple(str(i) for i in range(num_items)),
        user_features=np.zeros((num_users, 0), np.float32),
        user_schema=UserFeatureSchema(),
        item_features=np.zeros((num_items, 0), np.float32),
        item_feature_names=(),
        item_titles=("",) * num_items,
        source="test",
        format="test",
        stats={},
    )


# File rows (raw ids "1".."N" -> dense id = raw - 1), interleaved across users on purpose:
#   user 1: items 1 @10, 2 @30, 3 @20, 4 @40   -> time order 1, 3, 2, 4: train [0, 2], val 1, test 3
#   user 2: items 5, 6, 7 all @5 (a tie)      -> file order kept: train [4], val 5, test 6
#   user 3: items 8 @1, 9 @2                  -> 2 interactions: train-only
#   user 4: item 10 @7                        -> 1 interaction: train-only
#   user 5: items 11 @9, 12 @3, 13 @9, 14 @1  -> time order 14, 12, 11, 13 (11 before 13 by file)
_ROWS = [
    ("1", "1", 10),
    ("2", "5", 5),
    ("1", "2", 30),
    ("3", "8", 1),
    ("5", "11", 9),
    ("2", "6", 5),
    ("1", "3", 20),
    ("4", "10", 7),
    ("5", "12", 3),
    ("2", "7", 5),
    ("3", "9", 2),
    ("5", "13", 9),
    ("1", "4", 40),
    ("5", "14", 1),
]


def _tiny_raw() -> RawRatings:
    users, items, ts = zip(*_ROWS, strict=True)
    return RawRatings(
        source="test",
        format="csv",
        user=np.array(users),
        item=np.array(items),
        rating=np.full(len(_ROWS), 4.0),
        timestamp=np.array(ts, dtype=np.int64),
        item_meta={str(i): {"title": f"t{i}", "genres": []} for i in range(1, CATALOG + 1)},
    )


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return to_implicit(_tiny_raw())


@pytest.fixture(scope="module")
def tiny_split(tiny: Interactions) -> Split:
    return temporal_leave_one_out(tiny, seed=0)


def _user_items(data: Interactions, u: int) -> set[int]:
    return set(data.item[data.user == u].tolist())


# ---------------------------------------------------------------- the split itself


def test_tiny_fixture_is_what_the_comments_say(tiny: Interactions) -> None:
    assert tiny.num_users == 5
    assert tiny.num_items == CATALOG
    assert len(tiny) == len(_ROWS)


def test_last_by_time_is_test_second_to_last_is_val(tiny_split: Split) -> None:
    assert tiny_split.test_item[0] == 3
    assert tiny_split.val_item[0] == 1
    assert tiny_split.train_items_of(0).tolist() == [0, 2]  # time order, not file order


def test_timestamp_ties_keep_file_order(tiny_split: Split) -> None:
    # user 2 (dense 1): items 5, 6, 7 (dense 4, 5, 6) all at t=5, in that file order
    assert tiny_split.train_items_of(1).tolist() == [4]
    assert tiny_split.val_item[1] == 5
    assert tiny_split.test_item[1] == 6
    # user 5 (dense 4): 14 @1, 12 @3, then 11 and 13 tie @9 -> 11 first (file order)
    assert tiny_split.train_items_of(4).tolist() == [13, 11]
    assert tiny_split.val_item[4] == 10
    assert tiny_split.test_item[4] == 12


def test_short_users_are_train_only_and_counted(tiny_split: Split) -> None:
    assert MIN_INTERACTIONS_TO_EVALUATE == 3
    assert tiny_split.train_only_users == 2
    for u in (2, 3):  # raw users 3 and 4
        assert tiny_split.val_item[u] == NO_ITEM
        assert tiny_split.test_item[u] == NO_ITEM
        assert (tiny_split.candidates[u] == NO_ITEM).all()
    assert tiny_split.train_items_of(2).tolist() == [7, 8]  # all their items stay in train
    assert tiny_split.train_items_of(3).tolist() == [9]
    assert tiny_split.eval_users.tolist() == [0, 1, 4]


def test_train_user_train_items_of_and_item_counts(tiny_split: Split) -> None:
    s = tiny_split
    assert s.train_indptr.tolist() == [0, 2, 3, 5, 6, 8]
    assert s.train_user.tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert s.train_items.tolist() == [0, 2, 4, 7, 8, 9, 13, 11]
    for u in range(s.num_users):
        np.testing.assert_array_equal(s.train_items_of(u), s.train_items[s.train_user == u])
    counts = s.item_counts()
    assert counts.shape == (CATALOG,)
    expected = np.zeros(CATALOG, dtype=np.int64)
    expected[[0, 2, 4, 7, 8, 9, 13, 11]] = 1  # held-out items are not counted
    np.testing.assert_array_equal(counts, expected)


def test_candidates_are_distinct_unseen_items(tiny: Interactions, tiny_split: Split) -> None:
    assert tiny_split.candidates.shape == (tiny.num_users, 99)
    assert tiny_split.candidates.dtype == np.int64
    for u in tiny_split.eval_users:
        row = tiny_split.candidates[u]
        assert len(set(row.tolist())) == 99
        assert ((row >= 0) & (row < CATALOG)).all()
        # never an item the user interacted with, held-out items included
        assert not (set(row.tolist()) & _user_items(tiny, int(u)))


def test_candidate_count_is_configurable(tiny: Interactions) -> None:
    s = temporal_leave_one_out(tiny, num_candidates=7, seed=3)
    assert s.candidates.shape == (tiny.num_users, 7)
    for u in s.eval_users:
        assert len(set(s.candidates[u].tolist())) == 7
    assert temporal_leave_one_out(tiny, num_candidates=0).candidates.shape == (5, 0)
    with pytest.raises(ValueError, match="num_candidates"):
        temporal_leave_one_out(tiny, num_candidates=-1)


def test_candidates_deterministic_per_seed(tiny: Interactions) -> None:
    a = temporal_leave_one_out(tiny, seed=11)
    b = temporal_leave_one_out(tiny, seed=11)
    c = temporal_leave_one_out(tiny, seed=12)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    assert not np.array_equal(a.candidates, c.candidates)
    # the split itself does not depend on the seed
    np.testing.assert_array_equal(a.train_items, c.train_items)
    np.testing.assert_array_equal(a.test_item, c.test_item)
    assert a.seed == 11 and c.seed == 12


def test_too_small_catalog_for_candidates_is_an_error() -> None:
    # user 0 saw 3 of 5 items: only 2 remain, 3 candidates requested
    data = _interactions([0, 0, 0], [0, 1, 2], [1, 2, 3], num_users=1, num_items=5)
    with pytest.raises(ValueError, match="user 0"):
        temporal_leave_one_out(data, num_candidates=3)


def test_a_data_set_nobody_can_be_evaluated_on_is_refused() -> None:
    two_each = _interactions([0, 0, 1, 1], [0, 1, 2, 3], [1, 2, 1, 2], num_users=2, num_items=9)
    with pytest.raises(ValueError, match=r"no user can be evaluated.*at most 2"):
        check_evaluable(two_each)
    one_has_three = _interactions([0, 0, 0, 1], [0, 1, 2, 3], [1, 2, 3, 1], num_users=2,
                                  num_items=9)  # fmt: skip
    check_evaluable(one_has_three)


def test_a_threshold_that_keeps_no_rating_is_refused_naming_the_range() -> None:
    raw = RawRatings(source="r.csv", format="csv", user=np.array(["a", "b"]),
                     item=np.array(["1", "2"]), rating=np.array([2.0, 3.0]),
                     timestamp=np.array([1, 2]))  # fmt: skip
    with pytest.raises(ValueError, match=r"no rating is >= the threshold 4 .*from 2 to 3"):
        to_implicit(raw, threshold=4.0)
    assert len(to_implicit(raw, threshold=3.0)) == 1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_split_partitions_every_users_history(data: st.DataObject) -> None:
    num_users = data.draw(st.integers(1, 6))
    per_user = data.draw(st.lists(st.integers(0, 6), min_size=num_users, max_size=num_users))
    k = data.draw(st.integers(0, 4))
    num_items = 6 + k
    user, item, ts = [], [], []
    for u, n in enumerate(per_user):
        items = data.draw(st.permutations(range(num_items)))[:n]
        user += [u] * n
        item += list(items)
        ts += data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    order = data.draw(st.permutations(range(len(user))))  # shuffle the file rows
    user = [user[i] for i in order]
    item = [item[i] for i in order]
    ts = [ts[i] for i in order]
    inter = _interactions(user, item, ts, num_users, num_items)
    s = temporal_leave_one_out(inter, num_candidates=k, seed=0)

    assert s.train_only_users == sum(1 for n in per_user if n < 3)
    assert s.train_indptr[-1] == len(s.train_items) == len(s.train_user)
    for u in range(num_users):
        rows = [
            (t, pos, i)
            for pos, (uu, i, t) in enumerate(zip(user, item, ts, strict=True))
            if uu == u
        ]
        by_time = [i for _, _, i in sorted(rows)]  # stable: ties by file position
        if len(rows) < 3:
            assert s.train_items_of(u).tolist() == by_time
            assert s.test_item[u] == s.val_item[u] == NO_ITEM
        else:
            assert s.train_items_of(u).tolist() == by_time[:-2]
            assert s.val_item[u] == by_time[-2]
            assert s.test_item[u] == by_time[-1]
            cands = set(s.candidates[u].tolist())
            assert len(cands) == k
            assert not cands & set(by_time)


# ---------------------------------------------------------------- training negatives


def _crowded_split() -> tuple[Interactions, Split]:
    """30 items; each of 8 users has 12 interactions and 15 candidates: 27 of 30 excluded."""
    rng = np.random.default_rng(5)
    num_users, num_items, per_user = 8, 30, 12
    user, item, ts = [], [], []
    for u in range(num_users):
        user += [u] * per_user
        item += rng.choice(num_items, size=per_user, replace=False).tolist()
        ts += rng.integers(0, 100, size=per_user).tolist()
    data = _interactions(user, item, ts, num_users, num_items)
    return data, temporal_leave_one_out(data, num_candidates=15, seed=1)


def test_excluded_for_training_covers_train_heldout_and_candidates() -> None:
    data, s = _crowded_split()
    for u in range(s.num_users):
        expected = _user_items(data, u) | set(s.candidates[u].tolist())
        assert len(expected) == 27
        excl = _excluded(s, u)
        assert excl.tolist() == sorted(expected)  # sorted, no NO_ITEM


def test_no_leakage_in_training_negatives() -> None:
    _, s = _crowded_split()
    sampler = NegativeSampler.of_split(s)
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(s.num_users), 2_000)
    negatives = sampler.sample(users, rng)
    assert negatives.shape == users.shape
    assert negatives.dtype == np.int64
    for u in range(s.num_users):
        drawn = set(negatives[users == u].tolist())
        forbidden = (
            set(s.train_items_of(u).tolist())
            | {int(s.val_item[u]), int(s.test_item[u])}
            | set(s.candidates[u].tolist())
        )
        assert not drawn & forbidden, f"user {u} got leaked negatives {drawn & forbidden}"
        # and the sampler is not degenerate: all 3 allowed items show up among 2000 draws
        assert drawn == set(range(s.num_items)) - forbidden
    assert not sampler.is_excluded(users, negatives).any()


def test_no_leakage_for_train_only_users() -> None:
    # user 0: 2 interactions (train-only) in a catalog of 4 -> only items 2, 3 are negatives
    data = _interactions([0, 0, 1, 1, 1], [0, 1, 0, 1, 2], [1, 2, 1, 2, 3], 2, 4)
    s = temporal_leave_one_out(data, num_candidates=0)
    sampler = NegativeSampler.of_split(s)
    negs = sampler.sample(np.zeros(500, np.int64), np.random.default_rng(0))
    assert set(negs.tolist()) == {2, 3}
    negs1 = sampler.sample(np.ones(500, np.int64), np.random.default_rng(0))
    assert set(negs1.tolist()) == {3}


def test_sampler_is_excluded_matches_split() -> None:
    _, s = _crowded_split()
    sampler = NegativeSampler.of_split(s)
    users = np.repeat(np.arange(s.num_users), s.num_items)
    items = np.tile(np.arange(s.num_items), s.num_users)
    flags = sampler.is_excluded(users, items).reshape(s.num_users, s.num_items)
    for u in range(s.num_users):
        assert np.flatnonzero(flags[u]).tolist() == _excluded(s, u).tolist()


def test_sampler_for_a_subset_of_users() -> None:
    _, s = _crowded_split()
    sampler = NegativeSampler.of_split(s, users=np.array([2]))
    negs = sampler.sample(np.full(300, 2), np.random.default_rng(4))
    assert not set(negs.tolist()) & set(_excluded(s, 2).tolist())
    empty = NegativeSampler.of_split(s, users=np.array([], dtype=np.int64))
    assert not empty.is_excluded(np.array([0, 1]), np.array([0, 1])).any()
    assert empty.sample(np.array([0, 1, 2]), np.random.default_rng(0)).shape == (3,)


def test_sampler_is_deterministic_given_the_rng() -> None:
    _, s = _crowded_split()
    sampler = NegativeSampler.of_split(s)
    users = np.arange(s.num_users).repeat(50)
    a = sampler.sample(users, np.random.default_rng(9))
    b = sampler.sample(users, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)


def test_user_excluding_whole_catalog_is_an_error() -> None:
    # 5 items: user 0 saw 3 and gets the other 2 as candidates -> nothing left to sample
    data = _interactions([0, 0, 0], [0, 1, 2], [1, 2, 3], num_users=1, num_items=5)
    s = temporal_leave_one_out(data, num_candidates=2)
    with pytest.raises(ValueError, match="whole catalog"):
        NegativeSampler.of_split(s)
    # a train-only user who saw the whole (2-item) catalog
    data = _interactions([0, 0], [0, 1], [1, 2], num_users=1, num_items=2)
    with pytest.raises(ValueError, match="whole catalog"):
        NegativeSampler.of_split(temporal_leave_one_out(data, num_candidates=0))
