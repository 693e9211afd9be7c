"""Many MCP servers held open at once, their tools aggregated under collision-free names.

``async with Connections(targets) as conns:`` opens every server concurrently and keeps it
open until the block ends. Each server is owned by one supervisor task (so each
``mcp.client.Client`` is entered and exited in the same task, as anyio requires); a call
that finds its server dead (stdio process gone, HTTP endpoint closed) returns a tool error
(``error_kind="server_died"``) and asks the supervisor to reconnect, so the next call works
again. One client per server per :class:`Connections`, never one per call, and no ping
before calls (docs/ARCHITECTURE.md "Performance facts").

Targets are registry :class:`~astra.records.ServerSpec` records (stdio or HTTP launch), or
``(name, X)`` pairs where X is an in-process ``MCPServer`` / low-level ``Server`` (served
through ``Client(server)``: no subprocess, no JSON-RPC copy) or a zero-argument factory of
one, a
:class:`~astra.records.StdioLaunch` or a :class:`~astra.records.HttpLaunch`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, TextIO

import anyio
import jsonschema
from mcp.client import Client
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, TextContent
from pydantic import BaseModel, ConfigDict, Field

from astra.client._schema import anthropic_tool, openai_tool, provider_tool_name
from astra.errors import AstraError
from astra.records import HttpLaunch, ServerSpec, StdioLaunch, ToolErrorKind, ToolSpec
from astra.registry import client_target, failure_reason, tool_spec_of
from astra.servers import CONTROL_EXTENSION, EPISODE_META_KEY, EpisodeRefusal, SchemaCheck
from astra.servers._runtime import CloseEpisodeRequest, ControlResult, EpisodeParams, OpenEpisodeRequest, OpenParams
from astra.tools import ToolRef

log = logging.getLogger(__name__)

InProcessServer = MCPServer | Server
ServerTarget = ServerSpec | tuple[str, InProcessServer | StdioLaunch | HttpLaunch | Callable[[], InProcessServer]]
"""What :class:`Connections` can open: a registry ServerSpec or a ``(name, server)`` pair,
where server may also be a zero-argument factory returning an ``MCPServer`` (picklable when
it is a module-level function, so each worker process builds its own in-process server)."""

class ConnectionFailed(AstraError, RuntimeError):
    """A server could not be started or reached (a user/setup mistake: the message names it)."""


class EpisodeUnavailable(RuntimeError):
    """An episode could not be opened: the server is not an ASTRA environment, is unavailable,
    or refused (``reason``: an :class:`~astra.servers.EpisodeRefusal` value, e.g. capacity)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


EpisodeHandles = str | Mapping[str, str]
"""What ``Connections.call(episode=...)`` takes: one handle (sent only to the server that minted
it) or ``{server: handle}`` (what :meth:`Connections.open_episodes` returns)."""


class ToolBinding(BaseModel):
    """An aggregated tool name and where it goes: ``(server, tool.name)``."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="collision-free name shown to the model")
    server: str
    tool: ToolSpec

    @property
    def ref(self) -> ToolRef:
        """Where a call of :attr:`name` goes (what trajectories, exporters and rewards carry)."""
        return ToolRef(server=self.server, tool=self.tool.name, exposed=self.name)


class ToolResult(BaseModel):
    """The outcome of one tool call, error or not (errors are results the model sees)."""

    text: str = ""
    structured_content: Any = None
    content: list[dict[str, Any]] = Field(default_factory=list)
    is_error: bool = False
    error_kind: ToolErrorKind | None = None
    latency_s: float = 0.0


def _content_text(blocks: Sequence[Any]) -> str:
    parts = []
    for block in blocks:
        text = getattr(block, "text", None)
        if text is not None:
            parts.append(text)
        else:  # images, audio, resources: say what they are rather than dropping them
            kind = getattr(block, "type", type(block).__name__)
            uri = getattr(getattr(block, "resource", None), "uri", None)
            parts.append(f"[{kind}{' ' + str(uri) if uri else ''}]")
    return "\n".join(parts)


class _Server:
    """One server: its supervisor task owns the ``Client``; calls borrow it."""

    def __init__(self, name: str, target: Any, *, kind: str, max_restarts: int, connect_timeout_s: float,
                 errlog: TextIO, reconnect_delay_s: float = 0.5, reconnect_max_delay_s: float = 8.0) -> None:
        self.name = name
        self.target = target
        self.kind = kind
        # a server that only simulates its tools (e.g. the LLM simulator of documented servers): steps say so
        self.simulated = bool(getattr(target, "astra_simulated", False))
        self.max_restarts = max_restarts
        self.connect_timeout_s = connect_timeout_s
        self.errlog = errlog
        self.client: Client | None = None
        self.generation = 0
        self.restarts = 0
        self.restarts_in_a_row = 0  # reset by a call that succeeds
        self.reconnect_delay_s = reconnect_delay_s
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.tools: list[ToolSpec] = []
        self.error: str | None = None
        self._ready = anyio.Event()
        self._dead = anyio.Event()
        self._closed = anyio.Event()
        self._closing = False

    def _make_client(self) -> Client:
        t = self.target
        if isinstance(t, (StdioLaunch, HttpLaunch)):
            return Client(client_target(t, errlog=self.errlog if isinstance(t, StdioLaunch) else None))
        return Client(t)

    async def _list_tools(self, client: Client) -> list[ToolSpec]:
        tools: list[ToolSpec] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await client.list_tools(cursor=cursor)
            tools.extend(tool_spec_of(t, self.name) for t in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    async def supervise(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the client, keep it until closed; reopen it when a call reports it dead.

        A reconnect that fails is retried after a growing pause (``reconnect_delay_s``,
        doubling, at most ``reconnect_max_delay_s``): a stdio server is relaunched at once,
        while an HTTP server that is being restarted by its own supervisor gets time to
        come back. ``max_restarts`` bounds the reconnects in a row that did not lead to a
        successful call; after that the server is unavailable for the rest of the run."""
        started = False
        failed_attempts = 0
        while not self._closing:
            connected = False
            try:
                # The deadline covers only connecting; the scope must enclose the client's whole
                # life, since the client opens task groups that may not outlive an inner scope.
                with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout_s) as scope:
                    async with self._make_client() as client:
                        if not self.tools:
                            self.tools = await self._list_tools(client)
                        scope.deadline = float("inf")
                        connected = True
                        failed_attempts = 0
                        self.client, self.error = client, None
                        self.generation += 1
                        self._dead = anyio.Event()
                        if self._closing:
                            return
                        self._ready.set()
                        if not started:
                            started = True
                            task_status.started()
                        await self._dead.wait()
                        self.client = None
                if scope.cancelled_caught and not connected:
                    raise TimeoutError(f"no answer within {self.connect_timeout_s:g} s")
            except Exception as exc:  # noqa: BLE001 - a failed (re)connect is recorded, calls see it
                self.client = None
                self.error = failure_reason(exc)
                if not started:
                    raise ConnectionFailed(
                        f"MCP server {self.name!r} ({self.kind}) failed to start: {self.error}"
                    ) from exc
                if not connected:
                    failed_attempts += 1
                log.warning(
                    "server %s: %s failed: %s", self.name, "reconnect" if not connected else "connection", self.error
                )
            if self._closing:
                return
            if self.restarts_in_a_row >= self.max_restarts:
                self.error = f"gave up after {self.restarts_in_a_row} restarts in a row ({self.error or 'server died'})"
                self._ready.set()  # wake waiters: they will see client is None
                await self._closed.wait()
                return
            if failed_attempts:
                delay = min(self.reconnect_max_delay_s, self.reconnect_delay_s * 2 ** (failed_attempts - 1))
                with anyio.move_on_after(delay):
                    await self._closed.wait()
            self.restarts += 1
            self.restarts_in_a_row += 1
            log.info("server %s: restarting (#%d)", self.name, self.restarts)

    def mark_dead(self, generation: int) -> None:
        if generation == self.generation and self.client is not None:
            self.client = None
            self._ready = anyio.Event()  # later calls wait for the reconnect
            self._dead.set()

    def close(self) -> None:
        self._closing = True
        self._dead.set()
        self._closed.set()

    @property
    def has_episodes(self) -> bool:
        """Whether the server is an ASTRA environment (it mints episode handles)."""
        capabilities = self.client.server_capabilities if self.client is not None else None
        return bool(capabilities is not None and CONTROL_EXTENSION in (capabilities.extensions or {}))

    async def control(self, request: Any, timeout_s: float) -> ControlResult:
        """Send an episode control request (raises EpisodeUnavailable when it cannot be done)."""
        client = self.client
        if client is None:
            with anyio.move_on_after(timeout_s):
                await self._ready.wait()
            client = self.client
            if client is None:
                raise EpisodeUnavailable(f"server {self.name!r} is unavailable: {self.error or 'restarting'}")
        if not self.has_episodes:
            raise EpisodeUnavailable(
                f"server {self.name!r} is not an ASTRA environment (no {CONTROL_EXTENSION} extension)"
            )
        generation = self.generation
        try:
            with anyio.fail_after(timeout_s):
                return await client.session.send_request(request, ControlResult)
        except TimeoutError:
            raise EpisodeUnavailable(
                f"server {self.name!r} did not answer {request.method} within {timeout_s:g} s"
            ) from None
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                self.mark_dead(generation)
            data = exc.error.data
            reason = data.get("reason") if isinstance(data, dict) else None
            raise EpisodeUnavailable(f"server {self.name!r}: {exc.error.message}", reason) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            self.mark_dead(generation)
            raise EpisodeUnavailable(f"server {self.name!r} connection lost ({type(exc).__name__})") from None

    async def call(
        self, tool: str, arguments: dict[str, Any], timeout_s: float, episode: str | None = None
    ) -> ToolResult:
        start = time.perf_counter()

        def result(kind: ToolErrorKind, text: str) -> ToolResult:
            return ToolResult(text=text, is_error=True, error_kind=kind, latency_s=time.perf_counter() - start)

        client = self.client
        if client is None:
            with anyio.move_on_after(timeout_s):
                await self._ready.wait()
            client = self.client
            if client is None:
                return result(
                    ToolErrorKind.server_unavailable,
                    f"server {self.name!r} is unavailable: {self.error or 'restarting'}",
                )
        generation = self.generation
        try:
            with anyio.fail_after(timeout_s):
                res = await client.call_tool(
                    tool, arguments, meta={EPISODE_META_KEY: episode} if episode is not None else None
                )
        except TimeoutError:
            return result(
                ToolErrorKind.timeout, f"tool {tool!r} on server {self.name!r} timed out after {timeout_s:g} s"
            )
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                self.mark_dead(generation)
                return result(
                    ToolErrorKind.server_died, f"server {self.name!r} died during the call; it is being restarted"
                )
            if exc.error.code == REQUEST_TIMEOUT:
                return result(ToolErrorKind.timeout, f"tool {tool!r} timed out: {exc}")
            data = exc.error.data
            if isinstance(data, dict) and data.get("reason") in {r.value for r in EpisodeRefusal}:
                return result(
                    ToolErrorKind.episode_refused, f"server {self.name!r} refused the episode: {exc.error.message}"
                )
            return result(ToolErrorKind.protocol_error, f"server {self.name!r} rejected the call: {exc}")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            self.mark_dead(generation)
            return result(
                ToolErrorKind.server_died, f"server {self.name!r} connection lost ({type(exc).__name__}); restarting"
            )
        except Exception as exc:  # noqa: BLE001 - a malformed result is the call's failure, not the episode's
            return result(ToolErrorKind.protocol_error, f"server {self.name!r}: {type(exc).__name__}: {exc}")
        self.restarts_in_a_row = 0  # the server answered: it is healthy again
        blocks = [
            {"type": "text", "text": b.text}
            if isinstance(b, TextContent)
            else b.model_dump(mode="json", exclude_none=True)
            for b in res.content
        ]
        return ToolResult.model_construct(  # fields are known-good here: skip validation on the hot path
            text=_content_text(res.content),
            structured_content=res.structured_content,
            content=blocks,
            is_error=bool(res.is_error),
            error_kind=ToolErrorKind.tool_error if res.is_error else None,
            latency_s=time.perf_counter() - start,
        )


def _usable_errlog(errlog: TextIO | None) -> TextIO:
    """Where stdio servers' stderr goes: a real file (subprocesses need a file descriptor;
    a captured ``sys.stderr`` under pytest or typer's CliRunner has none)."""
    for candidate in (errlog, sys.stderr, sys.__stderr__):
        try:
            if candidate is not None:
                candidate.fileno()
                return candidate
        except (AttributeError, OSError, ValueError):
            continue
    return open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def _first_connection_failure(exc: BaseException) -> ConnectionFailed | None:
    if isinstance(exc, ConnectionFailed):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_connection_failure(inner)
            if found is not None:
                return found
    return None


def _target_parts(target: ServerTarget) -> tuple[str, Any, str]:
    if isinstance(target, ServerSpec):
        launch = target.launch
        if isinstance(launch, (StdioLaunch, HttpLaunch)):
            return target.name, launch, launch.kind
        raise ConnectionFailed(
            f"server {target.name!r} has a {launch.kind!r} launch, which Connections cannot open by itself; "
            "serve it in-process and pass (name, MCPServer) instead"
        )
    # checked at run time too: callers need not be type-checked
    if isinstance(target, tuple) and len(target) == 2:  # pyright: ignore[reportUnnecessaryIsInstance]
        name, server = target
        if isinstance(server, (StdioLaunch, HttpLaunch)):
            return str(name), server, server.kind
        if isinstance(server, (MCPServer, Server)):  # pyright: ignore[reportUnnecessaryIsInstance]
            return str(name), server, "in-process"
        if callable(server):  # a server factory: built in whichever process opens the connections
            built = server()
            if isinstance(built, (MCPServer, Server)):  # pyright: ignore[reportUnnecessaryIsInstance]
                return str(name), built, "in-process"
            raise TypeError(f"server factory for {name!r} returned {type(built).__name__}, not an MCPServer")
    raise TypeError(
        f"not a server target: {target!r} (want ServerSpec or (name, MCPServer | StdioLaunch | HttpLaunch))"
    )


class Connections:
    """Open MCP servers and their aggregated tools (see the module docstring).

    Aggregated names: a tool keeps its own name when no other server has a tool of that name;
    otherwise it becomes ``<server>__<tool>``. Names are then made provider-safe
    (``[A-Za-z0-9_-]{1,64}``) and deduplicated with a numeric suffix if still needed.

    A server that dies (stdio process gone, HTTP endpoint gone or its session lost) is
    reconnected: at once, then after ``reconnect_delay_s`` doubling up to 8 s while
    reconnects fail; after ``max_restarts`` reconnects in a row without a successful call
    it is unavailable for the rest of the block (calls return ``server_unavailable``).
    """

    def __init__(
        self,
        targets: Sequence[ServerTarget],
        *,
        call_timeout_s: float = 30.0,
        connect_timeout_s: float = 60.0,
        max_restarts: int = 5,
        reconnect_delay_s: float = 0.5,
        errlog: TextIO | None = None,
    ) -> None:
        self.call_timeout_s = call_timeout_s
        self._servers: dict[str, _Server] = {}
        for target in targets:
            name, tgt, kind = _target_parts(target)
            if name in self._servers:
                raise ValueError(f"two servers named {name!r}")
            self._servers[name] = _Server(
                name, tgt, kind=kind, max_restarts=max_restarts, connect_timeout_s=connect_timeout_s,
                reconnect_delay_s=reconnect_delay_s,
                errlog=_usable_errlog(errlog),
            )
        self._stack: AsyncExitStack | None = None
        self._bindings: dict[str, ToolBinding] = {}
        self._openai_cache: dict[str, dict[str, Any]] = {}
        self._arg_checks: dict[str, SchemaCheck | None] = {}
        self._episode_servers: dict[str, str] = {}  # handle -> the server that minted it

    async def __aenter__(self) -> Connections:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._close_all)  # runs before the task group joins its supervisors
            async with anyio.create_task_group() as starters:
                for server in self._servers.values():
                    starters.start_soon(tg.start, server.supervise)
        except BaseException as exc:
            try:
                await stack.aclose()  # stop the servers that did start
            except Exception:  # noqa: BLE001 - the start failure below is the error to report
                log.debug("cleanup after a failed start", exc_info=True)
            failed = _first_connection_failure(exc)
            if failed is not None:
                raise failed from None
            raise
        self._stack = stack
        self._bindings = self._aggregate()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(*exc_info)

    def _close_all(self) -> None:
        for server in self._servers.values():
            server.close()

    def _aggregate(self) -> dict[str, ToolBinding]:
        counts: dict[str, int] = {}
        for server in self._servers.values():
            for tool in server.tools:
                counts[tool.name] = counts.get(tool.name, 0) + 1
        out: dict[str, ToolBinding] = {}
        for server in self._servers.values():
            for tool in server.tools:
                raw = tool.name if counts[tool.name] == 1 else f"{server.name}__{tool.name}"
                name = provider_tool_name(raw)
                base, n = name, 2
                while name in out:
                    name = provider_tool_name(f"{base}_{n}")
                    n += 1
                out[name] = ToolBinding(name=name, server=server.name, tool=tool)
        return out

    # ------------------------------------------------------------------ queries

    @property
    def servers(self) -> list[str]:
        return list(self._servers)

    def is_simulated(self, server: str | None) -> bool:
        """True when ``server``'s tools are simulated (its target says ``astra_simulated``), not live."""
        found = self._servers.get(server) if server is not None else None
        return found is not None and found.simulated

    @property
    def tools(self) -> list[ToolBinding]:
        return list(self._bindings.values())

    def binding(self, name: str) -> ToolBinding | None:
        return self._bindings.get(name)

    def name_for(self, server: str, tool: str) -> str:
        """The aggregated name of ``server``'s tool ``tool`` (KeyError if there is none)."""
        for b in self._bindings.values():
            if b.server == server and b.tool.name == tool:
                return b.name
        raise KeyError(f"no tool {tool!r} on server {server!r}")

    def resolve_names(self, names: Sequence[str]) -> list[str]:
        """Aggregated names for ``names``; each may be aggregated, ``server/tool`` or a plain tool name."""
        out = []
        for n in names:
            if n in self._bindings:
                out.append(n)
                continue
            server, _, tool = n.rpartition("/")
            hits = [
                b.name for b in self._bindings.values() if b.tool.name == tool and (not server or b.server == server)
            ]
            if not hits:
                raise KeyError(f"no tool named {n!r} on servers {self.servers}")
            out.extend(hits)
        return list(dict.fromkeys(out))

    def _selected(self, names: Sequence[str] | None) -> list[ToolBinding]:
        if names is None:
            return self.tools
        return [self._bindings[n] for n in self.resolve_names(names)]

    def openai_tools(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI function tools (converted once per tool, then shared: treat them as read-only)."""
        out = []
        for b in self._selected(names):
            if b.name not in self._openai_cache:
                self._openai_cache[b.name] = openai_tool(b.name, b.tool)
            out.append(self._openai_cache[b.name])
        return out

    def argument_errors(self, name: str, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` do not match the input schema of tool ``name`` (None: they do).

        The check is compiled once per tool and shared by every episode. A tool whose own
        schema is broken is not checked here: its server judges the arguments."""
        if name not in self._arg_checks:
            try:
                self._arg_checks[name] = SchemaCheck(self._bindings[name].tool.input_schema or {})
            except jsonschema.SchemaError:
                self._arg_checks[name] = None
        check = self._arg_checks[name]
        problems = sorted(check.errors(arguments), key=lambda e: list(e.path)) if check is not None else []
        if not problems:
            return None
        return "; ".join(f"{'/'.join(map(str, p.path)) or '(root)'}: {p.message}" for p in problems[:5])

    def anthropic_tools(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return [anthropic_tool(b.name, b.tool) for b in self._selected(names)]

    def server_status(self) -> dict[str, dict[str, Any]]:
        return {
            s.name: {"kind": s.kind, "connected": s.client is not None, "restarts": s.restarts, "error": s.error}
            for s in self._servers.values()
        }

    # ------------------------------------------------------------------ calls

    async def call(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None = None, *,
        episode: EpisodeHandles | None = None,
    ) -> ToolResult:
        """Call an aggregated tool. Never raises for tool-side trouble: errors are results.

        ``episode``: a handle from :meth:`open_episode` or the ``{server: handle}`` map from
        :meth:`open_episodes`; it travels as ``_meta["astra/episode"]`` to the server that
        minted it (never to another server), so episodes sharing one connection never see each
        other's state. Without one, an ASTRA environment uses the connection's own episode."""
        binding = self._bindings.get(name)
        if binding is None:
            return ToolResult(text=f"unknown tool {name!r}", is_error=True, error_kind=ToolErrorKind.unknown_tool)
        server = self._servers[binding.server]
        return await server.call(binding.tool.name, arguments, timeout_s or self.call_timeout_s,
                                 self._handle_for(binding.server, episode))

    def _handle_for(self, server: str, episode: EpisodeHandles | None) -> str | None:
        if episode is None:
            return None
        if isinstance(episode, str):
            minted_by = self._episode_servers.get(episode)
            return episode if minted_by is None or minted_by == server else None
        return episode.get(server)

    # ------------------------------------------------------------------ episodes

    def episode_servers(self) -> list[str]:
        """The servers that are ASTRA environments (they open episodes)."""
        return [s.name for s in self._servers.values() if s.has_episodes]

    async def open_episode(self, server: str, *, seed: int | None = None, timeout_s: float | None = None) -> str:
        """Open a fresh episode on ``server`` (an ASTRA environment); returns the handle it minted.

        Pass it as ``call(..., episode=handle)`` for every call of one trajectory and close it
        with :meth:`close_episode`. Raises :class:`EpisodeUnavailable` (``reason``
        ``episode_capacity`` when the server is full)."""
        if server not in self._servers:
            raise KeyError(f"no server named {server!r}; servers: {self.servers}")
        result = await self._servers[server].control(
            OpenEpisodeRequest(params=OpenParams(seed=seed)), timeout_s or self.call_timeout_s
        )
        if not result.episode:
            raise EpisodeUnavailable(f"server {server!r} answered astra/episode/open without a handle")
        self._episode_servers[result.episode] = server
        return result.episode

    async def close_episode(self, handle: str, *, timeout_s: float | None = None) -> bool:
        """Close an episode opened by :meth:`open_episode` (its state is dropped on the server).

        False when it was already gone (expired, closed, its server restarted or unreachable):
        never raises, so it is safe in ``finally`` blocks."""
        server = self._episode_servers.pop(handle, None)
        if server is None:
            return False
        try:
            result = await self._servers[server].control(
                CloseEpisodeRequest(params=EpisodeParams(episode=handle)), timeout_s or self.call_timeout_s
            )
        except EpisodeUnavailable as exc:
            log.debug("closing an episode on %s: %s", server, exc)
            return False
        return bool(result.closed)

    async def open_episodes(self, *, seed: int | None = None) -> dict[str, str]:
        """One fresh episode on every ASTRA environment server: ``{server: handle}`` (empty when
        there are none). All or nothing: when one cannot be opened the others are closed and
        :class:`EpisodeUnavailable` is raised."""
        handles: dict[str, str] = {}
        try:
            for server in self.episode_servers():
                handles[server] = await self.open_episode(server, seed=seed)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close_episodes(handles)
            raise
        return handles

    async def close_episodes(self, handles: Mapping[str, str]) -> None:
        """Close every episode of ``handles`` (see :meth:`close_episode`)."""
        for handle in handles.values():
            await self.close_episode(handle)
