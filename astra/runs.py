"""Run directories: a ``manifest.json`` plus one append-only JSONL file per stage.

Guarantees (DESIGN.md "Runs"):
- an append is one ``write`` of one complete line, flushed and fsynced, so a ``kill -9``
  leaves at most one torn last line, which is ignored (and truncated) on reopen;
- every record has a stable ``id``; a restarted stage skips ids already written, so a rerun
  after a kill gives the same final set with no duplicate and nothing lost.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from astra import __version__

M = TypeVar("M", bound=BaseModel)


class JsonlLog:
    """An append-only JSONL file keyed by a record id field.

    Safe for many writers in one process (a lock around each append). A torn final line
    (a crash mid-write) is dropped when the file is opened again.
    """

    def __init__(self, path: str | os.PathLike[str], id_field: str = "id") -> None:
        self.path = Path(path)
        self.id_field = id_field
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._ids: set[str] = {str(r.get(id_field)) for r in self.read_dicts()}

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1  # keep every complete line
            fh.truncate(cut)

    def __contains__(self, record_id: object) -> bool:
        return str(record_id) in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._ids)

    def encode(self, record: BaseModel | dict[str, Any]) -> tuple[str, bytes]:
        """``(id, line)``: the record as the one JSON line :meth:`write_line` appends."""
        data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
        line = (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        return str(data[self.id_field]), line

    def write_line(self, record_id: str, line: bytes) -> bool:
        """Append one encoded line (one ``write``, then fsync) unless ``record_id`` is present."""
        with self._lock:
            if record_id in self._ids:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._ids.add(record_id)
        return True

    def append(self, record: BaseModel | dict[str, Any]) -> bool:
        """Append one record unless its id is already present; returns whether it was written."""
        return self.write_line(*self.encode(record))

    async def aappend(self, record: BaseModel | dict[str, Any]) -> bool:
        """:meth:`append` from async code: encoded here, written and fsynced in a worker
        thread, so other tasks run during the disk wait (encoding in that thread instead
        would hold the GIL against the event loop for no gain)."""
        record_id, line = self.encode(record)
        return await anyio.to_thread.run_sync(self.write_line, record_id, line)

    def extend(self, records: Iterable[BaseModel | dict[str, Any]]) -> int:
        return sum(self.append(r) for r in records)

    def read_dicts(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def read(self, model: type[M]) -> Iterator[M]:
        for d in self.read_dicts():
            yield model.model_validate(d)


class RunDir:
    """A run directory: ``manifest.json`` (config, versions, stage status) + per-stage JSONL."""

    def __init__(self, path: str | os.PathLike[str], config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / "manifest.json"
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text("utf-8"))
        else:
            self.manifest = {
                "created": time.time(),
                "astra_version": __version__,
                "config": config or {},
                "stages": {},
            }
            self._save()
        if config is not None and self.manifest.get("config") != config:
            self.manifest.setdefault("config_history", []).append(self.manifest.get("config"))
            self.manifest["config"] = config
            self._save()

    def _save(self) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str), "utf-8")
        os.replace(tmp, self.manifest_path)

    def stage(self, name: str, id_field: str = "id") -> JsonlLog:
        return JsonlLog(self.path / f"{name}.jsonl", id_field=id_field)

    def mark(self, stage: str, status: str, **info: Any) -> None:
        entry = self.manifest["stages"].setdefault(stage, {})
        entry.update({"status": status, "updated": time.time(), **info})
        self._save()

    def status(self, stage: str) -> str | None:
        return self.manifest["stages"].get(stage, {}).get("status")
