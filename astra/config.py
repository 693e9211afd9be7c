"""Where ASTRA keeps its state (``$ASTRA_HOME``, default ``~/.astra``), and renamed config options."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast


def astra_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home directory: the explicit argument, else ``$ASTRA_HOME``, else ``~/.astra``."""
    path = Path(home) if home else Path(os.environ.get("ASTRA_HOME") or Path.home() / ".astra")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_path(home: str | os.PathLike[str] | None = None) -> Path:
    return astra_home(home) / "astra.db"


def renamed_options(data: Any, renames: Mapping[str, str], where: str) -> Any:
    """``data`` (a config mapping, before validation) with options under their old names moved to
    the current ones, each with a deprecation message (a ``FutureWarning``: shown to users by
    default); both names with different values is an error. ``where`` names the config in the
    message. Use in a ``model_validator(mode="before")``."""
    if not isinstance(data, Mapping):
        return data
    out = dict(cast(Mapping[str, Any], data))
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out and out[new] != out[old]:
            raise ValueError(f"{old} and {new} are the same option (give {new} only)")
        warnings.warn(f"{where}: {old} is deprecated, use {new}", FutureWarning, stacklevel=2)
        out[new] = out.pop(old)
    return out
