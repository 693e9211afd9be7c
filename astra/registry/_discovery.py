"""Live discovery: start or reach an MCP server with the official client and list all its tools.

A server that cannot be spawned, exits, hangs or answers garbage raises
:class:`DiscoveryError` naming the command (or URL) with the tail of its stderr, within
``timeout_s`` plus the SDK's bounded shutdown (a hung stdio server gets 2 s to exit after
its stdin closes, then SIGTERM, then SIGKILL). Nothing is written to the registry unless
discovery succeeded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import tempfile
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import httpx2
from mcp import MCPError
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.types import CONNECTION_CLOSED
from mcp.types import Tool as MCPTool
from pydantic import BaseModel, Field

from astra.errors import AstraError, UserError
from astra.records import EnvironmentLaunch, HttpLaunch, ServerSpec, SimulatedLaunch, StdioLaunch, ToolSpec, stable_id
from astra.registry._schema import SchemaError, validate_schema
from astra.registry._store import Registry

__all__ = [
    "DiscoveryError",
    "DiscoveryResult",
    "DiscoveryTarget",
    "discover_tools",
    "discover_tools_sync",
    "add_server",
    "add_server_async",
    "describe_target",
    "client_target",
    "failure_reason",
    "resolve_http_launch",
    "tool_spec_of",
    "MissingSecretError",
]

DiscoveryTarget = StdioLaunch | HttpLaunch | MCPServer | Server
STDERR_TAIL_CHARS = 2000
MAX_PAGES = 1000
MCP_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""The SDK's own default for its HTTP transports: 30 s to connect/write, 300 s to read (a server
may hold a response stream open). Passed explicitly: the SDK's factory for it is private."""


class DiscoveryError(AstraError, RuntimeError):
    """Discovery failed; the message names the command/URL and carries the server's stderr tail."""

    def __init__(self, target: str, reason: str, stderr_tail: str = "") -> None:
        message = f"discovery of `{target}` failed: {reason}"
        if stderr_tail.strip():
            message += "\n--- server stderr (tail) ---\n" + stderr_tail.rstrip()
        super().__init__(message)
        self.target = target
        self.reason = reason
        self.stderr_tail = stderr_tail


class DiscoveryResult(BaseModel):
    """What a live server said about itself, and all its tools (every page of ``tools/list``)."""

    name: str = Field(description="the registry name used for the tools' `server` field")
    server_name: str | None = Field(default=None, description="serverInfo.name as the server reported it")
    server_title: str | None = None
    server_version: str | None = None
    server_description: str | None = None
    instructions: str | None = None
    protocol_version: str | None = None
    pages: int = 0
    tools: list[ToolSpec] = Field(default_factory=list)


def client_target(target: DiscoveryTarget, *, errlog: TextIO | None = None) -> Any:
    """What ``mcp.client.Client(...)`` takes to reach ``target``: a stdio transport (the
    launch's ``env`` passed explicitly), the URL of a streamable HTTP endpoint, a
    streamable HTTP transport with the launch's headers, an SSE transport, or the
    in-process server itself. One place, so discovery and rollouts reach a server alike."""
    if isinstance(target, StdioLaunch):
        params = StdioServerParameters(command=target.command, args=list(target.args), env=dict(target.env) or None,
                                       cwd=target.cwd)
        return stdio_client(params, errlog=errlog) if errlog is not None else stdio_client(params)
    if isinstance(target, HttpLaunch):
        target = resolve_http_launch(target)
        if target.transport == "sse":
            return sse_client(target.url, headers=dict(target.headers) or None)
        if target.headers:
            return _streamable_http_with_headers(target.url, dict(target.headers))
        return target.url
    return target


class MissingSecretError(UserError, ValueError):
    """A launch refers to a secret (``${VAR}``) that is not set in the environment."""


_SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _resolve_refs(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise MissingSecretError(f"{where} needs ${name}, which is not set in the environment")
            return environ[name]

        return _SECRET_REF.sub(one, value)
    if isinstance(value, dict):
        return {k: _resolve_refs(v, f"{where}.{k}", environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    return value


def resolve_http_launch(launch: HttpLaunch, environ: Mapping[str, str] | None = None) -> HttpLaunch:
    """The launch to connect with: ``${VAR}`` references in its URL, headers and ``url_config``
    filled from the environment (the registry stores only the references), and ``url_config``
    put base64-encoded into the URL's ``{config_b64}`` (Smithery). Raises :class:`MissingSecretError`."""
    env = os.environ if environ is None else environ
    url = _resolve_refs(launch.url, "url", env)
    if launch.url_config is not None:
        config = _resolve_refs(launch.url_config, "url_config", env)
        url = url.replace("{config_b64}", base64.b64encode(json.dumps(config).encode()).decode())
    headers = _resolve_refs(dict(launch.headers), "header", env)
    if url == launch.url and headers == launch.headers and launch.url_config is None:
        return launch
    return launch.model_copy(update={"url": url, "headers": headers, "url_config": None})


@asynccontextmanager
async def _streamable_http_with_headers(url: str, headers: dict[str, str]) -> AsyncGenerator[Any, None]:
    # the transport does not close an http client it was given: this owns it
    http = httpx2.AsyncClient(headers=headers, timeout=MCP_HTTP_TIMEOUT)
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


def describe_target(target: DiscoveryTarget) -> str:
    """How a target reads in messages: the command line, the URL, or the in-process server's name."""
    if isinstance(target, StdioLaunch):
        return shlex.join([target.command, *target.args])
    if isinstance(target, HttpLaunch):
        return target.url
    if isinstance(target, MCPServer):
        return f"in-process MCPServer {target.name!r}"
    return f"in-process Server {target.name!r}"


def failure_reason(exc: BaseException) -> str:
    """Why reaching a server failed, in words: the innermost meaningful message of a
    (possibly grouped: task groups wrap the real cause) exception. Used by discovery and by
    the client harness when a server cannot be (re)connected."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    if isinstance(exc, FileNotFoundError):
        return f"command not found ({exc.filename or exc})"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MCPError) and exc.error.code == CONNECTION_CLOSED:
        return "the server closed the connection (did it exit or crash?)"
    return f"{type(exc).__name__}: {text}"


def _tail(log: TextIO | None) -> str:
    if log is None:
        return ""
    try:
        log.flush()
        log.seek(0)
        text = log.read()
    except (OSError, ValueError):
        return ""
    return text[-STDERR_TAIL_CHARS:]


def tool_spec_of(tool: MCPTool, server: str) -> ToolSpec:
    """The ``ToolSpec`` of one ``tools/list`` entry of ``server`` (the one converter: discovery and
    the client harness). An empty input schema becomes the empty object schema."""
    annotations = tool.annotations.model_dump(mode="json", exclude_none=True) if tool.annotations else {}
    return ToolSpec(
        server=server,
        name=tool.name,
        title=tool.title,
        description=tool.description or "",
        input_schema=dict(tool.input_schema or {"type": "object", "properties": {}}),
        output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
        annotations=annotations,
    )


async def _list_all(client: Client, name: str | None, max_pages: int) -> DiscoveryResult:
    info = client.server_info
    server = name or (info.name if info else None)
    if not server:
        raise ValueError("the server did not report a name; pass name=")
    tools: list[ToolSpec] = []
    seen: set[str] = set()
    cursor: str | None = None
    cursors: set[str] = set()
    pages = 0
    while True:
        page = await client.list_tools(cursor=cursor, cache_mode="refresh")
        pages += 1
        for tool in page.tools:
            if tool.name in seen:
                raise ValueError(f"tools/list returned tool {tool.name!r} twice")
            seen.add(tool.name)
            spec = tool_spec_of(tool, server)
            try:
                validate_schema(spec.input_schema, field=f"{tool.name}.inputSchema")
                if spec.output_schema is not None:
                    validate_schema(spec.output_schema, field=f"{tool.name}.outputSchema")
            except SchemaError as exc:
                raise ValueError(f"invalid schema: {exc}") from None
            tools.append(spec)
        cursor = page.next_cursor
        if cursor is None:
            break
        if cursor in cursors or pages >= max_pages:
            raise ValueError(f"tools/list pagination does not end (cursor {cursor!r} after {pages} pages)")
        cursors.add(cursor)
    return DiscoveryResult(
        name=server,
        server_name=info.name if info else None,
        server_title=getattr(info, "title", None) if info else None,
        server_version=(info.version or None) if info else None,
        server_description=getattr(info, "description", None) if info else None,
        instructions=client.instructions,
        protocol_version=client.protocol_version,
        pages=pages,
        tools=tools,
    )


async def discover_tools(
    target: DiscoveryTarget,
    *,
    name: str | None = None,
    timeout_s: float = 30.0,
    max_pages: int = MAX_PAGES,
) -> DiscoveryResult:
    """Connect to ``target`` with the official MCP client and list every tool (following cursors).

    ``target``: a :class:`StdioLaunch` (spawned; its ``env`` is passed explicitly, since the
    SDK gives a server only HOME, PATH, SHELL and TERM), an :class:`HttpLaunch` (streamable
    HTTP, with its headers), or an in-process ``MCPServer``/``Server``. ``name`` becomes the
    tools' ``server`` (default: the name the server reports).
    """
    # checked at run time too: callers need not be type-checked
    if not isinstance(target, (StdioLaunch, HttpLaunch, MCPServer, Server)):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(
            f"cannot discover tools of {type(target).__name__}; give a StdioLaunch, HttpLaunch or MCPServer"
        )
    label = describe_target(target)
    # a real file (not a pipe): the child writes to it directly and it never fills up;
    # opened outside the exit stack so that it is still readable when the error is built
    errlog: TextIO | None = (
        tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") if isinstance(target, StdioLaunch) else None
    )
    try:
        with anyio.fail_after(timeout_s):
            async with Client(client_target(target, errlog=errlog), cache=None) as client:
                return await _list_all(client, name, max_pages)
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of the server becomes one clear error
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        reason = failure_reason(exc)
        if reason == "timed out":
            reason = f"no complete tools/list answer within {timeout_s:g} s (hung or too slow)"
        raise DiscoveryError(label, reason, _tail(errlog)) from exc
    finally:
        if errlog is not None:
            errlog.close()


def discover_tools_sync(target: DiscoveryTarget, **kwargs: Any) -> DiscoveryResult:
    """:func:`discover_tools` for synchronous callers (runs its own event loop)."""
    return anyio.run(lambda: discover_tools(target, **kwargs))


def _launch_of(target: DiscoveryTarget, launch: Any) -> Any:
    if launch is not None:
        return launch
    if isinstance(target, (StdioLaunch, HttpLaunch)):
        return target
    raise ValueError("an in-process server has no launch of its own: pass launch= (e.g. EnvironmentLaunch)")


async def add_server_async(
    registry: Registry,
    name: str,
    target: DiscoveryTarget,
    *,
    launch: StdioLaunch | HttpLaunch | EnvironmentLaunch | SimulatedLaunch | None = None,
    title: str | None = None,
    description: str | None = None,
    domain: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[ServerSpec, bool]:
    """Discover ``target``'s tools and store the server under ``name``; returns (spec, changed).

    ``launch`` defaults to the target itself (stdio/HTTP); in-process servers must say how
    they are launched. On :class:`DiscoveryError` nothing is written.
    """
    stored_launch = _launch_of(target, launch)
    result = await discover_tools(target, name=name, timeout_s=timeout_s)
    spec = ServerSpec(
        id=stable_id("live", name, prefix="srv-"),
        name=name,
        title=title if title is not None else result.server_title,
        description=description
        if description is not None
        else (result.server_description or result.instructions or ""),
        domain=domain,
        launch=stored_launch,
        tools=result.tools,
        source=describe_target(target),
    )
    changed = await anyio.to_thread.run_sync(registry.upsert_server, spec)
    return spec, changed


def add_server(
    registry: Registry,
    name: str,
    target: DiscoveryTarget,
    **kwargs: Any,
) -> tuple[ServerSpec, bool]:
    """Synchronous :func:`add_server_async` (same keyword arguments): discover, then store."""
    return anyio.run(lambda: add_server_async(registry, name, target, **kwargs))
