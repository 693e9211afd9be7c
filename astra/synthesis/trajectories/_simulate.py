"""Servers that cannot be run: an in-process MCP server whose tools are simulated by an LLM.

The harness talks to it through the same MCP client path as to a real server; only the tool
bodies differ. Arguments are validated against the tool's input schema first (a bad call is a
tool error the agent sees, as on a real server); a simulator reply that is not valid JSON is
a tool error too (``simulator_failed``), never made-up data.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from mcp_types import Tool as MCPTool
from pydantic import BaseModel

from astra.client import Model
from astra.records import ServerSpec, ToolSpec
from astra.synthesis._llm import LLMOutputError, ask_json

SIMULATOR_VERSION = "tool-sim-v1"
SIMULATOR_SYSTEM = (
    "You simulate an API tool. Given its documentation and a call, reply with the JSON the tool would return: "
    '{"result": <plausible, concrete, consistent data>} or, when the call cannot succeed, {"error": "<message>"}.'
)


class SimulatedReply(BaseModel):
    result: Any = None
    error: str | None = None


class SimulatedServer(MCPServer):
    """An MCP server for a :class:`ServerSpec` whose tool calls are answered by ``model``."""

    astra_simulated = True  # the client harness marks this server's steps as simulated

    def __init__(self, spec: ServerSpec, model: Model) -> None:
        super().__init__(name=spec.name, description=spec.description or None)
        self.spec = spec
        self.model = model
        self.tools_by_name: dict[str, ToolSpec] = {t.name: t for t in spec.tools}
        self.calls = 0
        self.audit: list[dict[str, Any]] = []

    async def list_tools(self) -> list[MCPTool]:
        return [
            MCPTool(name=t.name, title=t.title, description=t.description or None, input_schema=t.input_schema)
            for t in self.spec.tools
        ]

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.tools_by_name.get(name)
        return None if tool is None else tool.input_schema

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> CallToolResult:
        tool = self.tools_by_name.get(name)
        if tool is None:
            raise ToolError(f"Unknown tool: {name}")
        try:
            jsonschema.validate(arguments, tool.input_schema)
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path) or "(arguments)"
            raise ToolError(f"invalid arguments for {name}: {path}: {exc.message}") from exc
        except jsonschema.SchemaError:
            pass  # a broken schema in the docs is not the caller's fault: let the simulator answer
        self.calls += 1
        doc = {"server": self.spec.name, "tool": tool.name, "description": tool.description,
               "input_schema": tool.input_schema, "output_schema": tool.output_schema}
        try:
            reply, audit = await ask_json(
                self.model,
                f"Tool documentation:\n{json.dumps(doc, ensure_ascii=False)[:4000]}\n\n"
                f"Call arguments:\n{json.dumps(arguments, ensure_ascii=False)[:2000]}",
                SimulatedReply, system=SIMULATOR_SYSTEM, prompt_version=SIMULATOR_VERSION, retries=1,
            )
        except LLMOutputError as exc:
            self.audit += exc.audit
            raise ToolError(f"simulator_failed: {exc.reason[:200]}") from exc
        self.audit += audit
        if reply.error:
            return CallToolResult(content=[TextContent(type="text", text=reply.error)], is_error=True)
        text = reply.result if isinstance(reply.result, str) else json.dumps(reply.result, ensure_ascii=False)
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=False)
