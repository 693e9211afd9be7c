"""The exception root of ASTRA, and the one format of a validation error.

Every error ASTRA raises on purpose derives from :class:`AstraError`; the CLI formats them
once, at its top level, as one line (``error: ...``) with the error's ``exit_code``.
:class:`UserError` is the user's to fix (bad input, bad options): exit code 2, no traceback.
"""

from __future__ import annotations

from pydantic import ValidationError


class AstraError(Exception):
    """Root of ASTRA's own errors: a message fit for a user, and the CLI's exit code."""

    exit_code: int = 1


class UserError(AstraError):
    """Something the user can fix (an option, a file, a config): exit code 2."""

    exit_code = 2


class RunWriteError(AstraError):
    """A run file could not be written in full (disk full, short write, I/O error).

    Nothing was marked done for the record: free space and rerun the same command to
    resume with no duplicate and no loss."""

    exit_code = 1


def validation_problem(where: str, exc: ValidationError) -> str:
    """``WHERE: field: reason`` for a pydantic validation error: its first problem (the field as
    a dotted path, ``record`` for the whole value) and how many more there are. ``where`` is
    ``FILE:LINE`` for a line of a file, ``FILE`` for a whole file. The one format for every command."""
    problems = exc.errors()
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"]) or "record"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {field}: {first['msg']}{more}"
