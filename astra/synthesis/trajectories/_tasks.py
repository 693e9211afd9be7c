"""Stage 4: task generation (chain- and toolset-conditioned, augmented, multi-turn) and quality scoring."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from astra.client import Model
from astra.records import Task, ToolChain, ToolSpec, stable_id
from astra.synthesis._llm import LLMOutputError, ask_json
from astra.synthesis._stage import Outcome
from astra.synthesis.trajectories._config import TaskOptions
from astra.synthesis.trajectories._verify import describe_tools

GEN_VERSION = "task-gen-v1"
AUG_VERSION = "task-aug-v1"
QUALITY_VERSION = "task-quality-v1"
QUALITY_DIMENSIONS = ("tool_selection_difficulty", "uniqueness", "question_quality", "realism")


class Questions(BaseModel):
    questions: list[str] = Field(min_length=1)

    @field_validator("questions")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        out = [q.strip() for q in v if isinstance(q, str) and len(q.strip()) >= 8]
        if not out:
            raise ValueError("no usable question (each needs at least 8 characters)")
        return out


class Variants(BaseModel):
    wording: str | None = None
    complex: str | None = None
    persona: str | None = None
    persona_question: str | None = None
    turns: list[str] | None = None


class QualityScores(BaseModel):
    tool_selection_difficulty: float = Field(ge=1, le=5)
    uniqueness: float = Field(ge=1, le=5)
    question_quality: float = Field(ge=1, le=5)
    realism: float = Field(ge=1, le=5)
    reason: str = ""


def _context(chain: ToolChain, tools: dict[str, ToolSpec]) -> str:
    names = [c.tool for c in chain.calls]
    if chain.kind == "chain":
        order = " -> ".join(names)
        return f"Tools:\n{describe_tools(names, tools)}\n\nThey are used in this order, each feeding the next: {order}."
    return f"Tools:\n{describe_tools(names, tools)}\n\nA task may use any of these tools (one or several)."


def _task(chain: ToolChain, turns: list[str], variant: str, index: int, model: Model, *,
          persona: str | None = None, base_id: str | None = None) -> Task:
    names = [c.tool for c in chain.calls]
    difficulty = {"complex": "hard", "multi_turn": "hard"}.get(variant, "medium" if len(names) > 1 else "easy")
    return Task(
        id=stable_id("task", chain.id, variant, index, turns, prefix="t-"),
        user_turns=turns,
        target_tools=names,
        chain_id=chain.id,
        difficulty=difficulty,
        persona=persona,
        servers=sorted({n.split("/", 1)[0] for n in names}),
        provenance={"chain_kind": chain.kind, "variant": variant, "base_task": base_id, "generator": model.name,
                    "prompt_version": GEN_VERSION if variant == "base" else AUG_VERSION},
    )


async def generate_tasks(chain: ToolChain, tools: dict[str, ToolSpec], model: Model, opts: TaskOptions) -> Outcome:
    """Base questions for a chain / tool set, then variants of the first (augmentations, multi-turn)."""
    audit: list[dict[str, Any]] = []
    seed_query = (chain.verification.get("back_translation") or {}).get("query")
    hint = f"\nAn example request for this workflow: {seed_query}" if seed_query else ""
    try:
        base, a = await ask_json(
            model,
            f"{_context(chain, tools)}{hint}\n\nWrite {opts.per_chain} realistic, self-contained user request(s) "
            "that need these tools. Include concrete values the tools need; do not name the tools. "
            'Reply as {"questions": ["...", ...]}',
            Questions, prompt_version=GEN_VERSION,
        )
        audit += a
    except LLMOutputError as exc:
        return Outcome.drop(f"generation_failed: {exc.reason[:160]}", failed=True, audit=exc.audit)
    tasks = [_task(chain, [q], "base", i, model) for i, q in enumerate(base.questions[: opts.per_chain])]
    wanted = list(opts.augmentations) + (["multi_turn"] if opts.multi_turn else [])
    if wanted:
        first = tasks[0]
        asks = {
            "wording": '"wording": the same request in different words',
            "complex": '"complex": a harder version needing more reasoning or constraints',
            "persona": '"persona": a short persona description, and "persona_question": the request as that person asks it',
            "multi_turn": '"turns": the request split over 2-3 user messages in a conversation',
        }
        try:
            variants, a = await ask_json(
                model,
                f"{_context(chain, tools)}\n\nUser request: {first.user_turns[0]}\n\nGive variants of this request as a "
                "JSON object with: " + "; ".join(asks[w] for w in wanted) + ".",
                Variants, prompt_version=AUG_VERSION,
            )
            audit += a
        except LLMOutputError as exc:
            # the base tasks stand on their own; the failed augmentation stays in the audit
            return Outcome.keep(*tasks, audit=audit + exc.audit + [{"augmentation_failed": exc.reason[:200]}])
        if "wording" in wanted and variants.wording and len(variants.wording.strip()) >= 8:
            tasks.append(_task(chain, [variants.wording.strip()], "wording", 0, model, base_id=first.id))
        if "complex" in wanted and variants.complex and len(variants.complex.strip()) >= 8:
            tasks.append(_task(chain, [variants.complex.strip()], "complex", 0, model, base_id=first.id))
        if "persona" in wanted and variants.persona_question and len(variants.persona_question.strip()) >= 8:
            tasks.append(_task(chain, [variants.persona_question.strip()], "persona", 0, model,
                               persona=(variants.persona or "").strip() or None, base_id=first.id))
        turns = [t.strip() for t in (variants.turns or []) if isinstance(t, str) and t.strip()]
        if "multi_turn" in wanted and len(turns) >= 2:
            tasks.append(_task(chain, turns[:3], "multi_turn", 0, model, base_id=first.id))
    unique = {t.id: t for t in tasks}
    return Outcome.keep(*unique.values(), audit=audit)


async def score_task(task: Task, tools: dict[str, ToolSpec], model: Model, threshold: float) -> Outcome:
    """Four quality dimensions on a 1-5 scale, normalised to [0, 1]; the mean must reach ``threshold``."""
    conversation = "\n".join(f"User turn {i + 1}: {t}" for i, t in enumerate(task.user_turns))
    try:
        scores, audit = await ask_json(
            model,
            f"Tools available:\n{describe_tools(task.target_tools, tools, schema=False)}\n\n{conversation}\n\n"
            "Rate this task from 1 (poor) to 5 (excellent) on: tool_selection_difficulty (choosing the right tools "
            "takes thought), uniqueness (not a generic request), question_quality (clear, specific, answerable), "
            'realism (a real user would ask it). Reply as {"tool_selection_difficulty": n, "uniqueness": n, '
            '"question_quality": n, "realism": n, "reason": "..."}',
            QualityScores, prompt_version=QUALITY_VERSION,
        )
    except LLMOutputError as exc:
        return Outcome.drop(f"judge_failed: {exc.reason[:160]}", failed=True, audit=exc.audit)
    quality = {d: round((getattr(scores, d) - 1) / 4, 4) for d in QUALITY_DIMENSIONS}
    quality["overall"] = round(sum(quality[d] for d in QUALITY_DIMENSIONS) / len(QUALITY_DIMENSIONS), 4)
    return Outcome.gated({"quality_threshold": (quality["overall"], threshold)},
                         task.model_copy(update={"quality": quality}), audit=audit)
