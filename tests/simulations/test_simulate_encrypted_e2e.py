"""User story (app developer / privacy officer): devices that keep everything encrypted at rest.

`fedrec data encrypt` seals every user's shard; a simulation then runs from those shards with
each node's private state and DP ledger in its own encrypted folder; `fedrec data rotate-key`
re-encrypts the shards. Nothing a device stores is readable without the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import node_context
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.client.encrypted_shards import EncryptedPartitions
from fedrec.client.partitions import pseudonym
from fedrec.client.secure_store import EncryptedFileStore
from fedrec.common import keys
from fedrec.common.crypto import WrongKeyError, create_key_file, read_key_file
from fedrec.common.fedconfig import FederationConfig

pytestmark = pytest.mark.slow

USERS = 20
DATA = {"synthetic-users": USERS, "synthetic-items": 400}
RUN = {
    "num-rounds": 2, "clients-per-round": 10, "eval-every": 1, "strategy": "fedadam",
    "server-lr": 0.05, "server-tau": 0.0001, "local-dp-noise-multiplier": 1.0,
    "client-weighting": "uniform",
}  # fmt: skip


def _sets(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encrypted")
    paths = {n: root / n for n in ("shards", "state", "run", "key", "new-key")}
    runner = CliRunner()
    encrypt = ["data", "encrypt", "--out", str(paths["shards"]), "--key-file", str(paths["key"])]
    result = runner.invoke(app, [*encrypt, "--data", "synthetic", *_sets(DATA)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"{USERS} encrypted shards" in result.output
    device = {"shard-dir": paths["shards"], "key-file": paths["key"], "state-dir": paths["state"]}
    args = ["simulate", "--data", "synthetic", "--out", str(paths["run"])]
    result = runner.invoke(app, [*args, *_sets({**DATA, **RUN, **device})])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return paths


def test_the_simulation_ran_from_encrypted_shards(run: dict[str, Path]) -> None:
    rounds = json.loads((run["run"] / "metrics.json").read_text())["rounds"]
    trained = [r for r in rounds if r["round"] > 0]
    assert [r["clients_replied"] for r in trained] == [10, 10]
    assert all(r["clients_failed"] == 0 for r in trained)
    assert rounds[-1]["eval"]["users"] == USERS


def test_private_state_and_ledger_are_sealed_per_node(run: dict[str, Path]) -> None:
    folders = sorted(p for p in run["state"].iterdir() if p.is_dir())
    assert 10 <= len(folders) <= USERS  # every node that trained (2 rounds x 10 of 20)
    key = read_key_file(run["key"])
    for folder in folders:
        store = EncryptedFileStore(folder, key, folder.name)
        private = store.load(keys.STATE_PRIVATE)
        ledger = store.load_json(keys.STATE_RECORD_LEDGER)
        assert private is not None and "user_embedding.weight" in private
        assert ledger is not None and ledger["history"]
        for file in folder.iterdir():  # nothing readable at rest
            raw = file.read_bytes()
            assert b"user_embedding" not in raw and b"history" not in raw
    other = EncryptedFileStore(folders[0], create_key_file(run["run"].parent / "other-key"),
                               folders[0].name)  # fmt: skip
    with pytest.raises(WrongKeyError):
        other.load(keys.STATE_PRIVATE)


def test_rotate_key_keeps_every_shard(run: dict[str, Path]) -> None:
    config = FederationConfig.from_mapping({"data": "synthetic", **DATA})
    before = EncryptedPartitions(run["shards"], run["key"])
    node = lambda u: node_context(u, USERS)  # noqa: E731
    shards = [before.local_user(config, node(u)).shard for u in range(USERS)]
    args = ["data", "rotate-key", "--dir", str(run["shards"]),
            "--old-key-file", str(run["key"]), "--new-key-file", str(run["new-key"])]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "rotated" in result.output
    after = EncryptedPartitions(run["shards"], run["new-key"])
    for u in range(USERS):
        got = after.local_user(config, node(u)).shard
        assert got.train_items.tolist() == shards[u].train_items.tolist()
    with pytest.raises(WrongKeyError):
        EncryptedPartitions(run["shards"], run["key"]).local_user(config, node(0))
    assert pseudonym(3) == "user-000003"
