"""A BFCL run: many entries, concurrently, resumable, scored by BFCL's checker.

A run directory (``astra.runs.RunDir``) holds ``manifest.json`` and ``results.jsonl``, one
:class:`BfclResult` per entry id, written by the one resumable runner (``astra.runner``): a rerun
skips ids already there, so a killed run resumes without duplicates or loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from astra.bfcl._data import CATEGORIES, MAX_STEPS_PER_TURN, BfclEntry, entry_sort_key
from astra.bfcl._episode import ground_truth_as_decoded, run_entry
from astra.bfcl._gold import GOLD_MODEL, gold_model
from astra.bfcl._score import compare_with_direct_execution, score_decoded
from astra.client import Model, ModelSettings
from astra.records import ChatMessage, Usage
from astra.runner import ItemRunner
from astra.runs import RunDir

RESULTS_STAGE = "results"

ModelFactory = Callable[[BfclEntry], Model]
"""The model that plays one entry (a shared provider, or a fresh scripted model per entry)."""


class BfclResult(BaseModel):
    """One scored entry (a line of ``results.jsonl``)."""

    id: str = Field(description="the BFCL entry id")
    category: str
    model: str
    valid: bool
    error_type: str | None = None
    error_message: str | None = None
    decoded: list[list[list[str]]] = Field(default_factory=list)
    turns_run: int = 0
    steps: int = 0
    tool_errors: int = 0
    force_quit: bool = False
    model_error: str | None = None
    mcp_faithful: bool | None = Field(
        default=None, description="our MCP servers' final state equals BFCL executing the same calls"
    )
    mcp_differences: dict[str, Any] = Field(default_factory=dict)
    ground_truth_valid: bool | None = Field(
        default=None, description="gold runs: the checker's verdict on the ground truth fed directly"
    )
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    messages: list[ChatMessage] = Field(default_factory=list)


class CategoryScore(BaseModel):
    total: int = 0
    passed: int = 0

    @property
    def accuracy(self) -> float:
        return self.passed / self.total if self.total else 0.0


class BfclSummary(BaseModel):
    model: str
    run_dir: str
    categories: dict[str, dict[str, Any]] = Field(description="category -> {total, passed, accuracy}")
    overall: float | None = Field(
        description="unweighted mean of the categories' accuracies (the seed paper's Overall)"
    )
    failures: list[dict[str, Any]] = Field(default_factory=list, description="[{id, category, error_type}]")
    scored_now: int = 0
    resumed: int = 0
    elapsed_s: float = 0.0
    mcp_unfaithful: list[str] = Field(
        default_factory=list, description="entries where MCP execution and direct execution diverged"
    )
    gold_disagreements: list[dict[str, Any]] = Field(
        default_factory=list, description="gold runs: entries where replay and direct ground truth differ"
    )


def _result_order(result: BfclResult) -> tuple[int, tuple[str, int]]:
    rank = CATEGORIES.index(result.category) if result.category in CATEGORIES else len(CATEGORIES)
    return rank, entry_sort_key(result.id)


def summarize(results: list[BfclResult], model: str, run_dir: str) -> BfclSummary:
    results = sorted(results, key=_result_order)
    scores: dict[str, CategoryScore] = {}
    for r in results:
        score = scores.setdefault(r.category, CategoryScore())
        score.total += 1
        score.passed += r.valid
    ordered = [c for c in CATEGORIES if c in scores] + sorted(c for c in scores if c not in CATEGORIES)
    categories = {
        c: {"total": scores[c].total, "passed": scores[c].passed, "accuracy": scores[c].accuracy} for c in ordered
    }
    gold_disagreements = [
        {"id": r.id, "replay_valid": r.valid, "ground_truth_valid": r.ground_truth_valid,
         "reason": r.error_type if not r.valid else "the checker rejects the ground truth itself",
         "message": r.error_message}
        for r in results if r.ground_truth_valid is not None and r.ground_truth_valid != r.valid
    ]
    return BfclSummary(
        model=model,
        run_dir=run_dir,
        categories=categories,
        overall=(sum(v["accuracy"] for v in categories.values()) / len(categories)) if categories else None,
        failures=[{"id": r.id, "category": r.category, "error_type": r.error_type} for r in results if not r.valid],
        mcp_unfaithful=[r.id for r in results if r.mcp_faithful is False],
        gold_disagreements=gold_disagreements,
    )


async def score_entry(
    model: Model,
    entry: BfclEntry,
    *,
    model_name: str,
    settings: ModelSettings | None = None,
    check_ground_truth: bool = False,
    keep_messages: bool = True,
    max_steps_per_turn: int = MAX_STEPS_PER_TURN,
    servers: str = "astra",
) -> BfclResult:
    """Play one entry and score it (BFCL's checker, plus the MCP-vs-direct state check)."""
    episode, episode_servers = await run_entry(
        model, entry, settings=settings, max_steps_per_turn=max_steps_per_turn, servers=servers
    )
    if episode.model_error:
        verdict_valid, error_type, error_message = False, "astra:model_error", episode.model_error
    else:
        verdict = score_decoded(entry, episode.decoded)
        verdict_valid, error_type, error_message = verdict.valid, verdict.error_type, verdict.error_message
    fidelity = compare_with_direct_execution(entry, episode.decoded, episode_servers.instances)
    return BfclResult(
        id=entry.id,
        category=entry.category,
        model=model_name,
        valid=verdict_valid,
        error_type=error_type,
        error_message=error_message,
        decoded=episode.decoded,
        turns_run=len(episode.decoded),
        steps=episode.steps,
        tool_errors=episode.tool_errors,
        force_quit=episode.force_quit,
        model_error=episode.model_error,
        mcp_faithful=fidelity.faithful,
        mcp_differences=fidelity.differences,
        ground_truth_valid=score_decoded(entry, ground_truth_as_decoded(entry)).valid if check_ground_truth else None,
        usage=episode.usage,
        latency_s=episode.latency_s,
        messages=episode.messages if keep_messages else [],
    )


def _failed_result(entry: BfclEntry, model_name: str, exc: BaseException) -> BfclResult:
    return BfclResult(
        id=entry.id, category=entry.category, model=model_name, valid=False,
        error_type="astra:harness_error", error_message=f"{type(exc).__name__}: {exc}",
    )


def model_factory(spec: str, **options: Any) -> ModelFactory:
    """The model for each entry from a model spec.

    ``scripted:gold`` is a fresh ground-truth replay per entry; other ``scripted:`` specs are
    resolved per entry too (a script counts its replies); providers (``openai:``,
    ``anthropic:``, ``local:``) are resolved once and shared, keeping one connection pool.
    """
    if spec == GOLD_MODEL:
        return gold_model
    from astra.client import resolve_model

    if spec.startswith("scripted:"):
        return lambda entry: resolve_model(spec, **options)
    shared = resolve_model(spec, **options)
    return lambda entry: shared


async def run_bfcl(
    model: str | ModelFactory,
    entries: list[BfclEntry],
    run_dir: str | Path,
    *,
    model_name: str | None = None,
    concurrency: int = 8,
    settings: ModelSettings | None = None,
    keep_messages: bool = True,
    max_steps_per_turn: int = MAX_STEPS_PER_TURN,
    servers: str = "astra",
    on_result: Callable[[BfclResult], None] | None = None,
) -> BfclSummary:
    """Play and score ``entries`` (skipping those already in ``run_dir``); returns the summary of all of them.

    ``model`` is a model spec (see :func:`model_factory`) or a factory giving the model for
    an entry. With ``scripted:gold`` every entry is also scored with its ground truth fed
    straight to the checker, and the summary lists where the two verdicts differ.
    """
    started = time.perf_counter()
    if isinstance(model, str):
        factory = model_factory(model)
        name = model_name or model
    else:
        factory = model
        name = model_name or "model"
    gold = factory is gold_model  # the replay is checked against the ground truth fed directly
    run = RunDir(run_dir, config={"model": name, "max_steps_per_turn": max_steps_per_turn, "servers": servers})

    async def play(entry: BfclEntry) -> BfclResult:
        return await score_entry(
            factory(entry), entry, model_name=name, settings=settings, check_ground_truth=gold,
            keep_messages=keep_messages, max_steps_per_turn=max_steps_per_turn, servers=servers,
        )

    runner = ItemRunner[BfclEntry, BfclResult](run, RESULTS_STAGE, concurrency=concurrency,
                                               label=lambda r: "pass" if r.valid else "fail")
    # one broken entry is a recorded failure (astra:harness_error), the rest go on
    report = await runner.run(((e.id, e) for e in entries), play,
                              on_error=lambda failure: _failed_result(failure.item, name, failure.error),
                              on_record=on_result, done_info=lambda _: {"entries": len(entries)})
    log = runner.log
    wanted = {e.id for e in entries}
    results = [r for r in log.read(BfclResult) if r.id in wanted]
    summary = summarize(results, name, str(run.path))
    summary.scored_now = report.todo
    summary.resumed = report.resumed
    summary.elapsed_s = time.perf_counter() - started
    return summary
