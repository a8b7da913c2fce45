"""The server side of a real deployment: a Flower SuperLink over TLS, and runs submitted to it.

A deployment is one SuperLink (``flower-superlink``: Fleet, Control and Runtime APIs over
HTTPS on one port, node authentication on, a state database so registrations and runs survive
a restart) and devices that dial it (``fedrec client join``). This module builds the
SuperLink's command line (:class:`SuperLinkSettings`), drives it through the ``flwr`` CLI
(:class:`Control`: register devices, list nodes, submit a run, follow it, stop it), and
submits a federation as a run (:func:`submit_federation`, :func:`follow_run`).

What a run needs on the SuperLink's host: fedrec installed beside Flower (the ServerApp is
``fedrec.server.app:app``; runtime dependency installation is off, so nothing is downloaded),
the published catalog (``catalog = PATH``) and the run folder (``out-dir``); both paths are
the SuperLink host's. The app submitted is a folder holding only a ``pyproject.toml`` that
names fedrec's components and every federation setting's default (:func:`write_app`); the
run's own settings travel as a run-config file written into the run folder.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.common.fedconfig import FederationConfig
from fedrec.common.files import write_atomic
from fedrec.deploy.credentials import CA_CERT, SERVER_CERT, SERVER_KEY
from fedrec.deploy.processes import deployment_env, flower_command
from fedrec.server.runs import METRICS_FILE, ROUNDS_LOG

__all__ = [
    "CONNECTION",
    "RUN_CONFIG_FILE",
    "Control",
    "DeploymentError",
    "RunOutcome",
    "SuperLinkSettings",
    "follow_run",
    "submit_federation",
    "write_app",
    "write_echo_app",
    "write_run_config",
]

CONNECTION = "fedrec"  # the connection's name in $FLWR_HOME/config.toml
RUN_CONFIG_FILE = "run-config.toml"  # written into the run folder: what was submitted
APP_NAME = "fedrec-federation"
FINISHED = "finished:"


class DeploymentError(RuntimeError):
    """The SuperLink refused a request, or a run did not complete."""


IN_MEMORY = ":flwr-in-memory:"  # Flower's in-process LinkState: lost when the SuperLink stops


@dataclass(frozen=True)
class SuperLinkSettings:
    """How to start the SuperLink: its credentials folder, state database and address."""

    credentials: Path  # holds ca.crt, server.pem, server.key (fedrec server certs)
    database: Path | None  # registrations and runs survive a restart; None: in memory
    host: str = "0.0.0.0"
    port: int = 8000

    def __post_init__(self) -> None:
        missing = [
            str(self.credentials / n)
            for n in (CA_CERT, SERVER_CERT, SERVER_KEY)
            if not (self.credentials / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(missing)} not found: create them with `fedrec server certs"
                f" --out {self.credentials}`"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")

    @property
    def address(self) -> str:
        """Where devices and the ``flwr`` CLI dial (loopback when it listens everywhere)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            flower_command("flower-superlink"),
            "--ssl-ca-certfile", str(self.credentials / CA_CERT),
            "--ssl-certfile", str(self.credentials / SERVER_CERT),
            "--ssl-keyfile", str(self.credentials / SERVER_KEY),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database", str(self.database) if self.database else IN_MEMORY,
            "--host", self.host,
            "--port", str(self.port),
        ]  # fmt: skip


class Control:
    """The ``flwr`` CLI against one SuperLink, from a ``$FLWR_HOME`` of its own.

    ``home/config.toml`` names one connection (:data:`CONNECTION`): the link's address and
    the CA that signed its certificate. Every call asks for JSON and turns an unsuccessful
    answer into :class:`DeploymentError` with Flower's message.
    """

    def __init__(self, home: str | Path, address: str, root_certificates: str | Path) -> None:
        self.home, self.address = Path(home).resolve(), address
        self.root_certificates = Path(root_certificates).resolve()
        if not self.root_certificates.is_file():
            raise FileNotFoundError(f"CA certificate {self.root_certificates} not found")
        text = (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {json.dumps(address)}\n"
            f"root-certificates = {json.dumps(str(self.root_certificates))}\n"
        )
        write_atomic(self.home / "config.toml", text.encode())

    def register(self, public_key: str | Path, name: str) -> int | None:
        """Register a device's public key; its node id, or None if it is registered already."""
        try:
            answer = self._flwr(
                "supernode", "register", str(public_key), CONNECTION, "--name", name
            )
        except DeploymentError as err:
            if "already in use" in str(err):
                return None
            raise
        return int(answer["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._flwr("supernode", "list", CONNECTION).get("nodes", []))

    def online(self) -> int:
        return sum(1 for node in self.nodes() if node.get("status") == "online")

    def wait_online(
        self, count: int, timeout: float, alive: Callable[[], None] = lambda: None
    ) -> int:
        """Wait until ``count`` nodes are online (``alive`` raises if a process died)."""
        deadline = time.monotonic() + timeout
        while (online := self.online()) < count:
            alive()
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"only {online} of {count} SuperNodes online after {timeout:.0f} s"
                )
            time.sleep(0.5)
        return online

    def submit(self, app: str | Path, run_config: str | Path) -> int:
        """Start a run of the app folder with a run-config file; its run id."""
        answer = self._flwr("run", str(app), CONNECTION, "--run-config", str(run_config))
        return int(answer["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        runs = self._flwr("list", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        if not runs:
            raise DeploymentError(f"the SuperLink does not know run {run_id}")
        return dict(runs[0])

    def stop(self, run_id: int) -> None:
        self._flwr("stop", str(run_id), CONNECTION)

    def _flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        argv = [flower_command("flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=deployment_env({"FLWR_HOME": str(self.home)}),
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` got no answer in {timeout:.0f} s"
            ) from err
        answer = _json_of(done.stdout)
        if answer is None or not answer.get("success", False):
            message = (answer or {}).get("error-message") or (done.stderr or done.stdout).strip()
            raise DeploymentError(f"`flwr {' '.join(args)}` failed: {message}")
        return answer


def _json_of(text: str) -> dict[str, Any] | None:
    """The JSON object ``flwr --format json`` printed (after any plain lines)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        found = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def write_app(folder: str | Path) -> Path:
    """The Flower app folder ``flwr run`` packages: a ``pyproject.toml`` naming fedrec's
    ServerApp and ClientApp and every federation setting with its default."""
    defaults = FederationConfig().to_mapping(deployed=True)
    lines = [
        "[project]",
        f'name = "{APP_NAME}"',
        'version = "1.0.0"',
        'description = "fedrec federation: the ServerApp and ClientApp of the installed fedrec"',
        'license = "Apache-2.0"',
        "dependencies = []  # every process runs where fedrec is installed: nothing to fetch",
        "",
        "[tool.flwr.app]",
        'publisher = "fedrec"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "fedrec.server.app:app"',
        'clientapp = "fedrec.client.app:app"',
        "",
        "[tool.flwr.app.config]",
        *_toml_pairs(defaults),
    ]
    path = Path(folder) / "pyproject.toml"
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path.parent


def write_echo_app(folder: str | Path) -> Path:
    """The null app's folder (``fedrec.server.echo``, ``fedrec.client.echo``): the same
    deployment with nothing computed, to measure what fedrec's work adds to a round."""
    lines = [
        "[project]",
        'name = "fedrec-echo"',
        'version = "1.0.0"',
        'description = "the null app: Flower\'s floor on a fedrec deployment"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "fedrec"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "fedrec.server.echo:app"',
        'clientapp = "fedrec.client.echo:app"',
        "",
        "[tool.flwr.app.config]",
        "num-rounds = 2",
        "min-clients = 1",
        "payload-floats = 1",
        "round-timeout = 600.0",
        'payload-shapes = ""',
        "fail-round = 0",
        "task-seconds = 0.0",
        'out-dir = ""',
    ]
    path = Path(folder) / "pyproject.toml"
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path.parent


def write_run_config(config: FederationConfig, path: str | Path) -> Path:
    """Every setting of ``config`` as the TOML file ``flwr run --run-config`` reads."""
    text = "# the settings this run was submitted with (flwr run --run-config)\n"
    pairs = _toml_pairs(config.to_mapping(deployed=True))  # a deployment: no simulation setting
    return write_atomic(path, (text + "\n".join(pairs) + "\n").encode())


def _toml_pairs(values: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"{key}: a run-config value is an int, float or str, got {value!r}")
        out.append(f"{key} = {json.dumps(value) if isinstance(value, str) else repr(value)}")
    return out


def submit_federation(control: Control, config: FederationConfig, app_dir: str | Path) -> int:
    """Submit ``config`` (its out-dir already created) as a run; the run id.

    ``catalog``, ``out-dir`` and ``resume`` must be absolute: the ServerApp resolves them on
    the SuperLink's host, in a process whose working folder is not the caller's."""
    for key, value in (("catalog", config.data.catalog), ("out-dir", config.outputs.out_dir),
                       ("resume", config.outputs.resume)):  # fmt: skip
        if value and not Path(value).is_absolute():
            raise ValueError(f"{key} {value!r} must be an absolute path on the SuperLink host")
    if not config.data.catalog:
        raise ValueError(
            "a deployed run needs the published catalog: `fedrec catalog build --out FILE`,"
            " then --catalog FILE (the devices hold the same file)"
        )
    if not config.outputs.out_dir:
        raise ValueError("a deployed run needs a run folder (out-dir)")
    write_app(app_dir)
    run_config = write_run_config(config, Path(config.outputs.out_dir) / RUN_CONFIG_FILE)
    return control.submit(app_dir, run_config)


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: Flower's record of it and the metrics its ServerApp wrote."""

    run_id: int
    info: dict[str, Any]
    metrics: dict[str, Any]


def follow_run(
    control: Control,
    run_id: int,
    out_dir: str | Path,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    *,
    poll: float = 0.5,
    status_every: float = 5.0,
    alive: Callable[[], None] = lambda: None,
) -> RunOutcome:
    """Follow a run until it finishes, passing each new line of rounds.jsonl to ``on_round``.

    Rounds are read from the run folder every ``poll`` seconds; the SuperLink is asked for the
    run's status every ``status_every`` seconds and as soon as metrics.json appears (each ask
    is a ``flwr`` process: asking every second would take a core from the federation). A run
    that fails or is stopped raises DeploymentError with Flower's reason. Ctrl-C stops the run
    on the SuperLink (no orphan run keeps the devices busy) and is re-raised."""
    out = Path(out_dir)
    rounds, metrics_file = _RoundsTail(out / ROUNDS_LOG), out / METRICS_FILE
    try:
        asked, status, info = 0.0, "", dict[str, Any]()
        while not status.startswith(FINISHED):
            for record in rounds.new():
                if on_round is not None:
                    on_round(record)
            if time.monotonic() - asked > status_every or metrics_file.exists():
                info, asked = control.run_info(run_id), time.monotonic()
                status = str(info.get("status", ""))
                if status.startswith(FINISHED):
                    break
            alive()
            time.sleep(poll)
        for record in rounds.new():
            if on_round is not None:
                on_round(record)
    except KeyboardInterrupt:
        with suppress(DeploymentError):  # already finished, or the link is gone
            control.stop(run_id)
        raise
    if status != FINISHED + "completed":
        raise DeploymentError(
            f"run {run_id} {status.removeprefix(FINISHED)}: {info.get('status-details', '')}"
        )
    if not metrics_file.exists():
        raise DeploymentError(f"run {run_id} completed but wrote no {metrics_file}")
    return RunOutcome(run_id, info, json.loads(metrics_file.read_text()))


class _RoundsTail:
    """The complete lines appended to rounds.jsonl since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                yield json.loads(line)
