"""Tests for fedrec.common.data.pack: a shard pack serves exactly the shards of the split."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.data.dataset import Interactions
from fedrec.common.data.pack import MANIFEST, open_pack, write_pack
from fedrec.common.data.shard import UserShard, user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import NO_ITEM, Split, temporal_leave_one_out
from fedrec.common.data.synthetic import SyntheticConfig

SETTINGS = {"data": "synthetic", "threshold": 4.5, "seed": 3}


@pytest.fixture(scope="module")
def sparse() -> tuple[Interactions, Split]:
    """Ratings >= 4.5 only: some users keep fewer than 3 interactions and are train-only."""
    data = load_interactions(
        "synthetic", threshold=4.5, synthetic=SyntheticConfig(num_users=80, num_items=300)
    )
    return data, temporal_leave_one_out(data, seed=3)


def _assert_same(a: UserShard, b: UserShard) -> None:
    for f in fields(UserShard):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and not isinstance(x, np.memmap), f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert type(x) is type(y) and x == y, f.name


def test_every_shard_of_the_pack_equals_the_one_cut_in_memory(
    sparse: tuple[Interactions, Split], tmp_path: Path
) -> None:
    data, split = sparse
    assert 0 < split.train_only_users < split.num_users  # both kinds of user are covered
    pack = open_pack(write_pack(split, data.user_features, tmp_path / "pack", SETTINGS))
    assert (pack.num_users, pack.num_items, pack.settings) == (
        split.num_users, split.num_items, SETTINGS,
    )  # fmt: skip
    assert isinstance(pack.candidates, np.memmap)  # mapped, not read
    for user in range(split.num_users):
        _assert_same(pack.shard(user), user_shard(data, split, user))
    assert pack.shard(int(np.flatnonzero(split.test_item == NO_ITEM)[0])).candidates.size == 0


def test_a_shard_is_a_copy_that_outlives_the_pack(
    data: Interactions, split: Split, tmp_path: Path
) -> None:
    pack = open_pack(write_pack(split, data.user_features, tmp_path / "pack", SETTINGS))
    shard = pack.shard(1)
    shard.train_items[:] = -7  # a writable copy: the pack's files are untouched
    assert (open_pack(tmp_path / "pack").shard(1).train_items >= 0).all()


def test_bad_packs_are_refused_with_the_reason(
    data: Interactions, split: Split, tmp_path: Path
) -> None:
    folder = write_pack(split, data.user_features, tmp_path / "pack", SETTINGS)
    with pytest.raises(FileExistsError, match="not empty"):
        write_pack(split, data.user_features, folder, SETTINGS)
    with pytest.raises(ValueError, match="rows of user features"):
        write_pack(split, data.user_features[:-1], tmp_path / "short", SETTINGS)
    with pytest.raises(FileNotFoundError, match="no shard pack"):
        open_pack(tmp_path)
    with pytest.raises(ValueError, match=f"outside \\[0, {split.num_users}\\)"):
        open_pack(folder).shard(split.num_users)

    np.save(folder / "held_out.npy", np.zeros((3, 2), np.int32))  # another pack's file
    with pytest.raises(ValueError, match=r"held_out\.npy has shape .* damaged"):
        open_pack(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(ValueError, match="format 'other/9'"):
        open_pack(folder)
