"""Rewards from verifiers: per-call checks and the ASTRA process reward.

ASTRA recipe (RLVR): recall ``r = solved sub-questions / all sub-questions``, precision
``p = solved sub-questions / tool calls``, reward ``F1 = 2pr / (p + r)``, 0 when either is 0.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from astra.records import EnvironmentSpec, Step, Trajectory, Verifier


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


# --------------------------------------------------------------------------- matching


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def unwrap_result(result: Any) -> Any:
    """The tool's value from what a trajectory or client recorded (JSON text, ``{"result": x}``, MCP result dicts)."""
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            return result
    if isinstance(result, dict):
        if "structured_content" in result and result.get("structured_content") is not None:
            result = result["structured_content"]
        elif "structuredContent" in result and result.get("structuredContent") is not None:
            result = result["structuredContent"]
        if isinstance(result, dict) and set(result) == {"result"}:
            return result["result"]
    return result


def result_matches(actual: Any, expected: Any) -> bool:
    """Whether a tool result equals a verifier's expected result (numbers with a tolerance)."""
    return _close(actual, expected) or _close(unwrap_result(actual), expected)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _scalar_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().casefold() == b.strip().casefold()
    if isinstance(a, str) != isinstance(b, str):
        text, other = (a, b) if isinstance(a, str) else (b, a)
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            try:
                return math.isclose(float(text.strip()), float(other), rel_tol=1e-9, abs_tol=1e-9)
            except ValueError:
                return False
        return False
    return _close(a, b)


def answer_found(expected: Any, result: Any) -> bool:
    """Whether a sub-question's expected answer is present in a tool result."""
    value = unwrap_result(result)
    if _close(value, expected):
        return True
    if isinstance(expected, dict):
        return isinstance(value, dict) and all(k in value and _close(value[k], v) for k, v in expected.items())
    leaves = _leaves(value)
    if isinstance(expected, list):
        return all(any(_scalar_equal(leaf, e) for leaf in leaves) for e in _leaves(expected))
    return any(_scalar_equal(leaf, expected) for leaf in leaves)


def _tool_matches(step: Step, tool: str) -> bool:
    names = {step.tool, step.server_tool or ""}
    return tool in names or any(n.endswith(sep + tool) for n in names for sep in ("__", "/", ".", ":"))


def _step_arguments(step: Step) -> Any:
    if isinstance(step.arguments, str):
        try:
            return json.loads(step.arguments)
        except ValueError:
            return step.arguments
    return step.arguments


# --------------------------------------------------------------------------- scoring


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
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None


def score_episode(spec: EnvironmentSpec, trajectory: Trajectory) -> EpisodeScore:
    """Per-call checks against the verifiers' reference calls, and the ASTRA process reward.

    A call is checked when a verifier names the same tool with the same arguments (its result
    must equal ``expected_result``); an error result fails its check. A sub-question is solved
    when a successful call (of the verifier's tool, when it names one) returns its expected answer.
    """
    reference = [v for v in spec.verifiers if v.tool is not None and v.expected_result is not None]
    checks: list[CallCheck] = []
    for index, step in enumerate(trajectory.steps):
        arguments = _step_arguments(step)
        verifier: Verifier | None = next((v for v in reference if _tool_matches(step, v.tool or "") and _close(arguments, v.arguments)), None)
        if step.is_error:
            checks.append(CallCheck(index=index, tool=step.tool, verifier_id=verifier.id if verifier else None, passed=False, reason=f"tool error: {str(step.result)[:200]}"))
        elif verifier is None:
            checks.append(CallCheck(index=index, tool=step.tool, passed=None, reason="no reference call with these arguments"))
        elif result_matches(step.result, verifier.expected_result):
            checks.append(CallCheck(index=index, tool=step.tool, verifier_id=verifier.id, passed=True, reason="matches the expected result"))
        else:
            checks.append(CallCheck(index=index, tool=step.tool, verifier_id=verifier.id, passed=False,
                                    reason=f"expected {json.dumps(verifier.expected_result, default=str)[:200]}, got {json.dumps(unwrap_result(step.result), default=str)[:200]}"))
    questions = [v for v in spec.verifiers if v.sub_question is not None and v.expected_answer is not None]
    solved = []
    for v in questions:
        for step in trajectory.steps:
            if step.is_error or (v.tool is not None and not _tool_matches(step, v.tool)):
                continue
            if answer_found(v.expected_answer, step.result):
                solved.append(v.id)
                break
    calls = len(trajectory.steps)
    verified = [c.passed for c in checks if c.passed is not None]
    recall = len(solved) / len(questions) if questions else 0.0
    precision = min(1.0, len(solved) / calls) if calls else 0.0
    return EpisodeScore(
        environment_id=spec.id,
        trajectory_id=trajectory.id,
        task_id=trajectory.task_id,
        per_call=checks,
        call_reward=(sum(verified) / len(verified)) if verified else None,
        solved_subquestions=solved,
        total_subquestions=len(questions),
        tool_calls=calls,
        recall=recall,
        precision=precision,
        process_reward=process_reward(len(solved), len(questions), calls),
        status="ok" if questions else "failed",
        error=None if questions else f"environment {spec.name!r} has no sub-question verifiers: no process reward can be computed",
    )
