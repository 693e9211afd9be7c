"""Servers that cannot be run: an in-process MCP server whose tools are simulated by an LLM.

The harness talks to it through the same MCP client path as to a real server; only the tool
bodies differ. Arguments are validated against the tool's input schema first (a bad call is a
tool error the agent sees, as on a real server); a simulator reply that is not valid JSON is
a tool error too (``simulator_failed``), never made-up data.

The simulator keeps a memory per episode (the ``_meta["astra/episode"]`` id the harness sends):
earlier calls and their results go into the prompt, so a city found in one call has the same
coordinates in the next; the user's request (looked up by the episode's trajectory id) is in the
prompt too. ``error_rate`` injects transient failures (a seeded draw per episode and call); the
pipeline marks those steps ``error_kind="injected_error"`` in the trajectory.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from mcp_types import Tool as MCPTool
from pydantic import BaseModel

from astra.client import Model
from astra.records import ServerSpec, ToolErrorKind, ToolSpec, Trajectory, canonical_json, stable_id
from astra.servers import EPISODE_META_KEY, request_context
from astra.synthesis._llm import LLMOutputError, ask_json

SIMULATOR_VERSION = "tool-sim-v2"
SIMULATOR_SYSTEM = (
    "You simulate an API tool. Given its documentation and a call, reply with the JSON the tool would return: "
    '{"result": <plausible, concrete, consistent data>} or, when the call cannot succeed, {"error": "<message>"}. '
    "Stay consistent with the earlier calls of this session: the same entity keeps the same ids and values."
)
INJECTED_ERRORS = (
    "503 Service Unavailable: upstream timed out, try again",
    "429 Too Many Requests: rate limit exceeded, retry later",
    "500 Internal Server Error: connection reset by peer",
)
INJECTED_KIND = ToolErrorKind.injected_error
_MAX_EPISODES = 4096  # memory of the most recent episodes (bounded: long runs never grow without limit)
_MEMORY_CALLS = 8     # earlier calls shown to the simulator


class SimulatedReply(BaseModel):
    result: Any = None
    error: str | None = None


class SimulatedServer(MCPServer):
    """An MCP server for a :class:`ServerSpec` whose tool calls are answered by ``model``."""

    astra_simulated = True  # the client harness marks this server's steps as simulated

    def __init__(self, spec: ServerSpec, model: Model, *, error_rate: float = 0.0, seed: int = 0,
                 user_query: Callable[[str], str | None] | None = None) -> None:
        super().__init__(name=spec.name, description=spec.description or None)
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate {error_rate} is outside [0, 1]")
        self.spec = spec
        self.model = model
        self.tools_by_name: dict[str, ToolSpec] = {t.name: t for t in spec.tools}
        self.calls = 0
        self.audit: list[dict[str, Any]] = []
        self.error_rate = error_rate
        self.seed = seed
        self.user_query = user_query
        self.memory: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def episode_calls(self, episode: str) -> list[dict[str, Any]]:
        """The calls this server answered in an episode (tool, arguments, result or error, injected)."""
        return list(self.memory.get(episode, []))

    def injected(self, trajectory_id: str) -> list[tuple[str, str]]:
        """(tool, canonical arguments) of the injected failures of a trajectory's episode(s)."""
        return [(c["tool"], canonical_json(c["arguments"])) for ep, calls in self.memory.items()
                if ep == trajectory_id or ep.startswith(trajectory_id + ":") for c in calls if c.get("injected")]

    def _remember(self, episode: str, entry: dict[str, Any]) -> None:
        self.memory.setdefault(episode, []).append(entry)
        self.memory.move_to_end(episode)
        while len(self.memory) > _MAX_EPISODES:
            self.memory.popitem(last=False)

    def _inject(self, episode: str, ordinal: int) -> str | None:
        if self.error_rate <= 0.0:
            return None
        draw = int(stable_id("inject", self.seed, self.spec.name, episode, ordinal), 16) / 16 ** 16
        if draw >= self.error_rate:
            return None
        return INJECTED_ERRORS[int(stable_id("which", self.seed, episode, ordinal), 16) % len(INJECTED_ERRORS)]

    async def list_tools(self) -> list[MCPTool]:
        return [
            MCPTool(name=t.name, title=t.title, description=t.description or None, input_schema=t.input_schema)
            for t in self.spec.tools
        ]

    # Shim (no public way in mcp 2.3): see EnvironmentServer._tool_input_schema in astra/servers/_runtime.py.
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
        episode = _episode_of(context)
        earlier = self.memory.get(episode, [])
        injected = self._inject(episode, len(earlier))
        if injected is not None:
            self._remember(episode, {"tool": name, "arguments": arguments, "error": injected, "injected": True})
            return CallToolResult(content=[TextContent(type="text", text=injected)], is_error=True)
        self.calls += 1
        doc = {"server": self.spec.name, "tool": tool.name, "description": tool.description,
               "input_schema": tool.input_schema, "output_schema": tool.output_schema}
        query = self.user_query(episode) if self.user_query is not None else None
        history = [{k: c[k] for k in ("tool", "arguments", "result", "error") if k in c}
                   for c in earlier[-_MEMORY_CALLS:]]
        context_text = (f"The user's request in this session: {query[:1500]}\n\n" if query else "") + (
            f"Earlier calls in this session (stay consistent):\n{json.dumps(history, ensure_ascii=False)[:4000]}\n\n"
            if history else "")
        try:
            reply, audit = await ask_json(
                self.model,
                f"{context_text}Tool documentation:\n{json.dumps(doc, ensure_ascii=False)[:4000]}\n\n"
                f"Call arguments:\n{json.dumps(arguments, ensure_ascii=False)[:2000]}",
                SimulatedReply, system=SIMULATOR_SYSTEM, prompt_version=SIMULATOR_VERSION, retries=1,
            )
        except LLMOutputError as exc:
            self.audit += exc.audit
            raise ToolError(f"simulator_failed: {exc.reason[:200]}") from exc
        self.audit += audit
        if reply.error:
            self._remember(episode, {"tool": name, "arguments": arguments, "error": reply.error})
            return CallToolResult(content=[TextContent(type="text", text=reply.error)], is_error=True)
        self._remember(episode, {"tool": name, "arguments": arguments, "result": reply.result})
        text = reply.result if isinstance(reply.result, str) else json.dumps(reply.result, ensure_ascii=False)
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=False)


def _episode_of(context: Any) -> str:
    """The episode id the harness sent in ``_meta`` (one shared memory when none was sent)."""
    meta = getattr(request_context(context), "meta", None)
    if isinstance(meta, Mapping):
        value = meta.get(EPISODE_META_KEY)
        if isinstance(value, str) and value:
            return value
    return "default"


def mark_injected(traj: Trajectory, servers: Mapping[str, SimulatedServer]) -> Trajectory:
    """Mark the steps whose failure the simulator injected (``error_kind="injected_error"``)."""
    pending = {name: server.injected(traj.id) for name, server in servers.items()}
    if not any(pending.values()):
        return traj
    steps = []
    count = 0
    for step in traj.steps:
        queue = pending.get(step.server or "")
        args = step.arguments if isinstance(step.arguments, dict) else {}
        key = (step.server_tool or step.tool, canonical_json(args))
        if queue and step.is_error and queue[0] == key:
            queue.pop(0)
            step = step.model_copy(update={"error_kind": INJECTED_KIND})
            count += 1
        steps.append(step)
    return traj.model_copy(update={"steps": steps, "meta": {**traj.meta, "injected_errors": count}})
