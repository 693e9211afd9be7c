"""Import ASTRA-RL-1k style rows (``prompt``, ``tool_schema``, ``tool_dict``, ``sub_qa_dict``) as environments.

A row's ``tool_schema`` (OpenAI tools, JSON) and ``tool_dict`` (``{tool: Python source}``)
become the environment's sandboxed tools; ``sub_qa_dict`` (``{tool: [sub-answer, ...]}``)
becomes its tool sub-questions (the one reward reads it as is); the prompt's first user
message is split into the user-background preamble and the question. Tools that appear in
``tool_schema`` but not in ``sub_qa_dict`` stay in the environment (the released rows ship
look-alike tools: they are the row's own distractors).

The released rows carry no reference call arguments, so an imported environment can be
certified (:mod:`astra.trainers.hardening`, oracle replay included) only when reference
calls are supplied (``reference_calls``: ``{tool: [arguments, ...]}``, one per sub-answer);
otherwise :func:`import_row` says so and the environment is not exported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from astra.records import EnvironmentSpec, ToolImplementation, ToolSpec, Verifier, stable_id
from astra.servers import sub_questions
from astra.tools import tool_definition

__all__ = ["ImportedRow", "import_row", "split_prompt"]

_PREAMBLE = re.compile(r"^\s*##\s*some information related to the user\s*\n", re.IGNORECASE)


@dataclass
class ImportedRow:
    spec: EnvironmentSpec
    question: str
    background: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def certifiable(self) -> bool:
        """Whether every sub-answer has a reference call (what an oracle replay needs)."""
        return not self.problems


def _json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: not JSON: {exc}") from exc
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def split_prompt(prompt: Any) -> tuple[str, str | None]:
    """(question, user background) from a row's prompt (messages or text)."""
    messages = _json(prompt, "prompt")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role", "user") == "user"]
        text = str((users or messages)[-1].get("content") or "")
    else:
        text = str(messages)
    match = _PREAMBLE.match(text)
    if not match:
        return text.strip(), None
    rest = text[match.end() :]
    try:
        value, end = json.JSONDecoder().raw_decode(rest.lstrip())
    except json.JSONDecodeError:
        return rest.strip(), None
    offset = len(rest) - len(rest.lstrip())
    question = rest[offset + end :].strip()
    background = value.get("background") if isinstance(value, Mapping) else None
    if not question and isinstance(value, Mapping):  # the released rows put the request in the background
        question = str(background or "")
    return question, (str(background) if background else None)


def import_row(
    row: Mapping[str, Any],
    *,
    index: int = 0,
    name: str | None = None,
    reference_calls: Mapping[str, list[dict[str, Any]]] | None = None,
) -> ImportedRow:
    """One row as an :class:`EnvironmentSpec` (see the module docstring). Raises ValueError for a
    malformed row, naming the field."""
    for key in ("prompt", "tool_schema", "tool_dict", "sub_qa_dict"):
        if key not in row:
            raise ValueError(f"row {index}: {key}: missing")
    schemas = _json(row["tool_schema"], f"row {index}: tool_schema")
    sources = _json(row["tool_dict"], f"row {index}: tool_dict")
    if not isinstance(schemas, list) or not isinstance(sources, Mapping):
        raise ValueError(f"row {index}: tool_schema must be a list and tool_dict an object")
    truth = sub_questions(_json(row["sub_qa_dict"], f"row {index}: sub_qa_dict"))
    question, background = split_prompt(row["prompt"])
    env_name = name or f"astra-rl-{index}"
    tools, problems = [], []
    for schema in schemas:
        try:
            definition = tool_definition(schema if isinstance(schema, Mapping) else {})
        except ValueError as exc:
            raise ValueError(f"row {index}: tool_schema: {exc}") from None
        tool = definition.name
        if tool not in sources:
            problems.append(f"tool {tool!r} has a schema but no code in tool_dict")
            continue
        tools.append(
            ToolImplementation(
                spec=ToolSpec(
                    server=env_name,
                    name=tool,
                    description=definition.description,
                    input_schema=definition.parameters,
                ),
                source=str(sources[tool]),
                entrypoint=tool,
                stateful=False,
            )
        )
    names = {t.spec.name for t in tools}
    verifiers = []
    used: dict[str, int] = {}
    for sub in truth:
        if sub.tool is None or sub.tool not in names:
            problems.append(f"sub-answer {sub.id}: its tool {sub.tool!r} is not in the environment")
            continue
        k = used.get(sub.tool, 0)
        used[sub.tool] = k + 1
        calls = (reference_calls or {}).get(sub.tool) or []
        arguments = calls[k] if k < len(calls) else None
        if arguments is None:
            problems.append(f"sub-answer {sub.id}: no reference call (the row has no call arguments)")
        verifiers.append(
            Verifier(
                id=sub.id,
                sub_question=sub.question or f"{sub.tool} step {k + 1}",
                expected_answer=sub.answer,
                tool=sub.tool,
                arguments=arguments or {},
            )
        )
    spec = EnvironmentSpec(
        id=stable_id("astra_rl", env_name, json.dumps(schemas, sort_keys=True)[:2000], prefix="env_"),
        name=env_name,
        description=f"Tools to answer: {question[:200]}",
        tools=tools,
        verifiers=verifiers,
        sandboxed=True,
        provenance={"source": "ASTRA-RL row", "index": index, "question": question, "background": background},
    )
    return ImportedRow(spec=spec, question=question, background=background, problems=problems)
