"""Shared pieces of the CLI: options, JSON output, error reporting."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)
"""Human-facing output (progress, tables, errors) goes to stderr; ``--json`` owns stdout."""

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="ASTRA home directory (default: $ASTRA_HOME or ~/.astra)", envvar="ASTRA_HOME"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print a machine-readable summary on stdout")]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a user-facing error and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line: greppable
    return typer.Exit(code)


@contextmanager
def resumable_run(run_dir: Path | str) -> Iterator[None]:
    """Ctrl-C during a long, resumable command: say what is kept and how to go on (exit 130).

    Every finished record is already on disk (append-only, fsynced); the same command
    resumes where this one stopped."""
    try:
        yield
    except KeyboardInterrupt:
        raise fail(f"interrupted: every finished record is kept in {run_dir}; "
                   "run the same command again to resume", code=130) from None
