"""Validate an emitted environment: launch it over stdio with the official client and replay
its verifiers' reference calls."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from pydantic import BaseModel, Field

from ._emit import load_emitted
from ._rewards import result_matches
from ._runtime import EnvironmentControl


class Check(BaseModel):
    name: str
    ok: bool
    detail: str = ""


class ValidationReport(BaseModel):
    directory: str
    environment_id: str | None = None
    name: str | None = None
    tools: list[str] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)
    ok: bool = False
    error: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _get_path(state: Any, dotted: str) -> Any:
    node = state
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


def stdio_parameters(directory: str | Path, python: str | None = None) -> StdioServerParameters:
    """How to launch an emitted server over stdio (the stdio client passes only a few env vars)."""
    env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG", "TMPDIR") if k in os.environ}
    return StdioServerParameters(
        command=python or sys.executable, args=[str(Path(directory).resolve() / "server.py")], env=env
    )


async def validate_emitted(directory: str | Path, *, timeout_s: float = 120.0) -> ValidationReport:
    """Launch ``DIR/server.py`` over stdio, list its tools, replay the reference calls in order
    (one episode, from the initial state) and check each expected result and state check."""
    report = ValidationReport(directory=str(directory))
    try:
        spec = load_emitted(directory)
    except (OSError, ValueError) as exc:
        report.error = f"{directory}: {exc}"
        return report
    report.environment_id, report.name = spec.id, spec.name
    try:
        with anyio.fail_after(timeout_s):
            async with Client(stdio_parameters(directory)) as client:
                listed = (await client.list_tools()).tools
                report.tools = [t.name for t in listed]
                by_name = {t.name: t for t in listed}
                for impl in spec.tools:
                    name = impl.spec.name
                    tool = by_name.get(name)
                    if tool is None:
                        report.checks.append(
                            Check(name=f"tools/list {name}", ok=False, detail="missing from tools/list")
                        )
                        continue
                    expected_schema = dict(impl.spec.input_schema)
                    expected_schema.setdefault("type", "object")
                    same = tool.input_schema == expected_schema and (tool.description or "") == impl.spec.description
                    report.checks.append(
                        Check(
                            name=f"tools/list {name}",
                            ok=same,
                            detail="" if same else "schema or description differs from the spec",
                        )
                    )
                control = EnvironmentControl(client)
                initial = await control.reset()  # opens the episode every reference call runs in
                ok = initial == spec.initial_state
                report.checks.append(
                    Check(
                        name="reset -> initial state",
                        ok=ok,
                        detail="" if ok else "reset state differs from initial_state",
                    )
                )
                for verifier in spec.verifiers:
                    if verifier.tool is None:
                        continue
                    result = await control.call_tool(verifier.tool, verifier.arguments)
                    text = "".join(getattr(c, "text", "") for c in result.content)
                    if result.is_error:
                        report.checks.append(
                            Check(
                                name=f"verifier {verifier.id} ({verifier.tool})",
                                ok=False,
                                detail=f"tool error: {text[:300]}",
                            )
                        )
                        continue
                    actual = result.structured_content if result.structured_content is not None else text
                    if verifier.expected_result is not None:
                        ok = result_matches(actual, verifier.expected_result)
                        detail = (
                            ""
                            if ok
                            else
                                f"expected {json.dumps(verifier.expected_result)[:300]}, got "
                                f"{json.dumps(actual, default=str)[:300]}"
                        )
                        report.checks.append(
                            Check(name=f"verifier {verifier.id} ({verifier.tool})", ok=ok, detail=detail)
                        )
                    if verifier.state_check:
                        state = (await control.state()).state
                        for path, expected in verifier.state_check.items():
                            try:
                                got = _get_path(state, path)
                                ok = result_matches(got, expected)
                                detail = "" if ok else f"expected {expected!r}, got {got!r}"
                            except KeyError:
                                ok, detail = False, "no such path in the state"
                            report.checks.append(
                                Check(name=f"verifier {verifier.id} state {path}", ok=ok, detail=detail)
                            )
    except TimeoutError:
        report.error = f"the server did not answer within {timeout_s:g} s"
    except Exception as exc:  # top level of a validation run: report, never crash the CLI
        report.error = f"{type(exc).__name__}: {exc}"
    report.ok = report.error is None and bool(report.checks) and all(c.ok for c in report.checks)
    return report
