"""Tests for fedrec.client.encrypted_shards: a simulation served from encrypted user folders."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import catalog_of, federation, node_context, server_message, with_catalog
from flwr.app import ArrayRecord, MetricRecord

from fedrec.client.app import make_client_app
from fedrec.client.encrypted_shards import (
    SOURCE_DIR,
    USERS_DIR,
    EncryptedPartitions,
    rotate_shard_keys,
    write_encrypted_shards,
)
from fedrec.client.partitions import DataSetPartitions, pseudonym
from fedrec.client.secure_store import SHARD_KEY, TamperedError, WrongKeyError
from fedrec.common import keys
from fedrec.common.model import initial_shared_state

CONFIG = with_catalog(federation(synthetic_users=60, synthetic_items=400, dim=8, seed=0))
USERS = CONFIG.simulation.synthetic_users


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("encrypted")
    shard_dir, key_file = root / "shards", root / "device.key"
    assert write_encrypted_shards(CONFIG, shard_dir, key_file) == USERS
    return shard_dir, key_file


@pytest.fixture(scope="module")
def shards(written: tuple[Path, Path]) -> EncryptedPartitions:
    return EncryptedPartitions(*written)


def test_layout_one_sealed_folder_per_user(written: tuple[Path, Path]) -> None:
    shard_dir, key_file = written
    users = sorted(p.name for p in (shard_dir / USERS_DIR).iterdir())
    assert users == [pseudonym(u) for u in range(USERS)] and users[7] == "user-000007"
    assert (shard_dir / USERS_DIR / users[7] / f"{SHARD_KEY}.sealed").is_file()
    assert key_file.stat().st_mode & 0o077 == 0


def test_serves_exactly_the_simulation_shards(shards: EncryptedPartitions) -> None:
    plain = DataSetPartitions()
    assert shards.num_users(CONFIG) == USERS
    for user in range(USERS):
        got = shards.local_user(CONFIG, node_context(user, USERS))
        want = plain.local_user(CONFIG, node_context(user, USERS))
        assert (got.name, got.stream) == (want.name, want.stream) == (pseudonym(user), user)
        got_shard, want_shard = got.shard, want.shard
        assert (got_shard.val_item, got_shard.test_item, got_shard.num_items) == (
            want_shard.val_item, want_shard.test_item, want_shard.num_items,
        )  # fmt: skip
        for name in ("user_features", "train_items", "candidates"):
            assert np.array_equal(getattr(got_shard, name), getattr(want_shard, name)), name


def test_client_app_trains_from_encrypted_shards(shards: EncryptedPartitions) -> None:
    app = make_client_app(CONFIG, shards)
    catalog = catalog_of(CONFIG)
    shared = ArrayRecord(initial_shared_state(catalog, CONFIG.model.dim, seed=0))
    context = node_context(3, USERS)
    reply = app(server_message("train", shared, node_id=4, catalog=catalog), context)
    assert reply.has_content()
    metrics = reply.content[keys.METRICS]
    assert isinstance(metrics, MetricRecord) and metrics[keys.NUM_EXAMPLES] > 0


def test_pickles_as_two_paths(shards: EncryptedPartitions) -> None:
    assert len(pickle.dumps(shards)) < 400
    copy = pickle.loads(pickle.dumps(shards))
    assert copy.local_user(CONFIG, node_context(0, USERS)).shard.num_items == 400


def test_other_data_settings_are_refused(shards: EncryptedPartitions) -> None:
    with pytest.raises(ValueError, match="seed: shards 0 vs config 1"):
        shards.local_user(CONFIG.replace(seed=1), node_context(0, USERS))
    with pytest.raises(ValueError, match="synthetic-users"):
        shards.local_user(CONFIG.replace(synthetic_users=61), node_context(0, 61))


def test_node_count_must_match(shards: EncryptedPartitions) -> None:
    with pytest.raises(ValueError, match="one node per user"):
        shards.local_user(CONFIG, node_context(0, USERS + 1))


def test_write_refuses_a_used_folder_or_a_key_inside_it(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    shard_dir, key_file = written
    with pytest.raises(FileExistsError, match="not empty"):
        write_encrypted_shards(CONFIG, shard_dir, key_file)
    with pytest.raises(ValueError, match="outside the folder"):
        write_encrypted_shards(CONFIG, tmp_path / "new", tmp_path / "new" / "device.key")
    with pytest.raises(ValueError, match="a sealed shard carries no cold items"):
        write_encrypted_shards(CONFIG.replace(cold_items=0.2), tmp_path / "cold", key_file)
    assert not (tmp_path / "cold").exists()
    with pytest.raises(FileNotFoundError, match="fedrec data encrypt"):
        EncryptedPartitions(tmp_path / "missing", key_file)


def test_a_shard_copied_to_another_user_does_not_open(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    shard_dir, key_file = written
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    users = copy / USERS_DIR
    name = f"{SHARD_KEY}.sealed"
    (users / pseudonym(1) / name).write_bytes((users / pseudonym(2) / name).read_bytes())
    with pytest.raises(TamperedError, match="moved or renamed"):
        EncryptedPartitions(copy, key_file).local_user(CONFIG, node_context(1, USERS))


def test_rotate_shard_keys(written: tuple[Path, Path], tmp_path: Path) -> None:
    shard_dir, key_file = written
    copy, new_key = tmp_path / "shards", tmp_path / "new.key"
    shutil.copytree(shard_dir, copy)
    result = rotate_shard_keys(copy, key_file, new_key)
    files = 2 * (USERS + 1)  # per user a shard and its version record, and so for the source
    assert (result.rotated, result.already) == (files, 0)
    rotated = EncryptedPartitions(copy, new_key)
    want = EncryptedPartitions(shard_dir, key_file).local_user(CONFIG, node_context(5, USERS))
    got = rotated.local_user(CONFIG, node_context(5, USERS))
    assert np.array_equal(got.shard.train_items, want.shard.train_items)
    with pytest.raises(WrongKeyError, match=SOURCE_DIR):
        EncryptedPartitions(copy, key_file).num_users(CONFIG)
    again = rotate_shard_keys(copy, key_file, new_key)  # a rerun (after a stop) finishes: no-op
    assert (again.rotated, again.already) == (0, files)


def test_rotation_covers_a_state_dir_and_a_stopped_one_says_so(tmp_path: Path) -> None:
    from fedrec.client.secure_store import ROTATION_MARKER, EncryptedFileStore
    from fedrec.common.crypto import create_key_file, read_key_file

    old_key = create_key_file(tmp_path / "old.key")
    state = tmp_path / "state"
    for name in ("user-000001", "user-000002"):  # a state-dir: one store per device
        EncryptedFileStore(state / name, old_key, name).save_json("ledger", {"steps": 3})
    result = rotate_shard_keys(state, tmp_path / "old.key", tmp_path / "new.key")
    rotated = (result.rotated, result.already)
    assert rotated == (4, 0) and not (state / ROTATION_MARKER).exists()  # ledger + record each
    new_key = read_key_file(tmp_path / "new.key")
    assert EncryptedFileStore(state / "user-000002", new_key, "user-000002").load_json(
        "ledger") == {"steps": 3}  # fmt: skip
    # a rotation back that stopped after the first store: the tree's marker stays behind
    (state / ROTATION_MARKER).write_text("pending")
    stopped = EncryptedFileStore(state / "user-000001", old_key, "user-000001")
    with pytest.raises(WrongKeyError, match=f"rotation of {state} is unfinished: rerun it"):
        stopped.load_json("ledger")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no sealed file"):
        rotate_shard_keys(tmp_path / "empty", tmp_path / "old.key", tmp_path / "new.key")
