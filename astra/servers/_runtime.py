"""Serving an environment as a real MCP server: tools, episodes, the hidden control channel.

Needs only Python, ``mcp`` (and what ``mcp`` itself depends on: ``anyio``, ``jsonschema``,
``pydantic``, ``uvicorn``): this module, ``_sandbox`` and ``_worker`` are vendored into
every emitted environment directory, so it works on the plain JSON form of an
``EnvironmentSpec`` and never imports ``astra``.

Episodes
    Every episode starts from the environment's initial state, and episodes never see each
    other's state. A request is mapped to its episode by, in order:

    1. ``_meta["astra/episode"]`` on the request (works on every transport and protocol
       era, including stateless HTTP; the harness sets it when it multiplexes episodes);
    2. the ``Mcp-Session-Id`` header (stateful streamable HTTP: one episode per session);
    3. the client connection: the server's lifespan is entered once per in-process
       ``mcp.client.Client(server)`` and once per stdio process, and each entry opens a
       fresh episode (so every in-process client is its own episode).

Control channel (never in ``tools/list``; the model cannot call it)
    In process: the :class:`EnvironmentRuntime` handle (``server.runtime``): ``reset``,
    ``snapshot``, ``restore``, ``state``, ``calls``. Over the wire: an MCP extension
    (SEP-2133, identifier ``dev.astra/environment``) adding the request methods
    ``astra/reset``, ``astra/snapshot``, ``astra/restore``, ``astra/state`` and
    ``astra/episode/close``; :class:`EnvironmentControl` sends them through any
    connected ``mcp.client.Client``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import itertools
import json
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import jsonschema
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, Request, RequestParams, Result, TextContent, ToolAnnotations
from mcp_types import Tool as MCPTool

from ._sandbox import UNSAFE_ENV, ErrorKind, Sandbox, SandboxLimits, SandboxUnavailable

try:  # optional: a compiled "is it valid" for the hot path; emitted servers run without it
    import jsonschema_rs as _rs
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _rs = None

log = logging.getLogger("astra.servers")

EPISODE_META_KEY = "astra/episode"
CONTROL_EXTENSION = "dev.astra/environment"
DEFAULT_EPISODE = "default"
MAX_EPISODES = 4096


class EnvironmentError_(RuntimeError):
    """A malformed environment (bad spec, missing entrypoint): a user mistake, not a tool error."""


# --------------------------------------------------------------------------- outcomes


@dataclass
class ToolOutcome:
    """One executed tool call, before it becomes an MCP ``CallToolResult``."""

    tool: str
    arguments: dict[str, Any]
    ok: bool
    value: Any = None
    error: str | None = None
    error_kind: str | None = None
    truncated: bool = False
    latency_s: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "arguments": self.arguments,
            "ok": self.ok,
            "value": self.value,
            "error": self.error,
            "error_kind": self.error_kind,
            "latency_s": self.latency_s,
        }


@dataclass
class Snapshot:
    id: str
    episode: str
    state: Any
    seed: int | None
    n_calls: int


@dataclass
class _Episode:
    id: str
    seed: int | None = None
    state: dict[str, Any] | None = None
    instance: Any = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass
class _ClientSlot:
    """What the server lifespan yields: one per in-process client / stdio process / HTTP app."""

    episode_id: str


# --------------------------------------------------------------------------- tools


@dataclass
class _Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    wrap_output: bool
    title: str | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    entrypoint: str | None = None
    stateful: bool = False
    method: str | None = None
    validator: SchemaCheck | None = None
    output_validator: SchemaCheck | None = None

    def mcp(self) -> MCPTool:
        annotations = None
        if self.annotations:
            try:
                annotations = ToolAnnotations.model_validate(self.annotations)
            except Exception:  # unknown annotation keys are dropped rather than breaking tools/list
                annotations = None
        return MCPTool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            annotations=annotations,
        )


class SchemaCheck:
    """A compiled JSON Schema check for every call of a tool: jsonschema-rs (when
    installed) answers "valid" in microseconds; the Python validator, which is the
    authority, explains a failure with the path of each offending field.

    Raises ``jsonschema.SchemaError`` for a schema that is not valid JSON Schema."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
        self.validator = validator_cls(schema)
        self.fast = None
        if _rs is not None:
            try:
                self.fast = _rs.validator_for(dict(schema))
            except Exception:  # noqa: BLE001 - a schema jsonschema-rs cannot compile keeps the Python check
                self.fast = None

    def errors(self, instance: Any) -> list[jsonschema.ValidationError]:
        """Every violation (empty: valid)."""
        if self.fast is not None and self.fast.is_valid(instance):
            return []
        return list(self.validator.iter_errors(instance))

    def first_error(self, instance: Any) -> jsonschema.ValidationError | None:
        """The most relevant violation (``jsonschema``'s ``best_match``), or None."""
        errors = self.errors(instance)
        return jsonschema.exceptions.best_match(errors) if errors else None


def _make_tool(spec: Mapping[str, Any], **extra: Any) -> _Tool:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise EnvironmentError_(f"tool spec without a name: {dict(spec)!r:.200}")
    input_schema = dict(spec.get("input_schema") or {"type": "object", "properties": {}})
    input_schema.setdefault("type", "object")
    output_schema = spec.get("output_schema")
    wrap = False
    if output_schema is not None and output_schema.get("type") != "object":
        output_schema = {"type": "object", "properties": {"result": output_schema}, "required": ["result"]}
        wrap = True
    try:
        validator = SchemaCheck(input_schema)
        output_validator = SchemaCheck(output_schema) if output_schema is not None else None
    except jsonschema.SchemaError as exc:
        raise EnvironmentError_(f"tool {name!r}: invalid JSON Schema: {exc.message}") from exc
    return _Tool(
        name=name,
        title=spec.get("title"),
        description=spec.get("description") or "",
        input_schema=input_schema,
        output_schema=output_schema,
        wrap_output=wrap,
        annotations=dict(spec.get("annotations") or {}),
        validator=validator,
        output_validator=output_validator,
        **extra,
    )


def _schema_error(tool: _Tool, arguments: Any) -> str | None:
    if not isinstance(arguments, dict):
        return f"arguments for tool {tool.name!r} must be a JSON object"
    error = tool.validator.first_error(arguments)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"invalid arguments for tool {tool.name!r}{f' at {where}' if where else ''}: {error.message}"


# --------------------------------------------------------------------------- runtime


class EnvironmentRuntime:
    """The state, episodes and tool execution behind one environment server.

    Build it with :func:`build_server_from_dict` / ``astra.servers.build_server`` (from an
    ``EnvironmentSpec``) or :func:`build_class_server` (a trusted Python class); the
    ``MCPServer`` is ``runtime.server`` and the runtime is ``server.runtime``.
    """

    def __init__(
        self,
        *,
        name: str,
        description: str = "",
        tools: list[_Tool],
        initial_state: dict[str, Any] | None = None,
        factory: Callable[[dict[str, Any]], Any] | None = None,
        initial_config: dict[str, Any] | None = None,
        state_view: Callable[[Any], Any] | None = None,
        sandboxed: bool = True,
        limits: SandboxLimits | None = None,
        bearer_token: str | None = None,
        public_url: str | None = None,
    ) -> None:
        names = [t.name for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise EnvironmentError_(f"environment {name!r} defines tools more than once: {duplicates}")
        self.name = name
        self.description = description
        self.tools: dict[str, _Tool] = {t.name: t for t in tools}
        self.initial_state = copy.deepcopy(initial_state or {})
        self.factory = factory
        self.initial_config = copy.deepcopy(initial_config or {})
        self.state_view = state_view
        self.sandboxed = sandboxed
        self.limits = limits or SandboxLimits.from_env()
        self._episodes: OrderedDict[str, _Episode] = OrderedDict()
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._sandbox: Sandbox | None = None
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._slot_counter = itertools.count()
        if factory is None and not sandboxed:
            for tool in tools:
                self._compile(tool)
        self.server = EnvironmentServer(self, bearer_token=bearer_token, public_url=public_url)

    # ----------------------------------------------------------------- episodes

    def _fresh(self, episode_id: str, seed: int | None) -> _Episode:
        episode = _Episode(id=episode_id, seed=seed)
        if self.factory is not None:
            episode.instance = self.factory(copy.deepcopy(self.initial_config))
        else:
            episode.state = copy.deepcopy(self.initial_state)
        return episode

    def episode(self, episode_id: str | None = None) -> _Episode:
        key = episode_id or DEFAULT_EPISODE
        episode = self._episodes.get(key)
        if episode is None:
            episode = self._fresh(key, None)
            self._episodes[key] = episode
            while len(self._episodes) > MAX_EPISODES:
                self._episodes.popitem(last=False)
        else:
            self._episodes.move_to_end(key)
        return episode

    def new_episode(self, episode_id: str | None = None, seed: int | None = None) -> str:
        """Open a fresh episode (initial state) and return its id."""
        key = episode_id or uuid.uuid4().hex
        self._episodes[key] = self._fresh(key, seed)
        return key

    def reset(self, episode_id: str | None = None, seed: int | None = None) -> Any:
        """Put the episode back to the initial state (forgetting its calls); returns that state."""
        key = episode_id or DEFAULT_EPISODE
        old = self._episodes.get(key)
        episode = self._fresh(key, seed)
        if old is not None:
            episode.lock = old.lock
        self._episodes[key] = episode
        return self.state(key)

    def close_episode(self, episode_id: str) -> bool:
        return self._episodes.pop(episode_id, None) is not None

    def state(self, episode_id: str | None = None) -> Any:
        """A copy of the episode's state (for class environments: ``state_view(instance)``)."""
        episode = self.episode(episode_id)
        if episode.instance is not None:
            if self.state_view is not None:
                return self.state_view(episode.instance)
            return _public_attributes(episode.instance)
        return copy.deepcopy(episode.state)

    def instance(self, episode_id: str | None = None) -> Any:
        """The live backend object of a class environment's episode (None for spec environments)."""
        return self.episode(episode_id).instance

    def calls(self, episode_id: str | None = None) -> list[dict[str, Any]]:
        return list(self.episode(episode_id).calls)

    def snapshot(self, episode_id: str | None = None) -> Snapshot:
        episode = self.episode(episode_id)
        saved = copy.deepcopy(episode.instance if episode.instance is not None else episode.state)
        snap = Snapshot(id=uuid.uuid4().hex, episode=episode.id, state=saved, seed=episode.seed, n_calls=len(episode.calls))
        self._snapshots[snap.id] = snap
        while len(self._snapshots) > MAX_EPISODES:
            self._snapshots.popitem(last=False)
        return snap

    def restore(self, episode_id: str | None = None, *, snapshot_id: str | None = None, state: dict[str, Any] | None = None) -> Any:
        """Restore an episode from a snapshot id (any environment) or a state dict (spec environments)."""
        episode = self.episode(episode_id)
        if snapshot_id is not None:
            snap = self._snapshots.get(snapshot_id)
            if snap is None:
                raise KeyError(f"unknown snapshot {snapshot_id!r}")
            if episode.instance is not None or self.factory is not None:
                episode.instance = copy.deepcopy(snap.state)
            else:
                episode.state = copy.deepcopy(snap.state)
            episode.seed = snap.seed
            episode.calls = episode.calls[: snap.n_calls]
        elif state is not None:
            if self.factory is not None:
                raise ValueError("a class environment restores from a snapshot id, not a state dict")
            if not isinstance(state, dict):
                raise ValueError("state must be a JSON object")
            episode.state = copy.deepcopy(state)
        else:
            raise ValueError("restore needs a snapshot_id or a state")
        return self.state(episode.id)

    def episode_for(self, ctx: Any) -> str:
        """The episode a request belongs to (see the module docstring for the order)."""
        if ctx is None:
            return DEFAULT_EPISODE
        meta = getattr(ctx, "meta", None)
        if isinstance(meta, Mapping):
            explicit = meta.get(EPISODE_META_KEY)
            if isinstance(explicit, str) and explicit:
                return explicit
        headers = getattr(getattr(ctx, "request", None), "headers", None)
        if headers is not None:
            session_id = headers.get("mcp-session-id")
            if session_id:
                return f"http:{session_id}"
        slot = getattr(ctx, "lifespan_context", None)
        if isinstance(slot, _ClientSlot):
            return slot.episode_id
        return DEFAULT_EPISODE

    @asynccontextmanager
    async def _lifespan(self, _server: Any) -> AsyncIterator[_ClientSlot]:
        slot = _ClientSlot(episode_id=f"client:{next(self._slot_counter)}:{uuid.uuid4().hex[:8]}")
        if self.sandboxed and self.factory is None and self.tools:
            await self._sandbox_for_loop()  # warm the worker before the first call
        try:
            yield slot
        finally:
            self._episodes.pop(slot.episode_id, None)

    # ----------------------------------------------------------------- execution

    def _compile(self, tool: _Tool) -> dict[str, Any]:
        assert tool.source is not None
        ns = self._namespaces.get(tool.name)
        if ns is None:
            ns = {"__name__": f"astra_env_tool_{tool.name}"}
            try:
                exec(compile(tool.source, f"<tool {tool.name}>", "exec"), ns)
            except Exception as exc:
                raise EnvironmentError_(f"tool {tool.name!r}: its source does not load: {type(exc).__name__}: {exc}") from exc
            if not callable(ns.get(tool.entrypoint or tool.name)):
                raise EnvironmentError_(f"tool {tool.name!r}: its source defines no function {tool.entrypoint or tool.name!r}")
            self._namespaces[tool.name] = ns
        return ns

    async def _sandbox_for_loop(self) -> Sandbox:
        """The runtime's warm sandbox (one per runtime; it serves any event loop of this process)."""
        if self._sandbox is None:
            self._sandbox = Sandbox(limits=self.limits)
        await self._sandbox.start()
        return self._sandbox

    async def call(self, name: str, arguments: dict[str, Any] | None = None, *, episode_id: str | None = None) -> ToolOutcome:
        """Run one tool call in an episode (no MCP framing). Tool failures come back in the outcome."""
        arguments = {} if arguments is None else arguments
        start = time.perf_counter()
        tool = self.tools.get(name)
        if tool is None:
            outcome = ToolOutcome(name, arguments if isinstance(arguments, dict) else {}, ok=False, error_kind="unknown_tool",
                                  error=f"unknown tool {name!r}; available: {', '.join(sorted(self.tools))}")
            return outcome
        problem = _schema_error(tool, arguments)
        episode = self.episode(episode_id)
        if problem is not None:
            outcome = ToolOutcome(name, arguments if isinstance(arguments, dict) else {}, ok=False, error_kind="bad_arguments", error=problem)
        else:
            async with episode.lock:
                outcome = await self._execute(tool, arguments, episode)
            if outcome.ok and tool.output_validator is not None and not outcome.truncated:
                structured = {"result": outcome.value} if tool.wrap_output else outcome.value
                error = tool.output_validator.first_error(structured)
                if error is not None:
                    outcome = ToolOutcome(name, arguments, ok=False, error_kind="bad_output",
                                          error=f"the tool's result does not match its output schema: {error.message}")
        outcome.latency_s = time.perf_counter() - start
        episode.calls.append(outcome.to_record())
        return outcome

    async def _execute(self, tool: _Tool, arguments: dict[str, Any], episode: _Episode) -> ToolOutcome:
        if episode.instance is not None:
            method = getattr(episode.instance, tool.method or tool.name, None)
            if method is None:
                return ToolOutcome(tool.name, arguments, ok=False, error_kind="unknown_tool", error=f"the backend has no method {tool.method or tool.name!r}")
            try:
                value = method(**arguments)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                return ToolOutcome(tool.name, arguments, ok=False, error_kind="exception", error=f"{type(exc).__name__}: {exc}")
            return _json_outcome(tool, arguments, value, self.limits.max_result_bytes)
        assert tool.source is not None
        if self.sandboxed:
            try:
                sandbox = await self._sandbox_for_loop()
            except SandboxUnavailable as exc:  # fail closed: the tool does not run
                return ToolOutcome(tool.name, arguments, ok=False, error_kind=ErrorKind.SANDBOX, error=str(exc))
            result = await sandbox.call(tool.source, tool.entrypoint or tool.name, arguments, state=episode.state if tool.stateful else None)
            if not result.ok:
                return ToolOutcome(tool.name, arguments, ok=False, error=result.error, error_kind=result.error_kind)
            if tool.stateful and result.state is not None:
                episode.state = result.state
            return ToolOutcome(tool.name, arguments, ok=True, value=result.value, truncated=result.truncated)
        fn = self._compile(tool)[tool.entrypoint or tool.name]
        working = copy.deepcopy(episode.state) if tool.stateful else None
        try:
            value = fn(working, **arguments) if tool.stateful else fn(**arguments)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return ToolOutcome(tool.name, arguments, ok=False, error_kind="exception", error=f"{type(exc).__name__}: {exc}")
        outcome = _json_outcome(tool, arguments, value, self.limits.max_result_bytes)
        if outcome.ok and tool.stateful:
            episode.state = working
        return outcome

    def to_call_result(self, outcome: ToolOutcome) -> CallToolResult:
        tool = self.tools.get(outcome.tool)
        if not outcome.ok:
            return CallToolResult(content=[TextContent(type="text", text=f"Error: {outcome.error}")], is_error=True)
        value = outcome.value
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if outcome.truncated and tool is not None and tool.output_schema is not None:
            return CallToolResult(content=[TextContent(type="text", text=f"Error: the result was too large and was truncated: {text[:2000]}")], is_error=True)
        if isinstance(value, dict) and not (tool is not None and tool.wrap_output):
            structured = value
        else:
            structured = {"result": value}
        if outcome.truncated:
            structured = {"result": value, "truncated": True}
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured, is_error=False)

    async def call_tool_result(self, name: str, arguments: dict[str, Any] | None, *, episode_id: str | None = None) -> CallToolResult:
        return self.to_call_result(await self.call(name, arguments, episode_id=episode_id))

    async def aclose(self) -> None:
        if self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            await sandbox.aclose()


def _public_attributes(instance: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(instance).items():
        if key.startswith("_"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
        out[key] = value
    return out


def _json_outcome(tool: _Tool, arguments: dict[str, Any], value: Any, max_bytes: int) -> ToolOutcome:
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return ToolOutcome(tool.name, arguments, ok=False, error_kind="not_json",
                           error=f"the tool returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}")
    if len(encoded) > max_bytes:
        preview = encoded[:max_bytes] + f"...[truncated: result was {len(encoded)} characters, limit {max_bytes}]"
        return ToolOutcome(tool.name, arguments, ok=True, value=preview, truncated=True)
    return ToolOutcome(tool.name, arguments, ok=True, value=json.loads(encoded))


# --------------------------------------------------------------------------- MCP server


class _StaticToken:
    """Bearer-token verifier for ``--token``: one shared secret, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        import hmac

        if hmac.compare_digest(token.encode(), self._token.encode()):
            return AccessToken(token=token, client_id="astra-env-client", scopes=[])
        return None


class ResetParams(RequestParams):
    episode: str | None = None
    seed: int | None = None


class EpisodeParams(RequestParams):
    episode: str | None = None


class RestoreParams(RequestParams):
    episode: str | None = None
    snapshot_id: str | None = None
    state: dict[str, Any] | None = None


class ControlResult(Result):
    episode: str
    state: Any = None
    snapshot_id: str | None = None
    calls: list[dict[str, Any]] | None = None
    closed: bool | None = None


class ResetRequest(Request[ResetParams, Literal["astra/reset"]]):
    method: Literal["astra/reset"] = "astra/reset"


class SnapshotRequest(Request[EpisodeParams, Literal["astra/snapshot"]]):
    method: Literal["astra/snapshot"] = "astra/snapshot"


class RestoreRequest(Request[RestoreParams, Literal["astra/restore"]]):
    method: Literal["astra/restore"] = "astra/restore"


class StateRequest(Request[EpisodeParams, Literal["astra/state"]]):
    method: Literal["astra/state"] = "astra/state"


class CloseEpisodeRequest(Request[EpisodeParams, Literal["astra/episode/close"]]):
    method: Literal["astra/episode/close"] = "astra/episode/close"


class _ControlExtension(Extension):
    identifier = CONTROL_EXTENSION

    def __init__(self, runtime: EnvironmentRuntime) -> None:
        self.runtime = runtime

    def settings(self) -> dict[str, Any]:
        return {"methods": ["astra/reset", "astra/snapshot", "astra/restore", "astra/state", "astra/episode/close"]}

    def methods(self) -> Sequence[MethodBinding]:
        rt = self.runtime

        def target(ctx: Any, params: Any) -> str:
            return params.episode or rt.episode_for(ctx)

        async def reset(ctx: Any, params: ResetParams) -> ControlResult:
            key = target(ctx, params)
            return ControlResult(episode=key, state=_jsonable(rt.reset(key, seed=params.seed)))

        async def snapshot(ctx: Any, params: EpisodeParams) -> ControlResult:
            key = target(ctx, params)
            snap = rt.snapshot(key)
            return ControlResult(episode=key, snapshot_id=snap.id, state=_jsonable(rt.state(key)))

        async def restore(ctx: Any, params: RestoreParams) -> ControlResult:
            key = target(ctx, params)
            try:
                state = rt.restore(key, snapshot_id=params.snapshot_id, state=params.state)
            except (KeyError, ValueError) as exc:
                from mcp.shared.exceptions import MCPError
                from mcp_types import INVALID_PARAMS

                raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
            return ControlResult(episode=key, state=_jsonable(state))

        async def state(ctx: Any, params: EpisodeParams) -> ControlResult:
            key = target(ctx, params)
            return ControlResult(episode=key, state=_jsonable(rt.state(key)), calls=rt.calls(key))

        async def close(ctx: Any, params: EpisodeParams) -> ControlResult:
            key = target(ctx, params)
            return ControlResult(episode=key, closed=rt.close_episode(key))

        return [
            MethodBinding("astra/reset", ResetParams, reset),
            MethodBinding("astra/snapshot", EpisodeParams, snapshot),
            MethodBinding("astra/restore", RestoreParams, restore),
            MethodBinding("astra/state", EpisodeParams, state),
            MethodBinding("astra/episode/close", EpisodeParams, close),
        ]


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=repr))
    except (TypeError, ValueError):
        return repr(value)


class EnvironmentServer(MCPServer):
    """An ``MCPServer`` whose tools come from an environment (explicit JSON schemas, not signatures)."""

    def __init__(self, runtime: EnvironmentRuntime, *, bearer_token: str | None = None, public_url: str | None = None) -> None:
        auth_kwargs: dict[str, Any] = {}
        if bearer_token:
            url = public_url or "http://127.0.0.1/mcp"
            auth_kwargs = {
                "token_verifier": _StaticToken(bearer_token),
                "auth": AuthSettings(issuer_url=url, resource_server_url=url, validate_token_resource=False),
            }
        super().__init__(
            name=runtime.name,
            instructions=runtime.description or None,
            lifespan=runtime._lifespan,
            extensions=[_ControlExtension(runtime)],
            log_level="WARNING",
            **auth_kwargs,
        )
        self.runtime = runtime

    async def list_tools(self) -> list[MCPTool]:
        return [tool.mcp() for tool in self.runtime.tools.values()]

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.runtime.tools.get(name)
        return None if tool is None else tool.input_schema

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> CallToolResult:  # type: ignore[override]
        ctx = getattr(context, "_request_context", None) if context is not None else None
        return await self.runtime.call_tool_result(name, arguments, episode_id=self.runtime.episode_for(ctx))


# --------------------------------------------------------------------------- builders


def build_server_from_dict(
    spec: Mapping[str, Any],
    *,
    sandboxed: bool | None = None,
    limits: SandboxLimits | None = None,
    bearer_token: str | None = None,
    public_url: str | None = None,
) -> EnvironmentServer:
    """Serve the JSON form of an ``EnvironmentSpec``. ``sandboxed=None`` follows the spec's flag."""
    name = spec.get("name") or spec.get("id")
    if not name:
        raise EnvironmentError_("environment spec has no name")
    tools = []
    for i, impl in enumerate(spec.get("tools") or []):
        if not isinstance(impl, Mapping) or not isinstance(impl.get("spec"), Mapping) or not isinstance(impl.get("source"), str):
            raise EnvironmentError_(f"environment {name!r}: tools[{i}] needs 'spec' (a ToolSpec) and 'source' (Python code)")
        tool_spec = impl["spec"]
        tools.append(_make_tool(tool_spec, source=impl["source"], entrypoint=impl.get("entrypoint") or tool_spec.get("name"), stateful=bool(impl.get("stateful"))))
    runtime = EnvironmentRuntime(
        name=str(name),
        description=spec.get("description") or "",
        tools=tools,
        initial_state=dict(spec.get("initial_state") or {}),
        sandboxed=bool(spec.get("sandboxed", True)) if sandboxed is None else sandboxed,
        limits=limits,
        bearer_token=bearer_token,
        public_url=public_url,
    )
    return runtime.server


def build_class_server(
    name: str,
    factory: Callable[[dict[str, Any]], Any],
    tools: Sequence[Any],
    *,
    description: str = "",
    method_names: Mapping[str, str] | None = None,
    initial_config: dict[str, Any] | None = None,
    state_view: Callable[[Any], Any] | None = None,
    bearer_token: str | None = None,
    public_url: str | None = None,
) -> EnvironmentServer:
    """Serve a trusted Python class whose methods are the tools (e.g. BFCL's backend classes).

    - ``factory(config)`` builds one backend object per episode; ``config`` is a deep copy of
      ``initial_config`` (for BFCL: ``lambda cfg: (o := GorillaFileSystem(), o._load_scenario(cfg), o)[-1]``).
    - ``tools``: ``ToolSpec`` records (or dicts with name/description/input_schema): the
      advertised schemas, validated on every call. ``method_names`` maps a tool name to the
      method it calls when they differ (default: the same name).
    - ``reset`` builds a new object from ``initial_config``; ``snapshot``/``restore`` deep-copy
      the object; ``runtime.instance(episode)`` is the live object (for state checkers);
      ``state_view(obj)`` is what ``state()`` and ``astra/state`` return (default: the
      object's public, JSON-able attributes).
    Runs in-process, unsandboxed: only for hand-written, trusted code.
    """
    method_names = dict(method_names or {})
    built = []
    for t in tools:
        data = t.model_dump() if hasattr(t, "model_dump") else dict(t)
        built.append(_make_tool(data, method=method_names.get(data["name"], data["name"])))
    runtime = EnvironmentRuntime(
        name=name,
        description=description,
        tools=built,
        factory=factory,
        initial_config=initial_config,
        state_view=state_view,
        sandboxed=False,
        bearer_token=bearer_token,
        public_url=public_url,
    )
    return runtime.server


# --------------------------------------------------------------------------- wire control


class EnvironmentControl:
    """The harness side of the control channel, over any connected ``mcp.client.Client``.

    ``ctl = EnvironmentControl(client); await ctl.reset(seed=0); snap = await ctl.snapshot()``.
    ``episode`` selects an explicit episode id (the one sent in ``_meta["astra/episode"]``);
    without it the server uses the connection's own episode.
    """

    def __init__(self, client: Any, episode: str | None = None) -> None:
        self.client = client
        self.episode = episode

    async def _send(self, request: Any) -> ControlResult:
        return await self.client.session.send_request(request, ControlResult)

    async def reset(self, seed: int | None = None) -> Any:
        return (await self._send(ResetRequest(params=ResetParams(episode=self.episode, seed=seed)))).state

    async def snapshot(self) -> ControlResult:
        return await self._send(SnapshotRequest(params=EpisodeParams(episode=self.episode)))

    async def restore(self, *, snapshot_id: str | None = None, state: dict[str, Any] | None = None) -> Any:
        return (await self._send(RestoreRequest(params=RestoreParams(episode=self.episode, snapshot_id=snapshot_id, state=state)))).state

    async def state(self) -> ControlResult:
        return await self._send(StateRequest(params=EpisodeParams(episode=self.episode)))

    async def close(self) -> bool:
        return bool((await self._send(CloseEpisodeRequest(params=EpisodeParams(episode=self.episode)))).closed)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        """``client.call_tool`` stamped with this control's episode id."""
        meta = {EPISODE_META_KEY: self.episode} if self.episode else None
        return await self.client.call_tool(name, arguments or {}, meta=meta)


# --------------------------------------------------------------------------- launching


def serve(server: EnvironmentServer, *, http: bool = False, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve over stdio, or streamable HTTP on ``host:port`` (DNS-rebinding protection on; a bearer
    token, when wanted, is given to the builder: ``build_server(..., bearer_token=...)``).
    Returns when the client goes away (stdio) or on interrupt; the sandbox worker is closed."""

    async def run() -> None:
        runtime = server.runtime
        try:
            if runtime.sandboxed and runtime.factory is None and runtime.tools:
                try:
                    await runtime._sandbox_for_loop()  # fail closed before serving anything
                except SandboxUnavailable as exc:
                    print(f"error: {exc}", file=sys.stderr, flush=True)
                    raise SystemExit(2) from None
            if not http:
                await server.run_stdio_async()
                return
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=[f"{host}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=[f"http://{host}:*", "http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
            await server.run_streamable_http_async(host=host, port=port, transport_security=security)
        finally:
            await server.runtime.aclose()

    anyio.run(run)


def main(spec_path: str | Path, argv: Sequence[str] | None = None) -> None:
    """Entry point of an emitted ``server.py``: ``[--http --port P --host H --token T]``."""
    parser = argparse.ArgumentParser(description="Serve an ASTRA environment over MCP (stdio by default).")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--token", default=None, help="require this bearer token on HTTP requests")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help=f"run the tool code WITHOUT the bubblewrap sandbox (dangerous; same as {UNSAFE_ENV}=1)")
    args = parser.parse_args(argv)
    if args.unsafe_no_sandbox:
        import os

        os.environ[UNSAFE_ENV] = "1"
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    url = f"http://{args.host}:{args.port}/mcp"
    server = build_server_from_dict(spec, bearer_token=args.token if args.http else None, public_url=url)
    if args.token and not args.http:
        print("note: --token applies to --http only; stdio is not authenticated", file=sys.stderr)
    serve(server, http=args.http, host=args.host, port=args.port)
