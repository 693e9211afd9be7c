"""Resumable pipeline stages and the funnel summary, shared by both synthesis pipelines.

A stage maps each input item to zero or more output records. Its file
``<run>/<stage>.jsonl`` holds ONE line per processed input (a :class:`StageEntry`): the
outputs it produced, or why it was dropped, plus an audit trail of model calls. One line per
input makes the write atomic: after a ``kill -9`` an input is either fully done or not at
all, so a rerun skips finished inputs and gives the same final set, without duplicates.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import anyio
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astra.errors import RunWriteError
from astra.runs import RunDir

T = TypeVar("T", bound=BaseModel)


class Gate(BaseModel):
    """A threshold decision kept with its evidence, so that changing a threshold and rerunning
    re-decides the input without redoing its work.

    ``scores`` maps a check to the score compared with a threshold; a check is named by its
    threshold (a config field, e.g. ``quality_threshold``), optionally with what it measures
    in brackets (``dimension_minimum[tool_planning]``). The input passes when every score
    reaches its threshold. The outputs are stored either way (``held`` while the gate is shut)."""

    scores: dict[str, float]
    thresholds: dict[str, float]
    held: list[dict[str, Any]] = Field(default_factory=list, description="outputs held back while the gate is shut")

    def current(self, thresholds: Mapping[str, float] | None = None) -> dict[str, float]:
        """Each check's threshold: from ``thresholds`` (by threshold name) where given, else as recorded."""
        given = thresholds or {}
        return {k: given.get(_threshold_name(k), v) for k, v in self.thresholds.items()}

    def failing(self, thresholds: Mapping[str, float] | None = None) -> list[str]:
        current = self.current(thresholds)
        return [k for k, score in self.scores.items() if score < current[k]]

    def reason(self, thresholds: Mapping[str, float] | None = None) -> str:
        current = self.current(thresholds)
        parts: list[str] = []
        for check in self.failing(thresholds):
            name, _, what = check.partition("[")
            value = f"{self.scores[check]:.2f} < {current[check]}"
            parts.append(f"below_{name}: {what[:-1]} ({value})" if what else f"below_{name}: {value}")
        return "; ".join(parts)


def _threshold_name(check: str) -> str:
    return check.split("[", 1)[0]


class StageEntry(BaseModel):
    """What one input became in one stage."""

    id: str = Field(description="the input's stable id")
    stage: str
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    dropped: str | None = Field(default=None, description="drop reason when the input yields nothing")
    failed: bool = Field(
        default=False, description="dropped because something failed (a model, a server), not filtered"
    )
    audit: list[dict[str, Any]] = Field(
        default_factory=list, description="model calls: model, prompt version, raw reply"
    )
    seconds: float = 0.0
    gate: Gate | None = Field(default=None, description="the threshold decision, re-made when a threshold changes")


class Outcome(BaseModel):
    """Returned by a stage function for one input."""

    outputs: list[BaseModel] = Field(default_factory=list)
    dropped: str | None = None
    failed: bool = False
    audit: list[dict[str, Any]] = Field(default_factory=list)
    gate: Gate | None = None

    @classmethod
    def keep(cls, *outputs: BaseModel, audit: list[dict[str, Any]] | None = None) -> Outcome:
        return cls(outputs=list(outputs), audit=audit or [])

    @classmethod
    def drop(cls, reason: str, *, failed: bool = False, audit: list[dict[str, Any]] | None = None) -> Outcome:
        return cls(dropped=reason, failed=failed, audit=audit or [])

    @classmethod
    def gated(cls, checks: Mapping[str, tuple[float, float]], *outputs: BaseModel,
              audit: list[dict[str, Any]] | None = None) -> Outcome:
        """Keep ``outputs`` when every ``name: (score, threshold)`` holds, else drop them with
        the reason; either way the decision is recorded so a changed threshold re-decides it."""
        gate = Gate(scores={k: v[0] for k, v in checks.items()}, thresholds={k: v[1] for k, v in checks.items()})
        if gate.failing():
            gate.held = [o.model_dump(mode="json") for o in outputs]
            return cls(dropped=gate.reason(), audit=audit or [], gate=gate)
        return cls(outputs=list(outputs), audit=audit or [], gate=gate)


class StageCounts(BaseModel):
    stage: str
    inputs: int = 0
    outputs: int = 0
    dropped: int = 0
    failed: int = 0
    drop_reasons: dict[str, int] = Field(default_factory=dict)
    model_calls: int = Field(default=0, description="model requests recorded in the audits (retries included)")

    @property
    def calls_per_item(self) -> float:
        return round(self.model_calls / self.inputs, 2) if self.inputs else 0.0


class Funnel(BaseModel):
    """Items in/out per stage with drop reasons: printed after every run."""

    stages: list[StageCounts] = Field(default_factory=list)

    def add(self, counts: StageCounts) -> None:
        self.stages = [s for s in self.stages if s.stage != counts.stage] + [counts]

    def render(self) -> Any:
        from rich.table import Table

        table = Table(title="funnel")
        for col in ("stage", "in", "out", "dropped", "failed", "model calls / item", "top drop reasons"):
            table.add_column(col)
        for s in self.stages:
            reasons = ", ".join(f"{r} ({n})" for r, n in sorted(s.drop_reasons.items(), key=lambda kv: -kv[1])[:3])
            table.add_row(s.stage, str(s.inputs), str(s.outputs), str(s.dropped), str(s.failed),
                          f"{s.calls_per_item:g}" if s.model_calls else "-", reasons)
        return table


# progress is human output: stderr, so that a CLI's --json owns stdout
_PROGRESS_CONSOLE = Console(stderr=True)


def model_calls(audit: Sequence[Any]) -> int:
    """Model requests in an audit trail (``ask_json`` records one entry per attempt)."""
    return sum(1 for a in audit if isinstance(a, dict) and "model" in a and ("raw" in a or "error" in a))


def _reason_key(reason: str) -> str:
    """Group drop reasons by their head ('bad_json: ...' -> 'bad_json')."""
    return reason.split(":", 1)[0].strip()[:60]


class Stage(Generic[T]):
    """One resumable stage in a run directory."""

    def __init__(self, run: RunDir, name: str, output_model: type[T]) -> None:
        self.run = run
        self.name = name
        self.output_model = output_model
        self.log = run.stage(name)

    def done_ids(self) -> frozenset[str]:
        return self.log.ids

    def entries(self) -> Iterator[StageEntry]:
        return self.log.read(StageEntry)

    def outputs(self) -> list[T]:
        """Every output record of the stage, in input order of processing."""
        return [self.output_model.model_validate(o) for e in self.entries() for o in e.outputs]

    def counts(self) -> StageCounts:
        counts = StageCounts(stage=self.name)
        reasons: Counter[str] = Counter()
        for e in self.entries():
            counts.inputs += 1
            counts.model_calls += model_calls(e.audit)
            counts.outputs += len(e.outputs)
            if e.dropped is not None:
                counts.dropped += 1
                counts.failed += int(e.failed)
                reasons[_reason_key(e.dropped)] += 1
        counts.drop_reasons = dict(reasons)
        return counts

    def _regated(self, entry: StageEntry, thresholds: Mapping[str, float]) -> StageEntry | None:
        """``entry`` re-decided under ``thresholds``, or None when the decision stands."""
        gate = entry.gate
        if gate is None:
            return None
        now_open = not gate.failing(thresholds)
        if now_open == (entry.dropped is None):
            return None
        current = gate.current(thresholds)
        if now_open:
            new_gate = gate.model_copy(update={"thresholds": current, "held": []})
            return entry.model_copy(update={"outputs": gate.held, "dropped": None, "gate": new_gate})
        new_gate = gate.model_copy(update={"thresholds": current, "held": entry.outputs})
        return entry.model_copy(update={"outputs": [], "dropped": new_gate.reason(), "gate": new_gate})

    async def run_items(
        self,
        items: Iterable[tuple[str, Any]],
        fn: Callable[[Any], Awaitable[Outcome]],
        *,
        concurrency: int = 4,
        progress: bool = True,
        description: str | None = None,
        gates: Mapping[str, float] | None = None,
    ) -> StageCounts:
        """Apply ``fn`` to every (id, item) not yet done, ``concurrency`` at a time.

        ``fn`` must not raise for expected failures (return ``Outcome.drop(..., failed=True)``);
        an unexpected exception is recorded as a failed drop with its type and message, so one
        bad item never stops the run and is never silently lost.

        Resuming: inputs that *failed* (a model, a server, a timeout: not the input's fault)
        are tried again, their new entry superseding the old; inputs decided by a
        :class:`Gate` are re-decided without redoing their work when ``gates`` (the current
        thresholds by name) changes the decision. A Ctrl-C / SIGTERM marks the stage
        ``interrupted`` with what is kept.
        """
        items = list(items)
        done = {e.id: e for e in self.entries()}
        for entry in list(done.values()):
            regated = self._regated(entry, gates or {})
            if regated is not None:
                self.log.append(regated, replace=True)
        retry = {i for i, e in done.items() if e.failed and not e.outputs}
        todo: Sequence[tuple[str, Any]] = [(i, it) for i, it in items if i not in self.log or i in retry]
        limiter = anyio.CapacityLimiter(max(1, concurrency))
        # a terminal gets a live bar; a log (not a TTY) gets plain lines: start, every ~10 s, end
        live = progress and _PROGRESS_CONSOLE.is_terminal
        plain = _PlainProgress(description or self.name, len(todo)) if progress and not live else None
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not live,
            transient=False,
            console=_PROGRESS_CONSOLE,
        )

        async def one(item_id: str, item: Any, task_id: Any) -> None:
            async with limiter:
                start = time.perf_counter()
                try:
                    outcome = await fn(item)
                except Exception as exc:  # top level of one item: record, never lose it
                    outcome = Outcome.drop(f"error: {type(exc).__name__}: {exc}", failed=True)
                entry = StageEntry(
                    id=item_id,
                    stage=self.name,
                    outputs=[o.model_dump(mode="json") for o in outcome.outputs],
                    dropped=outcome.dropped if not outcome.outputs else None,
                    failed=outcome.failed,
                    audit=outcome.audit,
                    seconds=round(time.perf_counter() - start, 4),
                    gate=outcome.gate,
                )
                self.log.append(entry, replace=item_id in retry)
                bar.advance(task_id)
                if plain is not None:
                    plain.advance(entry.dropped is None, entry.failed)

        self.run.mark(self.name, "running", todo=len(todo), retried=len(retry & {i for i, _ in todo}))
        try:
            with bar:
                task_id = bar.add_task(description or self.name, total=len(todo))
                async with anyio.create_task_group() as tg:
                    for item_id, item in todo:
                        tg.start_soon(one, item_id, item, task_id)
        except BaseException:  # Ctrl-C, SIGTERM, a cancelled caller, a full disk: say what is kept
            with contextlib.suppress(RunWriteError):  # a full disk cannot take the note either
                self.run.mark(self.name, "interrupted", kept=len(self.log),
                              resume="run the same command again: finished inputs are skipped")
            raise
        counts = self.counts()
        self.run.mark(self.name, "done", **counts.model_dump(exclude={"stage"}))
        if plain is not None:
            plain.finish(counts)
        return counts


class _PlainProgress:
    """One line per stage event on stderr for logs (no live bar when stderr is not a TTY)."""

    EVERY_S = 10.0

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done, self.kept, self.failed = name, total, 0, 0, 0
        self.started = self.last = time.perf_counter()
        self._line(f"{total} to do")

    def _line(self, text: str) -> None:
        _PROGRESS_CONSOLE.print(f"[{time.strftime('%H:%M:%S')}] {self.name}: {text}", markup=False, highlight=False,
                                soft_wrap=True)

    def advance(self, kept: bool, failed: bool) -> None:
        self.done += 1
        self.kept += int(kept)
        self.failed += int(failed)
        now = time.perf_counter()
        if now - self.last >= self.EVERY_S and self.done < self.total:
            self.last = now
            self._line(f"{self.done}/{self.total} ({self.kept} kept, {self.failed} failed) {now - self.started:.0f} s")

    def finish(self, counts: StageCounts) -> None:
        self._line(f"done in {time.perf_counter() - self.started:.1f} s: {counts.inputs} in, {counts.outputs} out, "
                   f"{counts.dropped} dropped ({counts.failed} failed)")
