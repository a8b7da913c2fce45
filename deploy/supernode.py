"""A device joins a real Flower deployment: ``flower-supernode`` over its own store.

:func:`join` starts Flower's SuperNode with the device's store as its node config (``store``,
``key-file`` or ``passphrase-file``; the ClientApp reads the user from there, no
``partition-id``), TLS against the operator's CA and node authentication with the device's
key. Flower reconnects by itself while the SuperLink is unreachable; if the SuperNode process
ends with an error, :func:`join` starts it again after an exponential backoff (with jitter)
up to ``retries`` times. That includes the SuperLink refusing to activate the node (Flower's
API error 2004), which has two causes a device cannot tell apart: its key is not registered,
or its previous session crashed and still counts as online (the SuperLink frees it after two
missed 30 s heartbeats). A refusal no retry can fix ends at once with what to do: the key
file is not an ECDSA key, TLS is misconfigured. SIGINT or SIGTERM stop the SuperNode and
everything it spawned, and :func:`join` returns.

Nothing the SuperNode writes goes into the store: Flower's own files (the app it was sent)
live in ``flwr_home``, by default a temporary folder removed on exit.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedrec.client.data import NODE_KEY_FILE, NODE_PASSPHRASE_FILE, NODE_STORE
from fedrec.client.device import Device, DeviceError, read_passphrase
from fedrec.client.executor import RECYCLE_EXIT
from fedrec.common.crypto import SealedFileError
from fedrec.deploy.processes import (
    Service,
    deployment_env,
    flower_command,
    interrupt_on_sigterm,
    log_tail,
)

__all__ = ["REFUSED_HINT", "JoinError", "JoinSettings", "join", "node_config"]

# What the SuperNode's log says when a retry cannot help (Flower's exit codes)
_FATAL = {
    "Exit Code: 302": "the auth key is not an ECDSA private key",
    "Exit Code: 303": "node authentication needs TLS",
    "Exit Code: 603": "the root certificates are not a PEM CA certificate",
    "Exit Code: 600": "the SuperLink address is not HOST:PORT",
}
# ... and when a retry may help: the link refused to activate the node (API error 2004)
_REFUSED = "[code: 2004]"
REFUSED_HINT = (
    "the SuperLink refused to activate this device: either its key is not registered (the"
    " operator runs `fedrec server register KEY.pub`), or its previous session (one that"
    " crashed) still counts as online, which clears within a minute"
)


class JoinError(RuntimeError):
    """The device could not join, or gave up after its retries."""


@dataclass(frozen=True)
class JoinSettings:
    """Everything ``flower-supernode`` needs to run this device's ClientApp."""

    superlink: str  # HOST:PORT of the SuperLink (its Fleet API, TLS)
    root_certificates: Path  # the CA that signed the SuperLink's certificate
    auth_key: Path  # the device's ECDSA P-384 private key (registered by the operator)
    store: Path  # the device store (fedrec.client.device)
    key_file: Path | None = None
    passphrase_file: Path | None = None
    port: int = 9094  # the SuperNode's local Runtime API (127.0.0.1 only)
    warm: bool = True  # tasks run in fedrec's warm executor (False: a process per message)
    max_tasks: int = 0  # the executor recycles itself after this many tasks (0: never)
    max_rss_mib: float = 0.0  # ... or once its resident memory passes this (0: never)

    def __post_init__(self) -> None:
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--superlink must be HOST:PORT, got {self.superlink!r}")
        for what, path in (("root certificates", self.root_certificates),
                           ("auth key", self.auth_key)):  # fmt: skip
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path} not found")
        if (self.key_file is None) == (self.passphrase_file is None):
            raise ValueError("a device store opens with --key-file or --passphrase-file")

    def check_store(self) -> Device:
        """Open the store now (a wrong key or path fails here, not in the first round)."""
        passphrase = read_passphrase(self.passphrase_file) if self.passphrase_file else None
        return Device.open(self.store, key_file=self.key_file, passphrase=passphrase)

    def argv(self) -> list[str]:
        return [
            flower_command("flower-supernode"),
            "--superlink", self.superlink,
            "--root-certificates", str(Path(self.root_certificates).resolve()),
            "--auth-supernode-private-key", str(Path(self.auth_key).resolve()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--node-config", node_config(self),
            *(["--isolation", "process"] if self.warm else []),
        ]  # fmt: skip

    def executor_argv(self, supernode_log: Path | None = None) -> list[str]:
        """The warm executor beside the SuperNode (client/executor.py): ``python -m``, not the
        ``fedrec`` command line, which imports every command group. With the SuperNode's
        log it wakes when the log grows rather than polling."""
        return [
            sys.executable, "-m", "fedrec.client.executor",
            "--runtime-api", f"127.0.0.1:{self.port}",
            "--max-tasks", str(self.max_tasks),
            "--max-rss-mib", str(self.max_rss_mib),
            *(["--wake-file", str(Path(supernode_log).resolve())] if supernode_log else []),
            "--parent-pid", str(os.getpid()),  # it ends with whoever supervises it
        ]  # fmt: skip


def node_config(settings: JoinSettings) -> str:
    """``--node-config``: the store and how to open it (absolute paths, TOML-quoted)."""
    pairs = {NODE_STORE: settings.store}
    if settings.key_file is not None:
        pairs[NODE_KEY_FILE] = settings.key_file
    if settings.passphrase_file is not None:
        pairs[NODE_PASSPHRASE_FILE] = settings.passphrase_file
    return " ".join(f"{key}={_quoted(Path(p).resolve())}" for key, p in pairs.items())


def _quoted(path: Path) -> str:
    """A TOML literal string (no escapes: Windows paths too); Flower's parser takes no quote
    of the same kind inside a value."""
    text = str(path)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text and "\\" not in text:
        return f'"{text}"'
    raise ValueError(f"{text}: a path with both quote characters cannot be passed to Flower")


def join(
    settings: JoinSettings,
    log: str | Path,
    *,
    retries: int = 10,
    backoff: float = 2.0,
    max_backoff: float = 60.0,
    flwr_home: str | Path | None = None,
    on_event: Callable[[str], None] = lambda line: None,
) -> None:
    """Run the device's SuperNode until SIGINT/SIGTERM (returns) or a refusal (JoinError)."""
    try:
        device = settings.check_store()
    except (DeviceError, SealedFileError, OSError) as err:  # a wrong key, path or passphrase
        raise JoinError(f"the store does not open: {err}") from err
    on_event(f"device {device.name} (catalog {device.catalog.hash[:12]}) in {settings.store}")
    log = Path(log)
    attempt = 0
    with (
        tempfile.TemporaryDirectory(prefix="fedrec-flwr-home-") as scratch,
        interrupt_on_sigterm(),
    ):
        env = deployment_env({"FLWR_HOME": str(Path(flwr_home or scratch).resolve())})
        executor = _Supervised(settings, log, env, on_event) if settings.warm else None
        try:
            while True:
                started, offset = time.monotonic(), _size(log)
                service = Service("SuperNode", settings.argv(), log, env=env)
                on_event(f"SuperNode started (pid {service.pid}), dialling {settings.superlink}")
                try:
                    while service.running():
                        if executor is not None:
                            executor.check()
                        time.sleep(0.5)
                    code = service.returncode
                finally:
                    service.stop()
                reason = _refusal(log, offset)
                if reason is not None:
                    raise JoinError(f"{reason}:\n{log_tail(log)}")
                refused = _REFUSED in _log_since(log, offset)
                why = "refused by the SuperLink" if refused else f"exited (code {code})"
                attempt = 1 if time.monotonic() - started > 300 else attempt + 1
                if attempt > retries:
                    hint = f"{REFUSED_HINT}; " if refused else ""
                    raise JoinError(
                        f"{hint}the SuperNode {why} {attempt} times in a row, giving up:\n"
                        + log_tail(log)
                    )
                wait = min(max_backoff, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1)
                on_event(f"SuperNode {why}; retry {attempt}/{retries} in {wait:.1f} s")
                time.sleep(wait)
        except KeyboardInterrupt:
            on_event("stopped")
        finally:
            if executor is not None:
                executor.stop()


class _Supervised:
    """The device's warm executor, started again whenever it exits: at once after recycling
    itself, else with its error logged; one that crashes more than ``crashes`` times within
    a minute is a JoinError (a broken install, not a transient failure)."""

    def __init__(
        self,
        settings: JoinSettings,
        log: Path,
        env: dict[str, str],
        on_event: Callable[[str], None],
        crashes: int = 5,
    ) -> None:
        self.settings, self.env, self.on_event, self.crashes = settings, env, on_event, crashes
        self.supernode_log, self.log = log, log.with_name(log.stem + ".executor.log")
        self.crashed_at: list[float] = []
        self.service = self._start()

    def _start(self) -> Service:
        argv = self.settings.executor_argv(self.supernode_log)
        service = Service("executor", argv, self.log, env=self.env)
        self.on_event(f"executor started (pid {service.pid}, log {self.log})")
        return service

    def check(self) -> None:
        if self.service.running():
            return
        code = self.service.stop()
        if code != RECYCLE_EXIT:
            now = time.monotonic()
            self.crashed_at = [t for t in self.crashed_at if now - t < 60] + [now]
            if len(self.crashed_at) > self.crashes:
                raise JoinError(
                    f"the executor exited {len(self.crashed_at)} times within a minute"
                    f" (last code {code}):\n" + log_tail(self.log)
                )
            self.on_event(f"executor exited (code {code}); starting it again")
        self.service = self._start()

    def stop(self) -> None:
        self.service.stop()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _log_since(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _refusal(log: Path, offset: int) -> str | None:
    """Why the SuperNode run whose log starts at ``offset`` cannot succeed by retrying."""
    text = _log_since(log, offset)
    at = text.rfind("Exit Code:")
    if at < 0:
        return None
    last = text[at:]
    for marker, reason in _FATAL.items():
        if marker in last:
            return reason
    return None
