"""MCP host configs: each server entry launches a working MCP server (the official client lists its tools)."""

from __future__ import annotations

import json

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from astra.trainers import ExportEnvironment
from astra.trainers.hosts import write_host_configs


@pytest.mark.anyio
async def test_mcp_json_and_vscode_block_launch_the_servers(environments: list[ExportEnvironment], tmp_path) -> None:
    paths = write_host_configs(environments, tmp_path)
    desktop = json.loads(paths["mcp_json"].read_text())["mcpServers"]
    vscode = json.loads((tmp_path / ".vscode" / "mcp.json").read_text())["servers"]
    assert set(desktop) == set(vscode) == {"inventory", "warehouse"}
    assert all(entry["type"] == "stdio" for entry in vscode.values())
    entry = desktop["inventory"]
    assert {k: v for k, v in vscode["inventory"].items() if k != "type"} == entry
    async with Client(StdioServerParameters(command=entry["command"], args=entry["args"])) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert "get_item" in names and "create_order" in names
