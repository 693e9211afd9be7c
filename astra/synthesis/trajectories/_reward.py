"""Stage 6: rewards — the seven dimensions of the original ASTRA at its granularity, from ONE judge call.

The original (LianjiaTech/astra, ``4_reward/reward.py``) makes one LLM call per dimension plus one
per tool message. Here one structured call returns every item verdict, on the original's scales:

- ``tool_concise``: each tool call, 0 / 1 (redundant, hallucinated or malformed parameters -> 0);
- ``tool_call``: each tool message, success 1 / failure 0.5;
- ``tool_plan``: each intermediate segment (an assistant turn with calls that follows a tool
  result and is followed by more tool results), 0 / 0.5 / 1;
- ``tool_understand``: each batch of tool results that is not the last, 0 / 0.5 / 1;
- ``query_understand`` (0 / 1) and ``query_plan`` (0 / 0.5 / 1): the first assistant response;
- ``final_answer``: mean of query relevance and trajectory summary, each 0 / 0.5 / 1.

Rules come first where the original has them: a language mismatch between query and answer
makes relevance 0; a URL in the answer that appears nowhere before it makes the summary 0; a
call to an unknown tool, a schema-invalid call or a repeat of an earlier successful call is not
concise; a tool error is a failed call; a dimension with no items (no calls, no intermediate
segment) gets the original's 1.0, marked as a rule. A dimension is the mean of its items, the
overall the mean of the seven. A judge that fails is a failure (``judge_failed``), never a score.

``judge: rules`` scores every item by rules alone (no model call); such rewards say
``mode: rules`` and ``judge_model: rules`` and are never presented as LLM-judged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from enum import StrEnum
from statistics import fmean
from typing import Annotated, Any, ClassVar

import jsonschema
from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from astra.client import Model
from astra.jsonutil import is_array, is_object
from astra.records import ChatMessage, Reward, Task, Trajectory, stable_id
from astra.synthesis._llm import LLMOutputError, ask_json
from astra.synthesis._stage import Outcome, model_calls
from astra.synthesis.trajectories._config import JudgeMode
from astra.tools import tool_definitions

JUDGE_VERSION = "traj-judge-v2"
RULES_VERSION = "traj-rules-v1"
DIMENSIONS = (
    "tool_concise", "final_answer", "tool_call", "tool_plan", "tool_understand", "query_understand", "query_plan",
)
"""The original ASTRA's key names, in its order; ``overall_score`` is their mean."""
OVERALL_KEY = "overall_score"
LEGACY_DIMENSIONS = {
    "tool_concision": "tool_concise", "tool_call_success": "tool_call", "tool_planning": "tool_plan",
    "tool_understanding": "tool_understand", "query_understanding": "query_understand", "query_planning": "query_plan",
}
"""Names of the v1 reward (one holistic rating): read old runs with :func:`original_keys`."""


class ItemKind(StrEnum):
    """What one verdict is about; each kind feeds one dimension."""

    CALL = "call"                    # tool_concise
    TOOL_MESSAGE = "tool_message"    # tool_call
    PLAN_SEGMENT = "plan_segment"    # tool_plan
    UNDERSTAND_BATCH = "understand_batch"  # tool_understand
    FIRST_UNDERSTAND = "first_understand"  # query_understand
    FIRST_PLAN = "first_plan"        # query_plan
    ANSWER_RELEVANCE = "answer_relevance"  # final_answer
    ANSWER_SUMMARY = "answer_summary"      # final_answer


DIMENSION_OF = {
    ItemKind.CALL: "tool_concise", ItemKind.TOOL_MESSAGE: "tool_call", ItemKind.PLAN_SEGMENT: "tool_plan",
    ItemKind.UNDERSTAND_BATCH: "tool_understand", ItemKind.FIRST_UNDERSTAND: "query_understand",
    ItemKind.FIRST_PLAN: "query_plan", ItemKind.ANSWER_RELEVANCE: "final_answer",
    ItemKind.ANSWER_SUMMARY: "final_answer",
}
SCALES: dict[ItemKind, tuple[float, ...]] = {
    ItemKind.CALL: (0.0, 1.0), ItemKind.TOOL_MESSAGE: (0.5, 1.0), ItemKind.PLAN_SEGMENT: (0.0, 0.5, 1.0),
    ItemKind.UNDERSTAND_BATCH: (0.0, 0.5, 1.0), ItemKind.FIRST_UNDERSTAND: (0.0, 1.0),
    ItemKind.FIRST_PLAN: (0.0, 0.5, 1.0), ItemKind.ANSWER_RELEVANCE: (0.0, 0.5, 1.0),
    ItemKind.ANSWER_SUMMARY: (0.0, 0.5, 1.0),
}
FAILED_CALL_CREDIT = 0.5


class Source(StrEnum):
    JUDGE = "judge"
    RULE = "rule"


class ItemVerdict(BaseModel):
    """One scored item of one dimension (what the Reward stores in ``items``)."""

    kind: ItemKind
    ref: str = Field(description="C1.. calls, T1.. tool messages, P1.. segments, U1.. batches, F first, A answer")
    score: float
    reason: str = ""
    source: Source = Source.JUDGE


# --------------------------------------------------------------------------- the trajectory, itemised


class CallRef(BaseModel):
    ref: str
    call_id: str
    name: str
    arguments: str
    message_index: int


class Itemised(BaseModel):
    """The items a judge must score, found in the messages as the original's splitters find them."""

    query: str
    calls: list[CallRef] = Field(default_factory=list)
    tool_messages: list[tuple[str, int]] = Field(default_factory=list, description="(ref, message index)")
    plan_segments: list[tuple[str, int]] = Field(default_factory=list, description="(ref, assistant message index)")
    understand_batches: list[tuple[str, list[int]]] = Field(default_factory=list)
    first_response: int | None = None
    final_answer: str | None = None


def itemise(task: Task, traj: Trajectory) -> Itemised:
    msgs = traj.messages
    query = next((m.content or "" for m in msgs if m.role == "user"), "\n".join(task.user_turns))
    out = Itemised(query=query, final_answer=(traj.final_answer or "").strip() or None)
    for i, m in enumerate(msgs):
        if m.role == "assistant" and m.tool_calls:
            for c in m.tool_calls:
                out.calls.append(CallRef(ref=f"C{len(out.calls) + 1}", call_id=c.id, name=c.name,
                                         arguments=c.arguments, message_index=i))
        elif m.role == "tool":
            out.tool_messages.append((f"T{len(out.tool_messages) + 1}", i))
    first = next((i for i, m in enumerate(msgs) if m.role == "assistant"), None)
    out.first_response = first
    # intermediate plans: assistant turns with calls, right after a tool result, with tool results after them
    for i, m in enumerate(msgs):
        if (m.role == "assistant" and m.tool_calls and i > 0 and msgs[i - 1].role == "tool"
                and any(n.role == "tool" for n in msgs[i + 1:])):
            out.plan_segments.append((f"P{len(out.plan_segments) + 1}", i))
    # tool-result batches followed by an assistant turn and, later, more tool results (not the last batch)
    i = 0
    while i < len(msgs):
        if msgs[i].role != "tool":
            i += 1
            continue
        batch: list[int] = []
        while i < len(msgs) and msgs[i].role == "tool":
            batch.append(i)
            i += 1
        if i < len(msgs) and any(n.role == "tool" for n in msgs[i + 1:]):
            out.understand_batches.append((f"U{len(out.understand_batches) + 1}", batch))
    return out


# --------------------------------------------------------------------------- rules


_URL = re.compile(r'https?://[^\s<>"{}|\\^`\[\]，。！？；：]+[^\s<>"{}|\\^`\[\]，。！？；：.,;:!?)]')


_SCRIPTS = (("ja", (("\u3040", "\u30ff"),)), ("ko", (("\uac00", "\ud7af"), ("\u1100", "\u11ff"))),
            ("ru", (("\u0400", "\u04ff"),)), ("ar", (("\u0600", "\u06ff"),)), ("el", (("\u0370", "\u03ff"),)))


def detect_language(text: str | None) -> str:
    """The original's detector (CJK share > 60 % -> 'zh', other letters > 70 % -> 'en', else 'mixed',
    no letters -> 'unknown'), with the other scripts told apart too: kana 'ja', Hangul 'ko',
    Cyrillic 'ru', Arabic 'ar', Greek 'el'. 'en' means Latin script: French vs English is the judge's call."""
    if not text:
        return "unknown"
    counts = {"zh": 0, "en": 0, **{name: 0 for name, _ in _SCRIPTS}}
    for ch in text:
        if "\u4e00" <= ch <= "\u9fff":
            counts["zh"] += 1
            continue
        if not ch.isalpha():
            continue
        name = next((n for n, ranges in _SCRIPTS if any(lo <= ch <= hi for lo, hi in ranges)), "en")
        counts[name] += 1
    total = sum(counts.values())
    if total == 0:
        return "unknown"
    if counts["ja"] / total > 0.2:  # Japanese mixes kana with kanji
        return "ja"
    if counts["zh"] / total > 0.6:
        return "zh"
    top = max(counts, key=lambda k: counts[k])
    return top if counts[top] / total > 0.7 else "mixed"


def language_consistent(query: str, answer: str) -> bool:
    q, a = detect_language(query), detect_language(answer)
    return q == "unknown" or a == "unknown" or q == a


def ungrounded_urls(answer: str, context: str) -> list[str]:
    """URLs in the answer that appear nowhere in what came before it (the original's URL check)."""
    return [u for u in _URL.findall(answer or "") if u not in context]


def _schemas(traj: Trajectory) -> dict[str, dict[str, Any]]:
    return {d.name: d.parameters for d in tool_definitions(traj.tools)}


def args_valid(arguments: Any, schema: dict[str, Any] | None) -> bool:
    if schema is None or not is_object(arguments):
        return False
    try:
        jsonschema.validate(arguments, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return True  # the tool's own schema is broken: the call cannot be blamed
    return True


def _parse_args(raw: str) -> Any:
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw


def qualified(step: Any) -> str:
    return f"{step.server}/{step.server_tool}" if step.server and step.server_tool else step.tool


def _tool_error(traj: Trajectory, message: ChatMessage) -> bool:
    step = next((s for s in traj.steps if s.call_id == message.tool_call_id), None)
    return bool(step and step.is_error)


def rule_items(task: Task, traj: Trajectory, found: Itemised) -> dict[str, ItemVerdict]:
    """Verdicts decided by rules (ref -> verdict); they override the judge's verdict on the same item."""
    schemas = _schemas(traj)
    out: dict[str, ItemVerdict] = {}
    seen_ok: set[tuple[str, str]] = set()
    errors = {s.call_id for s in traj.steps if s.is_error}
    for c in found.calls:
        args = _parse_args(c.arguments)
        key = (c.name, json.dumps(args, sort_keys=True) if is_object(args) else str(args))
        if c.name not in schemas:
            out[c.ref] = ItemVerdict(kind=ItemKind.CALL, ref=c.ref, score=0.0, source=Source.RULE,
                                     reason=f"{c.name} is not one of the offered tools")
        elif not args_valid(args, schemas[c.name]):
            out[c.ref] = ItemVerdict(kind=ItemKind.CALL, ref=c.ref, score=0.0, source=Source.RULE,
                                     reason="arguments do not match the tool's input schema")
        elif key in seen_ok:
            out[c.ref] = ItemVerdict(kind=ItemKind.CALL, ref=c.ref, score=0.0, source=Source.RULE,
                                     reason="repeats an earlier successful call with the same arguments")
        if c.call_id not in errors:
            seen_ok.add(key)
    for ref, index in found.tool_messages:
        if _tool_error(traj, traj.messages[index]):
            out[ref] = ItemVerdict(kind=ItemKind.TOOL_MESSAGE, ref=ref, score=FAILED_CALL_CREDIT, source=Source.RULE,
                                   reason="the call returned an error")
    answer = found.final_answer
    if answer is None:
        out["A.relevance"] = ItemVerdict(kind=ItemKind.ANSWER_RELEVANCE, ref="A.relevance", score=0.0,
                                         source=Source.RULE, reason="no final answer")
        out["A.summary"] = ItemVerdict(kind=ItemKind.ANSWER_SUMMARY, ref="A.summary", score=0.0,
                                       source=Source.RULE, reason="no final answer")
        return out
    if not language_consistent(found.query, answer):
        out["A.relevance"] = ItemVerdict(
            kind=ItemKind.ANSWER_RELEVANCE, ref="A.relevance", score=0.0, source=Source.RULE,
            reason=f"language mismatch: query {detect_language(found.query)}, answer {detect_language(answer)}")
    context = "\n".join(_message_text(m) for m in traj.messages[:_answer_index(traj)])
    bad_urls = ungrounded_urls(answer, context)
    if bad_urls:
        out["A.summary"] = ItemVerdict(kind=ItemKind.ANSWER_SUMMARY, ref="A.summary", score=0.0, source=Source.RULE,
                                       reason=f"URL not in the trajectory: {bad_urls[0][:120]}")
    elif not any(m.role in ("assistant", "tool") for m in traj.messages[:_answer_index(traj)]):
        out["A.summary"] = ItemVerdict(kind=ItemKind.ANSWER_SUMMARY, ref="A.summary", score=1.0, source=Source.RULE,
                                       reason="nothing before the answer to summarise")
    return out


def _answer_index(traj: Trajectory) -> int:
    """Index of the final answer message (the last assistant message without calls), else len(messages)."""
    for i in range(len(traj.messages) - 1, -1, -1):
        m = traj.messages[i]
        if m.role == "assistant" and not m.tool_calls and (m.content or "").strip():
            return i
    return len(traj.messages)


def _message_text(m: ChatMessage) -> str:
    calls = " ".join(f"{c.name}({c.arguments})" for c in m.tool_calls or [])
    return f"{m.content or ''} {calls}".strip()


def rule_scores(task: Task, traj: Trajectory) -> tuple[dict[str, float], list[float]]:
    """(rule checks, per-step process rewards): recorded beside every reward."""
    schemas = _schemas(traj)
    steps = traj.steps
    n = len(steps)
    valid = [args_valid(s.arguments, schemas.get(s.tool)) for s in steps]
    ok = [not s.is_error for s in steps]
    called = {qualified(s) for s in steps}
    found = itemise(task, traj)
    answer = found.final_answer or ""
    rules = {
        "calls": float(n),
        "schema_valid": (sum(valid) / n) if n else 0.0,
        "error_rate": (1 - sum(ok) / n) if n else 0.0,
        "chain_coverage": len(called & set(task.target_tools)) / len(task.target_tools) if task.target_tools else 0.0,
        "simulated_share": (sum(s.simulated for s in steps) / n) if n else 0.0,
        "answered": 1.0 if answer else 0.0,
        "grounded": 1.0 if answer and grounded(answer, traj) else 0.0,
        "language_consistent": 1.0 if answer and language_consistent(found.query, answer) else 0.0,
    }
    process = [1.0 if (o and v) else 0.0 for o, v in zip(ok, valid, strict=True)]
    return {k: round(v, 4) for k, v in rules.items()}, process


# --------------------------------------------------------------------------- grounding (rules mode)


def _leaf_texts(value: Any) -> Iterable[str]:
    if is_object(value):
        for v in value.values():
            yield from _leaf_texts(v)
    elif is_array(value):
        for v in value:
            yield from _leaf_texts(v)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        yield f"{value:g}" if isinstance(value, float) else str(value)
    else:
        text = str(value)
        parsed = _parse_args(text) if text.strip()[:1] in "[{" else None
        if isinstance(parsed, dict | list):
            yield from _leaf_texts(parsed)
        else:
            yield text.strip()


def grounded(answer: str, traj: Trajectory) -> bool:
    """Whether the answer states at least one value of a successful tool result (as a whole word or number)."""
    folded = answer.casefold()
    for s in traj.steps:
        if s.is_error:
            continue
        for leaf in _leaf_texts(s.result):
            if len(leaf) < 2 and not leaf.isdigit():
                continue
            if re.search(rf"(?<![\w.]){re.escape(leaf.casefold())}(?![\w]|\.\d)", folded):
                return True
    return False


def rules_only_items(task: Task, traj: Trajectory, found: Itemised) -> list[ItemVerdict]:
    """Every item scored by rules alone (``judge: rules``): schema-valid calls, no errors, chain
    coverage, an answer grounded in tool results. Items no rule fires on get the rule's pass score."""
    fixed = rule_items(task, traj, found)
    items: list[ItemVerdict] = []
    for c in found.calls:
        items.append(fixed.get(c.ref) or ItemVerdict(kind=ItemKind.CALL, ref=c.ref, score=1.0, source=Source.RULE,
                                                     reason="offered tool, schema-valid, not a repeat"))
    for ref, _ in found.tool_messages:
        items.append(fixed.get(ref) or ItemVerdict(kind=ItemKind.TOOL_MESSAGE, ref=ref, score=1.0, source=Source.RULE,
                                                   reason="no error"))
    by_call = {c.call_id: c for c in found.calls}
    for ref, index in found.plan_segments:
        calls = [by_call[c.id].ref for c in traj.messages[index].tool_calls or [] if c.id in by_call]
        bad = [r for r in calls if fixed.get(r) is not None]
        items.append(ItemVerdict(kind=ItemKind.PLAN_SEGMENT, ref=ref, score=0.0 if bad else 1.0, source=Source.RULE,
                                 reason=f"plans faulty call(s) {', '.join(bad)}" if bad else "plans only sound calls"))
    for ref, batch in found.understand_batches:
        failed = [i for i in batch if _tool_error(traj, traj.messages[i])]
        items.append(
            ItemVerdict(
                kind=ItemKind.UNDERSTAND_BATCH,
                ref=ref,
                score=0.5 if failed else 1.0,
                source=Source.RULE,
                reason="a result in the batch is an error" if failed else "results usable",
            )
        )
    target = set(task.target_tools)
    called = {qualified(s) for s in traj.steps}
    coverage = len(called & target) / len(target) if target else 1.0
    items.append(ItemVerdict(kind=ItemKind.FIRST_UNDERSTAND, ref="F.understand", score=1.0 if coverage > 0 else 0.0,
                             source=Source.RULE, reason=f"chain coverage {coverage:.2f}"))
    plan_score = 1.0 if coverage >= 1.0 else 0.5 if coverage > 0 else 0.0
    items.append(ItemVerdict(kind=ItemKind.FIRST_PLAN, ref="F.plan", score=plan_score, source=Source.RULE,
                             reason=f"chain coverage {coverage:.2f}"))
    answer = found.final_answer
    items.append(
        fixed.get("A.relevance")
        or ItemVerdict(
            kind=ItemKind.ANSWER_RELEVANCE,
            ref="A.relevance",
            score=1.0,
            source=Source.RULE,
            reason="answered, same language",
        )
    )
    if "A.summary" in fixed:
        items.append(fixed["A.summary"])
    else:
        ok = answer is not None and grounded(answer, traj)
        items.append(
            ItemVerdict(
                kind=ItemKind.ANSWER_SUMMARY,
                ref="A.summary",
                score=1.0 if ok else 0.0,
                source=Source.RULE,
                reason="states a value from a tool result" if ok else "states no value from any tool result",
            )
        )
    return items


# --------------------------------------------------------------------------- the judge's reply


class JudgedItem(BaseModel):
    id: str
    score: float = Field(description="0, 0.5 or 1")
    reason: str = Field(default="", max_length=400)

    @field_validator("score", mode="before")
    @classmethod
    def _scale(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            v = v.strip()
        v = float(v)
        if v not in (0.0, 0.5, 1.0):
            raise ValueError(f"score {v} is not one of 0, 0.5, 1")
        return v


class StatusItem(BaseModel):
    id: str
    success: bool
    reason: str = Field(default="", max_length=400)


class JudgeReplyBase(BaseModel):
    """Validated against the trajectory's items: every id exactly once, no other."""

    expected_ids: ClassVar[dict[str, list[str]]] = {}

    @model_validator(mode="after")
    def _cover(self) -> JudgeReplyBase:
        for section, want in self.expected_ids.items():
            got = [item.id.strip() for item in getattr(self, section)]
            if sorted(got) != sorted(want):
                raise ValueError(f"{section}: expected ids {want}, got {got}")
        return self


_SECTIONS = (("calls", JudgedItem), ("tool_messages", StatusItem), ("plan_segments", JudgedItem),
             ("understand_batches", JudgedItem))


def reply_model(found: Itemised) -> type[JudgeReplyBase]:
    """The reply schema for this trajectory: list lengths fixed (constrained decoders emit exactly
    one verdict per item) and ids checked."""
    ids = {
        "calls": [c.ref for c in found.calls],
        "tool_messages": [r for r, _ in found.tool_messages],
        "plan_segments": [r for r, _ in found.plan_segments],
        "understand_batches": [r for r, _ in found.understand_batches],
    }
    fields: dict[str, Any] = {}
    for name, item in _SECTIONS:
        n = len(ids[name])
        # required when there are items: a constrained decoder may otherwise leave the section out
        fields[name] = (Annotated[list[item], Field(min_length=n, max_length=n)],  # type: ignore[valid-type]
                        ... if n else Field(default_factory=list))
    fields["first_response_understanding"] = (JudgedItem, ...)
    fields["first_response_plan"] = (JudgedItem, ...)
    fields["answer_relevance"] = (JudgedItem, ...)
    fields["answer_summary"] = (JudgedItem, ...)
    model = create_model("TrajectoryJudgement", __base__=JudgeReplyBase, **fields)
    model.expected_ids = ids
    return model


JUDGE_SYSTEM = "You are a rigorous evaluator of tool-using AI agents. Reply with one JSON object only."

RUBRIC = """Score every item below; each verdict has a short reason (one sentence).

calls (tool_concise, per tool call, score 0 or 1): 1 = necessary, parameters match the need and come from the user
or from earlier tool results, new information at minimal cost. 0 = redundant (repeats what is known, could be one
batched call), disconnected from the goal or a simplified substitute task, parameter hallucination (a value the user
never gave and no tool returned, or a default/example value), malformed parameters, or an identical retry after a clear
business error. Retrying after a transient error (timeout, 5xx) is necessary.

tool_messages (tool_call, per tool result): success true when the tool executed and returned a result without error,
exception or traceback; false otherwise. Do not judge whether the result is complete.

plan_segments (tool_plan, per intermediate assistant turn that makes calls after reading results, 0 / 0.5 / 1):
1 = every call it makes is correct and necessary given the results so far; 0.5 = some calls right, others wrong or
missing; 0 = the plan ignores the results, repeats a failed call unchanged, or goes off the goal.

understand_batches (tool_understand, per batch of tool results that is not the last, 0 / 0.5 / 1): 1 = the agent's next
turn uses these results fully and correctly; 0.5 = partly (misses key information, summary inconsistent with its
actions); 0 = misread, ignored an error, or made redundant calls later instead of using these results.

first_response_understanding (query_understand, the first assistant turn, 0 or 1): 1 = it grasps the intent of the
query (or asks for missing information the task needs); 0 = off-topic, misses key information, or calls a tool with
personal data the user never gave.

first_response_plan (query_plan, the first assistant turn, 0 / 0.5 / 1): if it states a plan, 1 = the plan covers
every requirement and the trajectory follows it, 0.5 = key steps missing or the calls deviate from the plan, 0 = a
non-existent tool or a plan off the query. If it only makes calls (no plan written), judge that first step: 1 = right
tools with the user's parameters, 0 = wrong tool, wrong parameters or off the query.

answer_relevance (final answer vs query, 0 / 0.5 / 1): 1 = it fully and correctly addresses the query; 0.5 = partly
(missing parts, minor errors, blocked by the environment); 0 = off-topic, empty, a different language than the query,
or a "how to" query answered without a solution.

answer_summary (final answer vs trajectory, 0 / 0.5 / 1): 1 = faithful to the tool results and complete; 0.5 = partly
(omits key results or adds unsupported detail); 0 = contradicts the tool results, states facts no tool returned,
hides a failure, or cites a URL that no tool returned."""


def _clip(text: str | None, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 20] + f" ...[{len(text) - limit + 20} chars cut]"


def judge_prompt(task: Task, traj: Trajectory, found: Itemised) -> str:
    by_call = {c.call_id: c for c in found.calls}
    tool_ref = {i: r for r, i in found.tool_messages}
    plan_ref = {i: r for r, i in found.plan_segments}
    batch_ref = {b[0]: r for r, b in found.understand_batches}
    lines: list[str] = []
    for i, m in enumerate(traj.messages):
        if m.role == "system":
            continue
        if i in batch_ref:
            lines.append(f"--- batch {batch_ref[i]} starts")
        if m.role == "user":
            lines.append(f"[{i}] USER: {_clip(m.content, 1500)}")
        elif m.role == "tool":
            lines.append(f"[{i}] TOOL RESULT {tool_ref.get(i, '')} ({m.name or ''}): {_clip(m.content, 800)}")
        else:
            tags = [t for t, ok in (("FIRST RESPONSE", i == found.first_response), (plan_ref.get(i, ""), i in plan_ref))
                    if ok]
            head = f"[{i}] ASSISTANT" + (f" ({', '.join(tags)})" if tags else "")
            if m.content:
                lines.append(f"{head}: {_clip(m.content, 1200)}")
            for c in m.tool_calls or []:
                ref = by_call[c.id].ref if c.id in by_call else "?"
                lines.append(f"{head} calls {ref}: {c.name}({_clip(c.arguments, 600)})")
    tools = [{"name": d.name, "description": _clip(d.description, 300), "parameters": d.parameters}
             for d in tool_definitions(traj.tools)]
    ids = reply_model(found).expected_ids
    shape = {
        "calls": [{"id": r, "score": 1, "reason": "..."} for r in ids["calls"]],
        "tool_messages": [{"id": r, "success": True, "reason": "..."} for r in ids["tool_messages"]],
        "plan_segments": [{"id": r, "score": 1, "reason": "..."} for r in ids["plan_segments"]],
        "understand_batches": [{"id": r, "score": 1, "reason": "..."} for r in ids["understand_batches"]],
        "first_response_understanding": {"id": "F", "score": 1, "reason": "..."},
        "first_response_plan": {"id": "F", "score": 1, "reason": "..."},
        "answer_relevance": {"id": "A", "score": 1, "reason": "..."},
        "answer_summary": {"id": "A", "score": 1, "reason": "..."},
    }
    return (
        f"Judge this tool-using assistant (trajectory {traj.id}).\n\n{RUBRIC}\n\n"
        f"Tools offered:\n{_clip(json.dumps(tools, ensure_ascii=False), 5000)}\n\n"
        f"Trajectory:\n{chr(10).join(lines)}\n\n"
        f"Final answer: {json.dumps(found.final_answer, ensure_ascii=False)}\n\n"
        f"Reply with this JSON shape (one entry per id, scores from the scales above):\n{json.dumps(shape)}"
    )


def judged_items(reply: JudgeReplyBase, found: Itemised) -> list[ItemVerdict]:
    items: list[ItemVerdict] = []
    for it in reply.calls:  # type: ignore[attr-defined]
        items.append(ItemVerdict(kind=ItemKind.CALL, ref=it.id.strip(), score=it.score, reason=it.reason))
    for st in reply.tool_messages:  # type: ignore[attr-defined]
        items.append(ItemVerdict(kind=ItemKind.TOOL_MESSAGE, ref=st.id.strip(),
                                 score=1.0 if st.success else FAILED_CALL_CREDIT, reason=st.reason))
    for kind, section in ((ItemKind.PLAN_SEGMENT, "plan_segments"), (ItemKind.UNDERSTAND_BATCH, "understand_batches")):
        for it in getattr(reply, section):
            items.append(ItemVerdict(kind=kind, ref=it.id.strip(), score=it.score, reason=it.reason))
    fu = reply.first_response_understanding  # type: ignore[attr-defined]
    items.append(ItemVerdict(kind=ItemKind.FIRST_UNDERSTAND, ref="F.understand", score=fu.score, reason=fu.reason))
    fp = reply.first_response_plan  # type: ignore[attr-defined]
    items.append(ItemVerdict(kind=ItemKind.FIRST_PLAN, ref="F.plan", score=fp.score, reason=fp.reason))
    ar, su = reply.answer_relevance, reply.answer_summary  # type: ignore[attr-defined]
    items.append(ItemVerdict(kind=ItemKind.ANSWER_RELEVANCE, ref="A.relevance", score=ar.score, reason=ar.reason))
    items.append(ItemVerdict(kind=ItemKind.ANSWER_SUMMARY, ref="A.summary", score=su.score, reason=su.reason))
    return items


# --------------------------------------------------------------------------- aggregation


def dimensions_of(items: list[ItemVerdict]) -> dict[str, float]:
    """Dimension = mean of its items; a dimension without items gets the original's 1.0 (no-call case)."""
    by_dim: dict[str, list[float]] = {d: [] for d in DIMENSIONS}
    for it in items:
        by_dim[DIMENSION_OF[it.kind]].append(it.score)
    return {d: round(fmean(v), 4) if v else 1.0 for d, v in by_dim.items()}


def _no_item_notes(items: list[ItemVerdict]) -> list[ItemVerdict]:
    present = {DIMENSION_OF[it.kind] for it in items}
    kind_of = {"tool_concise": ItemKind.CALL, "tool_call": ItemKind.TOOL_MESSAGE, "tool_plan": ItemKind.PLAN_SEGMENT,
               "tool_understand": ItemKind.UNDERSTAND_BATCH}
    return [ItemVerdict(kind=k, ref="-", score=1.0, source=Source.RULE, reason="nothing to judge (original: 1.0)")
            for d, k in kind_of.items() if d not in present]


def original_keys(reward: Reward) -> dict[str, float | None]:
    """The reward under the original ASTRA's keys (``tool_concise`` ... ``overall_score``); v1 rewards
    (one holistic rating) are renamed."""
    dims = {LEGACY_DIMENSIONS.get(k, k): v for k, v in reward.dimensions.items()}
    return {**{d: dims.get(d) for d in DIMENSIONS}, OVERALL_KEY: reward.overall}


async def reward_trajectory(
    task: Task, traj: Trajectory, judge: Model | None, *, mode: JudgeMode = JudgeMode.LLM,
) -> tuple[Reward, list[dict[str, Any]]]:
    """A Reward with status ok, or judge_failed (no dimensions, no overall) when the judge fails.

    ``mode=rules`` (or ``judge=None``) makes no model call."""
    rules, process = rule_scores(task, traj)
    found = itemise(task, traj)
    if mode is JudgeMode.RULES or judge is None:
        items = rules_only_items(task, traj, found)
        items += _no_item_notes(items)
        dims = dimensions_of(items)
        rid = stable_id("reward", traj.id, RULES_VERSION, prefix="r-")
        return Reward(id=rid, trajectory_id=traj.id, task_id=task.id, dimensions=dims,
                      overall=round(fmean(dims.values()), 4), process=process, rules=rules, judge_model="rules",
                      mode="rules", judge_version=RULES_VERSION, judge_calls=0,
                      items=[i.model_dump(mode="json") for i in items]), []
    rid = stable_id("reward", traj.id, JUDGE_VERSION, judge.name, prefix="r-")
    try:
        reply, audit = await ask_json(judge, judge_prompt(task, traj, found), reply_model(found), system=JUDGE_SYSTEM,
                                      prompt_version=JUDGE_VERSION)
    except LLMOutputError as exc:
        return Reward(id=rid, trajectory_id=traj.id, task_id=task.id, rules=rules, process=process,
                      judge_model=judge.name, status="judge_failed", error=exc.reason[:500], mode="llm",
                      judge_version=JUDGE_VERSION, judge_calls=model_calls(exc.audit)), exc.audit
    fixed = rule_items(task, traj, found)
    items = [fixed.get(it.ref, it) for it in judged_items(reply, found)]
    items += _no_item_notes(items)
    dims = dimensions_of(items)
    overall = round(fmean(dims.values()), 4)
    summary = "; ".join(f"{it.ref}: {it.reason}" for it in items if it.score < 1.0 and it.reason)[:1000]
    return Reward(id=rid, trajectory_id=traj.id, task_id=task.id, dimensions=dims, overall=overall, process=process,
                  rules=rules, judge_model=judge.name, rationale=summary or None, mode="llm",
                  judge_version=JUDGE_VERSION, judge_calls=model_calls(audit),
                  items=[i.model_dump(mode="json") for i in items]), audit


__all__ = [
    "DIMENSIONS", "JUDGE_VERSION", "OVERALL_KEY", "RULES_VERSION", "ItemKind", "ItemVerdict", "JudgeMode",
    "detect_language", "dimensions_of", "grounded", "itemise", "judge_prompt", "original_keys", "reply_model",
    "reward_trajectory", "rule_items", "rule_scores", "rules_only_items", "score_trajectory", "ungrounded_urls",
]


async def score_trajectory(task: Task, traj: Trajectory, judge: Model | None, mode: JudgeMode) -> Outcome:
    """The reward stage's item function: a trajectory that does not end with an answer to the user
    gets no reward at all (so it can never be exported), and costs no judge call."""
    from astra.synthesis.trajectories._export import (
        answer_missing,  # the export's own rule (it imports us)
    )

    missing = answer_missing(traj)
    if missing is None and not (traj.final_answer or "").strip():
        missing = "no_final_answer: the trajectory records no final answer"
    if missing:
        return Outcome.drop(missing)
    reward, audit = await reward_trajectory(task, traj, judge, mode=mode)
    return Outcome.keep(reward, audit=audit)
