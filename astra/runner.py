"""The one resumable runner: items -> records appended to a run's stage file, resumable, kept going.

Used by both synthesis pipelines (``astra.synthesis._stage.Stage``), BFCL (``astra.bfcl._run``) and
the rollouts' plan (``astra.client._runner``). What it guarantees (docs/ARCHITECTURE.md "Runs"):
- **resume**: the ids already in the stage file are loaded once, before the run; their items are
  skipped (unless listed in ``redo``: their new record then supersedes the old), an id given twice in
  the input runs once, so a killed run and a rerun end with the same set, no duplicate, nothing lost;
- **append-only checked writes**: each record is one fsynced line (:class:`astra.runs.JsonlLog`); a
  write that fails (a full disk) stops the run with :class:`~astra.errors.RunWriteError`, nothing marked
  done that is not on disk;
- **keep going**: an item whose work raises is handed to ``on_error`` (its failure record, or None: not
  written, reported, retried by a rerun); the other items go on;
- **progress**: a live bar on a terminal, plain lines (start, every ~10 s, end) in a log, on stderr;
- the manifest says ``running`` (with what is to do), ``interrupted`` (Ctrl-C, SIGTERM, a cancelled
  caller, a full disk: with what is kept and how to resume) or ``done`` / ``partial`` (items failed
  without a record).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astra.errors import RunWriteError
from astra.runs import JsonlLog, RunDir

log = logging.getLogger("astra.runner")

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R", bound=BaseModel)

RESUME_HINT = "run the same command again: finished inputs are skipped"

# progress is human output: stderr, so that a CLI's --json owns stdout
PROGRESS_CONSOLE = Console(stderr=True)


@dataclass(frozen=True)
class Failure(Generic[I]):
    """An item whose work raised."""

    item_id: str
    item: I
    error: Exception
    seconds: float

    def describe(self) -> str:
        return f"{self.item_id}: {type(self.error).__name__}: {self.error}"


class RunReport(BaseModel):
    """What one :meth:`ItemRunner.run` did."""

    planned: int = Field(description="distinct item ids given")
    resumed: int = Field(description="skipped: their record was already written")
    todo: int = Field(description="run now (new, plus redone)")
    redone: int = Field(default=0, description="run again, their new record superseding the old")
    written: int = 0
    failed: int = Field(default=0, description="items whose work raised and that have no record (a rerun retries them)")
    errors: list[str] = Field(default_factory=list)
    wall_s: float = 0.0


class ItemRunner(Generic[I, R]):
    """Runs ``work(item)`` for every item of a run's stage not yet done, ``concurrency`` at a time,
    appending each result to ``<run>/<stage>.jsonl`` (see the module docstring).

    ``label(record)`` names a record's outcome for the progress lines ("kept", "failed", a
    termination reason...); ``on_record`` sees each record once it is written."""

    def __init__(self, run: RunDir, stage: str, *, log_file: JsonlLog | None = None, concurrency: int = 4,
                 progress: bool = False, description: str | None = None,
                 label: Callable[[R], str] | None = None) -> None:
        self.run_dir = run
        self.stage = stage
        self.log = log_file if log_file is not None else run.stage(stage)
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.description = description or stage
        self.label = label

    def plan(self, items: Iterable[tuple[str, I]], redo: Collection[str] = ()) -> tuple[list[tuple[str, I]], int]:
        """``(todo, resumed)``: the items to run (each id once, in input order: not yet written, or in
        ``redo``) and how many were skipped because their record is written."""
        todo: list[tuple[str, I]] = []
        seen: set[str] = set()
        resumed = 0
        for item_id, item in items:
            if item_id in seen:
                continue
            seen.add(item_id)
            if item_id in self.log and item_id not in redo:
                resumed += 1
            else:
                todo.append((item_id, item))
        return todo, resumed

    async def run(
        self,
        items: Iterable[tuple[str, I]],
        work: Callable[[I], Awaitable[R]],
        *,
        on_error: Callable[[Failure[I]], R | None] | None = None,
        on_record: Callable[[R], None] | None = None,
        redo: Collection[str] = (),
        running_info: Mapping[str, Any] | None = None,
        done_info: Callable[[RunReport], Mapping[str, Any]] | None = None,
    ) -> RunReport:
        """Run the items not yet done; returns what was done. ``redo``: ids written before whose items
        run again; ``running_info`` / ``done_info``: more for the manifest's stage entry."""
        started = time.perf_counter()
        todo, resumed = self.plan(items, redo)
        redone = sum(1 for item_id, _ in todo if item_id in redo and item_id in self.log)
        report = RunReport(planned=len(todo) + resumed, resumed=resumed, todo=len(todo), redone=redone)
        limiter = anyio.CapacityLimiter(self.concurrency)
        meter = _Meter(self.description, len(todo), self.progress)

        async def one(item_id: str, item: I) -> None:
            async with limiter:
                start = time.perf_counter()
                try:
                    record: R | None = await work(item)
                except Exception as exc:  # one item's failure: recorded or reported, never the run's
                    failure = Failure(item_id, item, exc, time.perf_counter() - start)
                    record = on_error(failure) if on_error is not None else None
                    if record is None:
                        log.warning("item failed, not written (a rerun retries it): %s", failure.describe(),
                                    exc_info=exc)
                        report.failed += 1
                        report.errors.append(failure.describe())
                        meter.advance("harness_error")
                        return
                record_id = getattr(record, self.log.id_field, None)
                if record_id != item_id:  # resume would never find it: a bug of the caller, not of the item
                    raise ValueError(f"{self.stage}: the record of item {item_id!r} has id {record_id!r}")
                # in the loop, not a thread: records land in the order their items finish
                report.written += self.log.append(record, replace=item_id in redo)
            if on_record is not None:
                on_record(record)
            meter.advance(self.label(record) if self.label is not None else "done")

        self.begin(len(todo), resumed, redone, **(running_info or {}))
        try:
            with meter:
                async with anyio.create_task_group() as tg:
                    for item_id, item in todo:
                        tg.start_soon(one, item_id, item)
        except BaseException:  # Ctrl-C, SIGTERM, a cancelled caller, a full disk: say what is kept
            self.interrupted()
            raise
        report.wall_s = time.perf_counter() - started
        self.end(partial=report.failed > 0, written=report.written, failed_items=report.failed,
                 **(done_info(report) if done_info is not None else {}))
        meter.finish()
        return report

    # The manifest's stage entry, for :meth:`run` and for executors of their own (the rollouts'
    # worker processes and Ray) that write the same stage file with the same plan.

    def begin(self, todo: int, resumed: int, redone: int = 0, **info: Any) -> None:
        """Mark the stage ``running``: how many to do, resumed (skipped) and redone."""
        self.run_dir.mark(self.stage, "running", **{"todo": todo, "resumed": resumed, "retried": redone, **info})

    def interrupted(self, **info: Any) -> None:
        """Mark the stage ``interrupted``: what is kept and how to resume (never raises for a full disk)."""
        with contextlib.suppress(RunWriteError):  # a full disk cannot take the note either
            self.run_dir.mark(self.stage, "interrupted", **{"kept": len(self.log), "resume": RESUME_HINT, **info})

    def end(self, *, partial: bool, **info: Any) -> None:
        """Mark the stage ``done``, or ``partial`` when some items have no record (a rerun retries them)."""
        self.run_dir.mark(self.stage, "partial" if partial else "done", **info)


class _Meter:
    """Progress of one run on stderr: a live bar on a terminal, else one plain line per event
    (start, every ~10 s, end) for logs."""

    EVERY_S = 10.0

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.name, self.total, self.done = name, total, 0
        self.labels: Counter[str] = Counter()
        live = enabled and PROGRESS_CONSOLE.is_terminal
        self.plain = enabled and not live
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), disable=not live,
                            transient=False, console=PROGRESS_CONSOLE)
        self.task = self.bar.add_task(name, total=total, status="")
        self.started = self.last = time.perf_counter()
        if self.plain:
            self._line(f"{total} to do")

    def __enter__(self) -> _Meter:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def _status(self) -> str:
        return ", ".join(f"{n} {label}" for label, n in sorted(self.labels.items()))

    def _line(self, text: str) -> None:
        PROGRESS_CONSOLE.print(f"[{time.strftime('%H:%M:%S')}] {self.name}: {text}", markup=False, highlight=False,
                               soft_wrap=True)

    def advance(self, label: str) -> None:
        self.done += 1
        self.labels[label] += 1
        self.bar.update(self.task, advance=1, status=self._status())
        now = time.perf_counter()
        if self.plain and now - self.last >= self.EVERY_S and self.done < self.total:
            self.last = now
            self._line(f"{self.done}/{self.total} ({self._status()}) {now - self.started:.0f} s")

    def finish(self) -> None:
        if self.plain:
            self._line(f"done in {time.perf_counter() - self.started:.1f} s: {self.done} ({self._status() or 'none'})")
