"""Shared pieces of the CLI: options, JSON output, error reporting."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from astra.errors import AstraError

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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def user(value: object) -> str:
    """``value`` (data from a user, a server, a file) made safe to print with Rich: never read
    as markup (``x[/]`` prints as is) and control characters shown escaped (``\\x1b``), so a
    hostile server name can neither crash a listing nor drive the terminal."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
    return escape(text)


USAGE = 2
"""The exit code of every usage error (bad options, missing or invalid input files, unknown
names), as for a :class:`astra.errors.UserError`; 1 is a failure of the work itself."""


def exit_code(exc: BaseException) -> int:
    """The exit code for an error a command caught: an ASTRA error's own (``USAGE`` for a
    ``UserError``), else 1."""
    return exc.exit_code if isinstance(exc, AstraError) else 1


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a user-facing error and return the Exit to raise. ``message`` is shown verbatim
    (no markup), on one line: greppable."""
    console.print(f"[bold red]error:[/] {user(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def resumable_run(run_dir: Path | str) -> Generator[None, None, None]:
    """Ctrl-C during a long, resumable command: say what is kept and how to go on (exit 130).

    Every finished record is already on disk (append-only, fsynced); the same command
    resumes where this one stopped."""
    try:
        yield
    except KeyboardInterrupt:
        raise fail(f"interrupted: every finished record is kept in {run_dir}; "
                   "run the same command again to resume", code=130) from None


def deprecated_option(old: str, new: str) -> None:
    """Say once, on stderr, that ``old`` was used for ``new`` (still accepted)."""
    console.print(f"[yellow]warning:[/] {old} is deprecated, use {new}", highlight=False)
