"""Run a federation through Flower's simulation engine (``fedrec simulate``).

Why ``flwr.simulation.run_simulation`` and not ``flwr run``: in flwr 1.42 ``flwr run`` submits
the app to a SuperLink (it needs a federation set up in the Flower config and packages the app
as a FAB, installing its dependencies unless FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1).
``run_simulation`` drives the same Simulation Runtime (Ray backend, one virtual SuperNode per
user, the same ServerApp/ClientApp objects and Message API) from this process, so the runner
can pass the parsed config straight to both apps and watch rounds live. It is marked deprecated
in 1.42 but is the engine's Python entry point; the apps themselves also run under ``flwr run``
(``[tool.flwr.app.components]`` in pyproject.toml).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import tomllib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedrec.client.data import check_state_is_kept
from fedrec.common.data.catalog import Catalog, load_catalog, save_catalog
from fedrec.common.data.cold import split_with_cold_items
from fedrec.common.data.dataset import Interactions
from fedrec.common.data.pack import write_pack
from fedrec.common.data.sources import load_interactions
from fedrec.common.data.split import check_evaluable
from fedrec.common.fedconfig import FederationConfig
from fedrec.common.runs import CATALOG_FILE, STOP_REQUESTED, RunInterrupted, prepare_run_dir
from fedrec.simulations.poisoning import malicious_count, poisoned_population, resolve_targets

__all__ = [
    "SCENARIO_DIR",
    "apply_settings",
    "load_scenario",
    "parse_setting",
    "simulate",
    "simulation_inputs",
]

SCENARIO_DIR = Path(__file__).resolve().parent


def load_scenario(path: str | Path) -> dict[str, Any]:
    """The ``[run]`` table of a scenario TOML (kebab-case federation settings)."""
    path = Path(path)
    if not path.exists() and (SCENARIO_DIR / path.name).exists():
        path = SCENARIO_DIR / path.name
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"scenario {path} not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    if "run" not in document:
        raise ValueError(f"{path}: a scenario needs a [run] table of federation settings")
    outside = sorted(k for k in document if k != "run")
    if outside:
        raise ValueError(
            f"{path}: {outside} {'is' if len(outside) == 1 else 'are'} outside the [run] table"
            " and would be ignored: move every setting below [run]"
        )
    return dict(document["run"])


def parse_setting(text: str) -> Any:
    """The value of a ``--set KEY=VALUE`` override: int, float, else the (unquoted) text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip('"')


def apply_settings(values: Mapping[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """``values`` with ``KEY=VALUE`` overrides applied (``--set`` of the CLI and benchmarks)."""
    out = dict(values)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_setting(value.strip())
    return out


@contextmanager
def simulation_inputs(config: FederationConfig) -> Iterator[tuple[FederationConfig, int]]:
    """(``config`` ready to simulate, the number of users) for the duration.

    The runner is the data owner of a simulation: it reads the data set once, for its user
    count, its public catalog and the shard pack its nodes map (``shard-pack``,
    :mod:`fedrec.common.data.pack`: without one every worker process would load and split
    the whole data set), and then lets go of it. The catalog is written to the run folder (or
    a temporary folder) unless ``catalog`` names one, which must then list this data set's
    items; the ServerApp reads only that file. The pack lives in a temporary folder (in
    shared memory where the machine has room) for the duration only, never in the run
    folder. The run also waits for every node before round 1: one per user, and the
    malicious ones of ``poison-fraction`` (simulations/poisoning.py), whose
    ``target-items = "tail:N"`` is drawn here.
    """
    check_state_is_kept(config)  # before anything starts, not in every node's first round
    data = load_interactions(config.data, threshold=config.threshold, synthetic=config.synthetic())
    check_population(config, data.num_users)
    check_evaluable(data)
    with (
        tempfile.TemporaryDirectory(prefix="fedrec-catalog-") as scratch,
        tempfile.TemporaryDirectory(prefix="fedrec-pack-", dir=_pack_parent(data)) as pack,
    ):
        if config.catalog:
            catalog = load_catalog(config.catalog)
            if catalog.item_ids != data.item_ids:
                raise ValueError(
                    f"catalog {config.catalog} does not list the items of {config.data}"
                    f" ({catalog.num_items} vs {data.num_items} items, or another order):"
                    " rebuild it with `fedrec catalog build` from this data"
                )
            path = Path(config.catalog)
        else:
            folder = Path(config.out_dir) if config.out_dir else Path(scratch)
            path = save_catalog(Catalog.of(data), folder / CATALOG_FILE)
        config = resolve_targets(config, data)  # target-items = "tail:N" drawn from the data
        users = data.num_users
        nodes = users + malicious_count(config, users)
        if not config.shard_dir:  # sealed shard folders are read as they are
            split = split_with_cold_items(data, seed=config.seed, fraction=config.cold_items)
            write_pack(split, data.user_features, pack, config.data_settings())
            config = config.replace(shard_pack=pack)
            del split
        del data  # the nodes map the pack: the driver keeps no user's data for the run
        yield config.replace(catalog=str(path), expected_nodes=nodes), users


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


def _checkpointed_round(out_dir: str) -> int:
    from fedrec.server.checkpoint import load_checkpoint_meta

    try:
        return int(load_checkpoint_meta(Path(out_dir)).get("round", 0)) if out_dir else 0
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def check_population(config: FederationConfig, users: int) -> None:
    """Refuse cohort settings the simulated population cannot meet (one node per user),
    rather than capping them or waiting a round timeout for nodes that never come."""
    for key, value in (
        ("clients-per-round", config.clients_per_round),
        ("min-clients", config.min_clients),
        ("eval-clients", config.eval_clients),
    ):
        if value > users:
            raise ValueError(
                f"{key} = {value} exceeds the {users} users of {config.data} (one node per"
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

    from fedrec.client.app import make_client_app
    from fedrec.server.app import make_server_app
    from fedrec.simulations.engine import ChunkedGrid, install_fast_polling

    install_fast_polling()

    if config.out_dir:
        prepare_run_dir(config.out_dir, config.resume)
    results: dict[str, Any] = {}
    cpus = num_cpus or os.cpu_count() or 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with (
        simulation_inputs(config) as (config, num_users),
        warnings.catch_warnings(),
        stop_between_rounds(config.out_dir),
    ):
        warnings.simplefilter("ignore")
        app, nodes = poisoned_population(client_app or make_client_app(config), config, num_users)
        run_simulation(
            server_app=make_server_app(config, on_round, results, wrap_grid=ChunkedGrid),
            client_app=app,
            num_supernodes=nodes,
            backend_config=ray_backend_config(cpus, actors, ray_address, client_cpus),
        )
    if not results:
        if STOP_REQUESTED.is_set():  # Flower logs the ServerApp's exception and moves on
            raise RunInterrupted(_checkpointed_round(config.out_dir), config.out_dir)
        raise RuntimeError("the simulation ended without results: see the log above")
    if config.out_dir:
        from fedrec.simulations.plots import plot_rounds

        plot_rounds(results["rounds"], Path(config.out_dir))
    return results
