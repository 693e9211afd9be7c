"""Stage 4: verification — four checks combined into a score; a threshold filters.

Each check is the mean of a rule-based part (computed from the graph and the text) and an
LLM judge's score, both in [0, 1]:
- dependency correctness: no flagged dependency (on a no-tool step), no hop mismatch;
- atomicity: each sub-question asks exactly one thing;
- no forced serialisation: steps marked parallel do not depend on each other, and a step
  does not wait on a step it does not use (judge);
- completeness: every step contributes to the final hop, the last hop gives the final answer.
A judge that fails (no valid reply) drops the item as failed — never a pass.
"""

from __future__ import annotations

import json
import re
from statistics import fmean
from typing import Any

import networkx as nx
from pydantic import BaseModel, Field, field_validator

from astra.records import Decomposition
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._answers import answers_match
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._decompose import dependency_graph, last_step_id

PROMPT_VERSION = "verify-v1"
CHECKS = ("dependency", "atomicity", "serialisation", "completeness")

SYSTEM = (
    "You review a question decomposition. Score four properties from 0 to 1: dependency "
    "(each step depends on exactly the steps whose answers it uses), atomicity (each step asks "
    "one thing), parallelism (no step is forced to wait for a step it does not need), "
    "completeness (the steps together produce the final answer). Reply with JSON only."
)

_TWO_QUESTIONS = re.compile(r"\?.*\S.*\?|\b(?:and|then)\s+(?:what|how|which|who|when|where|why)\b", re.IGNORECASE)


class JudgeReply(BaseModel):
    dependency: float = Field(ge=0.0, le=1.0)
    atomicity: float = Field(ge=0.0, le=1.0)
    parallelism: float = Field(ge=0.0, le=1.0)
    completeness: float = Field(ge=0.0, le=1.0)
    rationale: str = ""

    @field_validator("dependency", "atomicity", "parallelism", "completeness", mode="before")
    @classmethod
    def _bool_as_score(cls, v: Any) -> Any:
        return float(v) if isinstance(v, bool) else v


def rule_scores(dec: Decomposition) -> dict[str, float]:
    n = len(dec.steps)
    graph = dependency_graph(dec.steps)
    final = last_step_id(dec.steps)
    flagged = sum(1 for f in dec.flags if f.startswith("depends_on_no_tool_step"))
    dependency = max(0.0, 1.0 - (flagged + dec.scores.get("hop_mismatches", 0.0)) / n)
    atomic = sum(1 for s in dec.steps if not _TWO_QUESTIONS.search(s.sub_question.strip())) / n
    by_id = {s.id: s for s in dec.steps}
    serial_violations = sum(
        1 for s in dec.steps if s.is_parallel and any(by_id[d].is_parallel and by_id[d].hop == s.hop for d in s.depends_on)
    )
    serialisation = 1.0 - serial_violations / n
    contributing = nx.ancestors(graph, final) | {final}
    last = by_id[final]
    completeness = (len(contributing) / n) * (1.0 if answers_match(last.sub_answer, dec.answer) else 0.0)
    return {"dependency": dependency, "atomicity": atomic, "serialisation": serialisation, "completeness": completeness}


def judge_prompt(dec: Decomposition) -> str:
    steps = [s.model_dump(include={"id", "sub_question", "depends_on", "is_parallel", "sub_answer", "needs_tool"}) for s in dec.steps]
    return (
        f"Question: {dec.question}\nFinal answer: {dec.answer}\nSteps: {json.dumps(steps, ensure_ascii=False)}\n"
        'Reply as {"dependency": 1.0, "atomicity": 1.0, "parallelism": 1.0, "completeness": 1.0, "rationale": "..."}.'
    )


async def verify_one(ctx: PipelineContext, dec: Decomposition) -> Outcome:
    rules = rule_scores(dec)
    try:
        judge, audit = await ctx.ask(judge_prompt(dec), JudgeReply, system=SYSTEM, prompt_version=PROMPT_VERSION)
    except LLMOutputError as exc:
        return Outcome.drop(f"judge_failed: {exc.reason}", failed=True, audit=exc.audit)
    judged = {"dependency": judge.dependency, "atomicity": judge.atomicity, "serialisation": judge.parallelism,
              "completeness": judge.completeness}
    checks = {k: fmean([rules[k], judged[k]]) for k in CHECKS}
    score = fmean(checks.values())
    scores = {**dec.scores, **checks, "score": score, **{f"rule_{k}": v for k, v in rules.items()},
              **{f"judge_{k}": v for k, v in judged.items()}}
    return Outcome.gated({"verify_threshold": (score, ctx.config.verify_threshold)},
                         dec.model_copy(update={"scores": scores}), audit=audit)


async def run_verify(ctx: PipelineContext) -> StageCounts:
    decs = ctx.unique_outputs("necessity", Decomposition)
    return await ctx.map_stage("verify", Decomposition, [(d.id, d) for d in decs], lambda d: verify_one(ctx, d),
                               gates={"verify_threshold": ctx.config.verify_threshold})
