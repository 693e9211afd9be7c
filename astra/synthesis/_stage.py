"""Resumable pipeline stages and the funnel summary, shared by both synthesis pipelines.

A stage maps each input item to zero or more output records. Its file
``<run>/<stage>.jsonl`` holds ONE line per processed input (a :class:`StageEntry`): the
outputs it produced, or why it was dropped, plus an audit trail of model calls. One line per
input makes the write atomic: after a ``kill -9`` an input is either fully done or not at
all, so a rerun skips finished inputs and gives the same final set, without duplicates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from astra.runner import Failure, ItemRunner
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
        """Apply ``fn`` to every (id, item) not yet done, ``concurrency`` at a time (the one
        resumable runner, :class:`astra.runner.ItemRunner`).

        ``fn`` must not raise for expected failures (return ``Outcome.drop(..., failed=True)``);
        an unexpected exception is recorded as a failed drop with its type and message, so one
        bad item never stops the run and is never silently lost.

        Resuming: inputs that *failed* (a model, a server, a timeout: not the input's fault)
        are tried again, their new entry superseding the old; inputs decided by a
        :class:`Gate` are re-decided without redoing their work when ``gates`` (the current
        thresholds by name) changes the decision. A Ctrl-C / SIGTERM marks the stage
        ``interrupted`` with what is kept.
        """
        done = {e.id: e for e in self.entries()}
        for entry in list(done.values()):
            regated = self._regated(entry, gates or {})
            if regated is not None:
                self.log.append(regated, replace=True)
        retry = {i for i, e in done.items() if e.failed and not e.outputs}

        async def work(pair: tuple[str, Any]) -> StageEntry:
            item_id, item = pair
            start = time.perf_counter()
            outcome = await fn(item)
            return self._entry(item_id, outcome, time.perf_counter() - start)

        def failed(failure: Failure[tuple[str, Any]]) -> StageEntry:
            outcome = Outcome.drop(f"error: {type(failure.error).__name__}: {failure.error}", failed=True)
            return self._entry(failure.item_id, outcome, failure.seconds)

        runner = ItemRunner[tuple[str, Any], StageEntry](
            self.run, self.name, log_file=self.log, concurrency=concurrency, progress=progress,
            description=description, label=_entry_label)
        await runner.run(((i, (i, it)) for i, it in items), work, on_error=failed, redo=retry,
                         done_info=lambda _: self.counts().model_dump(exclude={"stage"}))
        return self.counts()

    def _entry(self, item_id: str, outcome: Outcome, seconds: float) -> StageEntry:
        return StageEntry(
            id=item_id,
            stage=self.name,
            outputs=[o.model_dump(mode="json") for o in outcome.outputs],
            dropped=outcome.dropped if not outcome.outputs else None,
            failed=outcome.failed,
            audit=outcome.audit,
            seconds=round(seconds, 4),
            gate=outcome.gate,
        )


def _entry_label(entry: StageEntry) -> str:
    return "kept" if entry.dropped is None else "failed" if entry.failed else "dropped"
