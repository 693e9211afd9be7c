"""Stage 3: tool necessity — per step, does answering it need a tool, and why.

The original's hard rule: every step another step depends on must need a tool (its answer
must come from a verifiable call, not from the question or from reasoning); a decomposition
that breaks it is dropped (``necessity_violated``), as is one where no step needs a tool.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

from astra.records import Decomposition
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._answers import answers_match
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._decompose import StepsReply
from astra.synthesis.trajectories._config import JudgeMode

PROMPT_VERSION = "necessity-v1"

SYSTEM = (
    "For each step of a decomposed question, decide whether answering it needs a tool call "
    "(a computation, conversion, lookup or date/string operation) or can be read directly from "
    "the question. Give a short reason. Reply with JSON only."
)


class NecessityItem(BaseModel):
    id: str
    needs_tool: bool
    reason: str = Field(min_length=1)

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class NecessityReply(StepsReply):
    steps: list[NecessityItem] = Field(min_length=1)


def necessity_prompt(dec: Decomposition) -> str:
    steps = [{"id": s.id, "sub_question": s.sub_question, "depends_on": s.depends_on} for s in dec.steps]
    return (
        f"Question: {dec.question}\nSteps: {json.dumps(steps, ensure_ascii=False)}\n"
        'Reply as {"steps": [{"id": "s1", "needs_tool": true, "reason": "..."}]} with one entry per step.'
    )


def necessity_violations(dec: Decomposition) -> list[str]:
    """Steps that others depend on but that need no tool (the original's hard rule)."""
    used_by: dict[str, list[str]] = {}
    for s in dec.steps:
        for d in s.depends_on:
            used_by.setdefault(d, []).append(s.id)
    return [f"{s.id} is used by {', '.join(used_by[s.id])} but needs no tool"
            for s in dec.steps if s.id in used_by and s.needs_tool is False]


def rule_necessity(dec: Decomposition) -> NecessityReply:
    """Necessity by rules, for a model too small to judge: a step whose sub-answer the question
    states (a normalised token of it) is read from the question; any other needs a tool."""
    question = dec.question.lower()
    tokens = set(re.findall(r"[\w.:-]+", question)) | {t.rstrip(".") for t in question.split()}
    items = []
    for s in dec.steps:
        stated = any(answers_match(s.sub_answer, t) for t in tokens)
        reason = (f"rules: the question states {s.sub_answer!r}" if stated
                  else f"rules: {s.sub_answer!r} is not in the question, so a tool must produce it")
        items.append(NecessityItem(id=s.id, needs_tool=not stated, reason=reason))
    return NecessityReply(steps=items)


async def necessity_one(ctx: PipelineContext, dec: Decomposition) -> Outcome:
    if ctx.config.judge == JudgeMode.RULES:
        reply, audit = rule_necessity(dec), []
        dec = dec.model_copy(update={"judge": JudgeMode.RULES.value})
    else:
        try:
            reply, audit = await ctx.ask(necessity_prompt(dec), NecessityReply, system=SYSTEM,
                                         prompt_version=PROMPT_VERSION)
        except LLMOutputError as exc:
            return Outcome.drop(f"necessity_failed: {exc.reason}", failed=True, audit=exc.audit)
    by_id = {i.id: i for i in reply.steps}
    missing = [s.id for s in dec.steps if s.id not in by_id]
    if missing:
        return Outcome.drop(f"necessity_incomplete: no verdict for step {', '.join(missing)}", failed=True, audit=audit)
    steps = [
        s.model_copy(update={"needs_tool": by_id[s.id].needs_tool, "reason": by_id[s.id].reason}) for s in dec.steps
    ]
    out = dec.model_copy(update={"steps": steps})
    if not any(s.needs_tool for s in steps):
        return Outcome.drop("no_tool_needed: no step needs a tool", audit=audit)
    violations = necessity_violations(out)
    if violations:
        return Outcome.drop("necessity_violated: " + "; ".join(violations), audit=audit)
    return Outcome.keep(out, audit=audit)


async def run_necessity(ctx: PipelineContext) -> StageCounts:
    decs = ctx.unique_outputs("decompose", Decomposition)
    return await ctx.map_stage("necessity", Decomposition, [(d.id, d) for d in decs], lambda d: necessity_one(ctx, d))
