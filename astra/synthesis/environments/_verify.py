"""Stage 4: verification — per-dependency and per-step judgments in ONE structured call, plus rules.

The original verifies each dependency of each step and the atomicity of each step with separate
calls; here one call returns every item:
- ``dependencies``: each step that depends on others — does it use exactly the answers of the
  steps it lists (0 / 1)?
- ``steps``: each step — atomic (asks one thing), no forced wait (it does not depend on a
  step it does not use), contributes (its answer is needed for the final answer), each 0 / 1;
- ``final``: the last hop's sub-answer gives the final answer (for a free-text final answer,
  the prose agrees with the last hop), 0 / 1.
Each check is the mean of a rule part and the judge's items: dependency correctness (the rules:
no hop mismatch), atomicity (no compound question), no forced serialisation, completeness (every
step feeds the final hop, the last hop gives the final answer). A free-text final answer the
judge finds inconsistent is dropped. The threshold is fixed (``verify_threshold``) or a
percentile of the run's own scores (``verify_percentile``), decided after every item is scored;
changing either re-decides without model calls. A failed judge drops the item as failed.
"""

from __future__ import annotations

import json
import math
import re
from statistics import fmean
from typing import Annotated, Any, ClassVar

import networkx as nx
from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from astra.records import Decomposition
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, Stage, StageCounts
from astra.synthesis.environments._answers import answers_match
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._decompose import (
    FREE_TEXT_FLAG,
    dependency_graph,
    last_step_id,
)
from astra.synthesis.trajectories._config import JudgeMode

PROMPT_VERSION = "verify-v2"
CHECKS = ("dependency", "atomicity", "serialisation", "completeness")
GATE = "verify_threshold"

SYSTEM = (
    "You review a question decomposition item by item: each dependency (does the step use exactly "
    "the answers of the steps it depends on), each step (atomic, not waiting on a step it does not "
    "use, contributing to the final answer), and whether the last hop gives the final answer. "
    "Score each 0 or 1 with a short reason. Reply with JSON only."
)

_TWO_QUESTIONS = re.compile(r"\?.*\S.*\?|\b(?:and|then)\s+(?:what|how|which|who|when|where|why)\b", re.IGNORECASE)


class _Binary(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _score(cls, v: Any, info: Any) -> Any:
        if info.field_name in ("id", "reason"):
            return str(v) if info.field_name == "id" and isinstance(v, int) else v
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, str) and v.strip() in ("0", "1"):
            return int(v.strip())
        return v


class DependencyItem(_Binary):
    id: str
    correct: int = Field(ge=0, le=1)
    reason: str = Field(default="", max_length=300)


class StepItem(_Binary):
    id: str
    atomic: int = Field(ge=0, le=1)
    no_forced_wait: int = Field(ge=0, le=1)
    contributes: int = Field(ge=0, le=1)
    reason: str = Field(default="", max_length=300)


class FinalItem(_Binary):
    consistent: int = Field(ge=0, le=1)
    reason: str = Field(default="", max_length=300)


class VerifyReplyBase(BaseModel):
    expected_ids: ClassVar[dict[str, list[str]]] = {}

    @model_validator(mode="after")
    def _cover(self) -> VerifyReplyBase:
        for section, want in self.expected_ids.items():
            got = [item.id for item in getattr(self, section)]
            if sorted(got) != sorted(want):
                raise ValueError(f"{section}: expected ids {want}, got {got}")
        return self


def reply_model(dec: Decomposition) -> type[VerifyReplyBase]:
    """The reply schema for this decomposition: one dependency item per step with dependencies,
    one step item per step (lengths fixed for constrained decoders, ids checked)."""
    deps = [s.id for s in dec.steps if s.depends_on]
    steps = [s.id for s in dec.steps]
    model = create_model(
        "VerifyReply", __base__=VerifyReplyBase,
        # required when there are dependencies: a constrained decoder may otherwise leave the section out
        dependencies=(Annotated[list[DependencyItem], Field(min_length=len(deps), max_length=len(deps))],
                      ... if deps else Field(default_factory=list)),
        steps=(Annotated[list[StepItem], Field(min_length=len(steps), max_length=len(steps))], ...),
        final=(FinalItem, ...),
    )
    model.expected_ids = {"dependencies": deps, "steps": steps}
    return model


def rule_scores(dec: Decomposition) -> dict[str, float]:
    n = len(dec.steps)
    graph = dependency_graph(dec.steps)
    final = last_step_id(dec.steps)
    dependency = max(0.0, 1.0 - dec.scores.get("hop_mismatches", 0.0) / n)
    atomic = sum(1 for s in dec.steps if not _TWO_QUESTIONS.search(s.sub_question.strip())) / n
    by_id = {s.id: s for s in dec.steps}
    serial_violations = sum(
        1
        for s in dec.steps
        if s.is_parallel and any(by_id[d].is_parallel and by_id[d].hop == s.hop for d in s.depends_on)
    )
    serialisation = 1.0 - serial_violations / n
    contributing = nx.ancestors(graph, final) | {final}
    last = by_id[final]
    # a free-text final answer is not a value to compare: its agreement with the last hop is the judge's item
    reaches = answers_match(last.sub_answer, dec.answer) or FREE_TEXT_FLAG in dec.flags
    completeness = (len(contributing) / n) * (1.0 if reaches else 0.0)
    return {"dependency": dependency, "atomicity": atomic, "serialisation": serialisation, "completeness": completeness}


def judge_prompt(dec: Decomposition) -> str:
    steps = [s.model_dump(include={"id", "sub_question", "depends_on", "is_parallel", "sub_answer", "needs_tool"})
             for s in dec.steps]
    shape = {
        "dependencies": [{"id": s.id, "correct": 1, "reason": "..."} for s in dec.steps if s.depends_on],
        "steps": [{"id": s.id, "atomic": 1, "no_forced_wait": 1, "contributes": 1, "reason": "..."} for s in dec.steps],
        "final": {"consistent": 1, "reason": "..."},
    }
    free = ("\nThe final answer is free text: judge whether what it states agrees with the last hop's sub-answer."
            if FREE_TEXT_FLAG in dec.flags else "")
    return (
        f"Question: {dec.question}\nFinal answer: {dec.answer}\nSteps: {json.dumps(steps, ensure_ascii=False)}{free}\n"
        f"Reply as {json.dumps(shape)}"
    )


async def verify_one(ctx: PipelineContext, dec: Decomposition, threshold: float) -> Outcome:
    rules = rule_scores(dec)
    if ctx.config.judge == JudgeMode.RULES:
        # a model too small to judge: the rule parts alone, and the record says so (judge: rules)
        score = fmean(rules[k] for k in CHECKS)
        scores = {**dec.scores, **rules, "score": score, **{f"rule_{k}": v for k, v in rules.items()}}
        return Outcome.gated({GATE: (score, threshold)},
                             dec.model_copy(update={"scores": scores, "judge": JudgeMode.RULES.value}))
    try:
        reply, audit = await ctx.ask(judge_prompt(dec), reply_model(dec), system=SYSTEM, prompt_version=PROMPT_VERSION)
    except LLMOutputError as exc:
        return Outcome.drop(f"judge_failed: {exc.reason}", failed=True, audit=exc.audit)
    deps: list[DependencyItem] = reply.dependencies  # type: ignore[attr-defined]
    steps: list[StepItem] = reply.steps  # type: ignore[attr-defined]
    final: FinalItem = reply.final  # type: ignore[attr-defined]
    items = {
        "dependencies": [d.model_dump() for d in deps], "steps": [s.model_dump() for s in steps],
        "final": final.model_dump(),
    }
    if FREE_TEXT_FLAG in dec.flags and not final.consistent:
        return Outcome.drop(f"final_answer_inconsistent: {final.reason[:160] or 'the judge finds it disagrees'}",
                            audit=audit + [{"verdicts": items}])
    judged = {
        "dependency": fmean([d.correct for d in deps]) if deps else 1.0,  # single hop / no dependency: nothing wrong
        "atomicity": fmean([s.atomic for s in steps]),
        "serialisation": fmean([s.no_forced_wait for s in steps]),
        "completeness": fmean([s.contributes for s in steps]) * final.consistent,
    }
    checks = {k: fmean([rules[k], judged[k]]) for k in CHECKS}
    score = fmean(checks.values())
    scores = {**dec.scores, **checks, "score": score, **{f"rule_{k}": v for k, v in rules.items()},
              **{f"judge_{k}": v for k, v in judged.items()}}
    return Outcome.gated({GATE: (score, threshold)}, dec.model_copy(update={"scores": scores}),
                         audit=audit + [{"verdicts": items}])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def run_verify(ctx: PipelineContext) -> StageCounts:
    decs = ctx.unique_outputs("necessity", Decomposition)
    items = [(d.id, d) for d in decs]
    q = ctx.config.verify_percentile
    if q is None:
        fixed = ctx.config.verify_threshold
        return await ctx.map_stage("verify", Decomposition, items, lambda d: verify_one(ctx, d, fixed),
                                   gates={GATE: fixed})
    # percentile: score everything with the gate open, then set the threshold from the run's scores
    await ctx.map_stage("verify", Decomposition, items, lambda d: verify_one(ctx, d, 0.0), gates={GATE: 0.0})
    ids = {i for i, _ in items}
    scores = [e.gate.scores[GATE] for e in Stage(ctx.run, "verify", Decomposition).entries()
              if e.id in ids and e.gate is not None and GATE in e.gate.scores]
    threshold = round(percentile(scores, q), 6) if scores else 0.0
    ctx.run.mark("verify_threshold", "done", percentile=q, threshold=threshold, scored=len(scores))
    return await Stage(ctx.run, "verify", Decomposition).run_items([], _unused, progress=False, gates={GATE: threshold})


async def _unused(_: Any) -> Outcome:  # pragma: no cover - no items: only re-decides the gates
    raise AssertionError("no items")
