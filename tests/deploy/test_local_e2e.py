"""User story (app developer): devices join a real Flower deployment over TLS and node auth.

One deployment on loopback (``fedrec deploy local``'s LocalDeployment: real flower-superlink
and flower-supernode processes, real sealed stores) backs the claims of the deployment path:

* three SuperNodes over TLS with node authentication run three rounds to a metrics.json;
* a device killed after round 1 and restarted finishes the run, its DP ledger continued from
  its store (not restarted at ε = 0), and feedback recorded while it was down is trained on
  in its next round and excluded from its recommendations;
* an unregistered device is refused (``fedrec client join`` says why, retries nothing), and a
  device that dials without TLS never gets in;
* no store holds plaintext: the wrong key opens nothing, the right key gives the data;
* a SuperLink restarted on its database takes its devices back; a run resumed from the
  checkpoint continues from the round it stopped at.

Every process is stopped by the fixture, whatever the tests do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import federation
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.client.device import Device
from fedrec.common import keys
from fedrec.common.crypto import WrongKeyError
from fedrec.common.data.catalog import load_catalog
from fedrec.common.privacy import PrivacyLedger
from fedrec.deploy.credentials import make_device_key
from fedrec.deploy.local import LocalDeployment, deployment_config
from fedrec.deploy.processes import Service, deployment_env, flower_command, free_port
from fedrec.server.runs import CHECKPOINT, METRICS_FILE

pytestmark = pytest.mark.slow

NODES = 3
CONFIG = deployment_config(
    federation(
        synthetic_items=300,
        dim=8,
        num_rounds=3,
        clients_per_round=NODES,
        min_clients=NODES,
        eval_every=3,
        round_timeout=120.0,
        local_dp_noise_multiplier=1.0,  # record-level DP on the devices: each keeps a ledger
        local_dp_clip_norm=1.0,
        client_weighting="uniform",
    ),
    NODES,
)


def _ledger(device: Device) -> PrivacyLedger:
    doc = device.store.load_json(keys.STATE_RECORD_LEDGER)
    assert doc is not None, "the device keeps no DP ledger"
    return PrivacyLedger.from_dict(doc)


def _open(deployment: LocalDeployment, n: int, **kwargs: Any) -> Device:
    node = deployment.devices[n]
    return Device.open(node.store, key_file=kwargs.get("key_file", node.key_file))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("deploy") / "run"
    seen: dict[str, Any] = {"rounds": []}
    with LocalDeployment(out, NODES, CONFIG, keep_state=True) as deployment:

        def on_round(record: dict[str, Any]) -> None:
            seen["rounds"].append(record["round"])
            if record["round"] != 1:
                return
            node = deployment.devices[0]
            deployment.kill_device(node)  # a phone that died after round 1
            device = _open(deployment, 0)
            seen["ledger_after_round_1"] = _ledger(device)
            seen["status_after_round_1"] = device.status()
            history = {i.item for i in device.history()}
            new = next(i for i in device.catalog.item_ids if i not in history)
            device.record(new, "click")  # feedback while it was offline
            seen["feedback_item"] = new
            node.port = 0  # a fresh Runtime API port for the new process
            # as a phone restarts: `fedrec client join`, which retries while the SuperLink
            # still counts the crashed session online (two missed heartbeats, up to 60 s)
            deployment.start_device(node, via_join=True)

        started = time.perf_counter()
        deployment.build()
        deployment.start_superlink()
        deployment.register_devices()
        deployment.start_devices()
        outcome = deployment.federate(on_round)
        seen["seconds"] = time.perf_counter() - started
        yield {"deployment": deployment, "outcome": outcome, "out": out, **seen}


def test_three_supernodes_over_tls_run_three_rounds(deployed: dict[str, Any]) -> None:
    metrics = json.loads((deployed["out"] / METRICS_FILE).read_text())
    assert deployed["outcome"].info["status"] == "finished:completed"
    assert metrics["nodes"] == NODES and [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3]
    replied = [r["clients_replied"] for r in metrics["rounds"][1:]]
    assert replied[0] == replied[2] == NODES and replied[1] >= NODES - 1  # 2: one restarting
    assert metrics["final"]["users"] == NODES
    assert deployed["rounds"] == [0, 1, 2, 3]  # followed live from rounds.jsonl
    record = json.loads((deployed["out"] / "deployment" / "deployment.json").read_text())
    assert len({d["node_id"] for d in record["devices"]}) == NODES
    print(f"deployment e2e: {deployed['seconds']:.0f} s from nothing to metrics.json")


def test_a_restarted_device_continues_its_ledger(deployed: dict[str, Any]) -> None:
    deployment = deployed["deployment"]
    before, after = deployed["ledger_after_round_1"], _ledger(_open(deployment, 0))
    assert before.steps > 0 and after.steps > before.steps
    # the round-1 use is still the first entry: the ledger was read back, not restarted
    assert after.history[0][:2] == before.history[0][:2]
    assert after.history[0][2] >= before.history[0][2]
    delta = CONFIG.record_dp.delta
    assert after.epsilon(delta) > before.epsilon(delta) > 0
    status = _open(deployment, 0).status()
    assert status.rounds_joined >= 2 and status.last_round == 3
    assert status.record_epsilon == pytest.approx(after.epsilon(delta))


def test_feedback_between_rounds_is_trained_on_and_not_recommended(
    deployed: dict[str, Any],
) -> None:
    device = _open(deployed["deployment"], 0)
    item = deployed["feedback_item"]
    before = deployed["status_after_round_1"]
    status = device.status()
    assert before.last_round == 1 and status.last_round == 3
    assert status.last_trained_on == before.last_trained_on + 1  # the click was trained on
    assert status.model_round == 3  # the newest global model is cached for offline use
    ranked = [r.item for r in device.recommend(k=device.catalog.num_items)]
    seen = {i.item for i in device.history()}
    assert item not in ranked and not seen & set(ranked)
    assert len(ranked) == device.catalog.num_items - len(seen)


def test_an_unregistered_device_is_refused(deployed: dict[str, Any], tmp_path: Path) -> None:
    deployment = deployed["deployment"]
    node = deployment.devices[1]
    stranger = make_device_key(tmp_path / "stranger")  # never registered
    args = ["client", "join", "--store", str(node.store), "--key-file", str(node.key_file),
            "--superlink", deployment.address, "--root-certificates", str(deployment.ca),
            "--auth-key", str(stranger.private), "--port", str(free_port()), "--retries", "1",
            "--backoff", "0.5", "--log", str(tmp_path / "stranger.log")]  # fmt: skip
    result = CliRunner().invoke(app, args)  # two refusals, then it gives up (no wait)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "refused to activate this device: either its key is not registered" in said
    assert "refused by the SuperLink 2 times in a row" in said
    assert len(deployment.control.nodes()) == NODES  # nothing new joined


def test_a_device_without_tls_never_gets_in(deployed: dict[str, Any], tmp_path: Path) -> None:
    deployment = deployed["deployment"]
    node = deployment.devices[2]
    log = tmp_path / "insecure.log"
    argv = [flower_command("flower-supernode"), "--insecure", "--superlink",
            deployment.address, "--port", str(free_port()), "--max-retries", "2",
            "--node-config", f"store='{node.store}' key-file='{node.key_file}'"]  # fmt: skip
    plain = Service("plain SuperNode", argv, log, env=deployment_env())
    try:
        deadline = time.monotonic() + 20
        while plain.running() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        plain.stop()
    text = log.read_text()
    assert "SuperNode ID" not in text  # it never got a node id
    assert len(deployment.control.nodes()) == NODES
    assert {n["status"] for n in deployment.control.nodes()} == {"online"}


def test_no_store_holds_plaintext(deployed: dict[str, Any], tmp_path: Path) -> None:
    deployment = deployed["deployment"]
    catalog = load_catalog(deployment.catalog_path)
    for n, node in enumerate(deployment.devices):
        device = _open(deployment, n)
        history = device.history()
        assert history  # the right key gives the data
        items = [i.item for i in history]
        # what the stored forms would show in the clear: the history's JSON item list, the
        # titles, the device's name, the model's parameter names and npz's zip header
        needles = {json.dumps(items[:2])[1:-1].encode(), device.name.encode()}
        needles |= {catalog.item_titles[catalog.item_ids.index(i)].encode() for i in items}
        needles |= {b"user_embedding", b"item_tower", b"PK\x03\x04", b'"items"'}
        files = [p for p in node.store.rglob("*") if p.is_file()]
        assert files and all(p.name.endswith(".sealed") for p in files)
        for path in files:
            blob = path.read_bytes()
            found = [x for x in needles if x in blob]
            assert not found, f"{path} holds {found} in the clear"
    other = tmp_path / "other.key"
    other.write_bytes(np.random.default_rng(0).bytes(32))
    other.chmod(0o600)
    with pytest.raises(WrongKeyError, match="sealed under a different key"):
        _open(deployment, 0, key_file=other)


def test_a_restarted_superlink_takes_its_devices_back(deployed: dict[str, Any]) -> None:
    deployment = deployed["deployment"]
    deployment.stop_superlink()
    deployment.start_superlink()  # same port, same database: registrations survive
    online = deployment.control.wait_online(NODES, 120, deployment.check_alive)
    assert online == NODES


def test_the_operator_resumes_the_run_from_its_checkpoint(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    """`fedrec server register/nodes/run` against the live SuperLink: one more round."""
    deployment = deployed["deployment"]
    link = ["--credentials", str(deployment.root / "credentials"), "--superlink",
            deployment.address]  # fmt: skip
    runner = CliRunner()
    registered = runner.invoke(app, ["server", "register", str(deployment.devices[0].auth_key)
                                     + ".pub", *link])  # fmt: skip
    assert registered.exit_code == 0 and "already registered" in registered.output
    nodes = runner.invoke(app, ["server", "nodes", *link])
    assert nodes.exit_code == 0 and nodes.output.count("online") == NODES
    deployment.control.wait_online(NODES, 120, deployment.check_alive)
    defaults = federation().to_mapping()  # the deployment's settings: no simulation one
    settings = [f"--set={k}={v}" for k, v in CONFIG.to_mapping(deployed=True).items()
                if v != defaults[k] and k != "num-rounds"]  # fmt: skip
    out = tmp_path / "resumed"
    result = runner.invoke(app, ["server", "run", *link, "--catalog", str(deployment.catalog_path),
                                 "--out", str(out), "--resume", str(deployed["out"] / CHECKPOINT),
                                 "--num-rounds", "4", *settings])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / METRICS_FILE).read_text())
    # one more round, not four; metrics.json covers the whole run (rounds 0-3 from the log)
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3, 4]
    assert metrics["resumed"]["round"] == 3 and metrics["resumed"]["logged"] == 4
    assert (out / "quality.png").exists() and "run folder" in result.output
    assert _open(deployment, 1).status().model_round == 4


def test_recommend_works_with_the_superlink_stopped(deployed: dict[str, Any]) -> None:
    deployment = deployed["deployment"]
    deployment.stop_superlink()
    node = deployment.devices[2]
    args = ["client", "recommend", "--store", str(node.store), "--key-file", str(node.key_file),
            "-k", "10", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    seen = {i.item for i in _open(deployment, 2).history()}
    assert len(document["items"]) == 10 and not seen & {i["item"] for i in document["items"]}
