"""Where ASTRA keeps its state: ``$ASTRA_HOME`` (default ``~/.astra``)."""

from __future__ import annotations

import os
from pathlib import Path


def astra_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home directory: the explicit argument, else ``$ASTRA_HOME``, else ``~/.astra``."""
    path = Path(home) if home else Path(os.environ.get("ASTRA_HOME") or Path.home() / ".astra")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_path(home: str | os.PathLike[str] | None = None) -> Path:
    return astra_home(home) / "astra.db"
