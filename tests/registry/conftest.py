"""Fixtures of the registry tests: a fresh registry, real MCP servers (stdio, HTTP, in-process)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from astra.records import HttpLaunch, StdioLaunch
from astra.registry import Registry

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
EVERYTHING = REPO / ".ci" / "node" / "node_modules" / ".bin" / "mcp-server-everything"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "astra.db") as reg:
        yield reg


@pytest.fixture
def time_launch() -> StdioLaunch:
    binary = BIN / "mcp-server-time"
    if not binary.exists():
        pytest.skip("mcp-server-time is not installed next to the interpreter")
    return StdioLaunch(command=str(binary), args=["--local-timezone", "UTC"])


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "README.md").write_text("hello\n")
    subprocess.run(["git", "-C", str(repo), "add", "README.md"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "first"], check=True, env=env)
    return repo


def demo_server():  # noqa: ANN201 - MCPServer
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("demo-calc", instructions="A small calculator.")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def scale(values: list[float], factor: float = 2.0) -> list[float]:
        """Multiply every value by a factor."""
        return [v * factor for v in values]

    return server


def _serve_on_loopback(app) -> Iterator[int]:  # noqa: ANN001
    """Serve an ASGI app with uvicorn in a background thread on 127.0.0.1; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # readiness poll of a real server, bounded
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the uvicorn test server did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def http_server() -> Iterator[HttpLaunch]:
    """``demo_server()`` over streamable HTTP on 127.0.0.1."""
    for port in _serve_on_loopback(demo_server().streamable_http_app(host="127.0.0.1")):
        yield HttpLaunch(url=f"http://127.0.0.1:{port}/mcp", headers={"X-Test": "1"})


@pytest.fixture
def sse_server() -> Iterator[HttpLaunch]:
    """``demo_server()`` over the legacy HTTP+SSE transport on 127.0.0.1."""
    for port in _serve_on_loopback(demo_server().sse_app()):
        yield HttpLaunch(url=f"http://127.0.0.1:{port}/sse", headers={"X-Test": "1"}, transport="sse")
