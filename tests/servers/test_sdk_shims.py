"""The few places ASTRA leans on the mcp SDK beyond its public API, each checked here so that an
SDK upgrade that changes what they rely on fails a test instead of silently changing behaviour."""

from __future__ import annotations

import httpx2
import pytest
from mcp import MCPError
from mcp.server.mcpserver import Context
from mcp.shared import _httpx_utils
from mcp.types import CONNECTION_CLOSED

from astra.client import ScriptedModel
from astra.records import EnvironmentSpec, ServerSpec, ToolSpec
from astra.registry._discovery import MCP_HTTP_TIMEOUT, failure_reason
from astra.servers import build_server, request_context
from astra.synthesis.trajectories import SimulatedServer


def test_the_sdk_asks_environment_servers_for_their_tool_schemas(inventory: EnvironmentSpec) -> None:
    # Mcp-Param header validation looks the schema up through the low-level server's hook, which
    # MCPServer wires to its private _tool_input_schema: our servers' tools come from JSON schemas.
    server = build_server(inventory, sandboxed=False)
    lookup = server._lowlevel_server.get_tool_input_schema
    assert lookup is not None
    for impl in inventory.tools:
        assert lookup(impl.spec.name) == impl.spec.input_schema
    assert lookup("no_such_tool") is None


def test_the_sdk_asks_simulated_servers_for_their_tool_schemas() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    spec = ServerSpec(id="geo", name="geo", tools=[ToolSpec(server="geo", name="find", input_schema=schema)])
    server = SimulatedServer(spec, ScriptedModel([]))
    lookup = server._lowlevel_server.get_tool_input_schema
    assert lookup is not None and lookup("find") == schema and lookup("nope") is None


def test_request_context_outside_a_request_is_none() -> None:
    assert request_context(None) is None
    assert request_context(Context()) is None  # the SDK's public property raises ValueError there


def test_http_timeout_is_the_sdk_default() -> None:
    # discovery builds its own client (to send headers); it keeps the SDK's transport defaults
    default = _httpx_utils.create_mcp_http_client().timeout
    assert (MCP_HTTP_TIMEOUT.connect, MCP_HTTP_TIMEOUT.read) == (default.connect, default.read)
    assert isinstance(MCP_HTTP_TIMEOUT, httpx2.Timeout)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MCPError(code=CONNECTION_CLOSED, message="Connection closed"), "the server closed the connection"),
        (MCPError(code=-32602, message="Connection closed"), "MCPError: "),
    ],
)
def test_failure_reason_goes_by_the_error_code(error: MCPError, reason: str) -> None:
    assert failure_reason(ExceptionGroup("task group", [error])).startswith(reason)
