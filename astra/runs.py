"""Run directories: a ``manifest.json`` plus one append-only JSONL file per stage.

Guarantees (docs/ARCHITECTURE.md "Runs"):
- an append is one ``write`` of one complete line, flushed and fsynced, so a ``kill -9``
  leaves at most one torn last line, which is ignored (and truncated) on reopen;
- every record has a stable ``id``; a restarted stage skips ids already written, so a rerun
  after a kill gives the same final set with no duplicate and nothing lost.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from astra import __version__
from astra.errors import RunWriteError

log = logging.getLogger("astra.runs")

M = TypeVar("M", bound=BaseModel)


class JsonlLog:
    """An append-only JSONL file keyed by a record id field.

    Safe for many writers in one process (a lock around each append). On open:
    - a torn final line (a crash mid-write) is dropped;
    - a corrupt line elsewhere (not JSON, not an object, no id) is reported as ``FILE:LINE:
      reason`` in :attr:`quarantined`, moved to ``<name>.quarantine.jsonl`` and removed from
      the file, so the rest resumes and the item it held is redone.
    A record may *supersede* an earlier one with the same id (``replace=True``: a retried
    infrastructure failure, a re-evaluated threshold drop); readers see the last one, in the
    position of the first.
    """

    def __init__(self, path: str | os.PathLike[str], id_field: str = "id") -> None:
        self.path = Path(path)
        self.id_field = id_field
        self._lock = threading.Lock()
        self.quarantined: list[str] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._ids: set[str] = set()
        self._superseded = False
        self._scan()

    @property
    def quarantine_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".quarantine.jsonl")

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1  # keep every complete line
            fh.truncate(cut)

    def _parse(self, raw: bytes) -> tuple[dict[str, Any] | None, str]:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            return None, f"not valid JSON ({exc})"
        if not isinstance(data, dict):
            return None, f"not a JSON object ({type(data).__name__})"
        if data.get(self.id_field) in (None, ""):
            return None, f"{self.id_field}: missing"
        return data, ""

    def _scan(self) -> None:
        """Load the ids; quarantine corrupt lines (moved aside, never silently dropped)."""
        if not self.path.exists():
            return
        good: list[bytes] = []
        bad: list[dict[str, Any]] = []
        with self.path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                data, reason = self._parse(raw)
                if data is None:
                    self.quarantined.append(f"{self.path}:{lineno}: {reason}")
                    bad.append({"file": str(self.path), "line": lineno, "reason": reason,
                                "raw": raw.decode("utf-8", "backslashreplace").rstrip("\n")})
                    continue
                record_id = str(data[self.id_field])
                self._superseded |= record_id in self._ids
                self._ids.add(record_id)
                good.append(raw)
        if not bad:
            return
        for msg in self.quarantined:
            log.warning("quarantined corrupt line %s", msg)
        # First the quarantine copy (appended, fsynced), then the cleaned file (atomic replace):
        # a crash in between leaves the bad line in both places, never in neither.
        _append_bytes(self.quarantine_path,
                      b"".join((json.dumps(b, ensure_ascii=False) + "\n").encode() for b in bad))
        _replace_bytes(self.path, b"".join(good))

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

    def write_line(self, record_id: str, line: bytes, *, replace: bool = False) -> bool:
        """Append one encoded line (then fsync) unless ``record_id`` is present (or ``replace``).

        All or nothing: a short write or an I/O error (a full disk) cuts the file back to
        where it was and raises :class:`~astra.errors.RunWriteError`; the id is recorded as
        written only after the line is on disk."""
        with self._lock:
            if record_id in self._ids and not replace:
                return False
            _append_bytes(self.path, line)
            self._superseded |= record_id in self._ids
            self._ids.add(record_id)
        return True

    def write_lines(self, entries: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Append several encoded lines with one write and one fsync (group commit), skipping ids
        already present; returns which were written. All or nothing, like :meth:`write_line`."""
        with self._lock:
            fresh: dict[str, bytes] = {}
            written = []
            for record_id, line in entries:
                new = record_id not in self._ids and record_id not in fresh
                written.append(new)
                if new:
                    fresh[record_id] = line
            if fresh:
                _append_bytes(self.path, b"".join(fresh.values()))
                self._ids.update(fresh)
        return written

    def append(self, record: BaseModel | dict[str, Any], *, replace: bool = False) -> bool:
        """Append one record unless its id is already present (``replace``: supersede it)."""
        record_id, line = self.encode(record)
        return self.write_line(record_id, line, replace=replace)

    async def aappend(self, record: BaseModel | dict[str, Any], *, replace: bool = False) -> bool:
        """:meth:`append` from async code: encoded here, written and fsynced in a worker
        thread, so other tasks run during the disk wait (encoding in that thread instead
        would hold the GIL against the event loop for no gain)."""
        record_id, line = self.encode(record)
        return await anyio.to_thread.run_sync(lambda: self.write_line(record_id, line, replace=replace))

    def extend(self, records: Iterable[BaseModel | dict[str, Any]]) -> int:
        return sum(self.append(r) for r in records)

    def _raw_dicts(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    data, _ = self._parse(raw)
                    if data is not None:  # a line corrupted after open: skipped here, quarantined on reopen
                        yield data

    def read_dicts(self) -> Iterator[dict[str, Any]]:
        """Every record, the last one written for each id (in the position of the first)."""
        if not self._superseded:
            yield from self._raw_dicts()
            return
        latest: dict[str, dict[str, Any]] = {}
        for d in self._raw_dicts():
            latest[str(d[self.id_field])] = d  # dict keeps the first insertion position
        yield from latest.values()

    def read(self, model: type[M]) -> Iterator[M]:
        for d in self.read_dicts():
            yield model.model_validate(d)


def _append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` in full and fsync, or cut the file back and raise ``RunWriteError``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a signal, a nearly full disk)
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)  # never leave half a record behind
            except OSError:
                pass  # the torn tail is dropped on the next open anyway
            raise RunWriteError(f"{path}: could not write a record in full ({exc.strerror or exc}); "
                                "nothing was marked done: free space and rerun the same command to resume") from exc
    finally:
        os.close(fd)


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (temp file, fsync, rename) or raise ``RunWriteError``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunWriteError(f"{path}: could not be written ({exc.strerror or exc}); "
                            "free space and rerun the same command to resume") from exc


class RunDir:
    """A run directory: ``manifest.json`` (config, versions, stage status) + per-stage JSONL."""

    def __init__(self, path: str | os.PathLike[str], config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / "manifest.json"
        self.manifest: dict[str, Any]
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
        _replace_bytes(self.manifest_path,
                       json.dumps(self.manifest, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def stage(self, name: str, id_field: str = "id") -> JsonlLog:
        return JsonlLog(self.path / f"{name}.jsonl", id_field=id_field)

    def mark(self, stage: str, status: str, **info: Any) -> None:
        entry = self.manifest["stages"].setdefault(stage, {})
        entry.update({"status": status, "updated": time.time(), **info})
        self._save()

    def status(self, stage: str) -> str | None:
        return self.manifest["stages"].get(stage, {}).get("status")
