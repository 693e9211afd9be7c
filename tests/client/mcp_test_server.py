"""A small real MCP server for the harness tests: in-process, stdio or streamable HTTP.

``python mcp_test_server.py stdio``, ``python mcp_test_server.py http <port>`` or
``python mcp_test_server.py sse <port>`` (legacy HTTP+SSE at ``/sse``), on 127.0.0.1.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def make_server(name: str = "testsrv") -> MCPServer:
    app = MCPServer(name)

    @app.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @app.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    @app.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @app.tool()
    async def sleep(seconds: float) -> str:
        """Sleep for the given seconds, then answer."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @app.tool()
    def fail(message: str) -> str:
        """Always fails (a tool-side error the model should see)."""
        raise ToolError(message)

    return app


if __name__ == "__main__":
    server = make_server()
    if sys.argv[1:2] == ["http"]:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif sys.argv[1:2] == ["sse"]:
        server.run(transport="sse", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
