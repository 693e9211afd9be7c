"""Live discovery against real MCP servers started by the tests."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp.server.lowlevel import Server

from astra.records import EnvironmentLaunch, StdioLaunch
from astra.registry import DiscoveryError, Registry, add_server, add_server_async, discover_tools, discover_tools_sync

from .conftest import BIN, EVERYTHING, demo_server


def test_time_server_over_stdio(time_launch: StdioLaunch) -> None:
    result = discover_tools_sync(time_launch, timeout_s=30)
    assert result.server_name == "mcp-time"
    assert result.name == "mcp-time"
    assert [t.name for t in result.tools] == ["get_current_time", "convert_time"]
    convert = result.tools[1]
    assert convert.server == "mcp-time"
    assert convert.input_schema["required"] == ["source_timezone", "time", "target_timezone"]
    assert set(convert.output_schema["properties"]) == {"source", "target", "time_difference"}
    assert convert.annotations["read_only_hint"] is True


def test_git_server_over_stdio(git_repo: Path, registry: Registry) -> None:
    binary = BIN / "mcp-server-git"
    if not binary.exists():
        pytest.skip("mcp-server-git is not installed")
    launch = StdioLaunch(command=str(binary), args=["--repository", str(git_repo)])
    spec, changed = add_server(registry, "git", launch, domain="dev", timeout_s=60)
    assert changed
    names = {t.name for t in spec.tools}
    assert {"git_status", "git_log", "git_diff", "git_commit"} <= names
    assert len(spec.tools) >= 10
    stored = registry.get_server("git")
    assert stored is not None and stored.launch == launch and stored.domain == "dev"
    assert [t.name for t in stored.tools] == [t.name for t in spec.tools]
    # discovering the same server again changes nothing
    assert add_server(registry, "git", launch, domain="dev", timeout_s=60)[1] is False


def test_in_process_mcpserver() -> None:
    result = anyio.run(lambda: discover_tools(demo_server(), timeout_s=10))
    assert result.name == "demo-calc"
    assert result.instructions == "A small calculator."
    add, scale = result.tools
    assert add.name == "add" and add.description == "Add two integers."
    assert add.input_schema["properties"]["a"]["type"] == "integer"
    assert scale.input_schema["properties"]["values"]["type"] == "array"
    assert scale.input_schema["required"] == ["values"]


def test_in_process_server_needs_an_explicit_launch(registry: Registry) -> None:
    with pytest.raises(ValueError, match="launch="):
        add_server(registry, "calc", demo_server())
    spec, changed = anyio.run(
        lambda: add_server_async(registry, "calc", demo_server(), launch=EnvironmentLaunch(environment_id="env-1"))
    )
    assert changed and registry.get_server("calc").launch == EnvironmentLaunch(environment_id="env-1")


def _paged_server(total: int, page_size: int) -> Server:
    tools = [
        types.Tool(name=f"tool_{i:03d}", description=f"tool number {i}",
                   input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})
        for i in range(total)
    ]
    seen_cursors: list[str | None] = []

    async def list_tools(ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:  # noqa: ANN001
        cursor = params.cursor if params else None
        seen_cursors.append(cursor)
        start = int(cursor) if cursor else 0
        end = start + page_size
        return types.ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < total else None)

    server = Server("paged", on_list_tools=list_tools)
    server.seen_cursors = seen_cursors  # type: ignore[attr-defined]
    return server


def test_pagination_is_followed() -> None:
    server = _paged_server(total=25, page_size=10)
    result = anyio.run(lambda: discover_tools(server, timeout_s=10))
    assert result.pages == 3
    assert [t.name for t in result.tools] == [f"tool_{i:03d}" for i in range(25)]
    assert server.seen_cursors == [None, "10", "20"]  # type: ignore[attr-defined]


def test_pagination_that_never_ends_is_an_error() -> None:
    async def list_tools(ctx, params):  # noqa: ANN001, ANN202
        return types.ListToolsResult(tools=[], next_cursor="same")

    with pytest.raises(DiscoveryError, match="pagination does not end"):
        anyio.run(lambda: discover_tools(Server("loop", on_list_tools=list_tools), timeout_s=10))


def test_streamable_http(http_server, registry: Registry) -> None:  # noqa: ANN001
    spec, changed = add_server(registry, "calc-http", http_server, timeout_s=20)
    assert changed
    assert [t.name for t in spec.tools] == ["add", "scale"]
    stored = registry.get_server("calc-http")
    assert stored.launch.kind == "http" and stored.launch.url == http_server.url
    assert stored.launch.headers == {"X-Test": "1"}


def test_legacy_sse(sse_server, registry: Registry) -> None:  # noqa: ANN001
    spec, changed = add_server(registry, "calc-sse", sse_server, timeout_s=20)
    assert changed and [t.name for t in spec.tools] == ["add", "scale"]
    stored = registry.get_server("calc-sse")
    assert stored.launch == sse_server and stored.launch.transport == "sse"


def test_sse_url_spoken_to_as_streamable_http_is_a_clear_error(sse_server) -> None:  # noqa: ANN001
    wrong = sse_server.model_copy(update={"transport": "streamable-http"})
    with pytest.raises(DiscoveryError, match="/sse"):
        discover_tools_sync(wrong, timeout_s=10)


def test_http_nobody_listening() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from astra.records import HttpLaunch

    with pytest.raises(DiscoveryError, match=f"127.0.0.1:{port}"):
        discover_tools_sync(HttpLaunch(url=f"http://127.0.0.1:{port}/mcp"), timeout_s=10)


@pytest.mark.node
def test_server_everything_over_stdio(registry: Registry) -> None:
    if not EVERYTHING.exists() or shutil.which("node") is None:
        pytest.skip("node or @modelcontextprotocol/server-everything is not installed (.ci/node)")
    launch = StdioLaunch(command=str(EVERYTHING), args=["stdio"])
    spec, changed = add_server(registry, "everything", launch, timeout_s=60)
    assert changed
    names = {t.name for t in spec.tools}
    assert "echo" in names and len(names) >= 5
    echo = next(t for t in spec.tools if t.name == "echo")
    assert "message" in echo.input_schema["properties"]


def _python_server(code: str) -> StdioLaunch:
    return StdioLaunch(command=sys.executable, args=["-c", code])


def test_crash_on_start_names_command_and_stderr(registry: Registry) -> None:
    launch = _python_server("import sys; print('fatal: missing API_TOKEN', file=sys.stderr); sys.exit(3)")
    with pytest.raises(DiscoveryError) as info:
        add_server(registry, "broken", launch, timeout_s=20)
    message = str(info.value)
    assert sys.executable in message
    assert "fatal: missing API_TOKEN" in message
    assert info.value.stderr_tail.strip() == "fatal: missing API_TOKEN"
    assert registry.get_server("broken") is None
    assert registry.counts()["servers"] == 0


def test_hang_times_out_with_stderr(registry: Registry) -> None:
    launch = _python_server(
        "import sys, time; print('waiting for a database', file=sys.stderr, flush=True); time.sleep(600)"
    )
    started = time.monotonic()
    with pytest.raises(DiscoveryError) as info:
        add_server(registry, "hung", launch, timeout_s=2)
    elapsed = time.monotonic() - started
    assert "within 2 s" in str(info.value)
    assert "waiting for a database" in info.value.stderr_tail
    # the timeout plus the SDK's bounded shutdown (2 s grace, then SIGTERM, then SIGKILL)
    assert elapsed < 2 + 8
    assert registry.get_server("hung") is None


def test_garbage_on_stdout_then_exit(registry: Registry) -> None:
    launch = _python_server("print('this is not JSON-RPC', flush=True); import sys; sys.stderr.write('bye\\n')")
    with pytest.raises(DiscoveryError) as info:
        add_server(registry, "garbage", launch, timeout_s=10)
    assert "bye" in info.value.stderr_tail
    assert registry.counts()["servers"] == 0


def test_command_not_found() -> None:
    with pytest.raises(DiscoveryError, match="command not found"):
        discover_tools_sync(StdioLaunch(command="/nonexistent/astra-test-server"), timeout_s=5)


def test_env_is_passed_explicitly() -> None:
    code = (
        "import os, sys\n"
        "from mcp.server.mcpserver import MCPServer\n"
        "s = MCPServer(os.environ['SERVER_NAME'])\n"
        "@s.tool()\n"
        "def ping() -> str:\n"
        "    return 'pong'\n"
        "s.run()\n"
    )
    result = discover_tools_sync(
        StdioLaunch(command=sys.executable, args=["-c", code], env={"SERVER_NAME": "from-env"}), timeout_s=30
    )
    assert result.name == "from-env" and [t.name for t in result.tools] == ["ping"]
