"""BFCL's backend classes served as real MCP servers (official SDK ``MCPServer``).

Each backend object (a ``GorillaFileSystem``, a ``TradingBot``, ...) becomes one MCP server
whose tools are the object's public methods, described by BFCL's function docs converted to
JSON Schema. The code is BFCL's own, trusted, so it runs unsandboxed in this process. A
tool returns exactly the text BFCL's executor would produce (``json.dumps`` of a dict
result, ``str`` of anything else, ``"Error during execution: ..."`` on an exception), so
the model sees what it would see under BFCL's own harness.

Arguments are not validated against the schema before the call, on purpose: BFCL's
checker ``eval``s whatever the model sent, and the MCP server must not diverge from it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools.base import Tool
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from astra.bfcl._data import function_docs, new_backend_instance
from astra.bfcl._schema import function_input_schema

SERVER_PREFIX = "bfcl_"


def server_name(class_name: str) -> str:
    """The MCP server name of a backend class: ``bfcl_<ClassName>``."""
    return f"{SERVER_PREFIX}{class_name}"


def bfcl_result_text(result: Any) -> str:
    """What BFCL's ``execute_multi_turn_func_call`` records for a call's return value."""
    if type(result) is str:
        return result
    if type(result) is dict:
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def _placeholder() -> None:  # the SDK wants a function to take metadata from; run() replaces it
    return None


class BackendMethodTool(Tool):
    """An MCP tool that calls one bound method of a BFCL backend object."""

    method: Callable[..., Any] = Field(exclude=True)

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        try:
            value = self.method(**arguments)
        except Exception as exc:  # noqa: BLE001 - BFCL turns every exception into a result string
            return CallToolResult(content=[TextContent(type="text", text=f"Error during execution: {exc}")], is_error=True)
        structured = value if type(value) is dict and _json_safe(value) else None
        return CallToolResult(
            content=[TextContent(type="text", text=bfcl_result_text(value))],
            structured_content=structured,
        )


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def _tool_templates(class_name: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    # Building a Tool costs ~1 ms (the SDK makes a pydantic model per function); do it once
    # per class and bind each episode's methods into copies.
    out = []
    for doc in function_docs(class_name):
        base = Tool.from_function(_placeholder, name=doc["name"], description=doc.get("description", ""), structured_output=False)
        fields = {k: getattr(base, k) for k in type(base).model_fields}
        fields["parameters"] = function_input_schema(doc)
        out.append((doc["name"], fields))
    return tuple(out)


def backend_tools(class_name: str, instance: Any) -> list[Tool]:
    """One MCP tool per documented public method of ``instance``."""
    tools: list[Tool] = []
    for name, fields in _tool_templates(class_name):
        method = getattr(instance, name, None)
        if method is None or not callable(method):
            raise ValueError(f"BFCL doc names {class_name}.{name}, which the class does not define")
        tools.append(BackendMethodTool.model_construct(**fields, method=method))
    return tools


def backend_server(class_name: str, instance: Any) -> MCPServer:
    """An MCP server exposing ``instance`` (a BFCL backend object) as tools."""
    return MCPServer(
        name=server_name(class_name),
        instructions=f"BFCL multi-turn backend {class_name} (bfcl-eval), state is per episode.",
        tools=backend_tools(class_name, instance),
    )


class BfclEpisodeServers:
    """The MCP servers of one entry: fresh backend objects with the entry's initial_config loaded."""

    def __init__(self, involved_classes: list[str], initial_config: dict[str, Any], *, long_context: bool) -> None:
        self.instances: dict[str, Any] = {
            name: new_backend_instance(name, initial_config, long_context=long_context) for name in involved_classes
        }
        self.servers: dict[str, MCPServer] = {
            server_name(name): backend_server(name, inst) for name, inst in self.instances.items()
        }

    def targets(self) -> list[tuple[str, MCPServer]]:
        """``(name, MCPServer)`` pairs, the in-process targets of an MCP client."""
        return list(self.servers.items())
