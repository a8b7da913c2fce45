"""``fedrec client``: a device's store from the command line (the SDK, fedrec.client.device).

    fedrec client init --store DIR --catalog FILE --key-file KEY [--attribute age=34 ...]
    fedrec client import --store DIR --key-file KEY HISTORY.csv [--hold-out 2]
    fedrec client record --store DIR --key-file KEY ITEM [--event view|click|rating] [--value V]
    fedrec client recommend --store DIR --key-file KEY [-k 10] [--explain] [--json]
    fedrec client forget --store DIR --key-file KEY ITEM ...
    fedrec client install-catalog --store DIR --key-file KEY CATALOG   # a new version
    fedrec client status --store DIR --key-file KEY [--json]
    fedrec client erase --store DIR --key-file KEY --yes

Joining a federation (``fedrec client keygen``, ``fedrec client join``) is a deployment
command: ``deploy/cli.py`` adds it to this group.

Every command takes ``--key-file KEY`` or ``--passphrase-file FILE`` (the passphrase on the
file's first line). A history CSV has the header ``item,event,value,timestamp`` (event:
view, click or rating; value: the rating, empty otherwise; timestamp: seconds since the
epoch).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from fedrec.common.cli import console, or_exit

__all__ = ["KeyFileOption", "PassphraseFileOption", "StoreOption", "client_app"]

client_app = typer.Typer(
    help="A device's own encrypted store: feedback, recommendations, joining a federation.",
    no_args_is_help=True,
)

StoreOption = Annotated[Path, typer.Option("--store", help="The device's store folder.")]
KeyFileOption = Annotated[
    Path | None, typer.Option("--key-file", help="The 32-byte key file the store is sealed under.")
]
PassphraseFileOption = Annotated[
    Path | None, typer.Option("--passphrase-file", help="A file holding the store's passphrase.")
]


def _passphrase(passphrase_file: Path | None) -> str | None:
    from fedrec.client.device import read_passphrase

    return None if passphrase_file is None else or_exit(lambda: read_passphrase(passphrase_file))


def _open(store: Path, key_file: Path | None, passphrase_file: Path | None) -> Any:
    from fedrec.client.device import Device

    return or_exit(
        lambda: Device.open(store, key_file=key_file, passphrase=_passphrase(passphrase_file))
    )


@client_app.command("init")
def init_cmd(
    store: StoreOption,
    catalog: Annotated[Path, typer.Option("--catalog", help="The published catalog file.")],
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option("--attribute", help="The user's own attribute, NAME=VALUE (repeatable)."),
    ] = None,
    counter_file: Annotated[
        Path | None,
        typer.Option(
            "--counter-file",
            help="A new file outside the store, out of reach of its backups, that counts"
            " writes: a restore of the whole store (and its DP ledger) is then refused.",
        ),
    ] = None,
) -> None:
    """Create a device store for a published catalog (the key file is created if missing)."""
    from fedrec.client.device import Device

    attributes = dict(pair.partition("=")[::2] for pair in attribute or [])
    device = or_exit(
        lambda: Device.create(
            store,
            catalog,
            key_file=key_file,
            passphrase=_passphrase(passphrase_file),
            user_features=attributes,
            counter_file=counter_file,
        )
    )
    console.print(
        f"device {device.name} created at [bold]{store}[/] (catalog {device.catalog.hash[:12]})"
    )


@client_app.command("import")
def import_cmd(
    history: Annotated[Path, typer.Argument(help="CSV: item,event,value,timestamp.")],
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    hold_out: Annotated[
        int, typer.Option(help="Keep the last 2 as evaluation items (0: train on all).")
    ] = 0,
) -> None:
    """Add a user's own history from a CSV file, in one write."""
    device = _open(store, key_file, passphrase_file)
    rows = or_exit(lambda: _read_history(history))
    added = or_exit(lambda: device.import_history(rows, hold_out=hold_out))
    console.print(f"{added} interactions imported ({len(device.history())} in the store)")


@client_app.command("record")
def record_cmd(
    item: Annotated[str, typer.Argument(help="The catalog's item id.")],
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    event: Annotated[str, typer.Option(help="view | click | rating")] = "view",
    value: Annotated[float | None, typer.Option(help="The rating (for a rating).")] = None,
    at: Annotated[
        float | None, typer.Option(help="Seconds since the epoch (default: now).")
    ] = None,
) -> None:
    """Record one piece of feedback."""
    device = _open(store, key_file, passphrase_file)
    recorded = or_exit(lambda: device.record(item, event, value, at))
    console.print(f"recorded {recorded.event} of {recorded.item}")


@client_app.command("recommend")
def recommend_cmd(
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    explain: Annotated[
        bool,
        typer.Option(help="Say why: the user's items and genres that lift each item most."),
    ] = False,
    include_seen: Annotated[bool, typer.Option(help="Rank items the user has seen too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """The top-k items for this user, ranked on the device (no server needed)."""
    import time

    device = _open(store, key_file, passphrase_file)
    started = time.perf_counter()
    items = or_exit(lambda: device.recommend(k, exclude_seen=not include_seen, explain=explain))
    elapsed = time.perf_counter() - started
    if as_json:
        document = {"items": [asdict(i) for i in items], "seconds": elapsed}
        typer.echo(json.dumps(document))
        return
    for rank, rec in enumerate(items, start=1):
        console.print(
            f"{rank:2d}. {rec.item}  {rec.title}  {rec.score:.3f}", highlight=False, markup=False
        )
        reasons = [
            f"because you liked: {', '.join(rec.because)}" if rec.because else "",
            ", ".join(f"{g} {share:.0%}" for g, share in rec.genres),
            f"described like: {', '.join(rec.similar_text)}" if rec.similar_text else "",
        ]
        for reason in filter(None, reasons):
            console.print(f"      {reason}", highlight=False, markup=False)
    console.print(f"ranked in {1e3 * elapsed:.1f} ms", style="dim")


@client_app.command("forget")
def forget_cmd(
    items: Annotated[list[str], typer.Argument(help="Item ids to forget.")],
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Remove every interaction with these items (the user row is learnt again)."""
    device = _open(store, key_file, passphrase_file)
    removed = or_exit(lambda: device.forget(items))
    console.print(f"{removed} interactions removed")


@client_app.command("install-catalog")
def install_catalog_cmd(
    catalog: Annotated[Path, typer.Argument(help="The new published catalog (.npz).")],
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Install a new version of the catalog (e.g. one with new items appended): the device
    joins rounds of that version from now on."""
    device = _open(store, key_file, passphrase_file)
    or_exit(lambda: device.install_catalog(catalog))
    installed = device.catalog
    console.print(f"catalog {installed.hash[:12]} installed ({installed.num_items} items)")


@client_app.command("status")
def status_cmd(
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """The model version, the rounds joined, ε spent at each level, the last sync."""
    status = or_exit(lambda: _open(store, key_file, passphrase_file).status())
    if as_json:
        typer.echo(json.dumps(asdict(status)))
        return
    for name, value in asdict(status).items():
        console.print(f"{name}: {value}", highlight=False)


@client_app.command("erase")
def erase_cmd(
    store: StoreOption,
    key_file: KeyFileOption = None,
    passphrase_file: PassphraseFileOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really: nothing can bring it back.")] = False,
    keep_key: Annotated[
        bool, typer.Option(help="Keep the key file (it may seal other data).")
    ] = False,
) -> None:
    """Destroy the store and its key file, irrecoverably."""
    from fedrec.common.files import shred

    if not yes:
        console.print("[red]error:[/] erase destroys the store and its key: pass --yes")
        raise typer.Exit(code=2)
    device = _open(store, key_file, passphrase_file)
    or_exit(device.erase)
    if key_file is not None and not keep_key:
        shred(key_file)
    console.print(f"erased {store}" + ("" if keep_key or key_file is None else f" and {key_file}"))


def _read_history(path: Path) -> list[Any]:
    from fedrec.client.device import Interaction

    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"item", "timestamp"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: the header needs {sorted(missing)} (item,event,value,timestamp)"
            )
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["value"]) if row.get("value") else None
                rows.append(Interaction(row["item"].strip(), (row.get("event") or "view").strip(),
                                        value, float(row["timestamp"])))  # fmt: skip
            except ValueError as err:
                raise ValueError(f"{path} line {line}: {err}") from err
    return rows


@client_app.command("executor")
def executor_cmd(
    runtime_api: Annotated[
        str, typer.Option(help="The SuperNode's Runtime API, HOST:PORT (its --port).")
    ] = "127.0.0.1:9094",
    root_certificates: Annotated[
        Path | None, typer.Option(help="CA of a Runtime API served over TLS (default: HTTP).")
    ] = None,
    max_tasks: Annotated[int, typer.Option(help="Recycle after this many tasks (0: never).")] = 0,
    max_rss_mib: Annotated[
        float, typer.Option(help="Recycle when resident memory passes this (0: never).")
    ] = 0.0,
    wake_file: Annotated[
        Path | None,
        typer.Option(help="The SuperNode's log: claim as it grows, not by polling."),
    ] = None,
) -> None:
    """Run this device's ClientApp tasks in one warm process, beside `flower-supernode
    --isolation process` (`fedrec client join` starts both). Ends on Ctrl-C; exits with
    code 75 when it recycles itself (its supervisor starts a new one)."""
    from fedrec.client.executor import ExecutorSettings, run_executor

    settings = or_exit(
        lambda: ExecutorSettings(
            runtime_api=runtime_api,
            root_certificates=root_certificates,
            max_tasks=max_tasks,
            max_rss_mib=max_rss_mib,
            wake_file=wake_file,
        )
    )
    raise typer.Exit(code=or_exit(lambda: run_executor(settings, console.print)))
