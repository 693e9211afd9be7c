"""Stage 6: rewards — the seven ASTRA dimensions, rule checks, and a judge that never defaults."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from pydantic import BaseModel, Field

from astra.client import Model
from astra.records import Reward, Task, Trajectory, stable_id
from astra.synthesis._llm import LLMOutputError, ask_json

JUDGE_VERSION = "traj-judge-v1"
DIMENSIONS = (
    "tool_concision", "final_answer", "tool_call_success", "tool_planning",
    "tool_understanding", "query_understanding", "query_planning",
)
JUDGED = ("final_answer", "tool_planning", "tool_understanding", "query_understanding", "query_planning")


class JudgeScores(BaseModel):
    final_answer: float = Field(ge=1, le=5)
    tool_planning: float = Field(ge=1, le=5)
    tool_understanding: float = Field(ge=1, le=5)
    query_understanding: float = Field(ge=1, le=5)
    query_planning: float = Field(ge=1, le=5)
    rationale: str = ""


def _schemas(traj: Trajectory) -> dict[str, dict[str, Any]]:
    out = {}
    for t in traj.tools:
        fn = t.get("function", t)
        if isinstance(fn, dict) and "name" in fn:
            out[fn["name"]] = fn.get("parameters") or {"type": "object"}
    return out


def args_valid(arguments: Any, schema: dict[str, Any] | None) -> bool:
    if schema is None or not isinstance(arguments, dict):
        return False
    try:
        jsonschema.validate(arguments, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return True  # the tool's own schema is broken: the call cannot be blamed
    return True


def qualified(step: Any) -> str:
    return f"{step.server}/{step.server_tool}" if step.server and step.server_tool else step.tool


def rule_scores(task: Task, traj: Trajectory) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """(rule-computed dimensions, rule checks, per-step process rewards)."""
    schemas = _schemas(traj)
    steps = traj.steps
    n = len(steps)
    valid = [args_valid(s.arguments, schemas.get(s.tool)) for s in steps]
    ok = [not s.is_error for s in steps]
    expected = max(1, len(task.target_tools))
    called = {qualified(s) for s in steps}
    dims = {
        "tool_call_success": (sum(ok) / n) if n else 0.0,
        "tool_concision": min(1.0, expected / n) if n else 0.0,
    }
    rules = {
        "calls": float(n),
        "schema_valid": (sum(valid) / n) if n else 0.0,
        "error_rate": (1 - sum(ok) / n) if n else 0.0,
        "chain_coverage": len(called & set(task.target_tools)) / len(task.target_tools) if task.target_tools else 0.0,
        "simulated_share": (sum(s.simulated for s in steps) / n) if n else 0.0,
        "answered": 1.0 if (traj.final_answer or "").strip() else 0.0,
    }
    process = [1.0 if (o and v) else 0.0 for o, v in zip(ok, valid, strict=True)]
    return {k: round(v, 4) for k, v in dims.items()}, {k: round(v, 4) for k, v in rules.items()}, process


def transcript(traj: Trajectory, limit: int = 6000) -> str:
    lines = []
    for m in traj.messages:
        if m.role == "system":
            continue
        if m.role == "assistant" and m.tool_calls:
            for c in m.tool_calls:
                lines.append(f"ASSISTANT calls {c.name}({c.arguments[:400]})")
            if m.content:
                lines.append(f"ASSISTANT: {m.content[:600]}")
        elif m.role == "tool":
            lines.append(f"TOOL {m.name or ''} -> {(m.content or '')[:500]}")
        else:
            lines.append(f"{m.role.upper()}: {(m.content or '')[:800]}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit // 2] + "\n...\n" + text[-limit // 2 :]


async def reward_trajectory(task: Task, traj: Trajectory, judge: Model) -> tuple[Reward, list[dict[str, Any]]]:
    """A Reward with status ok, or judge_failed (no dimensions, no overall) when the judge fails."""
    dims, rules, process = rule_scores(task, traj)
    rid = stable_id("reward", traj.id, JUDGE_VERSION, prefix="r-")
    try:
        scores, audit = await ask_json(
            judge,
            "Judge this tool-using assistant.\n\nUser request:\n" + "\n".join(task.user_turns)
            + f"\n\nTools it was expected to use: {', '.join(task.target_tools)}\n\nTranscript:\n{transcript(traj)}\n\n"
            f"Final answer: {json.dumps(traj.final_answer)}\n\n"
            "Rate 1 (poor) to 5 (excellent): final_answer (correct, complete, grounded in the tool results), "
            "tool_planning (sensible order and choice of calls), tool_understanding (right arguments, reads results "
            "correctly), query_understanding (grasped what the user wants), query_planning (decomposed the request "
            'well). Reply as {"final_answer": n, "tool_planning": n, "tool_understanding": n, '
            '"query_understanding": n, "query_planning": n, "rationale": "..."}',
            JudgeScores, prompt_version=JUDGE_VERSION,
        )
    except LLMOutputError as exc:
        return Reward(id=rid, trajectory_id=traj.id, task_id=task.id, rules=rules, process=process,
                      judge_model=judge.name, status="judge_failed", error=exc.reason[:500]), exc.audit
    for d in JUDGED:
        dims[d] = round((getattr(scores, d) - 1) / 4, 4)
    overall = round(sum(dims[d] for d in DIMENSIONS) / len(DIMENSIONS), 4)
    ordered = {d: dims[d] for d in DIMENSIONS}
    return Reward(id=rid, trajectory_id=traj.id, task_id=task.id, dimensions=ordered, overall=overall,
                  process=process, rules=rules, judge_model=judge.name, rationale=scores.rationale[:1000]), audit
