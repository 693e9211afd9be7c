"""Fixtures of the compatibility tests: small files in the original ASTRA's exact shapes
(github.com/LianjiaTech/astra, written from its readers and writers), and a real MCP server
over streamable HTTP on 127.0.0.1 that demands a bearer secret."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SECRET = "s3cret-token-41"

TOOLS = [
    {"name": "add", "description": "Add two integers.",
     "parameters": {"type": "object", "properties": {"a": {"type": "int"}, "b": {"type": "int"}},
                    "required": ["a", "b"]}},
    {"name": "scale", "description": "Multiply a number by a factor.",
     "parameters": {"type": "object", "properties": {"x": {"type": "float"}, "factor": {"type": "float"}},
                    "required": ["x"]}},
]


def base_info(name: str = "calc", tools: list[dict[str, Any]] | None = None, **group: Any) -> dict[str, Any]:
    info = {"server_title": name and name.title(), "server_name": name, "server_description": f"{name} tools",
            "domain": "math"}
    info.update(group)
    return {"group_info": {k: v for k, v in info.items() if v is not None},
            "tool_list": TOOLS if tools is None else tools}


def mcp_info(name: str = "calc", call_info: dict[str, Any] | None = None, **group: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"base_info": base_info(name, **group)}
    if call_info is not None:
        out["call_info"] = call_info
    return out


def task_line(question: str, tools: list[str], *, server: str = "calc", call_info: dict[str, Any] | None = None,
              augmented: dict[str, Any] | None = None, scores: dict[str, Any] | None = None,
              sub_chain: list[str] | None = None) -> dict[str, Any]:
    """One line of the original tasks.jsonl (1_3_augment_query.py + 1_3_parse_score.py output)."""
    query_info: dict[str, Any] = {"have_plan": True, "max_tool_use": -1, "mode": "single_server",
                                  "server_analysis": "a calculator", "target_tools": tools,
                                  "generated_question": question, "augmented_query_info": augmented or {}}
    if scores is not None:
        query_info["query_score_info"] = {"quality_scores": scores, "quality_reasoning": {k: "ok" for k in scores}}
    line = {"query_info": query_info, "mcp_info": mcp_info(server, call_info), "graph": {"graph_detect": []}}
    if sub_chain is not None:
        line["chain_info"] = {"sub_chain": sub_chain}
    return line


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with open(path, "wb") as fh:
        fh.writelines((row if isinstance(row, bytes) else json.dumps(row).encode() if not isinstance(row, str)
                      else row.encode()) + b"\n" for row in rows)
    return path


def calc_server():
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("calc-remote")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def scale(x: float, factor: float = 2.0) -> float:
        """Multiply a number by a factor."""
        return x * factor

    return server


class BearerGate:
    """ASGI middleware: 401 unless ``Authorization: Bearer SECRET``; records what it saw."""

    def __init__(self, app: Any, secret: str) -> None:
        self.app = app
        self.secret = secret
        self.seen: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            auth = dict(scope.get("headers") or []).get(b"authorization")
            self.seen.append(auth.decode() if auth else None)
            if auth != f"Bearer {self.secret}".encode():
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


@pytest.fixture
def secret_http_server() -> Iterator[tuple[str, BearerGate]]:
    """``calc_server()`` over streamable HTTP on 127.0.0.1 behind a bearer secret; yields (url, gate)."""
    import uvicorn

    gate = BearerGate(calc_server().streamable_http_app(host="127.0.0.1"), SECRET)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(gate, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # readiness of a real server, bounded
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the uvicorn test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp", gate
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
