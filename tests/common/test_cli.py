"""What every command shares (common/cli.py): output a script can parse, help on every
option."""

from __future__ import annotations

from pathlib import Path


def test_every_option_of_every_command_has_help() -> None:
    """`fedrec … --help` explains every option (the root assembles every group)."""
    import click
    import typer

    from fedrec.cli import app

    missing: list[str] = []

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        missing.extend(
            f"{path} --{p.name}"
            for p in command.params
            if isinstance(p, click.Option) and p.name != "help" and not p.help
        )
        if not command.help:
            missing.append(f"{path} (no description)")

    walk(typer.main.get_command(app), "fedrec")
    assert missing == []


def test_output_to_a_pipe_is_never_hard_wrapped(tmp_path: Path) -> None:
    """Scripts parse the output: a long error stays one line whatever the terminal width
    (COLUMNS) and however long the path in it."""
    from typer.testing import CliRunner

    from fedrec.cli import app

    deep = tmp_path / ("a-long-folder-name-" * 6) / "missing-scenario.toml"
    for columns in ("20", "80", "400"):
        result = CliRunner().invoke(
            app, ["simulate", "--config", str(deep), "--out", str(tmp_path / "run")],
            env={"COLUMNS": columns},
        )  # fmt: skip
        assert result.exit_code == 2
        (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert line == f"error: scenario {deep} not found"
