"""Tests for fedrec.deploy.local without processes: the devices a deployment builds.

A device store built from a data set's user holds exactly what the simulation gives that
user (train items in time order, the same validation and test items, the same feature row),
so a deployed run and a simulated run of one data set train and evaluate on the same data.
The processes are in test_deploy_e2e.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import federation

from fedrec.client.device import Device
from fedrec.common.data.shard import user_shard
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import temporal_leave_one_out
from fedrec.deploy.local import LocalDeployment, choose_users, deployment_config

CONFIG = federation(synthetic_users=40, synthetic_items=400)


def test_a_device_holds_what_the_simulation_gives_its_user(tmp_path: Path) -> None:
    deployment = LocalDeployment(tmp_path / "run", 6, CONFIG)
    deployment.build()
    data = load_interactions("synthetic", synthetic=CONFIG.synthetic())
    split = temporal_leave_one_out(data)
    chosen = choose_users(data, 6, CONFIG.data.seed)
    assert len(chosen) == 6 and chosen == sorted(set(chosen))
    for node, user in zip(deployment.devices, chosen, strict=True):
        simulated = user_shard(data, split, user)
        device = Device.open(node.store, key_file=node.key_file)
        shard = device.shard()
        np.testing.assert_array_equal(shard.train_items, simulated.train_items)
        assert (shard.val_item, shard.test_item) == (simulated.val_item, simulated.test_item)
        np.testing.assert_array_equal(shard.user_features, simulated.user_features)
        assert len(shard.candidates) == len(simulated.candidates) == 99
        assert node.auth_key.stat().st_mode & 0o777 == 0o600
        assert node.key_file.stat().st_mode & 0o777 == 0o600


def test_the_deployment_record_names_no_user(tmp_path: Path) -> None:
    import json

    deployment = LocalDeployment(tmp_path / "run", 4, CONFIG)
    deployment.build()
    record = json.loads(deployment.write_record().read_text())
    assert [set(d) for d in record["devices"]] == [{"name", "node_id", "runtime_port"}] * 4
    assert [d["name"] for d in record["devices"]] == [f"device-{n:03d}" for n in range(4)]
    files = {p.name for p in (tmp_path / "run" / "deployment" / "devices").rglob("*")}
    assert not {n.user for n in deployment.devices} & files  # folders are device-NNN


def test_users_and_nodes() -> None:
    data = load_interactions("synthetic", synthetic=CONFIG.synthetic())
    assert choose_users(data, 40, 0) == list(range(40))
    assert choose_users(data, 5, 1) != choose_users(data, 5, 2)
    with pytest.raises(ValueError, match="only 40 users"):
        choose_users(data, 41, 0)
    with pytest.raises(ValueError, match="at least 1"):
        choose_users(data, 0, 0)
    assert deployment_config(federation(), 20).simulation.synthetic_users == 20  # one per node
    assert deployment_config(CONFIG, 20).simulation.synthetic_users == 40  # told otherwise: kept


def test_an_existing_deployment_is_not_overwritten(tmp_path: Path) -> None:
    LocalDeployment(tmp_path / "run", 2, CONFIG).build()
    with pytest.raises(FileExistsError, match="new --out folder"):
        LocalDeployment(tmp_path / "run", 2, CONFIG).build()
