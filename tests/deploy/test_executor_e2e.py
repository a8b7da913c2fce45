"""User story (app developer): a device runs its rounds in one warm process, through a real
SuperNode, and survives what a device meets.

The contract test of client/flower_tasks.py (Flower's task runtime, used beyond its public
API): every claim here goes through a real ``flower-supernode --isolation process`` and a
real SuperLink (TLS, node authentication), so a Flower release that changes a touch point
fails here, at the step it changed:

* fedrec's rounds run in the executor (one process per device, its app imported once);
* an exception in the app is Flower's error reply, with Flower's reason format;
* a task of another app runs in a process of its own, as Flower runs it;
* an executor killed mid-task is started again and the next round has its reply;
* a SuperNode restarted under a running executor: the executor claims from the new one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import federation

from fedrec.client.flower_tasks import FlowerVersionError, check_flower_version
from fedrec.deploy.local import LocalDeployment, deployment_config
from fedrec.deploy.processes import deployment_env
from fedrec.deploy.superlink import follow_run, write_echo_app

NODES = 2
CONFIG = deployment_config(
    federation(
        synthetic_items=200,
        dim=8,
        num_rounds=2,
        clients_per_round=NODES,
        min_clients=NODES,
        eval_every=1,
        round_timeout=120.0,
    ),
    NODES,
)


def test_an_unsupported_flower_is_refused_with_what_to_do() -> None:
    check_flower_version("1.42.3")
    with pytest.raises(FlowerVersionError, match=r"Flower 1\.43\.0.*default isolation"):
        check_flower_version("1.43.0")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    out = tmp_path_factory.mktemp("executor") / "run"
    with LocalDeployment(out, NODES, CONFIG) as deployment:
        deployment.build()
        deployment.start_superlink()
        deployment.register_devices()
        deployment.start_devices()
        yield deployment


def _executor_log(node: Any) -> str:
    return node.log.with_name(node.log.stem + ".executor.log").read_text()


@pytest.mark.slow
def test_fedrec_rounds_run_in_one_warm_process_per_device(deployment: LocalDeployment) -> None:
    executors = [node.executor.pid for node in deployment.devices if node.executor]
    outcome = deployment.federate()
    rounds = outcome.metrics["rounds"]
    assert [r["clients_replied"] for r in rounds if r["round"] >= 1] == [NODES, NODES]
    assert all(r["clients_unanswered"] == 0 for r in rounds if r["round"] >= 1)
    for node, pid in zip(deployment.devices, executors, strict=True):
        assert node.executor is not None and node.executor.pid == pid  # never restarted
        log = _executor_log(node)
        # round 0's evaluation, then train + evaluate in rounds 1 and 2: five tasks, in-process
        assert log.count("fedrec.client.app:app started") == 5, log[-2000:]
        assert log.count(": completed in") == 5


@pytest.mark.slow
def test_an_exception_in_the_app_is_flowers_error_reply(deployment: LocalDeployment) -> None:
    outcome = deployment.federate_echo(2, 10, fail_round=1)
    first, second = outcome.metrics["rounds"]
    assert first["clients_replied"] == 0 and first["clients_evaluated"] == NODES
    assert first["errors"] == ["<class 'RuntimeError'>:<'echo: failing round 1 as asked'>"]
    assert second["clients_replied"] == NODES and second["errors"] == []
    assert all(": failed in" in _executor_log(node) for node in deployment.devices)


@pytest.mark.slow
def test_a_task_of_another_app_runs_in_its_own_process(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    app = tmp_path / "foreign"
    app.mkdir()
    (app / "foreign_client.py").write_text(
        "import fedrec.client.echo\n\napp = fedrec.client.echo.app\n"
    )
    echo_app = (write_echo_app(tmp_path / "echo") / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(
        echo_app.replace('"fedrec.client.echo:app"', '"foreign_client:app"').replace(
            'name = "fedrec-echo"', 'name = "foreign"'
        )
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "run-config.toml").write_text(
        f"num-rounds = 2\nmin-clients = {NODES}\npayload-floats = 10\nout-dir = '{out}'\n"
    )
    assert deployment.control is not None
    run_id = deployment.control.submit(app, out / "run-config.toml")
    outcome = follow_run(deployment.control, run_id, out, alive=deployment.check_alive)
    assert [r["clients_replied"] for r in outcome.metrics["rounds"]] == [NODES, NODES]
    for node in deployment.devices:
        log = _executor_log(node)
        assert "app 'foreign_client:app' runs in its own process" in log
        assert "foreign_client:app started" not in log  # never in the warm process


@pytest.mark.slow
def test_a_killed_executor_is_started_again_and_the_next_round_has_its_reply(
    deployment: LocalDeployment,
) -> None:
    node = deployment.devices[0]
    assert node.executor is not None
    victim = node.executor.pid
    log = node.log.with_name(node.log.stem + ".executor.log")
    offset = log.stat().st_size

    def kill_mid_task() -> None:  # once the first task of the run has started, SIGKILL
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "fedrec.client.echo:app started" in log.read_text()[offset:]:
                os.kill(victim, signal.SIGKILL)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_mid_task, daemon=True)
    killer.start()
    # Flower expires a task whose heartbeats stopped after ~60 s and answers it with its
    # "ClientApp crashed" error; the round waits for that (two nodes: the quorum is both)
    outcome = deployment.federate_echo(2, 10, task_seconds=2.0, round_timeout=150.0)
    killer.join()
    first, second = outcome.metrics["rounds"]
    assert first["clients_replied"] == NODES - 1
    assert first["errors"] == ["ClientApp stopped responding."], first  # Flower's reply
    assert second["clients_replied"] == NODES  # the new executor took the next round
    assert node.executor is not None and node.executor.pid != victim
    assert deployment.restarts[node.name] >= 1


@pytest.mark.slow
def test_a_supernode_restarted_under_its_executor(deployment: LocalDeployment) -> None:
    node = deployment.devices[1]
    assert node.service is not None and node.executor is not None
    executor = node.executor.pid
    node.service.stop()
    deployment.services.forget(node.service)
    settings = node.settings(deployment.address, deployment.ca)
    env = deployment_env({"FLWR_HOME": str(node.flwr_home)})
    node.service = deployment.services.start(node.name, settings.argv(), node.log, env=env)
    outcome = deployment.federate_echo(1, 10)
    assert outcome.metrics["rounds"][0]["clients_replied"] == NODES
    assert node.executor.pid == executor and node.executor.running()
