"""What every ``fedrec`` command shares: the console, the error exit, the settings.

A command's settings come from a scenario file (``--config``: its ``[run]`` table of
kebab-case keys), then ``--set KEY=VALUE`` overrides, then the command's own options, parsed
once (:func:`federation_config`). An error a user can fix is one red line and exit code 2
(:func:`or_exit`); a run stopped between rounds, one line and exit code 130.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fedrec.common.fedconfig import FederationConfig
from fedrec.common.stop import RunInterrupted

__all__ = [
    "SCENARIO_DIR",
    "apply_settings",
    "console",
    "federation_config",
    "load_scenario",
    "or_exit",
    "parse_setting",
]

# Off a terminal (a pipe, a log file, CI) nothing is hard-wrapped: scripts and tests parse
# whole lines, and where a wrap would fall depends on the width and on path lengths.
console = Console(soft_wrap=True)

# the scenarios shipped with fedrec (simulations/*.toml: in the repository and in the wheel)
SCENARIO_DIR = Path(__file__).resolve().parents[1] / "simulations"


def federation_config(
    config: Path | None,
    set_: list[str] | None,
    options: dict[str, Any],
    *,
    deployed: bool = False,
) -> FederationConfig:
    """Scenario TOML, then ``--set KEY=VALUE`` overrides, then the named options (if given),
    parsed once into a FederationConfig (one red line and exit 2 on any error); a deployment
    (``deployed``) refuses simulation settings."""
    values: dict[str, Any] = or_exit(lambda: load_scenario(config)) if config else {}
    values = or_exit(lambda: apply_settings(values, set_ or []))
    for key, value in options.items():
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    parsed: FederationConfig = or_exit(
        lambda: FederationConfig.from_mapping(values, deployed=deployed)
    )
    return parsed


def or_exit(fn: Any) -> Any:
    """Run ``fn``; turn expected user errors into one red line and exit code 2, an
    interruption (Ctrl-C) into one line and exit code 130."""
    try:
        return fn()
    except RunInterrupted as stop:  # Ctrl-C between rounds: resumable
        console.print(f"[yellow]{stop}[/]")
        raise typer.Exit(code=130) from stop
    except KeyboardInterrupt as stop:  # Ctrl-C in a run of this process (--server-seed)
        console.print("[yellow]interrupted[/]: every completed round is checkpointed (--resume)")
        raise typer.Exit(code=130) from stop
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(code=2) from err


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
