"""Errors raised while reading user-supplied data.

Every message names the file, the line (1-based, as an editor shows it) where known, and the
problem, so that a user can fix the input without reading our code.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DataFormatError",
]


class DataFormatError(ValueError):
    """A data file is malformed: wrong field count, bad id, bad encoding, empty, unknown format."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{Path(path).name} line {line}" if line is not None else f"{Path(path).name}"
        super().__init__(f"{where}: {problem} (file: {path})")
