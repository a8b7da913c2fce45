"""What every ``fedrec`` subcommand shares: the console, the error exit, the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

__all__ = ["console", "federation_config", "or_exit"]

console = Console()


def federation_config(config: Path | None, set_: list[str] | None, options: dict[str, Any]) -> Any:
    """Scenario TOML, then ``--set KEY=VALUE`` overrides, then the named options (if given),
    parsed once into a FederationConfig (one red line and exit 2 on any error)."""
    from fedrec.common.fedconfig import FederationConfig
    from fedrec.simulations.runner import apply_settings, load_scenario

    values: dict[str, Any] = or_exit(lambda: load_scenario(config)) if config else {}
    values = or_exit(lambda: apply_settings(values, set_ or []))
    for key, value in options.items():
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    return or_exit(lambda: FederationConfig.from_mapping(values))


def or_exit(fn: Any) -> Any:
    """Run ``fn``; turn expected user errors into one red line and exit code 2."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(code=2) from err
