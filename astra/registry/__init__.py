"""astra.registry: the durable record of MCP servers, their tools, tool graphs and environments.

- :class:`Registry`: one SQLite database (WAL, versioned schema with migrations).
- :func:`import_file`: ASTRA ``mcp_servers.jsonl`` and MCP registry ``server.json`` files.
- :func:`discover_tools` / :func:`add_server`: live ``tools/list`` over stdio, streamable
  HTTP, legacy HTTP+SSE or in-process, with the official ``mcp`` client
  (:func:`client_target` says how a launch is reached; the client harness uses it too).
- :func:`to_networkx` / :func:`from_networkx` / :func:`export_graph`: graphs for algorithms
  and for GraphML / node-link JSON / DOT.
- :func:`normalize_schema`: loose tool schemas to valid JSON Schema (Draft 2020-12).
"""

from __future__ import annotations

from pathlib import Path

from astra.records import (
    EnvironmentLaunch,
    GraphEdge,
    HttpLaunch,
    ServerSpec,
    SimulatedLaunch,
    StdioLaunch,
    ToolGraph,
    ToolSpec,
)
from astra.registry._discovery import (
    DiscoveryError,
    DiscoveryResult,
    MissingSecretError,
    add_server,
    add_server_async,
    client_target,
    discover_tools,
    discover_tools_sync,
    failure_reason,
    tool_spec_of,
)
from astra.registry._graph import GRAPH_FORMATS, export_graph, from_networkx, parse_graph, to_networkx
from astra.registry._import import (
    ImportReport,
    RecordError,
    import_file,
    iter_json_lines,
    parse_astra_record,
    read_input_file,
    unwrap_mcp_info,
)
from astra.registry._schema import SchemaError, normalize_schema
from astra.registry._store import NotFoundError, Registry, RegistryError

SAMPLE_SERVERS: Path = Path(__file__).parent / "data" / "sample_servers.jsonl"
"""Bundled ASTRA-format sample servers (documentation only: their tools are simulated)."""

__all__ = [
    "Registry",
    "RegistryError",
    "NotFoundError",
    "ImportReport",
    "RecordError",
    "import_file",
    "parse_astra_record",
    "SchemaError",
    "normalize_schema",
    "DiscoveryError",
    "DiscoveryResult",
    "discover_tools",
    "discover_tools_sync",
    "add_server",
    "add_server_async",
    "client_target",
    "failure_reason",
    "tool_spec_of",
    "MissingSecretError",
    "read_input_file",
    "iter_json_lines",
    "unwrap_mcp_info",
    "to_networkx",
    "from_networkx",
    "export_graph",
    "parse_graph",
    "GRAPH_FORMATS",
    "SAMPLE_SERVERS",
    "ServerSpec",
    "ToolSpec",
    "ToolGraph",
    "GraphEdge",
    "StdioLaunch",
    "HttpLaunch",
    "EnvironmentLaunch",
    "SimulatedLaunch",
]
