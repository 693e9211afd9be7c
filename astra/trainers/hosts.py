"""MCP host configs for an export: ``mcp.json`` (Claude Desktop, Cursor: ``mcpServers``) and
VS Code's ``.vscode/mcp.json`` (``servers``, each ``type: stdio``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astra.trainers.export import ExportEnvironment


def _launch(env: ExportEnvironment) -> dict[str, Any]:
    launch = env.launch_config()
    if launch.get("kind") == "http":
        return {"url": launch["url"], **({"headers": launch["headers"]} if launch.get("headers") else {})}
    entry: dict[str, Any] = {"command": launch["command"], "args": list(launch.get("args") or [])}
    if launch.get("env"):
        entry["env"] = dict(launch["env"])
    return entry


def mcp_json(envs: Sequence[ExportEnvironment]) -> dict[str, Any]:
    """Claude Desktop / Cursor: ``{"mcpServers": {name: {command, args}}}`` (HTTP servers by ``url``)."""
    return {"mcpServers": {env.name: _launch(env) for env in envs}}


def vscode_mcp_json(envs: Sequence[ExportEnvironment]) -> dict[str, Any]:
    """VS Code: ``{"servers": {name: {"type": "stdio", command, args}}}`` (``type: http`` for URLs)."""
    servers = {}
    for env in envs:
        entry = _launch(env)
        servers[env.name] = {"type": "http" if "url" in entry else "stdio", **entry}
    return {"servers": servers}


def write_host_configs(envs: Sequence[ExportEnvironment], out: Path) -> dict[str, Path]:
    paths = {"mcp_json": out / "mcp.json", "vscode_mcp_json": out / ".vscode" / "mcp.json"}
    paths["vscode_mcp_json"].parent.mkdir(parents=True, exist_ok=True)
    paths["mcp_json"].write_text(json.dumps(mcp_json(envs), indent=2), "utf-8")
    paths["vscode_mcp_json"].write_text(json.dumps(vscode_mcp_json(envs), indent=2), "utf-8")
    return paths
