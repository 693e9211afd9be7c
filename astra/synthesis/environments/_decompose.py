"""Stage 2: decomposition of a main question into hops, with structural checks (networkx).

The chain must lead to the final answer: step ids are unique, every dependency exists,
there is no cycle, and the sub-answer of the last hop matches the final answer (normalised
comparison). A final answer written as free text (a sentence, not a bare value) need not
equal the last sub-answer: it is flagged ``free_text_answer`` and verification's judge checks
that it agrees with the last hop. Hop levels are recomputed from the dependency graph
(longest path). A single hop is a valid decomposition (``min_hops`` 1).
"""

from __future__ import annotations

from typing import Any

import networkx as nx
from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from astra.records import Decomposition, DecompositionStep, QAItem, stable_id
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._answers import answers_match
from astra.synthesis.environments._context import PipelineContext

PROMPT_VERSION = "decompose-v1"

SYSTEM = (
    "You decompose a multi-hop question into atomic steps. Each step asks exactly one thing, "
    "lists the ids of the steps whose answers it uses (depends_on), is marked is_parallel when "
    "it can run at the same time as other steps of its hop, and gives its exact sub_answer. "
    "The last step's sub_answer is the final answer. Reply with JSON only."
)

EXAMPLE = (
    '{"steps": [{"id": "s1", "hop": 1, "sub_question": "How many km is 5 miles?", "depends_on": [], '
    '"is_parallel": true, "sub_answer": "8.04672"}, {"id": "s2", "hop": 1, "sub_question": "How many km '
    'is 3 miles?", "depends_on": [], "is_parallel": true, "sub_answer": "4.828032"}, {"id": "s3", "hop": 2, '
    '"sub_question": "What is 8.04672 + 4.828032?", "depends_on": ["s1", "s2"], "is_parallel": false, '
    '"sub_answer": "12.874752"}]}'
)


def _text(v: Any) -> Any:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return repr(v) if isinstance(v, float) else str(v)
    return v


class StepReply(BaseModel):
    id: str
    hop: int | None = Field(default=None, description="the model's hop level; recomputed from the graph")
    sub_question: str = Field(min_length=1)
    depends_on: list[str] = Field(default_factory=list)
    is_parallel: bool = False
    sub_answer: str = Field(min_length=1)

    @field_validator("id", "sub_answer", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        return _text(v)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _ids_as_text(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str | int):
            v = [v]
        return [_text(x) for x in v] if isinstance(v, list) else v


class StepsReply(BaseModel):
    """A reply holding a ``steps`` list; a bare list (what small models often send) is accepted."""

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, v: Any) -> Any:
        return {"steps": v} if isinstance(v, list) else v


class DecompositionReply(StepsReply):
    steps: list[StepReply] = Field(min_length=1, max_length=8)  # maxItems bounds constrained decoders


def dependency_graph(steps: list[DecompositionStep] | list[StepReply]) -> nx.DiGraph[str]:
    graph = nx.DiGraph()
    for s in steps:
        graph.add_node(s.id)
    for s in steps:
        for d in s.depends_on:
            graph.add_edge(d, s.id)
    return graph


def structural_problems(steps: list[StepReply] | list[DecompositionStep], final_answer: str) -> list[str]:
    """Why a chain of steps is not a valid decomposition of (question -> final_answer); empty when valid."""
    problems: list[str] = []
    ids = [s.id for s in steps]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"duplicate_step_id: {', '.join(dup)}")
    known = set(ids)
    for s in steps:
        missing = [d for d in s.depends_on if d not in known]
        if missing:
            problems.append(f"unknown_dependency: step {s.id} depends on {', '.join(missing)}")
        if s.id in s.depends_on:
            problems.append(f"cycle: step {s.id} depends on itself")
    if problems:
        return problems
    graph = dependency_graph(steps)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        return [f"cycle: {' -> '.join(a for a, _ in cycle)}"]
    final = last_step_id(steps)
    last = next(s for s in steps if s.id == final)
    if not answers_match(last.sub_answer, final_answer) and not is_free_text(final_answer):
        problems.append(f"answer_mismatch: last hop answers {last.sub_answer!r}, final answer is {final_answer!r}")
    return problems


FREE_TEXT_FLAG = "free_text_answer"


def is_free_text(answer: str) -> bool:
    """A final answer written as prose (at least five words), not a bare value: it may state the last
    hop's answer in its own words, which only a judge can check."""
    return len(answer.split()) >= 5


def hop_levels(steps: list[StepReply] | list[DecompositionStep]) -> dict[str, int]:
    graph = dependency_graph(steps)
    hops: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        hops[node] = 1 + max((hops[p] for p in graph.predecessors(node)), default=0)
    return hops


def last_step_id(steps: list[StepReply] | list[DecompositionStep]) -> str:
    """The final hop: the deepest sink of the dependency graph (ties: the later-listed step)."""
    graph = dependency_graph(steps)
    hops = hop_levels(steps)
    order = {s.id: i for i, s in enumerate(steps)}
    sinks = [n for n in graph.nodes if graph.out_degree(n) == 0]
    return max(sinks, key=lambda n: (hops[n], order[n]))


UNVERIFIED_ANSWER = "(not given: work it out; the last step's sub_answer is your proposed final answer)"


def decomposition_prompt(qa: QAItem, max_steps: int) -> str:
    return (
        f"Question: {qa.question}\nFinal answer: {UNVERIFIED_ANSWER if qa.answer_unverified else qa.answer}\n\n"
        f"Decompose it into 1 to {max_steps} steps (one when a single tool call answers it). "
        f"Example of the format:\n{EXAMPLE}"
    )


def _proposed_answer(steps: list[StepReply]) -> str:
    """The final hop's sub-answer (the last listed step's when the graph is broken: the checks name why)."""
    try:
        final = last_step_id(steps)
    except (nx.NetworkXException, KeyError, ValueError):
        return steps[-1].sub_answer
    return next(s for s in steps if s.id == final).sub_answer


def reply_model(max_steps: int) -> type[DecompositionReply]:
    """The reply schema with at most ``max_steps`` steps (a constrained decoder stops there)."""
    if max_steps >= 8:
        return DecompositionReply
    return create_model("DecompositionReply", __base__=DecompositionReply,
                        steps=(list[StepReply], Field(min_length=1, max_length=max_steps)))


async def decompose_one(ctx: PipelineContext, qa: QAItem) -> Outcome:
    try:
        reply, audit = await ctx.ask(decomposition_prompt(qa, ctx.config.max_hops), reply_model(ctx.config.max_hops),
                                     system=SYSTEM, prompt_version=PROMPT_VERSION)
    except LLMOutputError as exc:
        return Outcome.drop(f"decomposition_failed: {exc.reason}", failed=True, audit=exc.audit)
    steps = reply.steps
    if ctx.config.max_hops == 1 and len(steps) == 1 and not qa.answer_unverified:
        # a single hop's answer is the given final answer by definition (a small model copies it badly);
        # synthesis still has to write a tool that reproduces it in the sandbox
        steps = [steps[0].model_copy(update={"sub_answer": qa.answer})]
    if len(steps) < ctx.config.min_hops:
        return Outcome.drop(f"too_few_steps: {len(steps)} < {ctx.config.min_hops}", audit=audit)
    if len(steps) > ctx.config.max_hops:
        return Outcome.drop(f"too_many_steps: {len(steps)} > {ctx.config.max_hops}", audit=audit)
    # question-only input: the last hop's answer is the proposed final answer (unverified until tools reproduce it)
    final_answer = _proposed_answer(steps) if qa.answer_unverified else qa.answer
    problems = structural_problems(steps, final_answer)
    if problems:
        return Outcome.drop("; ".join(problems), audit=audit)
    hops = hop_levels(steps)
    last = next(s for s in steps if s.id == last_step_id(steps))
    decomposition = Decomposition(
        id=stable_id("decomposition", qa.id, prefix="dec_"),
        qa_id=qa.id,
        question=qa.question,
        answer=final_answer,
        answer_unverified=qa.answer_unverified,
        steps=[
            DecompositionStep(
                id=s.id,
                hop=hops[s.id],
                sub_question=s.sub_question,
                depends_on=list(dict.fromkeys(s.depends_on)),
                is_parallel=s.is_parallel,
                sub_answer=s.sub_answer,
            )
            for s in steps
        ],
        scores={"hop_mismatches": float(sum(1 for s in steps if s.hop is not None and s.hop != hops[s.id]))},
        flags=[] if answers_match(last.sub_answer, qa.answer) else [FREE_TEXT_FLAG],
        model=ctx.model_name,
    )
    return Outcome.keep(decomposition, audit=audit)


async def run_decompose(ctx: PipelineContext) -> StageCounts:
    qas = ctx.unique_outputs("qa", QAItem)
    return await ctx.map_stage("decompose", Decomposition, [(q.id, q) for q in qas], lambda qa: decompose_one(ctx, qa))
