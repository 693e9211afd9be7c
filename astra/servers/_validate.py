"""Certification of an emitted environment: THE one replay of its server (docs/ARCHITECTURE.md
"Data flow": emitted MCP server (certified)).

:func:`certify_emitted` launches ``DIR/server.py`` over stdio with the official ``mcp`` client,
checks ``tools/list`` against the spec, resets into one episode (the initial state must come
back), replays every verifier's reference call in order and checks each with the reward
module's rules (:func:`~astra.servers._rewards.result_matches` for an expected result,
:func:`~astra.servers._rewards.answer_in_result` for a sub-answer, the state checks), and scores
the replay with the process reward (:func:`~astra.servers._rewards.score_calls`). The result is
one :class:`Certification` record: what the environment pipeline stores with an emitted server,
what ``astra env validate`` prints and ``astra env emit`` checks before writing.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from pydantic import BaseModel, Field, computed_field, model_validator

from astra.records import EnvironmentSpec, Verifier

from ._emit import load_emitted
from ._rewards import ToolCallRecord, answer_in_result, parse_tool_value, result_matches, score_calls
from ._runtime import EnvironmentControl


class CheckKind(enum.StrEnum):
    LISTING = "tools/list"  # a spec tool is listed with the spec's schema and description
    RESET = "reset"  # reset gives back the initial state
    CALL = "call"  # a reference call reproduces its expected result and sub-answer
    STATE = "state"  # a state check after a reference call
    REPLAY = "replay"  # there is a reference call to replay at all


class Check(BaseModel):
    name: str
    ok: bool
    detail: str = ""
    kind: CheckKind | None = None


class Certification(BaseModel):
    """One replay of an emitted server. ``ok``: it started, every check passed and at least one
    reference call was replayed; ``reward``: the replay's process reward (None without tool
    sub-questions)."""

    directory: str = ""
    environment_id: str | None = None
    name: str | None = None
    transport: str = "stdio"
    tools: list[str] = Field(default_factory=list, description="names the server listed")
    checks: list[Check] = Field(default_factory=list)
    calls: int = Field(default=0, description="reference calls in the spec")
    passed: int = Field(default=0, description="reference calls that reproduced their expectations")
    seconds: float = 0.0
    reward: float | None = None
    ok: bool = False
    error: str | None = Field(default=None, description="why the replay could not run to the end")

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @computed_field
    @property
    def failures(self) -> list[str]:
        """One line per failed check (and the error), for logs and drop reasons."""
        lines = [self.error] if self.error else []
        return lines + [f"{c.name}: {c.detail}" if c.detail else c.name for c in self.failed]

    @model_validator(mode="before")
    @classmethod
    def _legacy_certificate(cls, data: Any) -> Any:
        # emit.jsonl lines written before the one certification held only the summary
        # (transport, calls, passed, seconds, failures); their verdict is recomputed as then
        if isinstance(data, dict) and "ok" not in data and "failures" in data:
            failures: list[str] = list(data.get("failures") or [])  # pyright: ignore[reportUnknownArgumentType]
            calls, passed = int(data.get("calls", 0)), int(data.get("passed", 0))
            data = {k: v for k, v in data.items() if k != "failures"}  # pyright: ignore[reportUnknownVariableType]
            data["ok"] = calls > 0 and passed == calls and not failures
            data["checks"] = [Check(name=f, ok=False) for f in failures]
        return data


ValidationReport = Certification  # the name `astra env validate` and older callers use


def stdio_parameters(directory: str | Path, python: str | None = None) -> StdioServerParameters:
    """How to launch an emitted server over stdio (the stdio client passes only a few env vars)."""
    env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG", "TMPDIR") if k in os.environ}
    return StdioServerParameters(
        command=python or sys.executable, args=[str(Path(directory).resolve() / "server.py")], env=env
    )


def _get_path(state: Any, dotted: str) -> Any:
    node = state
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]  # pyright: ignore[reportUnknownVariableType]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):  # pyright: ignore[reportUnknownArgumentType]
            node = node[int(part)]  # pyright: ignore[reportUnknownVariableType]
        else:
            raise KeyError(dotted)
    return node  # pyright: ignore[reportUnknownVariableType]


def _tool_value(result: Any) -> Any:
    """The value a call returned, as the reward reads it (structured content, else its text)."""
    if result.structured_content is not None:
        return parse_tool_value(result.structured_content)
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    return parse_tool_value(texts[0] if len(texts) == 1 else texts)


def _call_problem(verifier: Verifier, result: Any) -> str | None:
    """Why one replayed reference call fails its expectations (None: it passes)."""
    text = "".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        return f"tool error: {text[:300]}"
    actual = result.structured_content if result.structured_content is not None else text
    if verifier.expected_result is not None and not result_matches(actual, verifier.expected_result):
        return (
            f"expected {json.dumps(verifier.expected_result)[:300]}, got {json.dumps(actual, default=str)[:300]}"
        )
    if verifier.expected_answer is not None and not answer_in_result(_tool_value(result), verifier.expected_answer):
        return (
            f"expected the answer {json.dumps(verifier.expected_answer, default=str)[:200]}, got "
            f"{json.dumps(_tool_value(result), default=str)[:300]}"
        )
    return None


async def certify_client(spec: EnvironmentSpec, client: Client, report: Certification) -> None:
    """Replay ``spec``'s reference calls through a connected client, recording into ``report``."""
    listed = (await client.list_tools()).tools
    report.tools = [t.name for t in listed]
    by_name = {t.name: t for t in listed}
    for impl in spec.tools:
        name = impl.spec.name
        tool = by_name.get(name)
        if tool is None:
            report.checks.append(
                Check(name=f"tools/list {name}", ok=False, detail="missing from tools/list", kind=CheckKind.LISTING)
            )
            continue
        expected_schema = dict(impl.spec.input_schema)
        expected_schema.setdefault("type", "object")
        same = tool.input_schema == expected_schema and (tool.description or "") == impl.spec.description
        detail = "" if same else "schema or description differs from the spec"
        report.checks.append(Check(name=f"tools/list {name}", ok=same, detail=detail, kind=CheckKind.LISTING))
    control = EnvironmentControl(client)
    initial = await control.reset()  # opens the episode every reference call runs in
    ok = initial == spec.initial_state
    detail = "" if ok else "reset state differs from initial_state"
    report.checks.append(Check(name="reset -> initial state", ok=ok, detail=detail, kind=CheckKind.RESET))
    replayed: list[ToolCallRecord] = []
    for verifier in spec.verifiers:
        if verifier.tool is None:
            continue
        result = await control.call_tool(verifier.tool, verifier.arguments)
        replayed.append(
            ToolCallRecord(
                name=verifier.tool, arguments=verifier.arguments, result=_tool_value(result), is_error=result.is_error
            )
        )
        problem = _call_problem(verifier, result)
        report.passed += problem is None
        report.checks.append(
            Check(name=f"verifier {verifier.id} ({verifier.tool})", ok=problem is None, detail=problem or "",
                  kind=CheckKind.CALL)
        )
        if verifier.state_check and not result.is_error:
            state = (await control.state()).state
            for path, expected in verifier.state_check.items():
                try:
                    got = _get_path(state, path)
                    ok = result_matches(got, expected)
                    detail = "" if ok else f"expected {expected!r}, got {got!r}"
                except KeyError:
                    ok, detail = False, "no such path in the state"
                report.checks.append(
                    Check(name=f"verifier {verifier.id} state {path}", ok=ok, detail=detail, kind=CheckKind.STATE)
                )
    score = score_calls(replayed, spec.verifiers)
    report.reward = score.reward if score.total else None


async def certify_emitted(
    directory: str | Path, spec: EnvironmentSpec | None = None, *, timeout_s: float = 120.0
) -> Certification:
    """Certify the emitted server in ``directory`` (its own ``environment.json`` unless ``spec``
    is given): one stdio launch, one replay (see the module docstring)."""
    report = Certification(directory=str(directory))
    start = time.perf_counter()
    if spec is None:
        try:
            spec = load_emitted(directory)
        except (OSError, ValueError) as exc:
            report.error = f"{directory}: {exc}"
            return report
    report.environment_id, report.name = spec.id, spec.name
    report.calls = sum(v.tool is not None for v in spec.verifiers)
    if not report.calls:
        report.checks.append(
            Check(name="reference calls", ok=False, detail="the spec has none to replay", kind=CheckKind.REPLAY)
        )
    try:
        with anyio.fail_after(timeout_s):
            async with Client(stdio_parameters(directory)) as client:
                await certify_client(spec, client, report)
    except TimeoutError:
        report.error = f"the server did not answer within {timeout_s:g} s"
    except Exception as exc:  # a server that fails to start or dies is a failed certification, never a crash
        report.error = f"{type(exc).__name__}: {exc}"
    report.seconds = round(time.perf_counter() - start, 3)
    report.ok = report.error is None and bool(report.checks) and all(c.ok for c in report.checks)
    return report


async def validate_emitted(directory: str | Path, *, timeout_s: float = 120.0) -> Certification:
    """:func:`certify_emitted` of a directory with its own ``environment.json`` (``astra env validate``)."""
    return await certify_emitted(directory, timeout_s=timeout_s)
