"""The ONE process reward of ASTRA environments, and the answer matching it rests on.

Every consumer scores with this module: certification and the hardening certificate,
``astra env score``, the verl reward (``compute_score``), the trainer adapters (verl
``BaseTool``, TRL ``environment_factory``, OpenEnv, verifiers) and the environment
pipeline's verification. The definition:

Sub-questions
    The ground truth is a list of sub-questions, each with a sub-answer and (for a tool step)
    the tool that answers it (``"tool": null`` marks a tool-free step; an item without a
    ``tool`` key lets any call solve it; ASTRA-RL's ``sub_qa_dict`` is ``{tool: [answers]}``). Only **tool
    steps** count: a tool-free step (a sub-question
    without a tool, answered by reasoning) is neither in the recall's denominator nor
    solvable by a call. An environment without tool steps has no process reward (an error,
    never a 0 that looks like a score).

What solves a sub-question
    A tool call solves a sub-question when (1) the call succeeded (an error result solves
    nothing), (2) it called the sub-question's tool: through the call's
    :class:`~astra.tools.ToolRef` when the recorder knew where it went (the tool's own name,
    ``server/tool`` or the exposed name), else the same name; never a guessed suffix of an
    aggregated name, and (3) its result holds the
    sub-answer under :func:`answer_in_result`.

How calls are matched
    Each call solves at most one sub-question and each sub-question is solved at most once: the
    solved set is a maximum bipartite matching between calls and sub-questions (augmenting paths,
    calls in order), so a repeated call is never counted twice.

Matching rule (:func:`answer_in_result`)
    The tool result is unwrapped (JSON text, MCP ``structured_content``, ``{"result": x}``), and
    accepted when the whole value equals the sub-answer, or when a normalised **leaf** value of
    the result (records and JSON walked, strings that hold JSON parsed) equals it. A list
    sub-answer is also accepted when each of its elements is such a leaf; a record sub-answer
    when a record in the result has those keys with matching values. Equality is
    :func:`answers_match`: numbers with a tolerance (or at the precision the sub-answer was
    written with), strings case- and whitespace-insensitively. Never a substring test: ``"1"``
    does not match ``10``, ``"Paris"`` does not match ``"Paris is the capital"``.

The reward
    recall ``r = solved / tool sub-questions``, precision ``p = solved / tool calls`` (every call
    counts, failed ones included), reward ``F1 = 2pr / (p + r)``, 0 when either is 0.

Per-step rewards
    ``step_rewards[k]`` is the F1 of the first k+1 calls minus the F1 of the first k (each prefix
    scored with its own maximum matching): they sum to the scalar reward, a call that solves a
    new sub-question earns a positive step, a wasted call a negative one. ``solved_by_step[k]``
    names the sub-question call k solves in the final matching (None: it solved nothing).

Episodes as text
    :func:`calls_from_text` reads a rendered episode in any common chat-template format
    (Hermes/Qwen ``<tool_call>``/``<tool_response>``, Qwen3-coder XML calls, Llama-3.x
    ``<|python_tag|>``/JSON calls with ``ipython`` turns, Mistral ``[TOOL_CALLS]``/
    ``[TOOL_RESULTS]``, with or without the special tokens, and plain OpenAI messages as JSON),
    so the same episode scores the same whatever template rendered it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from astra.jsonutil import is_array, is_object
from astra.records import EnvironmentSpec, Trajectory, Verifier
from astra.tools import ToolRef, function_object

__all__ = [
    "CallCheck",
    "EpisodeScore",
    "ProcessReward",
    "RewardTracker",
    "SubQuestion",
    "ToolCallRecord",
    "answer_found",
    "answer_in_result",
    "answers_match",
    "calls_from_messages",
    "calls_tool",
    "calls_from_text",
    "calls_from_extra_info",
    "calls_from_trajectory",
    "compute_score",
    "f1_reward",
    "normalize_text",
    "parse_ground_truth",
    "parse_tool_value",
    "process_reward",
    "result_matches",
    "score_calls",
    "score_episode",
    "score_trajectory",
    "sub_questions",
]


# --------------------------------------------------------------------------- F1


def process_reward(solved_subquestions: int, total_subquestions: int, tool_calls: int) -> float:
    """F1 of recall (solved / all sub-questions) and precision (solved / tool calls); 0 when either is 0."""
    if solved_subquestions < 0 or total_subquestions < 0 or tool_calls < 0:
        raise ValueError("counts must be non-negative")
    if solved_subquestions > total_subquestions:
        raise ValueError(f"solved ({solved_subquestions}) exceeds the number of sub-questions ({total_subquestions})")
    if total_subquestions == 0 or tool_calls == 0 or solved_subquestions == 0:
        return 0.0
    recall = solved_subquestions / total_subquestions
    precision = min(1.0, solved_subquestions / tool_calls)
    return 2 * precision * recall / (precision + recall)


def f1_reward(solved: int, total: int, tool_calls: int) -> tuple[float, float, float]:
    """(recall, precision, F1) of ``solved`` sub-questions out of ``total`` with ``tool_calls`` calls."""
    reward = process_reward(solved, total, tool_calls)
    recall = solved / total if total else 0.0
    precision = min(1.0, solved / tool_calls) if tool_calls else 0.0
    return recall, precision, reward


# --------------------------------------------------------------------------- answer equality

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_QUANTITY = re.compile(rf"^(?P<pre>[$€£¥])?\s*(?P<num>{_NUMBER})\s*(?P<unit>[^\d\s][^\d]*)?$")
_SPACE = re.compile(r"\s+")
_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}


def normalize_text(value: str) -> str:
    """Casefold, collapse whitespace, strip quotes and trailing sentence punctuation."""
    text = _SPACE.sub(" ", str(value)).strip().casefold()
    text = text.strip("\"'`")
    while text and text[-1] in ".!;":
        text = text[:-1].rstrip()
    return text


def _quantity(value: Any) -> tuple[float, str, int | None] | None:
    """(number, unit, decimals written) for numbers and number-with-unit strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return (float(value), "", None) if math.isfinite(float(value)) else None
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(normalize_text(value))
    if not match:
        return None
    num = match.group("num").replace(",", "")
    unit = (match.group("pre") or "") + (match.group("unit") or "").strip()
    decimals = len(num.split(".", 1)[1]) if "." in num and "e" not in num.lower() else None
    try:
        number = float(num)
    except ValueError:
        return None
    return number, unit, decimals


def _numbers_match(got: tuple[float, str, int | None], expected: tuple[float, str, int | None]) -> bool:
    g, g_unit, _ = got
    e, e_unit, e_decimals = expected
    if g_unit and e_unit and g_unit != e_unit:
        return False
    if math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-9):
        return True
    # written at a precision: the expected value is the got value rounded to that precision
    if e_decimals is not None:
        return math.isclose(round(g, e_decimals), e, rel_tol=0, abs_tol=10 ** (-e_decimals) / 2)
    return False


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = normalize_text(value)
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def answers_match(got: Any, expected: Any) -> bool:
    """Whether ``got`` is the ``expected`` answer after normalisation (not a substring test).

    Numbers compare with a tolerance (relative 1e-6, or equal at the precision the expected
    answer was written with: expected ``3.33`` accepts ``3.3333``), strings case- and
    whitespace-insensitively, lists and dicts element by element. A number with a unit
    (``12.5 km``, ``$1,200``) matches the same number with the same unit, or the bare number.
    """
    got, expected = _maybe_json(got), _maybe_json(expected)
    if is_object(expected) or is_object(got):
        if not (is_object(expected) and is_object(got)):
            return False
        if {normalize_text(k) for k in got} != {normalize_text(k) for k in expected}:
            return False
        got_by_key = {normalize_text(k): v for k, v in got.items()}
        return all(answers_match(got_by_key[normalize_text(k)], v) for k, v in expected.items())
    if isinstance(expected, list | tuple) or isinstance(got, list | tuple):
        if isinstance(got, list | tuple) and isinstance(expected, list | tuple):
            return len(got) == len(expected) and all(answers_match(g, e) for g, e in zip(got, expected, strict=True))
        # a one-element list against a scalar: the same answer
        if isinstance(got, list | tuple) and len(got) == 1:
            return answers_match(got[0], expected)
        if isinstance(expected, list | tuple) and len(expected) == 1:
            return answers_match(got, expected[0])
        if isinstance(expected, str) and isinstance(got, list | tuple):
            parts = [p for p in re.split(r"\s*,\s*", expected.strip()) if p]
            return len(parts) == len(got) and all(answers_match(g, p) for g, p in zip(got, parts, strict=True))
        return False
    got_bool, expected_bool = _bool(got), _bool(expected)
    if got_bool is not None and expected_bool is not None:
        return got_bool == expected_bool
    got_q, expected_q = _quantity(got), _quantity(expected)
    if got_q is not None and expected_q is not None:
        return _numbers_match(got_q, expected_q)
    if got is None or expected is None:
        return got is None and expected is None
    return normalize_text(str(got)) == normalize_text(str(expected))


# --------------------------------------------------------------------------- result values


def parse_tool_value(value: Any) -> Any:
    """The tool's value from what a trajectory, client or rendered episode recorded: JSON text,
    an MCP result dict (``structured_content`` / ``structuredContent``) and ``{"result": x}``
    are unwrapped."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return text
    if is_object(value):
        for key in ("structured_content", "structuredContent"):
            if value.get(key) is not None and set(value) <= {
                key,
                "content",
                "is_error",
                "isError",
                "text",
                "meta",
                "_meta",
            }:
                value = value[key]
                break
        if is_object(value) and set(value) == {"result"}:
            return value["result"]
    return value


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if is_object(a) and is_object(b):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if is_array(a) and is_array(b):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def result_matches(actual: Any, expected: Any) -> bool:
    """Whether a tool result equals a verifier's expected *result* (a reference call's replay;
    exact, numbers with a tolerance). Sub-answers use :func:`answer_in_result` instead."""
    return _close(actual, expected) or _close(parse_tool_value(actual), expected)


def _walk(value: Any, depth: int = 0) -> Iterable[Any]:
    """Every node of a result: records and lists walked, strings holding JSON parsed."""
    if depth > 32:
        return
    value = _maybe_json(value)
    yield value
    if is_object(value):
        for v in value.values():
            yield from _walk(v, depth + 1)
    elif is_array(value):
        for v in value:
            yield from _walk(v, depth + 1)


def _is_leaf(node: Any) -> bool:
    return not isinstance(node, dict | list)


def answer_in_result(result: Any, expected: Any) -> bool:
    """THE matching rule: whether a tool result holds a sub-answer (see the module docstring).

    Accepted when the whole result equals the answer, or a normalised leaf value of the result
    does; a list answer also when each element is a leaf; a record answer also when a record in
    the result has its keys with matching values. Never a substring test."""
    value = parse_tool_value(result)
    expected = _maybe_json(expected)
    nodes = list(_walk(value))
    if any(answers_match(node, expected) for node in nodes):
        return True
    if is_object(expected) and expected:
        return any(
            is_object(node)
            and all(
                any(normalize_text(k) == normalize_text(key) and answers_match(v, want) for k, v in node.items())
                for key, want in expected.items()
            )
            for node in nodes
        )
    if isinstance(expected, list | tuple) and expected:
        leaves = [n for n in nodes if _is_leaf(n)]
        return all(_is_leaf(e) and any(answers_match(leaf, e) for leaf in leaves) for e in expected)
    return False


def answer_found(expected: Any, result: Any) -> bool:
    """:func:`answer_in_result` with the arguments in the order ``astra.servers`` always took them."""
    return answer_in_result(result, expected)


# --------------------------------------------------------------------------- records


ANY_TOOL = "*"


class SubQuestion(BaseModel):
    """One sub-question of the ground truth. ``tool``: the tool that answers it; None: a
    tool-free step (not scored); ``"*"``: a tool step whose tool is not named (any call)."""

    id: str
    question: str = ""
    answer: Any = None
    tool: str | None = None


class ToolCallRecord(BaseModel):
    """One tool call of an episode, however it was recorded (trajectory, messages, text, adapter)."""

    name: str | None = None
    arguments: Any = None
    result: Any = None
    is_error: bool = False
    ref: ToolRef | None = Field(default=None, description="where the call went, when the recorder knew it "
                                "(a ground-truth tool is matched against it exactly)")


class ProcessReward(BaseModel):
    """The process reward of one episode, with its parts and per-step rewards."""

    solved: int
    total: int
    tool_calls: int
    recall: float
    precision: float
    reward: float
    solved_ids: list[str] = Field(default_factory=list)
    step_rewards: list[float] = Field(default_factory=list, description="F1 gained by each call; they sum to reward")
    solved_by_step: list[str | None] = Field(default_factory=list, description="the sub-question each call solves")


def calls_tool(call: ToolCallRecord, tool: str | None) -> bool:
    """Whether ``call`` is a call of the ground truth's ``tool``: through its :class:`ToolRef` when
    the recorder knew where it went (the tool's own name, ``server/tool`` or the exposed name),
    else by the name the model used. Never by a guessed suffix."""
    if tool == ANY_TOOL:
        return True
    if not tool:
        return False
    return call.ref.is_tool(tool) if call.ref is not None else call.name == tool


def sub_questions(ground_truth: Any) -> list[SubQuestion]:
    """Sub-questions from any ground truth we export or import.

    Accepts a list of ``{id?, sub_question, sub_answer, tool?}`` (our parquet), a JSON string of
    it, ``{"sub_qa": [...]}``, verifier records, ``{id: {sub_question, sub_answer, tool?}}`` and
    the ASTRA-RL ``sub_qa_dict`` (``{tool: [sub-answer, ...]}``: each answer a step of that tool). Anything else is a
    ValueError: a malformed ground truth is never scored."""
    value = ground_truth
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ground truth is not JSON: {exc}") from exc
    if hasattr(value, "tolist"):  # numpy arrays out of a parquet reader
        value = value.tolist()
    if isinstance(value, Mapping):
        if "sub_qa" in value:
            return sub_questions(value["sub_qa"])
        if "sub_qa_dict" in value:
            return sub_questions(value["sub_qa_dict"])
        items: list[Any] = []
        for key, item in value.items():
            if hasattr(item, "tolist"):
                item = item.tolist()
            if isinstance(item, Mapping):  # {id: {sub_question, sub_answer, tool?}}
                items.append({"id": str(key), **dict(item)})
            elif is_array(item):  # ASTRA-RL sub_qa_dict: {tool: [sub-answer, ...]}
                items.extend(
                    {"id": f"{key}#{k}", "sub_answer": answer, "tool": str(key)} for k, answer in enumerate(item)
                )
            else:
                raise ValueError(
                    f"ground truth entry {key!r} is neither a sub-question object nor a list of sub-answers"
                )
        value = items
    if not is_array(value):
        raise ValueError("ground truth must be a list of {sub_question, sub_answer} objects")
    out: list[SubQuestion] = []
    for index, item in enumerate(value):
        if isinstance(item, Verifier):
            if item.sub_question is None or item.expected_answer is None:
                continue
            out.append(SubQuestion(id=item.id, question=item.sub_question, answer=item.expected_answer, tool=item.tool))
            continue
        if hasattr(item, "tolist"):
            item = item.tolist()
        if not isinstance(item, Mapping):
            raise ValueError(f"ground truth item {index} is not an object")
        answer_key = next((k for k in ("sub_answer", "answer", "expected_answer") if k in item), None)
        if answer_key is None:
            raise ValueError(f"ground truth item {index} has no sub_answer")
        if "tool" in item or "tool_name" in item:
            tool = item.get("tool") if "tool" in item else item.get("tool_name")
            tool = str(tool) if tool else None  # null: a tool-free step
        else:
            tool = ANY_TOOL  # no tool named: any tool's call may solve it
        out.append(
            SubQuestion(
                id=str(item.get("id", index)),
                question=str(item.get("sub_question") or item.get("question") or ""),
                answer=item[answer_key],
                tool=tool,
            )
        )
    return out


def parse_ground_truth(ground_truth: Any) -> list[dict[str, Any]]:
    """Ground truth as ``[{id, sub_question, sub_answer, tool}]`` (see :func:`sub_questions`)."""
    return [
        {"id": s.id, "sub_question": s.question, "sub_answer": s.answer, "tool": s.tool}
        for s in sub_questions(ground_truth)
    ]


# --------------------------------------------------------------------------- scoring


def _edges(call: ToolCallRecord, subs: Sequence[SubQuestion]) -> list[int]:
    """The sub-questions one call can solve (see the module docstring)."""
    if call.is_error or call.result is None:
        return []
    return [
        j
        for j, sub in enumerate(subs)
        if calls_tool(call, sub.tool) and answer_in_result(call.result, sub.answer)
    ]


def _matching(edges: Sequence[list[int]]) -> dict[int, int]:
    """Maximum matching call index -> sub-question index (each solves / is solved at most once).

    Augmenting paths (Kuhn) over the calls in order, each trying unsolved sub-questions first:
    deterministic, and an earlier call keeps the sub-question it solved unless a later call
    can only be matched by moving it."""
    owner: dict[int, int] = {}  # sub-question -> call

    def augment(i: int, seen: set[int]) -> bool:
        for j in sorted(edges[i], key=lambda j: j in owner):
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(edges)):
        if edges[i]:
            augment(i, set())
    return {i: j for j, i in owner.items()}


class RewardTracker:
    """The process reward of an episode built call by call (what adapters use after every call):
    each call's candidate sub-questions are computed once, the matching only when a call can
    solve something. :func:`score_calls` is this tracker run over a whole episode."""

    def __init__(self, ground_truth: Any) -> None:
        subs = ground_truth if _is_sub_list(ground_truth) else sub_questions(ground_truth)
        self.subs = [s for s in subs if s.tool is not None]
        self.calls: list[ToolCallRecord] = []
        self.edges: list[list[int]] = []
        self.step_rewards: list[float] = []
        self._size = 0
        self._previous = 0.0

    def add(self, call: ToolCallRecord) -> float:
        """Record the next call; returns its step reward (F1 of the calls so far minus F1 before it)."""
        total = len(self.subs)
        self.calls.append(call)
        self.edges.append(_edges(call, self.subs) if total else [])
        if self.edges[-1]:
            self._size = len(_matching(self.edges))
        current = process_reward(self._size, total, len(self.calls)) if total else 0.0
        step = current - self._previous
        self._previous = current
        self.step_rewards.append(step)
        return step

    def score(self) -> ProcessReward:
        total = len(self.subs)
        final = _matching(self.edges)
        recall, precision, reward = f1_reward(len(final), total, len(self.calls)) if total else (0.0, 0.0, 0.0)
        return ProcessReward(
            solved=len(final),
            total=total,
            tool_calls=len(self.calls),
            recall=recall,
            precision=precision,
            reward=reward,
            solved_ids=[self.subs[j].id for j in sorted(final.values())],
            step_rewards=list(self.step_rewards),
            solved_by_step=[self.subs[final[i]].id if i in final else None for i in range(len(self.calls))],
        )


def score_calls(calls: Sequence[ToolCallRecord], ground_truth: Any) -> ProcessReward:
    """THE process reward of an episode's tool calls (in call order) against its ground truth
    (anything :func:`sub_questions` reads, or its output). Tool-free steps are left out."""
    tracker = RewardTracker(ground_truth)
    for call in calls:
        tracker.add(call)
    return tracker.score()


def _is_sub_list(value: Any) -> bool:
    return is_array(value) and all(isinstance(v, SubQuestion) for v in value)


# --------------------------------------------------------------------------- episodes -> calls


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def calls_from_trajectory(trajectory: Trajectory) -> list[ToolCallRecord]:
    """The calls of an ASTRA trajectory (the tool's own name when the harness recorded it)."""
    return [
        ToolCallRecord(
            name=step.server_tool or step.tool,
            arguments=_arguments(step.arguments),
            result=None if step.is_error else step.result,
            is_error=step.is_error,
            ref=step.ref,
        )
        for step in trajectory.steps
    ]


def _message_dict(message: Any) -> dict[str, Any]:
    if hasattr(message, "model_dump"):
        return message.model_dump(mode="json")
    return dict(message)


def _content_text(content: Any) -> Any:
    if is_array(content):  # content parts
        return "\n".join(str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content)
    return content


def calls_from_messages(messages: Sequence[Any]) -> list[ToolCallRecord]:
    """The calls of an OpenAI-format conversation (assistant ``tool_calls``, ``tool`` replies
    paired by ``tool_call_id``, else in order). A reply that starts with ``Error`` or carries
    ``is_error`` is a failed call."""
    calls: list[ToolCallRecord] = []
    by_id: dict[str, int] = {}
    pending: list[int] = []
    for raw in messages:
        message = _message_dict(raw)
        role = message.get("role")
        if role == "assistant":
            for tc in message.get("tool_calls") or []:
                fn = function_object(tc)
                calls.append(ToolCallRecord(name=fn.get("name"), arguments=_arguments(fn.get("arguments"))))
                if tc.get("id"):
                    by_id[str(tc["id"])] = len(calls) - 1
                pending.append(len(calls) - 1)
        elif role in ("tool", "ipython", "function"):
            content = _content_text(message.get("content"))
            index = by_id.get(str(message.get("tool_call_id")), None)
            if index is None or index not in pending:
                index = pending[0] if pending else None
            if index is None:
                calls.append(ToolCallRecord())
                index = len(calls) - 1
            else:
                pending.remove(index)
            error = bool(message.get("is_error")) or (isinstance(content, str) and content.lstrip().startswith("Error"))
            calls[index] = calls[index].model_copy(update={"result": None if error else content, "is_error": error})
    return calls


# Rendered episodes. Markers with the special tokens kept, and the shapes left when a reward
# manager decodes with skip_special_tokens=True (verl does): bare call JSON, ``ipython`` headers.
_HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_HERMES_RESULT = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
_QWEN_XML_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
_QWEN_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)
_LLAMA_TAG_CALL = re.compile(r"<\|python_tag\|>(.*?)(?=<\|eom_id\|>|<\|eot_id\|>|<\|start_header_id\|>|$)", re.DOTALL)
_LLAMA_RESULT = re.compile(
    r"<\|start_header_id\|>ipython<\|end_header_id\|>\s*(.*?)(?=<\|eot_id\|>|<\|start_header_id\|>|$)", re.DOTALL
)
_LLAMA_BARE_RESULT = re.compile(
    r"(?:^|(?<=[\s}\]\"]))ipython\n\n(.*?)(?=(?:assistant|user|system|ipython)\n\n|$)", re.DOTALL
)
_MISTRAL_CALLS = re.compile(r"\[TOOL_CALLS\](.*?)(?=</s>|\[TOOL_RESULTS\]|\[INST\]|\[TOOL_CALLS\]|$)", re.DOTALL)
_MISTRAL_RESULT = re.compile(r"\[TOOL_RESULTS\](.*?)\[/TOOL_RESULTS\]", re.DOTALL)
_MISTRAL_NAMED = re.compile(r"\s*([A-Za-z0-9_.:/-]+?)(?:\[CALL_ID\][A-Za-z0-9]+)?\[ARGS\]")
_ERROR_TEXT = re.compile(r"^\s*(?:Error\b|Error executing tool|Unknown function)", re.IGNORECASE)


def _call_from_json(obj: Any) -> ToolCallRecord | None:
    if not isinstance(obj, Mapping):
        return None
    fn = function_object(obj)
    name = fn.get("name")
    if not isinstance(name, str):
        return None
    if "arguments" in fn:
        args = fn["arguments"]
    elif "parameters" in fn:
        args = fn["parameters"]
    else:
        return None
    return ToolCallRecord(name=name, arguments=_arguments(args))


_JSON_START = re.compile(r"[{\[]")


def _json_values(text: str) -> list[tuple[int, int, Any]]:
    """Every top-level JSON object/array in free text: (start, end, value)."""
    decoder = json.JSONDecoder()
    out: list[tuple[int, int, Any]] = []
    i = 0
    # One regex search per candidate: two str.find calls rescanned the text for a bracket that never comes
    # (quadratic on policy text such as '{"a":"' * 20000).
    while (found := _JSON_START.search(text, i)) is not None:
        start = found.start()
        decoded = _decode_at(decoder, text, start)
        if isinstance(decoded, int):
            i = decoded
            continue
        out.append((start, decoded[1], decoded[0]))
        i = decoded[1]
    return out


_DECODE_WINDOW = 8192
_DEEP_SKIP = 1000  # brackets: at least this many open before the C scanner hits the recursion limit


def _decode_at(decoder: json.JSONDecoder, text: str, start: int) -> tuple[Any, int] | int:
    """The JSON value starting at ``start`` and its end, or where to look for the next one.

    Decodes a window first: a failed ``raw_decode`` on the whole text costs O(position) (the error
    counts the lines before it), which made scanning policy text quadratic. Only a failure the window's
    end may have caused is retried on the rest of the text. Nesting deeper than the interpreter's
    recursion limit is not JSON we read, nor is anything inside it: the scan skips that far ahead."""
    window = text[start : start + _DECODE_WINDOW]
    try:
        value, end = decoder.raw_decode(window)
        return value, start + end
    except RecursionError:
        return start + _DEEP_SKIP
    except json.JSONDecodeError as exc:
        truncated = len(window) == _DECODE_WINDOW and (
            exc.pos >= len(window) - 8 or exc.msg.startswith("Unterminated string")
        )
        if not truncated:
            return start + 1
    try:
        value, end = decoder.raw_decode(text[start:])
    except RecursionError:
        return start + _DEEP_SKIP
    except ValueError:
        return start + 1
    return value, start + end


def _calls_in(payload: str) -> list[ToolCallRecord]:
    """Tool calls written as JSON (one object, a list, or objects one after another)."""
    calls = []
    for _, _, value in _json_values(payload):
        for item in value if is_array(value) else [value]:
            call = _call_from_json(item)
            if call is not None:
                calls.append(call)
    return calls


def _hermes_call(payload: str) -> ToolCallRecord:
    calls = _calls_in(payload)
    if calls:
        return calls[0]
    xml = _QWEN_XML_FUNCTION.search(payload)
    if xml:
        params = {k.strip(): _arguments(v.strip()) for k, v in _QWEN_XML_PARAMETER.findall(xml.group(2))}
        return ToolCallRecord(name=xml.group(1).strip(), arguments=params)
    return ToolCallRecord()  # a call the model wrote but nobody could parse: it still counts


def _mistral_calls(payload: str) -> list[ToolCallRecord]:
    payload = payload.strip()
    if payload.startswith("["):
        return _calls_in(payload) or [ToolCallRecord()]
    calls, rest = [], payload
    while True:
        named = _MISTRAL_NAMED.match(rest)
        if not named:
            break
        try:
            args, end = json.JSONDecoder().raw_decode(rest, named.end())
        except (ValueError, RecursionError):
            calls.append(ToolCallRecord(name=named.group(1)))
            break
        calls.append(ToolCallRecord(name=named.group(1), arguments=args))
        rest = rest[end:]
    return calls or [ToolCallRecord()]


def _result_text(payload: str) -> tuple[Any, bool]:
    """(result, is_error) of a tool reply as rendered; a Mistral ``{"content", "call_id"}`` is unwrapped."""
    text = payload.strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if (
        isinstance(value, Mapping)
        and "content" in value
        and set(value) <= {"content", "call_id", "tool_call_id", "name"}
    ):
        text = value["content"] if isinstance(value["content"], str) else json.dumps(value["content"])
    elif isinstance(value, str):  # a reply the template wrote as a JSON string (Llama-3.1's tojson)
        text = value
    if _ERROR_TEXT.match(text or ""):
        return None, True
    return text, False


def _pair(events: list[tuple[int, str, Any]]) -> list[ToolCallRecord]:
    """Calls and results in text order -> calls with their results (FIFO, as chat templates render)."""
    calls: list[ToolCallRecord] = []
    pending: list[int] = []
    for _, kind, payload in sorted(events, key=lambda e: e[0]):
        if kind == "call":
            calls.append(payload)
            pending.append(len(calls) - 1)
        else:
            result, error = payload
            if pending:
                index = pending.pop(0)
            else:
                calls.append(ToolCallRecord())
                index = len(calls) - 1
            calls[index] = calls[index].model_copy(update={"result": result, "is_error": error})
    return calls


def _plain_messages(text: str) -> list[Any] | None:
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    if is_array(value) and value and all(isinstance(m, Mapping) and "role" in m for m in value):
        return value
    return None


def calls_from_text(text: str) -> list[ToolCallRecord]:
    """The tool calls of a rendered episode, whatever chat template rendered it (see the module
    docstring for the formats). Calls are paired with results in order."""
    if not text:
        return []
    messages = _plain_messages(text)
    if messages is not None:
        return calls_from_messages(messages)
    events: list[tuple[int, str, Any]] = []
    covered: list[tuple[int, int]] = []

    def add(match: re.Match[str], kind: str, payload: Any) -> None:
        events.append((match.start(), kind, payload))
        covered.append((match.start(), match.end()))

    for m in _HERMES_CALL.finditer(text):
        add(m, "call", _hermes_call(m.group(1)))
    for m in _HERMES_RESULT.finditer(text):
        add(m, "result", _result_text(m.group(1)))
    for m in _LLAMA_TAG_CALL.finditer(text):
        for k, call in enumerate(_calls_in(m.group(1)) or [ToolCallRecord()]):
            events.append((m.start() + k, "call", call))
        covered.append((m.start(), m.end()))
    for m in _LLAMA_RESULT.finditer(text):
        add(m, "result", _result_text(m.group(1)))
    for m in _MISTRAL_CALLS.finditer(text):
        for k, call in enumerate(_mistral_calls(m.group(1))):
            events.append((m.start() + k, "call", call))
        covered.append((m.start(), m.end()))
    for m in _MISTRAL_RESULT.finditer(text):
        add(m, "result", _result_text(m.group(1)))
    if not any(kind == "result" for _, kind, _ in events):
        # special tokens stripped: Llama's tool turns are "ipython\n\n<result>"
        for m in _LLAMA_BARE_RESULT.finditer(text):
            if not any(a <= m.start() < b for a, b in covered):
                add(m, "result", _result_text(m.group(1)))
    # calls written as bare JSON (Llama-3.x JSON calls; Mistral and Llama with special tokens stripped);
    # Mistral's stripped results are {"content": ..., "call_id": ...} objects
    for start, end, value in _json_values(text):
        if any(a <= start < b for a, b in covered):
            continue
        items = value if is_array(value) else [value]
        found = [c for c in (_call_from_json(item) for item in items) if c is not None]
        if found and len(found) == len(items):
            for k, call in enumerate(found):
                events.append((start + k, "call", call))
            covered.append((start, end))
        elif isinstance(value, Mapping) and "content" in value and ("call_id" in value or "tool_call_id" in value):
            events.append((start, "result", _result_text(json.dumps(value))))
            covered.append((start, end))
    return _pair(events)


# --------------------------------------------------------------------------- entry points


def score_trajectory(trajectory: Trajectory, ground_truth: Any) -> ProcessReward:
    """Process reward of an ASTRA trajectory: failed calls count as calls but solve nothing."""
    return score_calls(calls_from_trajectory(trajectory), ground_truth)


def calls_from_extra_info(extra_info: Mapping[str, Any] | None) -> list[ToolCallRecord] | None:
    """The calls an ASTRA adapter recorded for verl (``extra_info["astra_calls"]``), if any."""
    if not extra_info:
        return None
    recorded = extra_info.get("astra_calls")
    if recorded is None:
        return None
    if isinstance(recorded, str):
        recorded = json.loads(recorded)
    if hasattr(recorded, "tolist"):
        recorded = recorded.tolist()
    return [ToolCallRecord.model_validate(c) for c in recorded]


def _is_adapter_rollout(extra_info: Mapping[str, Any] | None) -> bool:
    """A row of an ASTRA verl export (rolled out through the ASTRA tool adapter)."""
    if not extra_info:
        return False
    return bool(extra_info.get("need_tools_kwargs")) or extra_info.get("tool_selection") is not None


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None
) -> float:
    """verl custom reward: the process reward of one rollout.

    Scores the calls the ASTRA tool adapter recorded for this trajectory (verl hands the agent
    loop's ``extra_fields`` over in ``extra_info``) or, for a rendered episode scored offline (no
    ``extra_info`` from an ASTRA export row), the calls read from the response text (any template,
    :func:`calls_from_text`). A row of an ASTRA export without recorded calls scores 0 whatever its
    text says: the policy wrote that text and could forge calls and results in it. Calls the text shows but no
    tool recorded (refused by the loop: unknown tool, unparseable arguments) count as failed. Use with
    ``custom_reward_function.path=<astra/synthesis/environments/reward.py>``,
    ``custom_reward_function.name=compute_score``."""
    subs = sub_questions(ground_truth)
    if not any(s.tool is not None for s in subs):
        raise ValueError("ground truth has no tool sub-questions: no process reward can be computed")
    if extra_info and extra_info.get("astra_error"):
        # an infrastructure failure in the rollout (e.g. its episode was evicted): never a score
        raise RuntimeError(f"this rollout failed in the ASTRA tool adapter: {extra_info['astra_error']}")
    written = calls_from_text(solution_str or "")
    calls = calls_from_extra_info(extra_info)
    if calls is None and _is_adapter_rollout(extra_info):
        # The ASTRA tool adapter records every call it runs: no record means no tool ran, and the
        # response text (written by the policy itself) is not evidence of a call or a result.
        calls = []
    if calls is None:
        calls = written
    elif len(written) > len(calls):  # calls the loop refused before any tool ran (unknown tool, bad JSON)
        calls = calls + [ToolCallRecord(is_error=True)] * (len(written) - len(calls))
    return score_calls(calls, subs).reward


# --------------------------------------------------------------------------- per-call checks


class CallCheck(BaseModel):
    index: int
    tool: str
    verifier_id: str | None = None
    passed: bool | None = Field(default=None, description="None: no verifier covers this call")
    reason: str = ""


class EpisodeScore(BaseModel):
    environment_id: str
    trajectory_id: str | None = None
    task_id: str | None = None
    per_call: list[CallCheck] = Field(default_factory=list)
    call_reward: float | None = Field(default=None, description="fraction of verified calls that passed")
    solved_subquestions: list[str] = Field(default_factory=list)
    total_subquestions: int = 0
    tool_calls: int = 0
    recall: float = 0.0
    precision: float = 0.0
    process_reward: float = 0.0
    step_rewards: list[float] = Field(default_factory=list, description="per-call rewards; they sum to process_reward")
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None


def score_episode(spec: EnvironmentSpec, trajectory: Trajectory) -> EpisodeScore:
    """Per-call checks against the verifiers' reference calls, and the process reward.

    A call is checked when a verifier names the same tool with the same arguments (its result
    must equal ``expected_result``); an error result fails its check. The process reward is
    :func:`score_calls` over the environment's tool sub-questions."""
    reference = [v for v in spec.verifiers if v.tool is not None and v.expected_result is not None]
    checks: list[CallCheck] = []
    for index, step in enumerate(trajectory.steps):
        arguments = _arguments(step.arguments)
        ref = step.ref
        verifier: Verifier | None = next(
            (
                v
                for v in reference
                if (ref.is_tool(v.tool) if ref is not None else step.tool == v.tool)
                and _close(arguments, v.arguments)
            ),
            None,
        )
        if step.is_error:
            checks.append(
                CallCheck(
                    index=index,
                    tool=step.tool,
                    verifier_id=verifier.id if verifier else None,
                    passed=False,
                    reason=f"tool error: {str(step.result)[:200]}",
                )
            )
        elif verifier is None:
            checks.append(
                CallCheck(index=index, tool=step.tool, passed=None, reason="no reference call with these arguments")
            )
        elif result_matches(step.result, verifier.expected_result):
            checks.append(
                CallCheck(
                    index=index,
                    tool=step.tool,
                    verifier_id=verifier.id,
                    passed=True,
                    reason="matches the expected result",
                )
            )
        else:
            checks.append(
                CallCheck(
                    index=index,
                    tool=step.tool,
                    verifier_id=verifier.id,
                    passed=False,
                    reason=f"expected {json.dumps(verifier.expected_result, default=str)[:200]}, "
                    f"got {json.dumps(parse_tool_value(step.result), default=str)[:200]}",
                )
            )
    subs = sub_questions(spec.verifiers)
    score = score_trajectory(trajectory, subs)
    verified = [c.passed for c in checks if c.passed is not None]
    error = (
        None
        if score.total
        else f"environment {spec.name!r} has no sub-question verifiers with a tool: no process reward can be computed"
    )
    return EpisodeScore(
        environment_id=spec.id,
        trajectory_id=trajectory.id,
        task_id=trajectory.task_id,
        per_call=checks,
        call_reward=(sum(verified) / len(verified)) if verified else None,
        solved_subquestions=score.solved_ids,
        total_subquestions=score.total,
        tool_calls=score.tool_calls,
        recall=score.recall,
        precision=score.precision,
        process_reward=score.reward,
        step_rewards=score.step_rewards,
        status="ok" if score.total else "failed",
        error=error,
    )
