"""Stage 4: task generation (chain- and toolset-conditioned, augmented, multi-turn) and quality scoring.

As the original ASTRA: base questions per chain, then for EVERY base question ``variants``
variations per augmentation mode — context shift (the same tools, in the same order, in another
scenario), complicate (the same tools under harder, concrete constraints), persona (the request
as a user drawn from a persona file would ask it) — plus a multi-turn split, all in one
structured call per base question. Quality is judged with the full tool list of the servers the
task may use, so tool-selection difficulty and uniqueness mean what the original means.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
)

from astra.client import Model
from astra.errors import validation_problem
from astra.records import Task, ToolChain, ToolSpec, stable_id
from astra.synthesis._llm import LLMOutputError, ask_json
from astra.synthesis._stage import Outcome
from astra.synthesis.trajectories._config import TaskOptions
from astra.synthesis.trajectories._verify import describe_tools

GEN_VERSION = "task-gen-v1"
AUG_VERSION = "task-aug-v2"
QUALITY_VERSION = "task-quality-v2"
QUALITY_DIMENSIONS = ("tool_selection_difficulty", "uniqueness", "question_quality", "realism")
PERSONAS_PATH = Path(__file__).resolve().parent / "data" / "personas.jsonl"
MIN_QUESTION = 8


class Questions(BaseModel):
    questions: list[str] = Field(min_length=1)

    @field_validator("questions")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        out = [q.strip() for q in v if len(q.strip()) >= MIN_QUESTION]
        if not out:
            raise ValueError(f"no usable question (each needs at least {MIN_QUESTION} characters)")
        return out


# --------------------------------------------------------------------------- personas


class Persona(BaseModel):
    """One line of a persona file: a free-text ``persona``, or the original's profile fields."""

    model_config = ConfigDict(extra="ignore")

    persona: str | None = None
    age: int | str | None = None
    occupation: str | None = None
    education: str | None = None
    professional: str | None = None
    skills: str | None = None
    hobbies: str | None = None

    def describe(self) -> str:
        if self.persona and self.persona.strip():
            return self.persona.strip()
        parts = [f"{self.age} years old" if self.age is not None else None, self.occupation,
                 f"education: {self.education}" if self.education else None,
                 f"background: {self.professional}" if self.professional else None,
                 f"skills: {self.skills}" if self.skills else None,
                 f"interests: {self.hobbies}" if self.hobbies else None]
        return "; ".join(p for p in parts if p)


def load_personas(path: str | Path | None = None) -> tuple[list[Persona], list[str]]:
    """Personas of a JSONL file, and one ``FILE:LINE: field: reason`` per unusable line."""
    path = Path(path) if path is not None else PERSONAS_PATH
    out: list[Persona] = []
    errors: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                persona = Persona.model_validate_json(line)
            except ValidationError as exc:
                errors.append(validation_problem(f"{path}:{lineno}", exc))
                continue
            if len(persona.describe()) < 8:
                errors.append(f"{path}:{lineno}: persona: empty (give \"persona\" or profile fields)")
                continue
            out.append(persona)
    return out, errors


@lru_cache(maxsize=8)
def _personas_cached(path: str) -> tuple[Persona, ...]:
    personas, errors = load_personas(path)
    if not personas:
        raise ValueError(f"{path}: no usable persona" + (f" ({errors[0]})" if errors else ""))
    return tuple(personas)


def pick_personas(personas: tuple[Persona, ...] | list[Persona], key: str, n: int) -> list[Persona]:
    """``n`` distinct personas (when there are enough), chosen by a hash of ``key``: reproducible."""
    start = int(stable_id("persona", key), 16) % len(personas)
    step = 1 + int(stable_id("persona-step", key), 16) % max(1, len(personas) - 1)
    chosen: list[Persona] = []
    i = start
    for _ in range(n):
        chosen.append(personas[i % len(personas)])
        i += step if len(personas) > 1 else 0
    return chosen


# --------------------------------------------------------------------------- generation


def _context(chain: ToolChain, tools: dict[str, ToolSpec]) -> str:
    names = [c.tool for c in chain.calls]
    if chain.kind == "chain":
        order = " -> ".join(names)
        return f"Tools:\n{describe_tools(names, tools)}\n\nThey are used in this order, each feeding the next: {order}."
    return f"Tools:\n{describe_tools(names, tools)}\n\nA task may use any of these tools (one or several)."


def _task(chain: ToolChain, turns: list[str], variant: str, index: int, model: Model, *,
          persona: str | None = None, base_id: str | None = None) -> Task:
    names = [c.tool for c in chain.calls]
    difficulty = {"complicate": "hard", "multi_turn": "hard"}.get(variant, "medium" if len(names) > 1 else "easy")
    return Task(
        id=stable_id("task", chain.id, variant, index, turns, prefix="t-"),
        user_turns=turns,
        target_tools=names,
        chain_id=chain.id,
        difficulty=difficulty,
        persona=persona,
        servers=sorted({n.split("/", 1)[0] for n in names}),
        provenance={"chain_kind": chain.kind, "variant": variant, "variant_index": index, "base_task": base_id,
                    "generator": model.name, "prompt_version": GEN_VERSION if variant == "base" else AUG_VERSION},
    )


_ASK = {
    "context_shift": "the same goal, needing the SAME tools in the SAME order with the same difficulty, moved to a "
                     "clearly different situation, domain or kind of user",
    "complicate": "the same goal and subject, harder: concrete constraints (budgets, deadlines, rules, competing "
                  "priorities) that need more reasoning, still solvable with the same tools",
    "persona": "the request as the given person would ask it (their work, knowledge and way of speaking), one per "
               "person in the order given",
}


def augmentation_model(modes: list[str], n: int, multi_turn: bool) -> type[BaseModel]:
    """The reply schema: exactly ``n`` questions per mode (constrained decoders emit that many)."""
    fields: dict[str, Any] = {m: (Annotated[list[str], Field(min_length=n, max_length=n)], ...) for m in modes}
    if multi_turn:
        fields["turns"] = (Annotated[list[str], Field(min_length=2, max_length=3)], ...)
    return create_model("Augmentations", **fields)


def _names_a_tool(question: str, tools: list[str]) -> str | None:
    for q in tools:
        name = q.split("/", 1)[-1]
        if len(name) > 3 and re.search(rf"\b{re.escape(name)}\b", question, flags=re.IGNORECASE):
            return name
    return None


async def augment(base: Task, chain: ToolChain, tools: dict[str, ToolSpec], model: Model, opts: TaskOptions,
                  personas: tuple[Persona, ...] | list[Persona]) -> tuple[list[Task], list[dict[str, Any]]]:
    """Variants of one base question (one model call); the audit says what was rejected and why."""
    modes = list(opts.augmentations)
    if not modes and not opts.multi_turn:
        return [], []
    n = opts.variants
    chosen = pick_personas(personas, base.id, n) if "persona" in modes else []
    lines = [f"- {m}: {n} question(s), {_ASK[m]}" for m in modes]
    if chosen:
        lines.append("  persons: " + " | ".join(f"({i + 1}) {p.describe()}" for i, p in enumerate(chosen)))
    if opts.multi_turn:
        lines.append("- turns: the original request split over 2-3 user messages of one conversation")
    shape = {m: ["..."] * n for m in modes} | ({"turns": ["...", "..."]} if opts.multi_turn else {})
    prompt = (
        f"{_context(chain, tools)}\n\nOriginal request: {base.user_turns[0]}\n\nGive variants of this request. "
        "Each must ask the assistant to DO the task (not explain how), be self-contained with concrete values, "
        "never name a tool, and be in the language of the original.\n" + "\n".join(lines)
        + f"\nReply as {json.dumps(shape)}"
    )
    try:
        reply, audit = await ask_json(model, prompt, augmentation_model(modes, n, opts.multi_turn),
                                      prompt_version=AUG_VERSION)
    except LLMOutputError as exc:
        return [], exc.audit + [{"augmentation_failed": exc.reason[:200], "base_task": base.id}]
    out: list[Task] = []
    rejected: list[str] = []
    seen = {base.user_turns[0].strip().casefold()}
    for mode in modes:
        for i, q in enumerate(getattr(reply, mode)):
            q = q.strip()
            named = _names_a_tool(q, base.target_tools)
            if len(q) < MIN_QUESTION or q.casefold() in seen or named:
                rejected.append(f"{mode}[{i}]: " + (f"names the tool {named}" if named else
                                                    "too short" if len(q) < MIN_QUESTION else "a repeat"))
                continue
            seen.add(q.casefold())
            persona = chosen[i].describe() if mode == "persona" else None
            out.append(_task(chain, [q], mode, i, model, persona=persona, base_id=base.id))
    if opts.multi_turn:
        turns = [t.strip() for t in reply.turns if t.strip()]  # type: ignore[attr-defined]
        if len(turns) >= 2:
            out.append(_task(chain, turns, "multi_turn", 0, model, base_id=base.id))
        else:
            rejected.append("turns: fewer than two non-empty turns")
    if rejected:
        audit.append({"variants_rejected": rejected, "base_task": base.id})
    return out, audit


async def generate_tasks(chain: ToolChain, tools: dict[str, ToolSpec], model: Model, opts: TaskOptions,
                         personas: tuple[Persona, ...] | list[Persona] | None = None) -> Outcome:
    """Base questions for a chain / tool set, then variants of every base question."""
    audit: list[dict[str, Any]] = []
    seed_query = ((chain.verification.get("back_translation") or {}).get("query")
                  or next((opts.examples[c.tool] for c in chain.calls if c.tool in opts.examples), None))
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
    if "persona" in opts.augmentations and personas is None:
        personas = _personas_cached(str(opts.personas or PERSONAS_PATH))
    for base_task in list(tasks):
        variants, a = await augment(base_task, chain, tools, model, opts, personas or ())
        tasks += variants
        audit += a  # a failed augmentation leaves the base task standing; the audit keeps why
    unique = {t.id: t for t in tasks}
    return Outcome.keep(*unique.values(), audit=audit)


# --------------------------------------------------------------------------- quality


class QualityScores(BaseModel):
    tool_selection_difficulty: float = Field(ge=1, le=5)
    uniqueness: float = Field(ge=1, le=5)
    question_quality: float = Field(ge=1, le=5)
    realism: float = Field(ge=1, le=5)
    reason: str = ""


QUALITY_RUBRIC = (
    "Rate the task on four 1-5 scales, judged against ALL the tools available (not only the ones it targets):\n"
    "tool_selection_difficulty: 1 very easy (the request names the tools or makes them obvious) .. 5 very hard "
    "(choosing the right tools among all of them needs expertise and careful reasoning);\n"
    "uniqueness: 1 not unique (many other tool combinations would do as well) .. 5 highly unique (only the target "
    "tools, in this order, do it);\n"
    "question_quality: 1 very poor (vague, ambiguous) .. 5 excellent (precise, specific, complete);\n"
    "realism: 1 unrealistic (contrived) .. 5 highly realistic (indistinguishable from a real user's need)."
)


def quality_tools(task: Task, tools: dict[str, ToolSpec]) -> list[str]:
    """Every tool of the servers the task may use (the original shows the whole server), targets first."""
    servers = set(task.servers) or {n.split("/", 1)[0] for n in task.target_tools}
    others = sorted(n for n, t in tools.items() if t.server in servers and n not in task.target_tools)
    return [n for n in task.target_tools if n in tools] + others


async def score_task(task: Task, tools: dict[str, ToolSpec], model: Model, threshold: float) -> Outcome:
    """Four quality dimensions on a 1-5 scale, normalised to [0, 1]; the mean must reach ``threshold``."""
    conversation = "\n".join(f"User turn {i + 1}: {t}" for i, t in enumerate(task.user_turns))
    names = quality_tools(task, tools)
    try:
        scores, audit = await ask_json(
            model,
            f"All available tools ({len(names)}):\n{describe_tools(names, tools, schema=False)}\n\n"
            f"Target tools of this task: {', '.join(task.target_tools) or '(any)'}\n\n{conversation}\n\n"
            f"Rate this task. {QUALITY_RUBRIC}\n"
            'Reply as {"tool_selection_difficulty": n, "uniqueness": n, "question_quality": n, "realism": n, '
            '"reason": "..."}',
            QualityScores, prompt_version=QUALITY_VERSION,
        )
    except LLMOutputError as exc:
        return Outcome.drop(f"judge_failed: {exc.reason[:160]}", failed=True, audit=exc.audit)
    quality = {d: round((getattr(scores, d) - 1) / 4, 4) for d in QUALITY_DIMENSIONS}
    return _gated_quality(task, quality, threshold, judge=model.name, audit=audit)


def _gated_quality(task: Task, quality: dict[str, float], threshold: float, *, judge: str,
                   audit: list[dict[str, Any]] | None = None) -> Outcome:
    """The task with its quality (and who judged it) when the mean reaches ``threshold``; the
    decision is a gate, so a changed threshold re-decides it without judging again."""
    quality = {**quality, "overall": round(sum(quality[d] for d in QUALITY_DIMENSIONS) / len(QUALITY_DIMENSIONS), 4)}
    scored = task.model_copy(update={"quality": quality, "provenance": {**task.provenance, "quality_judge": judge}})
    return Outcome.gated({"quality_threshold": (quality["overall"], threshold)}, scored, audit=audit)


_TOOLISH = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")  # snake_case identifiers: tool or parameter names
_PLACEHOLDER = re.compile(r"<[^<>]{1,40}>|\{[^{}]{0,40}\}|\[(?:insert|your|placeholder)[^\]]*\]|\b(?:TODO|TBD|XXX)\b",
                          re.IGNORECASE)
_CONCRETE = re.compile(r"\d+(?:[.:/-]\d+)*|(?<![.?!]\s)(?<!^)\b[A-Z][\w-]+|\"[^\"]+\"|'[^']+'")
_ABOUT_TOOLS = re.compile(
    r"\b(?:tools?|functions?|APIs?|assistant)\b", re.IGNORECASE
)  # asks about the agent, not a need


def rule_quality(task: Task, tools: dict[str, ToolSpec], threshold: float) -> Outcome:
    """Task quality by rules alone, for models that cannot judge (``tasks.judge: rules``); the task
    says ``quality_judge: rules`` and is never presented as LLM-judged.

    - question_quality: a real request (4-200 words, no placeholders, no JSON or code in it);
    - realism: it does not name tools or parameters by their identifiers, nor ask about the tools;
    - uniqueness: it carries concrete details (numbers, names, quoted values) that pin the calls;
    - tool_selection_difficulty: grows with the number of distinct target tools (1: 0.25 .. 4+: 1.0).
    """
    text = " ".join(task.user_turns).strip()
    words = text.split()
    identifiers = {t.rsplit("/", 1)[-1] for t in tools} | {
        p for t in tools.values() for p in (t.input_schema.get("properties") or {})}
    named = [w for w in _TOOLISH.findall(text) if w in identifiers]
    quality = {
        "question_quality": float(4 <= len(words) <= 200 and not _PLACEHOLDER.search(text)
                                  and not re.search(r"[{}]|```|\bdef \w+\(", text)),
        "realism": 0.0 if named or _ABOUT_TOOLS.search(text) else 1.0,
        "uniqueness": min(1.0, len(_CONCRETE.findall(text)) / 2),
        "tool_selection_difficulty": min(1.0, 0.25 * max(1, len(set(task.target_tools)))),
    }
    return _gated_quality(task, {k: round(v, 4) for k, v in quality.items()}, threshold, judge="rules")
