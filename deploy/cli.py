"""``fedrec server``, ``fedrec deploy`` and a device's ``fedrec client keygen/join``.

A real Flower deployment, and one on this machine. The operator's commands, in the order of a
first deployment::

    fedrec server certs --out creds --host link.example.org --host 203.0.113.7
    fedrec server keys --out keys --count 3              # or each device makes its own
    fedrec server start --credentials creds --database state.db
    fedrec server register keys/device-000.pub --credentials creds
    fedrec server run --config SCENARIO --catalog catalog.npz --out runs/r1 --credentials creds

On each device: ``fedrec client keygen --out AUTH`` (the operator registers AUTH.pub), then
``fedrec client join --store DIR --key-file KEY --superlink HOST:PORT --root-certificates
CA --auth-key AUTH`` (:func:`add_device_commands` puts them in the ``client`` group).

``fedrec deploy local --nodes N --rounds R --out DIR`` does all of it on loopback, with one
device store per user of the data source, and stops every process it started.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fedrec.client.cli import KeyFileOption, PassphraseFileOption, StoreOption
from fedrec.common.cli import console, federation_config, or_exit
from fedrec.server.progress import print_results, progress_view, round_line

__all__ = ["add_device_commands", "deploy_app", "server_app"]

server_app = typer.Typer(
    help="Run the server side of a real deployment (SuperLink over TLS).", no_args_is_help=True
)
deploy_app = typer.Typer(help="Whole deployments in one command.", no_args_is_help=True)

CredentialsOption = Annotated[
    Path,
    typer.Option("--credentials", help="Folder of `fedrec server certs` (ca.crt, server.pem…)."),
]
SuperLinkOption = Annotated[
    str, typer.Option("--superlink", help="HOST:PORT the SuperLink serves on.")
]


@server_app.command("certs")
def certs_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (CA and server cert).")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="A DNS name or IP devices dial (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """A certificate authority and a SuperLink certificate for its names and addresses."""
    from fedrec.deploy.credentials import DEFAULT_HOSTS, make_server_credentials

    hosts = tuple(host) if host else DEFAULT_HOSTS
    made = or_exit(lambda: make_server_credentials(out, hosts, days=days))
    console.print(f"CA {made.ca_cert} (give it to every device), key {made.ca_key} (keep it)")
    console.print(f"server certificate {made.server_cert} for {', '.join(made.hosts)}")


@server_app.command("keys")
def keys_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the key pairs.")],
    count: Annotated[int, typer.Option("--count", help="How many devices.")] = 1,
    prefix: Annotated[str, typer.Option(help="File name prefix.")] = "device",
) -> None:
    """ECDSA P-384 device key pairs in OpenSSH format: NAME (private) and NAME.pub."""
    from fedrec.deploy.credentials import make_device_key

    if count < 1:
        console.print(f"[red]error:[/] --count must be at least 1, got {count}")
        raise typer.Exit(code=2)
    for n in range(count):
        made = or_exit(lambda n=n: make_device_key(out / f"{prefix}-{n:03d}", f"{prefix}-{n:03d}"))
        console.print(f"{made.private} (to the device) and {made.public} (register it)")


@server_app.command("start")
def start_cmd(
    credentials: CredentialsOption,
    database: Annotated[Path, typer.Option(help="State database (kept across restarts).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port of the Fleet, Control and Runtime APIs.")] = 8000,
    log: Annotated[Path | None, typer.Option(help="Log file (default: beside --database).")] = None,
) -> None:
    """Start the SuperLink (TLS, node authentication, state database) until Ctrl-C."""
    from fedrec.deploy.processes import Services, deployment_env, interrupt_on_sigterm
    from fedrec.deploy.superlink import SuperLinkSettings

    settings = or_exit(
        lambda: SuperLinkSettings(credentials.resolve(), database.resolve(), host, port)
    )
    log_file = log or database.with_suffix(".log")
    database.parent.mkdir(parents=True, exist_ok=True)
    with interrupt_on_sigterm(), Services() as services:
        link = or_exit(
            lambda: services.start("SuperLink", settings.argv(), log_file, env=deployment_env())
        )
        console.print(f"SuperLink starting on {host}:{port} (log: {log_file}); Ctrl-C stops it")
        try:
            while link.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping the SuperLink")
            return
    console.print(
        f"[red]error:[/] the SuperLink exited with code {link.returncode}: see {log_file}"
    )
    raise typer.Exit(code=1)


def _control(credentials: Path, superlink: str, home: Path | None) -> Any:
    from fedrec.deploy.credentials import CA_CERT
    from fedrec.deploy.superlink import Control

    home = home or credentials / "flwr-home"
    return or_exit(lambda: Control(home, superlink, credentials / CA_CERT))


FlwrHomeOption = Annotated[
    Path | None,
    typer.Option("--flwr-home", help="Folder for the flwr CLI's config (default: in credentials)."),
]


@server_app.command("register")
def register_cmd(
    public_keys: Annotated[list[Path], typer.Argument(help="Device public keys (NAME.pub).")],
    credentials: CredentialsOption,
    superlink: SuperLinkOption = "127.0.0.1:8000",
    flwr_home: FlwrHomeOption = None,
) -> None:
    """Register devices' public keys: only registered devices may join."""
    control = _control(credentials, superlink, flwr_home)
    for key in public_keys:
        node = or_exit(lambda key=key: control.register(key, key.stem))
        said = "already registered" if node is None else f"registered as node {node}"
        console.print(f"{key}: {said}")


@server_app.command("nodes")
def nodes_cmd(
    credentials: CredentialsOption,
    superlink: SuperLinkOption = "127.0.0.1:8000",
    flwr_home: FlwrHomeOption = None,
) -> None:
    """The registered devices and whether they are online."""
    control = _control(credentials, superlink, flwr_home)
    for node in or_exit(control.nodes):
        console.print(f"{node['node-id']}  {node['status']}  since {node.get('online-at', '')}")


@server_app.command("run")
def run_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write (on this host).")],
    credentials: CredentialsOption,
    catalog: Annotated[Path, typer.Option("--catalog", help="The published catalog (.npz).")],
    config: Annotated[Path | None, typer.Option("--config", help="Scenario TOML.")] = None,
    superlink: SuperLinkOption = "127.0.0.1:8000",
    num_rounds: Annotated[
        int | None, typer.Option("--num-rounds", help="Rounds (the num-rounds setting).")
    ] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Checkpoint to resume.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting.")] = None,
    flwr_home: FlwrHomeOption = None,
    allow_visible_updates: Annotated[
        bool,
        typer.Option(
            "--allow-visible-updates",
            help="Run user-level DP without SecAgg+ (the server then sees each update).",
        ),
    ] = False,
) -> None:
    """Submit a federation to the SuperLink (flwr run) and follow it to its run folder.

    Run it on the SuperLink's host: the ServerApp reads --catalog and writes --out there."""
    from fedrec.deploy.superlink import follow_run, submit_federation
    from fedrec.server.plots import plot_rounds
    from fedrec.server.runs import prepare_run_dir

    fed = federation_config(
        config,
        set_,
        {
            "num-rounds": num_rounds,
            "catalog": catalog.resolve(),
            "out-dir": out.resolve(),
            "resume": resume.resolve() if resume else None,
        },
        deployed=True,  # a simulation setting (poisoning, cold items, ...) is refused
    )
    for warning in fed.warnings():
        console.print(f"[yellow]warning:[/] {warning}")
    if fed.user_dp.enabled and not fed.secure.enabled and not allow_visible_updates:
        console.print(
            "[red]error:[/] a deployment with user-level DP sends each device's update to the"
            ' server in the clear: set secure-aggregation = "secagg+", or pass'
            " --allow-visible-updates to accept it"
        )
        raise typer.Exit(code=2)
    control = _control(credentials, superlink, flwr_home)
    or_exit(lambda: prepare_run_dir(out, resume or ""))
    with tempfile.TemporaryDirectory(prefix="fedrec-app-") as app_dir:
        run_id = or_exit(lambda: submit_federation(control, fed, app_dir))
    console.print(f"run {run_id} submitted to {superlink}")
    with progress_view() as progress:
        task = progress.add_task(
            "federation (waiting for nodes)", total=fed.rounds.num_rounds, info=""
        )

        def on_round(record: dict[str, Any]) -> None:
            info = round_line(record)
            progress.update(task, completed=record["round"], info=info, description="federation")

        outcome = or_exit(lambda: follow_run(control, run_id, out, on_round))
    plot_rounds(outcome.metrics.get("rounds", []), out)
    print_results(outcome.metrics, out)


@deploy_app.command("local")
def deploy_local_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder (new); the deployment inside.")],
    nodes: Annotated[int, typer.Option("--nodes", help="SuperNodes (devices) to start.")] = 3,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Federation rounds.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Scenario TOML.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="'synthetic' or a path.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting.")] = None,
    keep_state: Annotated[
        bool,
        typer.Option(
            "--keep-state",
            help="SuperLink state in a database file (survives a SuperLink restart; on a"
            " loaded machine Flower's SQLite lock can time out and lose a reply).",
        ),
    ] = False,
    per_message: Annotated[
        bool,
        typer.Option(
            help="Devices run each message in a fresh process (Flower's default) instead of"
            " their warm executor: to compare."
        ),
    ] = False,
) -> None:
    """A whole deployment on loopback: CA and keys, SuperLink (TLS, node auth), one sealed
    device store per user, N SuperNodes, the run; every process stopped at the end.

    With --data synthetic the data set has one user per node (unless synthetic-users is
    set); a larger data set gives N of its users, drawn with the seed."""
    from fedrec.deploy.local import LocalDeployment, deployment_config
    from fedrec.deploy.processes import interrupt_on_sigterm
    from fedrec.server.plots import plot_rounds

    fed = federation_config(config, set_, {"data": data, "num-rounds": rounds})
    fed = or_exit(lambda: deployment_config(fed, nodes))
    with progress_view() as progress:
        task = progress.add_task(
            "deploy", total=fed.rounds.num_rounds, info="building device stores"
        )

        def on_event(line: str) -> None:
            progress.console.print(line, markup=False, highlight=False)
            progress.update(task, info=line)

        def on_round(record: dict[str, Any]) -> None:
            info = round_line(record)
            progress.update(task, completed=record["round"], info=info, description="federation")

        deployment = LocalDeployment(
            out, nodes, fed, on_event=on_event, keep_state=keep_state, warm=not per_message
        )
        try:
            with interrupt_on_sigterm(), deployment:
                outcome = or_exit(lambda: deployment.run(on_round))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] every process of the deployment was stopped")
            raise typer.Exit(code=130) from None
    plot_rounds(outcome.metrics.get("rounds", []), out)
    timings = json.dumps({k: round(v, 1) for k, v in deployment.timings.items()})
    console.print(f"deployment: {nodes} SuperNodes, run {outcome.run_id}; seconds {timings}")
    print_results(outcome.metrics, out)


# --- the device's side: added to the `fedrec client` group (fedrec/cli.py) ------------------
def add_device_commands(client_app: typer.Typer) -> None:
    """``fedrec client keygen`` and ``fedrec client join``: a device's part of a deployment."""
    client_app.command("keygen")(keygen_cmd)
    client_app.command("join")(join_cmd)


def keygen_cmd(
    out: Annotated[Path, typer.Option("--out", help="Private key file to create (and OUT.pub).")],
) -> None:
    """This device's authentication key pair (ECDSA P-384, OpenSSH): the private half stays
    here, the operator registers OUT.pub."""
    from fedrec.deploy.credentials import make_device_key

    made = or_exit(lambda: make_device_key(out, out.name))
    console.print(f"{made.private} (keep it here) and {made.public} (send it to the operator)")


def join_cmd(
    store: StoreOption,
    superlink: Annotated[str, typer.Option("--superlink", help="The SuperLink, HOST:PORT.")],
    root_certificates: Annotated[
        Path, typer.Option("--root-certificates", help="The CA that signed the SuperLink's cert.")
    ],
    auth_key: Annotated[
        Path, typer.Option("--auth-key", help="This device's private key (registered).")
    ],
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    port: Annotated[int, typer.Option(help="The SuperNode's local Runtime API port.")] = 9094,
    per_message: Annotated[
        bool,
        typer.Option(
            help="Run each message in a fresh process, as Flower does by default, instead of"
            " the warm executor (fedrec client executor)."
        ),
    ] = False,
    max_tasks: Annotated[
        int, typer.Option(help="The executor recycles itself after this many tasks (0: never).")
    ] = 0,
    max_rss_mib: Annotated[
        float, typer.Option(help="... or when its resident memory passes this (0: never).")
    ] = 0.0,
    retries: Annotated[int, typer.Option(help="Restarts after the SuperNode fails.")] = 10,
    backoff: Annotated[
        float, typer.Option(help="Seconds before the first restart (doubling, at most 60).")
    ] = 2.0,
    log: Annotated[
        Path | None,
        typer.Option(help="SuperNode log (default: STORE.supernode.log)."),
    ] = None,
) -> None:
    """Take part in a federation: start a SuperNode over this store and the warm executor
    that runs its rounds (one process, the app imported once), until Ctrl-C.

    Each round the device trains on its own history (feedback recorded since the last round
    included), keeps its private row and DP ledger in the store, and caches the new model."""
    from fedrec.deploy.supernode import JoinSettings, join

    settings = or_exit(
        lambda: JoinSettings(
            superlink=superlink,
            root_certificates=root_certificates,
            auth_key=auth_key,
            store=store,
            key_file=key_file,
            passphrase_file=passphrase_file,
            port=port,
            warm=not per_message,
            max_tasks=max_tasks,
            max_rss_mib=max_rss_mib,
        )
    )
    log_file = log or store.resolve().parent / f"{store.resolve().name}.supernode.log"
    console.print(f"joining {superlink} (log: {log_file}); Ctrl-C leaves")
    or_exit(
        lambda: join(settings, log_file, retries=retries, backoff=backoff, on_event=console.print)
    )
