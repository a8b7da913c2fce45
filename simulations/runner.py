"""Run a federation through Flower's simulation engine (``fedrec simulate``).

Why ``flwr.simulation.run_simulation`` and not ``flwr run``: in flwr 1.42 ``flwr run`` submits
the app to a SuperLink, which starts the ServerApp in a process of its own and loads both apps
by module path from an installed app bundle (``[tool.flwr.app.components]``): nothing of this
process reaches them. ``run_simulation`` drives the same Simulation Runtime (Ray backend, one
virtual SuperNode per user, the same ServerApp/ClientApp code and Message API) from this
process, so the runner hands both apps the parsed config, the shard pack it wrote and the
malicious population, and watches rounds live. Flower 1.42 marks it deprecated (a log line the
runner drops for this call); the apps also run under ``flwr run`` (README: ``flwr run .``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from fedrec.client.partitions import check_state_is_kept
from fedrec.common.data.catalog import Catalog, load_catalog, save_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.pack import write_pack
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import check_evaluable
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.stop import STOP_REQUESTED, RunInterrupted
from fedrec.server.runs import CATALOG_FILE, prepare_run_dir
from fedrec.simulations.poisoning import malicious_count, poisoned_population, resolve_targets

__all__ = [
    "SimulationInputs",
    "simulate",
    "simulation_inputs",
]


@dataclass(frozen=True)
class SimulationInputs:
    """What a simulation runs on, for its duration (:func:`simulation_inputs`)."""

    config: FederationConfig  # its catalog set, "tail:N" targets drawn
    users: int  # one honest node per user
    nodes: int  # the users, and the malicious devices of poison-fraction
    pack: str  # the shard pack the simulated nodes map ("": they read shard-dir)

    def client_app(self) -> ClientApp:
        """The honest ClientApp, its nodes mapping the run's shard pack."""
        from fedrec.client.app import make_client_app
        from fedrec.client.partitions import DataSetPartitions

        source = DataSetPartitions(self.pack) if self.pack else None
        return make_client_app(self.config, source)


@contextmanager
def simulation_inputs(config: FederationConfig) -> Iterator[SimulationInputs]:
    """The run's inputs (:class:`SimulationInputs`) for the duration.

    The runner is the data owner of a simulation: it reads the data set once, for its user
    count, its public catalog and the shard pack its nodes map (:mod:`fedrec.common.data.pack`:
    without one every worker process would load and split the whole data set), and then
    lets go of it. The catalog is written to the run folder (or
    a temporary folder) unless ``catalog`` names one, which must then list this data set's
    items; the ServerApp reads only that file. The pack lives in a temporary folder (in
    shared memory where the machine has room) for the duration only, never in the run
    folder. The run also waits for every node before round 1: one per user, and the
    malicious ones of ``poison-fraction`` (simulations/poisoning.py), whose
    ``target-items = "tail:N"`` is drawn here.
    """
    check_state_is_kept(config)  # before anything starts, not in every node's first round
    data = load_interactions(
        config.data.data, threshold=config.data.threshold, synthetic=config.synthetic()
    )
    check_population(config, data.num_users)
    check_evaluable(data)
    with (
        tempfile.TemporaryDirectory(prefix="fedrec-catalog-") as scratch,
        tempfile.TemporaryDirectory(prefix="fedrec-pack-", dir=_pack_parent(data)) as pack,
    ):
        if config.data.catalog:
            catalog = load_catalog(config.data.catalog)
            if catalog.item_ids != data.item_ids:
                raise ValueError(
                    f"catalog {config.data.catalog} does not list the items of {config.data.data}"
                    f" ({catalog.num_items} vs {data.num_items} items, or another order):"
                    " rebuild it with `fedrec catalog build` from this data"
                )
            path = Path(config.data.catalog)
        else:
            folder = Path(config.outputs.out_dir) if config.outputs.out_dir else Path(scratch)
            path = save_catalog(Catalog.of(data), folder / CATALOG_FILE)
        config = resolve_targets(config, data)  # target-items = "tail:N" drawn from the data
        users = data.num_users
        nodes = users + malicious_count(config, users)
        if not config.storage.shard_dir:  # sealed shard folders are read as they are
            split = split_with_cold_items(
                data, seed=config.data.seed, fraction=config.simulation.cold_items
            )
            write_pack(split, data.user_features, pack, config.data_settings())
            del split
        del data  # the nodes map the pack: the driver keeps no user's data for the run
        yield SimulationInputs(
            config.replace(catalog=str(path)),
            users,
            nodes,
            "" if config.storage.shard_dir else pack,
        )


def _pack_parent(data: Interactions) -> str | None:
    """/dev/shm (memory the workers share) when it has room for a pack of ``data`` four times
    over, else the system's temporary folder."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    size = 4 * len(data) + 4 * 101 * data.num_users + data.user_features.nbytes
    return str(shm) if shutil.disk_usage(shm).free > 4 * size else None


def ray_backend_config(
    cpus: int, actors: int | None, address: str | None, client_cpus: float | None
) -> dict[str, Any]:
    """Flower's Ray backend settings. A private instance by default (``address="local"``):
    ``ray.init()`` without one joins any cluster already running on the machine and then
    refuses ``num_cpus``, and two runs would share one. With an address (or ``RAY_ADDRESS``)
    the run joins that cluster and takes what it has, ``client_cpus`` per ClientApp."""
    quiet = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        per_client = client_cpus or 1.0
        return {
            "client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
            "init_args": {"address": address, **quiet},
        }
    # one ClientApp actor per core by default; fewer leaves the driver a core
    per_client = client_cpus or cpus / (actors or cpus)
    return {
        "client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
        "init_args": {"address": "local", "num_cpus": cpus, **quiet},
    }


@contextmanager
def stop_between_rounds(run_dir: str = "") -> Iterator[None]:
    """SIGINT / SIGTERM end the run before its next round (the round under way finishes and
    is checkpointed); a second one ends the process at once. Flower's engine cannot be
    interrupted otherwise: a KeyboardInterrupt in its main loop waits for worker threads
    that run until the ServerApp stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if STOP_REQUESTED.is_set():
            os._exit(128 + signum)
        STOP_REQUESTED.set()
        print("stopping after the round under way (again to quit now) …", flush=True)

    STOP_REQUESTED.clear()
    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except RunInterrupted as stop:  # raised in the ServerApp's thread: name the folder
        raise RunInterrupted(stop.completed_round, run_dir) from None
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)


class _RunSimulationDeprecation(logging.Filter):
    """Flower 1.42 logs that ``run_simulation`` is deprecated in favour of ``flwr run``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("DEPRECATED FEATURE") and "`run_simulation`" in message)


@contextmanager
def _without_run_simulations_deprecation() -> Iterator[None]:
    """``fedrec simulate`` keeps ``run_simulation``: ``flwr run`` loads the apps by module
    path in another process, so the runner could not hand them its parsed config, its
    live view or its results (see the module docstring). Its deprecation notice is a
    log line (not a Python warning): dropped for this call only."""
    flwr_log = logging.getLogger("flwr")
    quiet = _RunSimulationDeprecation()
    flwr_log.addFilter(quiet)
    try:
        yield
    finally:
        flwr_log.removeFilter(quiet)


def _checkpointed_round(out_dir: str) -> int:
    from fedrec.server.checkpoint import read_checkpoint

    try:
        return read_checkpoint(Path(out_dir)).round if out_dir else 0
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def check_population(config: FederationConfig, users: int) -> None:
    """Refuse cohort settings the simulated population cannot meet (one node per user),
    rather than capping them or waiting a round timeout for nodes that never come."""
    for key, value in (
        ("clients-per-round", config.rounds.clients_per_round),
        ("min-clients", config.rounds.min_clients),
        ("eval-clients", config.rounds.eval_clients),
    ):
        if value > users:
            raise ValueError(
                f"{key} = {value} exceeds the {users} users of {config.data.data} (one node per"
                f" user): set {key} to at most {users}"
            )


def simulate(
    config: FederationConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    *,
    num_cpus: int | None = None,
    actors: int | None = None,
    client_app: Any = None,
    ray_address: str | None = None,
    client_cpus: float | None = None,
) -> dict[str, Any]:
    """Run the federation in the simulation engine; returns the metrics written to out-dir.

    ``ray_address`` (or ``RAY_ADDRESS``): a Ray cluster to run the ClientApps on, each
    taking ``client_cpus`` CPUs (default: one); without either, a private Ray instance of
    ``num_cpus`` (default: every core) that no other run on the machine shares."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from fedrec.server.app import make_server_app
    from fedrec.simulations.engine import ChunkedGrid, install_fast_polling

    install_fast_polling()

    if config.outputs.out_dir:
        prepare_run_dir(config.outputs.out_dir, config.outputs.resume)
    results: dict[str, Any] = {}
    cpus = num_cpus or os.cpu_count() or 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with (
        simulation_inputs(config) as inputs,
        stop_between_rounds(config.outputs.out_dir),
        _without_run_simulations_deprecation(),
    ):
        config = inputs.config
        honest = client_app or inputs.client_app()
        app, nodes = poisoned_population(honest, config, inputs.users)
        server = make_server_app(
            config, on_round, results, wrap_grid=ChunkedGrid, expected_nodes=nodes
        )
        run_simulation(
            server_app=server,
            client_app=app,
            num_supernodes=nodes,
            backend_config=ray_backend_config(cpus, actors, ray_address, client_cpus),
        )
    if not results:
        if STOP_REQUESTED.is_set():  # Flower logs the ServerApp's exception and moves on
            raise RunInterrupted(
                _checkpointed_round(config.outputs.out_dir), config.outputs.out_dir
            )
        raise RuntimeError("the simulation ended without results: see the log above")
    if config.outputs.out_dir:
        from fedrec.server.plots import plot_rounds

        plot_rounds(results["rounds"], Path(config.outputs.out_dir))
    return results
