"""A whole deployment on this machine: ``fedrec deploy local``.

Everything a real deployment has, over loopback: a CA and a server certificate, one device key
pair per SuperNode, a SuperLink with TLS and node authentication (its state in memory, or in
a database file with ``keep_state``), the devices registered, one encrypted device store per
user (that user's own history and attributes, nothing else), N ``flower-supernode``
processes each over its own store, and the federation submitted with ``flwr run``. The run
folder (``--out``) is the one ``fedrec simulate`` writes; ``OUT/deployment/`` keeps what the
deployment was made of::

    deployment/credentials/    ca.crt, ca.key, server.pem, server.key
    deployment/keys/           device-NNN (private, 0600) and device-NNN.pub
    deployment/devices/        device-NNN/ (the sealed store) and device-NNN.key (its key)
    deployment/superlink/      state.db (with keep_state)
    deployment/logs/           superlink.log, device-NNN.log
    deployment/deployment.json ports, node ids, start-up seconds, Flower's run record

:class:`LocalDeployment` is a context manager: every process it started is stopped when the
block ends, on success, on an error and on Ctrl-C (SIGTERM too, through the CLI). Its steps
are methods, so tests and benchmarks can kill and restart a device between rounds.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fedrec.client.device import Device, Interaction
from fedrec.client.executor import RECYCLE_EXIT
from fedrec.common.data.catalog import Catalog, save_catalog
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.sources import load_interactions
from fedrec.common.fedconfig import FederationConfig, simulation_settings_set
from fedrec.deploy.credentials import CA_CERT, make_device_key, make_server_credentials
from fedrec.deploy.processes import (
    Service,
    ServiceError,
    Services,
    deployment_env,
    flower_command,
    free_port,
)
from fedrec.deploy.superlink import (
    Control,
    DeploymentError,
    RunOutcome,
    SuperLinkSettings,
    follow_run,
    submit_federation,
    write_echo_app,
)
from fedrec.deploy.supernode import JoinSettings
from fedrec.server.runs import CATALOG_FILE, prepare_run_dir, write_json

__all__ = ["DeviceNode", "LocalDeployment", "choose_users", "deployment_config"]

DEPLOYMENT = "deployment"
DEVICE_NICENESS = 10  # devices on one machine yield to the SuperLink (see start_device)
RoundCallback = Callable[[dict[str, Any]], None]
EventCallback = Callable[[str], None]


@dataclass
class DeviceNode:
    """One simulated phone: its store, keys, Runtime API port and (while up) its process."""

    name: str
    user: str  # the data set's user id it holds (never sent anywhere)
    store: Path
    key_file: Path
    auth_key: Path
    port: int
    log: Path
    flwr_home: Path
    node_id: int | None = None
    service: Service | None = None  # its SuperNode (or `fedrec client join`)
    executor: Service | None = None  # its warm executor, beside a bare SuperNode

    def settings(self, superlink: str, ca: Path, *, warm: bool = True) -> JoinSettings:
        return JoinSettings(
            superlink=superlink,
            root_certificates=ca,
            auth_key=self.auth_key,
            store=self.store,
            key_file=self.key_file,
            port=self.port,
            warm=warm,
        )


def deployment_config(config: FederationConfig, nodes: int) -> FederationConfig:
    """The deployment's settings: the synthetic data set has one user per node unless told
    otherwise. Of the simulation settings only the synthetic population applies (it is what
    the device stores are sealed from); any other is refused, naming it: the deployed server
    and devices would never see it."""
    refused = {
        k: v
        for k, v in simulation_settings_set(asdict(config.simulation)).items()
        if k not in ("synthetic-users", "synthetic-items")
    }
    if refused:
        key = next(iter(refused))
        raise ValueError(
            f"{key} = {refused[key]!r} is a simulation setting: a deployment's server and"
            f" devices refuse it; run it with fedrec simulate, or remove {key}"
        )
    if (
        config.data.data == "synthetic"
        and config.simulation.synthetic_users == FederationConfig().simulation.synthetic_users
    ):
        return config.replace(synthetic_users=nodes)
    return config


def choose_users(data: Interactions, nodes: int, seed: int) -> list[int]:
    """The users that become devices: all of them, or ``nodes`` drawn with ``seed``."""
    if nodes < 1:
        raise ValueError(f"--nodes must be at least 1, got {nodes}")
    if nodes > data.num_users:
        raise ValueError(f"--nodes {nodes}: the data set has only {data.num_users} users")
    if nodes == data.num_users:
        return list(range(nodes))
    rng = np.random.default_rng(seed)
    return sorted(int(u) for u in rng.choice(data.num_users, size=nodes, replace=False))


@dataclass
class LocalDeployment:
    """SuperLink + N SuperNodes on loopback for ``config`` (run folder ``out``)."""

    out: Path
    nodes: int
    config: FederationConfig
    on_event: EventCallback = lambda line: None
    startup_timeout: float = 180.0
    keep_state: bool = False  # the SuperLink's state in a database file (see start_superlink)
    warm: bool = True  # devices run their tasks in a warm executor (False: Flower's process
    # per message)
    services: Services = field(default_factory=Services)
    devices: list[DeviceNode] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()
        self.root = self.out / DEPLOYMENT
        self.link: Service | None = None
        self.control: Control | None = None
        self.catalog_path = self.out / CATALOG_FILE
        self.ca = self.root / "credentials" / CA_CERT
        self.address = ""
        self.port = 0
        self.restarts: dict[str, int] = {}  # executors started again, by device

    # --- the whole command -----------------------------------------------------------------
    def run(self, on_round: RoundCallback | None = None) -> RunOutcome:
        """Build, start, register, join, run: what ``fedrec deploy local`` does."""
        self.build()
        self.start_superlink()
        self.register_devices()
        self.start_devices()
        return self.federate(on_round)

    # --- steps ----------------------------------------------------------------------------
    def build(self) -> None:
        """Credentials, device keys, the catalog, and one sealed store per chosen user."""
        started = time.perf_counter()
        prepare_run_dir(self.out)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} exists: deploy into a new --out folder")
        config = self.config
        data = load_interactions(
            config.data.data, threshold=config.data.threshold, synthetic=config.synthetic()
        )
        users = choose_users(data, self.nodes, config.data.seed)
        catalog = Catalog.of(data)
        save_catalog(catalog, self.catalog_path)
        make_server_credentials(self.root / "credentials")
        order = np.lexsort((data.timestamp, data.user))  # each user's rows, in time order
        bounds = np.searchsorted(data.user[order], np.arange(data.num_users + 1))
        for n, user in enumerate(users):
            name = f"device-{n:03d}"
            key = make_device_key(self.root / "keys" / name, comment=f"{name}@fedrec-deploy")
            node = DeviceNode(
                name=name,
                user=data.user_ids[user],
                store=self.root / "devices" / name,
                key_file=self.root / "devices" / f"{name}.key",
                auth_key=key.private,
                port=0,
                log=self.root / "logs" / f"{name}.log",
                flwr_home=self.root / "flwr" / name,
            )
            rows = order[bounds[user] : bounds[user + 1]]
            device = Device.create(
                node.store,
                catalog,
                key_file=node.key_file,
                user_features=catalog.user_schema.decode_one(data.user_features[user]),
            )
            device.import_history(
                [
                    Interaction(data.item_ids[i], "view", None, float(t))
                    for i, t in zip(data.item[rows], data.timestamp[rows], strict=True)
                ],
                hold_out=2,
            )
            self.devices.append(node)
        self.timings["build_seconds"] = time.perf_counter() - started
        self.on_event(
            f"{len(users)} device stores sealed in {self.root / 'devices'}"
            f" ({self.timings['build_seconds']:.1f} s)"
        )

    def start_superlink(self) -> None:
        """Start (or restart) the SuperLink and wait for its Control API.

        With ``keep_state`` its state (registrations, runs) is a database file and survives a
        restart; else it is in memory: with N devices sharing this machine's cores, Flower's
        SQLite state times out on its lock (5 s) under load and the reply being pushed is
        lost (20 devices on 2 cores: 2 of 20 replies in round 1), which an in-memory state
        never does."""
        started = time.perf_counter()
        self.port = self.port or free_port()
        settings = SuperLinkSettings(
            credentials=self.root / "credentials",
            database=self.root / "superlink" / "state.db" if self.keep_state else None,
            host="127.0.0.1",
            port=self.port,
        )
        (self.root / "superlink").mkdir(parents=True, exist_ok=True)
        self.link = self.services.start(
            "SuperLink",
            settings.argv(),
            self.root / "logs" / "superlink.log",
            env=deployment_env({"FLWR_HOME": str(self.root / "flwr" / "superlink")}),
            cwd=self.root / "superlink",
        )
        self.address = settings.address
        self.link.wait_until(lambda: _listening(self.port), self.startup_timeout, "its port")
        self.control = Control(self.root / "flwr" / "control", self.address, self.ca)
        link = self.link
        link.wait_until(lambda: _answers(self.control), self.startup_timeout, "its Control API")
        self.timings["superlink_start_seconds"] = time.perf_counter() - started
        self.on_event(f"SuperLink up at {self.address} (TLS, node authentication)")

    def register_devices(self) -> None:
        control = self._control()
        for node in self.devices:
            node.node_id = control.register(node.auth_key.with_suffix(".pub"), node.name)
        self.on_event(f"{len(self.devices)} device keys registered")

    def start_devices(self) -> None:
        """Start every device's SuperNode and wait until all are online."""
        started = time.perf_counter()
        for node in self.devices:
            self.start_device(node)
        self._control().wait_online(len(self.devices), self.startup_timeout, self.check_alive)
        self.timings["supernodes_online_seconds"] = time.perf_counter() - started
        self.on_event(
            f"{len(self.devices)} SuperNodes online"
            f" ({self.timings['supernodes_online_seconds']:.1f} s)"
        )

    def start_device(self, node: DeviceNode, *, via_join: bool = False) -> Service:
        """Start (or restart) one device's SuperNode over its store.

        ``via_join``: as a phone would, through ``fedrec client join`` (which restarts its
        SuperNode with backoff, e.g. while the link still counts a crashed session online);
        else ``flower-supernode`` itself, one process fewer per device."""
        node.port = node.port or free_port()
        settings = node.settings(self.address, self.ca, warm=self.warm)
        env = deployment_env({"FLWR_HOME": str(node.flwr_home)})
        nice = _nice()
        if via_join:  # join starts and supervises the executor itself
            argv = [flower_command("fedrec"), "client", "join", "--store", str(node.store),
                    "--key-file", str(node.key_file), "--superlink", self.address,
                    "--root-certificates", str(self.ca), "--auth-key", str(node.auth_key),
                    "--port", str(node.port), "--backoff", "1", "--log", str(node.log),
                    *([] if self.warm else ["--per-message"])]  # fmt: skip
            log = node.log.with_name(node.log.stem + ".join.log")
            node.service = self.services.start(node.name, nice + argv, log, env=env)
        else:
            argv = nice + settings.argv()
            node.service = self.services.start(node.name, argv, node.log, env=env)
            if self.warm:
                self.start_executor(node)
        return node.service

    def start_executor(self, node: DeviceNode) -> Service:
        """(Re)start a device's warm executor beside its bare SuperNode."""
        argv = _nice() + node.settings(self.address, self.ca).executor_argv(node.log)
        log = node.log.with_name(node.log.stem + ".executor.log")
        env = deployment_env({"FLWR_HOME": str(node.flwr_home)})
        node.executor = self.services.start(f"{node.name}-executor", argv, log, env=env)
        return node.executor

    def kill_device(self, node: DeviceNode) -> None:
        """Stop one device abruptly (SIGKILL: a phone that died), e.g. mid-run."""
        for service in (node.service, node.executor):
            if service is not None:
                service.stop(grace=0.0)
                self.services.forget(service)
        node.service = node.executor = None

    def stop_superlink(self) -> None:
        if self.link is not None:
            self.link.stop()
            self.services.forget(self.link)
            self.link = None

    def federate(self, on_round: RoundCallback | None = None) -> RunOutcome:
        """Submit the federation to the SuperLink and follow it to its end."""
        control = self._control()
        config = self.config.replace(catalog=str(self.catalog_path), out_dir=str(self.out))
        # every device is online before round 1 (the run samples from the nodes connected)
        control.wait_online(len(self.devices), self.startup_timeout, self.check_alive)
        started = time.perf_counter()
        run_id = submit_federation(control, config, self.root / "app")
        self.on_event(f"run {run_id} submitted: {config.rounds.num_rounds} rounds")
        outcome = follow_run(control, run_id, self.out, on_round, alive=self.check_alive)
        self.timings["run_seconds"] = time.perf_counter() - started
        self.write_record(outcome)
        return outcome

    def federate_echo(
        self, rounds: int, payload_floats: int, **settings: float | int | str
    ) -> RunOutcome:
        """The null app (server/echo.py, client/echo.py) on this deployment: rounds of
        fedrec's shape carrying ``payload_floats`` float32 values, nothing computed;
        ``settings`` are its other run-config keys (``payload_shapes``, ``round_timeout``,
        ``fail_round``, ``task_seconds``)."""
        control = self._control()
        control.wait_online(len(self.devices), self.startup_timeout, self.check_alive)
        out = self.root / "echo" / f"run-{len(list((self.root / 'echo').glob('run-*')))}"
        out.mkdir(parents=True)
        app = write_echo_app(self.root / "echo" / "app")
        run_config = out / "run-config.toml"
        values = {
            "num-rounds": rounds,
            "min-clients": len(self.devices),
            "payload-floats": payload_floats,
            "round-timeout": 600.0,
            "out-dir": str(out),
        }
        values |= {k.replace("_", "-"): v for k, v in settings.items()}  # fmt: skip
        run_config.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
        run_id = control.submit(app, run_config)
        return follow_run(control, run_id, out, alive=self.check_alive)

    def check_alive(self) -> None:
        """ServiceError if the SuperLink or a device that should be up has exited. A device's
        executor that exited is started again: it recycles itself (RECYCLE_EXIT), and after
        a crash the SuperNode answers the task it lost with Flower's error reply."""
        for node in self.devices:
            executor = node.executor
            if executor is not None and not executor.running():
                code = executor.stop()
                self.services.forget(executor)
                self.restarts[node.name] = self.restarts.get(node.name, 0) + 1
                if code != RECYCLE_EXIT:
                    self.on_event(f"{node.name}: executor exited (code {code}), restarted")
                self.start_executor(node)
        for service in self.services:
            if not service.running():
                raise ServiceError(
                    f"{service.name} exited with code {service.returncode}; its log: {service.log}"
                )

    def write_record(self, outcome: RunOutcome | None = None) -> Path:
        record = {
            "superlink": {
                "address": self.address,
                "database": "superlink/state.db" if self.keep_state else "in memory",
            },
            "devices": [
                {"name": d.name, "node_id": d.node_id, "runtime_port": d.port} for d in self.devices
            ],
            "runtime": "warm executor" if self.warm else "a process per message (Flower's)",
            "executor_restarts": self.restarts,
            "timings": self.timings,
            "run": outcome.info if outcome is not None else None,
        }
        return write_json(self.root / "deployment.json", record)

    def _control(self) -> Control:
        if self.control is None:
            raise ServiceError("the SuperLink is not started")
        return self.control

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.services.stop_all()


def _nice() -> list[str]:
    """The prefix every device process starts with: N devices share this machine's cores,
    so they yield to the SuperLink, whose SQLite state waits at most 5 s for its lock (a
    reply pushed past that is lost to Flower)."""
    found = shutil.which("nice")
    return [found, "-n", str(DEVICE_NICENESS)] if found else []


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers(control: Control | None) -> bool:
    if control is None:
        return False
    try:
        control.nodes()
    except DeploymentError:  # not up yet
        return False
    return True
