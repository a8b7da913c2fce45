"""The ``fedrec`` command: each audience's command group, defined beside the code it drives.

fedrec simulate | train-central | data | catalog | features   simulations/cli.py
fedrec client ...                                         client/cli.py (+ keygen, join)
fedrec server ... | deploy local                          deploy/cli.py
fedrec audit report | compare                             simulations/audit/cli.py
"""

from __future__ import annotations

from typing import Annotated

import typer

import fedrec
from fedrec.client.cli import client_app
from fedrec.deploy.cli import add_device_commands, deploy_app, server_app
from fedrec.simulations import cli as simulations
from fedrec.simulations.audit.cli import audit_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="fedrec",
    help="Privacy-preserving federated recommender on Flower.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"fedrec {fedrec.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Privacy-preserving federated recommender on Flower."""


simulations.register(app)
add_device_commands(client_app)
app.add_typer(client_app, name="client")
app.add_typer(server_app, name="server")
app.add_typer(deploy_app, name="deploy")
app.add_typer(audit_app, name="audit")


def main() -> None:
    app()
