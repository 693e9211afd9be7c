"""Serving an environment as a real MCP server: tools, episodes, the hidden control channel.

Needs only Python, ``mcp`` (and what ``mcp`` itself depends on: ``anyio``, ``jsonschema``,
``pydantic``, ``uvicorn``): this module, ``_sandbox`` and ``_worker`` are vendored into
every emitted environment directory, so it works on the plain JSON form of an
``EnvironmentSpec`` and never imports ``astra``.

Episodes
    Every episode starts from the environment's initial state, and episodes never see each
    other's state. Over the wire an episode is named by a *handle* the server mints
    (``astra/episode/open``, or ``astra/reset`` without a handle): ``secrets.token_urlsafe(32)``,
    sent back on every request as ``_meta["astra/episode"]`` (tool calls) or the ``episode``
    param (control requests). A handle is bound to its creator: opened under an auth identity
    (the bearer token's ``client_id``) or a connection (a stateful HTTP session, a stdio
    process, an in-process client) it works only from that identity and connection; opened
    on stateless HTTP without auth, the handle itself is the capability. A handle the server
    did not mint, that expired, was closed or belongs to someone else is refused with the
    same MCP error (``INVALID_PARAMS``, ``data.reason = "unknown_episode"``): the server never
    creates an episode from a client-chosen id.

    A request without a handle uses its connection's *implicit* episode: one per stdio
    process, per in-process client and per stateful (2025-11-25) HTTP session. A request on
    stateless HTTP (the 2026-07-28 protocol, or a stateless 2025 server) has no connection,
    so without a handle it is refused (``data.reason = "no_episode"``) rather than given a
    shared default or a throw-away state: an RL rollout that forgot its handle fails loudly
    instead of silently losing state between calls.

    Capacity is explicit: at ``max_episodes`` open episodes a new one is refused
    (``data.reason = "episode_capacity"``), never made by evicting a live one. An episode
    idle for ``episode_ttl_s`` expires (logged); implicit episodes of stdio / in-process
    connections live as long as their connection instead.

    Memory is bounded per episode too: beside its live state (at most ``max_state_bytes``), an
    episode keeps its call log and snapshots within ``episode_memory_bytes`` (JSON characters).
    Past it the oldest call records lose their arguments, value and error (``"evicted": true``),
    then go whole (``astra/state`` says how many in ``calls_dropped``); a snapshot that does not
    fit is refused (``snapshot_capacity``). Process rewards are scored from the client's own
    record of the calls (``astra.trainers``), never from this log.

    Control requests that change an episode's state (``astra/restore``, ``astra/snapshot``) wait
    for its call in flight to commit; ``astra/reset`` makes a new episode object, into which the
    call in flight never commits.

    Tool code that is not sandboxed runs in a worker thread under ``call_timeout_s``, so a
    hanging tool delays only its own episode; a class environment's episode whose call timed
    out is unusable until it is reset (the abandoned call may still be changing it).

    In process, :class:`EnvironmentRuntime` methods take any episode key the (trusted)
    caller chooses; those keys are never reachable over the wire.

Control channel (never in ``tools/list``; the model cannot call it)
    In process: the :class:`EnvironmentRuntime` handle (``server.runtime``): ``reset``,
    ``snapshot``, ``restore``, ``state``, ``calls``. Over the wire: an MCP extension
    (SEP-2133, identifier ``dev.astra/environment``) adding the request methods
    ``astra/episode/open``, ``astra/reset``, ``astra/snapshot``, ``astra/restore``,
    ``astra/state`` and ``astra/episode/close``; :class:`EnvironmentControl` sends them
    through any connected ``mcp.client.Client``.
"""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (the runtime, its MCP server and its control extension are one unit, in one module)
import argparse
import copy
import dataclasses
import enum
import functools
import hashlib
import inspect
import ipaddress
import itertools
import json
import logging
import os
import secrets
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_process
import anyio.to_thread
import jsonschema
import jsonschema.exceptions
import jsonschema.validators
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolResult,
    Request,
    RequestParams,
    Result,
    TextContent,
    ToolAnnotations,
)
from mcp_types import Tool as MCPTool
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import AnyHttpUrl

from ._kinds import ToolErrorKind
from ._sandbox import UNSAFE_ENV, Sandbox, SandboxLimits, SandboxUnavailable, unsafe_opt_in

try:  # optional: a compiled "is it valid" for the hot path; emitted servers run without it
    import jsonschema_rs as _rs
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _rs: Any = None

log = logging.getLogger("astra.servers")

EPISODE_META_KEY = "astra/episode"
CONTROL_EXTENSION = "dev.astra/environment"
DEFAULT_EPISODE = "default"
MAX_EPISODES = 1024
"""Default capacity: open episodes (handles and implicit ones) per server."""
EPISODE_TTL_S = 3600.0
"""Default idle time after which an episode expires."""
CALL_TIMEOUT_S = 60.0
"""Default per-call limit for tool code that runs in-process (sandboxed calls: the smaller of it and ``wall_s``)."""
MAX_SNAPSHOTS_PER_EPISODE = 64
EPISODE_MEMORY_BYTES = 32 * 1024 * 1024
"""Default budget of what an episode keeps beside its live state: its call log and its snapshots (JSON
characters). Past it the oldest call records lose their payloads (arguments, value, error: the record
says ``"evicted": true``), then the oldest records go whole; a snapshot that does not fit is refused."""
_RECORD_OVERHEAD = 256  # characters a call record is counted for beyond its payload (and all an evicted one holds)
MAX_JSON_DEPTH = 100
"""Deepest nesting of arguments, results and states: the MCP client's JSON parser stops at 200 levels
(a deeper reply is never answered, so the caller hangs), and replies wrap a value in a few levels more."""


class EpisodeRefusal(enum.StrEnum):
    """Why a request's episode was refused (``MCPError.data["reason"]``)."""

    UNKNOWN = "unknown_episode"  # never minted, expired, closed, or someone else's: indistinguishable on purpose
    NO_EPISODE = "no_episode"  # stateless request without a handle
    CAPACITY = "episode_capacity"  # max_episodes open: refused, nothing evicted
    UNUSABLE = "episode_unusable"  # a call timed out while it may still change the episode's state
    SNAPSHOTS = "snapshot_capacity"


class EpisodeRefused(MCPError):
    """A request's episode cannot be used; the MCP error the client receives."""

    def __init__(self, reason: EpisodeRefusal, message: str) -> None:
        code = INVALID_REQUEST if reason in (EpisodeRefusal.CAPACITY, EpisodeRefusal.SNAPSHOTS) else INVALID_PARAMS
        super().__init__(code=code, message=message, data={"reason": reason.value})
        self.reason = reason


class EpisodeKind(enum.Enum):
    HANDLE = "handle"  # minted by the server, named by the client on the wire
    IMPLICIT = "implicit"  # a connection's own episode (stdio, in-process client, stateful HTTP session)
    IN_PROCESS = "in_process"  # chosen by trusted in-process code; never reachable over the wire


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
    error_kind: ToolErrorKind | None = None
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
    size: int = 0  # counted against the episode's memory budget


@dataclass(frozen=True)
class _Caller:
    """Who sends a request: what an episode handle is bound to when it is opened."""

    auth: str | None  # the access token's client_id
    connection: str | None  # a connection that lasts across requests; None on stateless HTTP


@dataclass
class _Episode:
    id: str
    seed: int | None = None
    state: dict[str, Any] | None = None
    instance: Any = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    kind: EpisodeKind = EpisodeKind.IN_PROCESS
    owner: _Caller | None = None
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  # calls in flight: an episode in use never expires
    snapshots: OrderedDict[str, Snapshot] = field(default_factory=OrderedDict)
    unusable: str | None = None
    calls_dropped: int = 0  # records removed whole from the front of ``calls`` (the memory budget)
    call_sizes: list[int] = field(default_factory=list)  # each kept record's counted size, as ``calls``
    stripped: int = 0  # how many of the first records of ``calls`` have lost their payloads
    log_bytes: int = 0  # sum of ``call_sizes``
    snapshot_bytes: int = 0

    @property
    def n_calls(self) -> int:
        """Calls made in this episode (kept or dropped records)."""
        return self.calls_dropped + len(self.calls)


@dataclass
class _ClientSlot:
    """What the server lifespan yields: one per in-process client or stdio process, but one for
    a whole HTTP app (``per_client=False``), whose requests come from any number of clients."""

    episode_id: str
    per_client: bool = True


def _fingerprint(handle: str) -> str:
    """A log-safe name for a handle (the handle itself is a credential)."""
    return hashlib.sha256(handle.encode()).hexdigest()[:10]


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
    float_arguments: frozenset[str] = frozenset()
    float_list_arguments: frozenset[str] = frozenset()
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


REGEX_BACKTRACK_LIMIT = 100_000
"""Steps a backtracking match may take, for the few patterns (lookaround, backreferences) the
linear-time engine cannot run; past it the value does not match (fail closed)."""
PATTERN_CHECK_S = 5.0
"""Without jsonschema-rs, a schema with patterns is checked in a worker process killed after this
(started with the server, so the bound is not spent on starting it)."""


def _rs_pattern_options(linear: bool) -> Any:
    return _rs.RegexOptions() if linear else _rs.FancyRegexOptions(backtrack_limit=REGEX_BACKTRACK_LIMIT)


def _rs_compile(schema: Mapping[str, Any]) -> Any:
    """jsonschema-rs for ``schema`` with linear-time patterns (its ``regex`` engine), or, where a
    pattern needs lookaround/backreferences, the backtracking engine under a step bound."""
    try:
        return _rs.validator_for(dict(schema), pattern_options=_rs_pattern_options(linear=True))
    except Exception:  # noqa: BLE001 - a pattern the linear engine cannot run
        return _rs.validator_for(dict(schema), pattern_options=_rs_pattern_options(linear=False))


@functools.lru_cache(maxsize=4096)
def _pattern_matcher(pattern: str) -> Any:
    try:
        return _rs_compile({"type": "string", "pattern": pattern})
    except Exception:  # noqa: BLE001 - neither engine takes it: nothing matches (fail closed)
        return None


def _search(pattern: str, text: str) -> bool:
    """``re.search(pattern, text)`` in linear time (jsonschema-rs's regex engine; Python's ``re``
    backtracks exponentially on patterns such as ``^(a+)+$``). Without jsonschema-rs, ``re``
    itself: callers on an event loop go through :meth:`SchemaCheck.errors_bounded`."""
    if _rs is None:
        import re

        return re.search(pattern, text) is not None
    matcher = _pattern_matcher(pattern)
    return matcher is not None and matcher.is_valid(text)


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, pattern_properties: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for k, v in instance.items():
            if _search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = {k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)}
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            regexes = ", ".join(repr(each) for each in sorted(patterns))
            yield jsonschema.ValidationError(f"{joined} {verb} not match any of the regexes: {regexes}")
        else:
            listed = sorted(extras, key=str)
            verb = "was" if len(listed) == 1 else "were"
            yield jsonschema.ValidationError(
                f"Additional properties are not allowed ({', '.join(repr(e) for e in listed)} {verb} unexpected)"
            )


_LINEAR_KEYWORDS = {
    "pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties,
}


def _has_patterns(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "pattern" in schema or "patternProperties" in schema or any(_has_patterns(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_patterns(v) for v in schema)
    return False


def _python_errors(schema: dict[str, Any], instance: Any) -> list[tuple[str, list[Any]]]:
    """The best violation by the plain Python validator, as (message, path): run in a worker process."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    return [] if error is None else [(error.message, list(error.absolute_path))]


class SchemaCheck:
    """A compiled JSON Schema check for every call of a tool: jsonschema-rs (when
    installed) answers "valid" in microseconds; the Python validator, which is the
    authority, explains a failure with the path of each offending field.

    ``pattern`` / ``patternProperties`` run in linear time on both (jsonschema-rs's ``regex``
    engine; a pattern it cannot run, with lookaround or backreferences, backtracks at most
    ``REGEX_BACKTRACK_LIMIT`` steps), so no argument can stall the event loop. Without
    jsonschema-rs, :meth:`errors_bounded` checks a schema with patterns in a worker process
    killed after ``PATTERN_CHECK_S``.

    Raises ``jsonschema.SchemaError`` for a schema that is not valid JSON Schema."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = dict(schema)
        validator_cls = jsonschema.validators.validator_for(self.schema)
        validator_cls.check_schema(self.schema)
        self.has_patterns = _has_patterns(self.schema)
        if self.has_patterns and _rs is not None:
            validator_cls = jsonschema.validators.extend(validator_cls, _LINEAR_KEYWORDS)
        self.validator = validator_cls(schema)
        self.fast = None
        if _rs is not None:
            try:
                self.fast = _rs_compile(schema)
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

    async def first_error_bounded(self, instance: Any) -> jsonschema.ValidationError | None:
        """:meth:`first_error` that never stalls the event loop: where patterns would run on
        Python's backtracking ``re`` (no jsonschema-rs), the check runs in a worker process that
        is killed after ``PATTERN_CHECK_S`` (then the instance is refused: fail closed)."""
        if _rs is not None or not self.has_patterns:
            return self.first_error(instance)
        found: list[tuple[str, list[Any]]] | None = None
        with anyio.move_on_after(PATTERN_CHECK_S):
            found = await anyio.to_process.run_sync(_python_errors, self.schema, instance, cancellable=True)
        if found is None:
            return jsonschema.ValidationError(
                f"could not be checked against the schema within {PATTERN_CHECK_S:g} s (a slow 'pattern'; "
                "install jsonschema-rs for linear-time patterns)"
            )
        if not found:
            return None
        message, path = found[0]
        return jsonschema.ValidationError(message, path=path)


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


def _is_number(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "number"


def _float_fields(input_schema: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """The top-level properties a trusted class tool declares ``number`` (and arrays of them)."""
    properties = input_schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    numbers = [k for k, v in properties.items() if _is_number(v)]
    lists = [k for k, v in properties.items()
             if isinstance(v, dict) and v.get("type") == "array" and _is_number(v.get("items"))]
    return {"float_arguments": frozenset(numbers), "float_list_arguments": frozenset(lists)}


def _as_float(value: Any) -> float:
    return float(value) if type(value) is int else value


def _float_arguments(tool: _Tool, arguments: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``arguments`` (already schema-valid) with the integers given for ``number`` fields as floats.

    Trusted code runs in this process, so a model's ``power(10, 3000000)`` on Python ints would be
    one long C call holding the GIL (every episode and the call timeout wait); on floats it is
    ``OverflowError`` at once. An integer too large for a float is refused."""
    out = dict(arguments)
    try:
        for key in tool.float_arguments & out.keys():
            out[key] = _as_float(out[key])
        for key in tool.float_list_arguments & out.keys():
            out[key] = [_as_float(v) for v in out[key]]
    except OverflowError:
        return arguments, f"invalid arguments for tool {tool.name!r}: an integer too large for a number"
    return out, None


async def _schema_error(tool: _Tool, arguments: Any) -> str | None:
    if not isinstance(arguments, dict):
        return f"arguments for tool {tool.name!r} must be a JSON object"
    assert tool.validator is not None  # every served tool has one
    error = await tool.validator.first_error_bounded(arguments)
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
        max_episodes: int = MAX_EPISODES,
        episode_ttl_s: float | None = EPISODE_TTL_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        episode_memory_bytes: int = EPISODE_MEMORY_BYTES,
    ) -> None:
        if max_episodes < 1:
            raise ValueError("max_episodes must be at least 1")
        if episode_memory_bytes < 1:
            raise ValueError("episode_memory_bytes must be positive")
        if episode_ttl_s is not None and episode_ttl_s <= 0:
            raise ValueError("episode_ttl_s must be positive (None: episodes never expire)")
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
        self.max_episodes = max_episodes
        self.episode_ttl_s = episode_ttl_s
        self.call_timeout_s = call_timeout_s
        self.episode_memory_bytes = episode_memory_bytes
        self.shared_lifespan = False  # set when served over HTTP: one lifespan for every client
        self._episodes: OrderedDict[str, _Episode] = OrderedDict()  # ordered by last use
        self._sandbox: Sandbox | None = None
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._slot_counter = itertools.count()
        if factory is None and not sandboxed:
            for tool in tools:
                self._compile(tool)
        self.server = EnvironmentServer(self, bearer_token=bearer_token, public_url=public_url)

    # ----------------------------------------------------------------- episodes

    def _fresh(self, episode_id: str, seed: int | None, kind: EpisodeKind = EpisodeKind.IN_PROCESS,
               owner: _Caller | None = None) -> _Episode:
        episode = _Episode(id=episode_id, seed=seed, kind=kind, owner=owner)
        if self.factory is not None:
            episode.instance = self.factory(copy.deepcopy(self.initial_config))
        else:
            episode.state = copy.deepcopy(self.initial_state)
        return episode

    def _admit(self, key: str, seed: int | None, kind: EpisodeKind, owner: _Caller | None) -> _Episode:
        """Add a fresh episode, or refuse when full: expired episodes go first, live ones never."""
        self.expire_idle()
        if len(self._episodes) >= self.max_episodes:
            raise EpisodeRefused(
                EpisodeRefusal.CAPACITY,
                f"the environment already has {len(self._episodes)} open episodes (max_episodes="
                f"{self.max_episodes}); close finished episodes (astra/episode/close) or serve with a larger "
                "--max-episodes",
            )
        episode = self._fresh(key, seed, kind, owner)
        self._episodes[key] = episode
        return episode

    def _touch(self, episode: _Episode) -> None:
        episode.last_used = time.monotonic()
        if self._episodes.get(episode.id) is episode:
            self._episodes.move_to_end(episode.id)  # the registry stays ordered by last use

    def _expires(self, episode: _Episode) -> bool:
        # a stdio process's or in-process client's own episode lives as long as its connection
        connection = episode.owner.connection if episode.owner is not None else None
        return not (episode.kind is EpisodeKind.IMPLICIT and connection is not None and connection.startswith("slot:"))

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Drop episodes idle for longer than ``episode_ttl_s`` (none in use); returns their keys."""
        if self.episode_ttl_s is None or not self._episodes:
            return []
        now = time.monotonic() if now is None else now
        expired = []
        for key, episode in self._episodes.items():  # oldest use first
            if now - episode.last_used < self.episode_ttl_s:
                break
            if not episode.busy and self._expires(episode):
                expired.append(key)
        for key in expired:
            episode = self._episodes.pop(key)
            log.info("episode %s (%s) expired after %.0f s idle (episode_ttl_s=%g)",
                     _fingerprint(key), episode.kind.value, now - episode.last_used, self.episode_ttl_s)
        return expired

    @property
    def open_episodes(self) -> int:
        return len(self._episodes)

    def episode(self, episode_id: str | None = None) -> _Episode:
        """The episode under an in-process key (trusted callers; created on first use)."""
        key = episode_id or DEFAULT_EPISODE
        episode = self._episodes.get(key)
        if episode is None:
            return self._admit(key, None, EpisodeKind.IN_PROCESS, None)
        self._touch(episode)
        return episode

    def new_episode(self, episode_id: str | None = None, seed: int | None = None) -> str:
        """In process: a fresh episode (initial state) under ``episode_id`` (default: a new handle)."""
        if episode_id is None:
            return self.open_episode(seed=seed)
        if episode_id in self._episodes:
            self.reset(episode_id, seed=seed)
        else:
            self._admit(episode_id, seed, EpisodeKind.IN_PROCESS, None)
        return episode_id

    def open_episode(self, seed: int | None = None, *, owner: _Caller | None = None) -> str:
        """Mint a handle for a fresh episode (what ``astra/episode/open`` does for ``owner``)."""
        handle = secrets.token_urlsafe(32)
        self._admit(handle, seed, EpisodeKind.HANDLE, owner)
        return handle

    def reset(self, episode_id: str | None = None, seed: int | None = None) -> Any:
        """Put the episode back to the initial state (forgetting its calls and snapshots); returns that state."""
        key = episode_id or DEFAULT_EPISODE
        old = self._episodes.get(key)
        if old is None:
            self._admit(key, seed, EpisodeKind.IN_PROCESS, None)
        else:
            # a new episode object: a call still in flight commits into the old one, never into this one
            episode = self._fresh(key, seed, old.kind, old.owner)
            episode.lock = old.lock
            self._episodes[key] = episode
            self._touch(episode)
        return self.state(key)

    def close_episode(self, episode_id: str) -> bool:
        return self._episodes.pop(episode_id, None) is not None

    def state(self, episode_id: str | None = None) -> Any:
        """A copy of the episode's state (for class environments: ``state_view(instance)``)."""
        return self._state_of(self.episode(episode_id))

    def _wire_state(self, episode: _Episode) -> Any:
        """What astra/state and astra/snapshot send: a new JSON object, so a spec environment's state is
        not deep-copied first (a second walk of it on the event loop)."""
        return _jsonable(self._state_of(episode) if episode.instance is not None else episode.state)

    def _state_of(self, episode: _Episode) -> Any:
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
        return self._snapshot_of(self.episode(episode_id))

    def _snapshot_of(self, episode: _Episode) -> Snapshot:
        """Save the episode's state. Refused (``snapshot_capacity``) past ``MAX_SNAPSHOTS_PER_EPISODE`` or when
        the snapshots would not fit ``episode_memory_bytes`` (call records give way to them first)."""
        if len(episode.snapshots) >= MAX_SNAPSHOTS_PER_EPISODE:
            raise EpisodeRefused(EpisodeRefusal.SNAPSHOTS, f"an episode keeps at most {MAX_SNAPSHOTS_PER_EPISODE} "
                                 "snapshots; reset the episode or open a new one")
        # a class environment's object is counted by its state view (what astra/state shows of it)
        size = _json_size(self._state_of(episode) if episode.instance is not None else episode.state)
        if episode.snapshot_bytes + size > self.episode_memory_bytes:
            raise EpisodeRefused(
                EpisodeRefusal.SNAPSHOTS,
                f"this snapshot ({size} characters of state) does not fit the episode's memory budget: its "
                f"{len(episode.snapshots)} snapshots already hold {episode.snapshot_bytes} of "
                f"episode_memory_bytes={self.episode_memory_bytes}; reset the episode or open a new one",
            )
        saved = copy.deepcopy(episode.instance if episode.instance is not None else episode.state)
        snap = Snapshot(
            id=uuid.uuid4().hex, episode=episode.id, state=saved, seed=episode.seed, n_calls=episode.n_calls, size=size
        )
        episode.snapshots[snap.id] = snap
        episode.snapshot_bytes += size
        self._fit_budget(episode)
        return snap

    def _record(self, episode: _Episode, outcome: ToolOutcome) -> None:
        """Append a call's record to the episode's log, within the episode's memory budget."""
        record = outcome.to_record()
        size = _RECORD_OVERHEAD + sum(_json_size(record[k]) for k in ("arguments", "value", "error"))
        episode.calls.append(record)
        episode.call_sizes.append(size)
        episode.log_bytes += size
        self._fit_budget(episode)

    def _fit_budget(self, episode: _Episode) -> None:
        """Oldest call records first lose their payloads, then go whole, until the log and the
        snapshots fit ``episode_memory_bytes`` (snapshots are never evicted: they are refused)."""
        budget = self.episode_memory_bytes
        calls, sizes = episode.calls, episode.call_sizes
        while episode.log_bytes + episode.snapshot_bytes > budget and episode.stripped < len(calls):
            i = episode.stripped
            calls[i] = {**calls[i], "arguments": None, "value": None, "error": None, "evicted": True}
            episode.log_bytes -= sizes[i] - _RECORD_OVERHEAD
            sizes[i] = _RECORD_OVERHEAD
            episode.stripped += 1
        if episode.log_bytes + episode.snapshot_bytes > budget and calls:
            # only payload-less records are left: drop the oldest quarter at once (amortised O(1) per call)
            over = episode.log_bytes + episode.snapshot_bytes - budget
            drop = min(len(calls), max(-(-over // _RECORD_OVERHEAD), len(calls) // 4))
            episode.log_bytes -= sum(sizes[:drop])
            del calls[:drop], sizes[:drop]
            episode.stripped = max(0, episode.stripped - drop)
            episode.calls_dropped += drop

    def restore(self, episode_id: str | None = None, *, snapshot_id: str | None = None, state: Any = None) -> Any:
        """Restore an episode from one of its own snapshots (any environment) or a state dict (spec environments).
        Refused (RuntimeError) while a call of the episode is in flight: it would commit over the restored
        state (``astra/restore`` waits for the call instead)."""
        episode = self.episode(episode_id)
        if episode.lock.locked():
            raise RuntimeError("a tool call of this episode is in flight: restore it once the call has returned")
        return self._restore(episode, snapshot_id=snapshot_id, state=state)

    def _restore(self, episode: _Episode, *, snapshot_id: str | None, state: Any) -> Any:
        if snapshot_id is not None:
            snap = episode.snapshots.get(snapshot_id)
            if snap is None:
                raise KeyError(f"unknown snapshot {snapshot_id!r} (an episode restores only its own snapshots)")
            if episode.instance is not None or self.factory is not None:
                episode.instance = copy.deepcopy(snap.state)
            else:
                episode.state = copy.deepcopy(snap.state)
            episode.seed = snap.seed
            keep = max(0, snap.n_calls - episode.calls_dropped)  # the calls made after the snapshot go
            episode.log_bytes -= sum(episode.call_sizes[keep:])
            del episode.calls[keep:], episode.call_sizes[keep:]
            episode.stripped = min(episode.stripped, keep)
            episode.calls_dropped = min(episode.calls_dropped, snap.n_calls)
            episode.unusable = None
        elif state is not None:
            if self.factory is not None:
                raise ValueError("a class environment restores from a snapshot id, not a state dict")
            if not isinstance(state, dict):
                raise ValueError("state must be a JSON object")
            too_deep = _depth_problem(state, "state")
            if too_deep is not None:  # it could not be sent back (astra/state would never be answered)
                raise ValueError(too_deep)
            size = len(json.dumps(state, ensure_ascii=False))
            if size > self.limits.max_state_bytes:  # the bound every tool's state lives under
                raise ValueError(f"state is {size} characters of JSON; at most {self.limits.max_state_bytes} "
                                 "(max_state_bytes)")
            episode.state = copy.deepcopy(state)
        else:
            raise ValueError("restore needs a snapshot_id or a state")
        self._renew_process(episode)  # what the episode's tool process holds belongs to the state left behind
        return self._state_of(episode)

    def _renew_process(self, episode: _Episode) -> None:
        """The episode's next sandboxed call runs in a fresh process (``ProcessScope.EPISODE``): after a
        restore, and after a call this runtime failed although the sandbox passed it (what such a call
        left in the interpreter and scratch goes, as its state change does)."""
        if self._sandbox is not None:
            self._sandbox.renew(episode)

    # ----------------------------------------------------------------- the wire

    def caller(self, ctx: Any) -> _Caller:
        """Who sent a request: its auth identity and the connection it came on (None when stateless)."""
        token = get_access_token()
        connection = None
        if ctx is not None:
            if getattr(ctx, "protocol_version", None) not in MODERN_PROTOCOL_VERSIONS:
                # a 2025 stateful session (the session manager has checked that it exists and that
                # this credential opened it); 2026-07-28 requests have no sessions, whatever they send
                headers = getattr(getattr(ctx, "request", None), "headers", None)
                session_id = headers.get("mcp-session-id") if headers is not None else None
                if session_id:
                    connection = f"http-session:{session_id}"
            slot = getattr(ctx, "lifespan_context", None)
            if connection is None and isinstance(slot, _ClientSlot) and slot.per_client:
                connection = slot.episode_id
        return _Caller(auth=token.client_id if token is not None else None, connection=connection)

    def resolve(self, ctx: Any, handle: Any) -> _Episode:
        """The episode a wire request may use: its handle's (if the caller owns it) or its
        connection's implicit one. Raises :class:`EpisodeRefused` (see the module docstring)."""
        caller = self.caller(ctx)
        self.expire_idle()
        if handle is not None:
            episode = self._episodes.get(handle) if isinstance(handle, str) else None
            if episode is None or episode.kind is not EpisodeKind.HANDLE or not _owns(episode.owner, caller):
                ttl = f"{self.episode_ttl_s:g} s" if self.episode_ttl_s is not None else "none"
                raise EpisodeRefused(
                    EpisodeRefusal.UNKNOWN,
                    "unknown episode handle: this server did not open it for you, or it was closed or expired "
                    f"(idle TTL {ttl}). Handles are minted by the server: open one with astra/episode/open "
                    "(or astra/reset) and send it back unchanged.",
                )
            self._touch(episode)
            return episode
        if caller.connection is None:
            raise EpisodeRefused(
                EpisodeRefusal.NO_EPISODE,
                "this request names no episode and has no session (stateless HTTP), so it has no state of its "
                "own: open an episode with the astra/episode/open request (extension dev.astra/environment) and "
                'send its handle as _meta["astra/episode"] on every tool call',
            )
        key = f"implicit:{caller.connection}"
        episode = self._episodes.get(key)
        if episode is None:
            return self._admit(key, None, EpisodeKind.IMPLICIT, caller)
        self._touch(episode)
        return episode

    def _drop_connection(self, connection: str) -> None:
        """A stdio process / in-process client went away: its episodes can never be used again."""
        for key in [k for k, e in self._episodes.items() if e.owner is not None and e.owner.connection == connection]:
            del self._episodes[key]

    @asynccontextmanager
    async def _lifespan(self, _server: Any) -> AsyncGenerator[_ClientSlot, None]:
        slot = _ClientSlot(episode_id=f"slot:{next(self._slot_counter)}:{uuid.uuid4().hex[:8]}",
                           per_client=not self.shared_lifespan)
        if self.sandboxed and self.factory is None and self.tools:
            await self._sandbox_for_loop()  # warm the worker before the first call
        if _rs is None and any(c is not None and c.has_patterns for t in self.tools.values()
                               for c in (t.validator, t.output_validator)):
            await anyio.to_process.run_sync(_python_errors, {}, None)  # start the pattern-checking process
        try:
            yield slot
        finally:
            self._drop_connection(slot.episode_id)

    # ----------------------------------------------------------------- execution

    def _compile(self, tool: _Tool) -> dict[str, Any]:
        assert tool.source is not None
        ns = self._namespaces.get(tool.name)
        if ns is None:
            ns = {"__name__": f"astra_env_tool_{tool.name}"}
            try:
                exec(compile(tool.source, f"<tool {tool.name}>", "exec"), ns)
            except Exception as exc:
                raise EnvironmentError_(
                    f"tool {tool.name!r}: its source does not load: {type(exc).__name__}: {exc}"
                ) from exc
            if not callable(ns.get(tool.entrypoint or tool.name)):
                raise EnvironmentError_(
                    f"tool {tool.name!r}: its source defines no function {tool.entrypoint or tool.name!r}"
                )
            self._namespaces[tool.name] = ns
        return ns

    async def _sandbox_for_loop(self) -> Sandbox:
        """The runtime's warm sandbox (one per runtime; it serves any event loop of this process)."""
        if self._sandbox is None:
            # --call-timeout bounds sandboxed calls too
            wall_s = min(self.limits.wall_s, self.call_timeout_s)
            self._sandbox = Sandbox(limits=dataclasses.replace(self.limits, wall_s=wall_s))
        await self._sandbox.start()
        return self._sandbox

    async def call(
        self, name: str, arguments: dict[str, Any] | None = None, *, episode_id: str | None = None
    ) -> ToolOutcome:
        """Run one tool call in an in-process episode (no MCP framing). Tool failures come back in the outcome."""
        return await self.call_in(self.episode(episode_id), name, arguments)

    async def call_in(self, episode: _Episode, name: str, arguments: Any) -> ToolOutcome:
        """Run one tool call in ``episode``. Tool failures come back in the outcome."""
        arguments = {} if arguments is None else arguments
        start = time.perf_counter()
        tool = self.tools.get(name)
        if tool is None:
            outcome = ToolOutcome(
                name,
                arguments if isinstance(arguments, dict) else {},
                ok=False,
                error_kind=ToolErrorKind.unknown_tool,
                error=f"unknown tool {_clean_text(name)!r}; available: {', '.join(sorted(self.tools))}",
            )
            return outcome
        too_deep = _depth_problem(arguments, "the arguments")
        problem = _unicode_problem(arguments, "the arguments") or too_deep or await _schema_error(tool, arguments)
        if problem is None and (tool.float_arguments or tool.float_list_arguments):
            arguments, problem = _float_arguments(tool, arguments)
        if problem is not None:
            recorded = _scrub(arguments) if isinstance(arguments, dict) and too_deep is None else {}
            outcome = ToolOutcome(name, recorded, ok=False, error_kind=ToolErrorKind.bad_arguments, error=problem)
        elif episode.unusable is not None:
            outcome = ToolOutcome(name, arguments, ok=False, error_kind=ToolErrorKind.episode_unusable,
                                  error=episode.unusable)
        else:
            episode.busy += 1
            try:
                # the lock covers the call up to its commit: control requests that change the state
                # (astra/restore, astra/snapshot) wait for it instead of being overwritten by it
                async with episode.lock:
                    outcome, new_state = await self._execute(tool, arguments, episode)
                    if outcome.ok and tool.output_validator is not None and not outcome.truncated:
                        structured = {"result": outcome.value} if tool.wrap_output else outcome.value
                        error = await tool.output_validator.first_error_bounded(structured)
                        if error is not None:  # a failed call leaves the state as it was
                            new_state = None
                            self._renew_process(episode)
                            outcome = ToolOutcome(
                                name, arguments, ok=False, error_kind=ToolErrorKind.bad_output,
                                error=f"the tool's result does not match its output schema: {error.message}")
                    if new_state is not None:
                        episode.state = new_state
                    return self._finish(episode, outcome, start)
            finally:
                episode.busy -= 1
                self._touch(episode)
        return self._finish(episode, outcome, start)

    def _finish(self, episode: _Episode, outcome: ToolOutcome, start: float) -> ToolOutcome:
        if outcome.error is not None:
            outcome.error = _clean_text(outcome.error)
        outcome.latency_s = time.perf_counter() - start
        self._record(episode, outcome)
        return outcome

    async def _run_trusted(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run in-process tool code off the event loop under ``call_timeout_s`` (TimeoutError past it):
        a hanging or CPU-bound tool delays only its own episode."""
        with anyio.fail_after(self.call_timeout_s):
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            value = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)
            if inspect.isawaitable(value):
                value = await value
            return value

    async def _execute(
        self, tool: _Tool, arguments: dict[str, Any], episode: _Episode
    ) -> tuple[ToolOutcome, dict[str, Any] | None]:
        """The call's outcome and the state it leaves (None: unchanged), which the caller commits."""
        if episode.instance is not None:
            return await self._execute_method(tool, arguments, episode), None
        assert tool.source is not None
        if self.sandboxed:
            return await self._execute_sandboxed(tool, arguments, episode)
        return await self._execute_in_process(tool, arguments, episode)

    async def _execute_method(self, tool: _Tool, arguments: dict[str, Any], episode: _Episode) -> ToolOutcome:
        method = getattr(episode.instance, tool.method or tool.name, None)
        if method is None:
            return ToolOutcome(
                tool.name,
                arguments,
                ok=False,
                error_kind=ToolErrorKind.unknown_tool,
                error=f"the backend has no method {tool.method or tool.name!r}",
            )
        try:
            value = await self._run_trusted(method, (), arguments)
        except TimeoutError:
            episode.unusable = (
                f"an earlier call ({tool.name}) did not finish within {self.call_timeout_s:g} s "
                "and may still be changing this episode's state: reset it or open a new episode"
            )
            return ToolOutcome(
                tool.name,
                arguments,
                ok=False,
                error_kind=ToolErrorKind.timeout,
                error=f"the tool did not finish within {self.call_timeout_s:g} s",
            )
        except Exception as exc:
            return ToolOutcome(
                tool.name, arguments, ok=False, error_kind=ToolErrorKind.exception, error=f"{type(exc).__name__}: {exc}"
            )
        return _json_outcome(tool, arguments, value, self.limits.max_result_bytes)

    async def _execute_sandboxed(
        self, tool: _Tool, arguments: dict[str, Any], episode: _Episode
    ) -> tuple[ToolOutcome, dict[str, Any] | None]:
        assert tool.source is not None
        try:
            sandbox = await self._sandbox_for_loop()
        except SandboxUnavailable as exc:  # fail closed: the tool does not run
            return ToolOutcome(tool.name, arguments, ok=False, error_kind=ToolErrorKind.sandbox, error=str(exc)), None
        result = await sandbox.call(  # the episode object: its own sandbox, released when it is dropped
            tool.source, tool.entrypoint or tool.name, arguments, state=episode.state if tool.stateful else None,
            episode=episode,
        )
        if not result.ok:
            kind = ToolErrorKind(result.error_kind) if result.error_kind else None
            return ToolOutcome(tool.name, arguments, ok=False, error=result.error, error_kind=kind), None
        # no lone surrogates here: the sandbox refuses a frame with any (_sandbox._parse_reply)
        problem = (_depth_problem(result.value, "the tool's result")
                   or _depth_problem(result.state, "the tool's new state"))
        if problem is not None:
            self._renew_process(episode)
            return ToolOutcome(tool.name, arguments, ok=False, error_kind=ToolErrorKind.bad_output, error=problem), None
        outcome = ToolOutcome(tool.name, arguments, ok=True, value=result.value, truncated=result.truncated)
        return outcome, result.state if tool.stateful else None

    async def _execute_in_process(
        self, tool: _Tool, arguments: dict[str, Any], episode: _Episode
    ) -> tuple[ToolOutcome, dict[str, Any] | None]:
        fn = self._compile(tool)[tool.entrypoint or tool.name]
        working = copy.deepcopy(episode.state) if tool.stateful else None  # committed only when the call succeeds
        try:
            value = await self._run_trusted(fn, (working,) if tool.stateful else (), arguments)
        except TimeoutError:
            return ToolOutcome(
                tool.name,
                arguments,
                ok=False,
                error_kind=ToolErrorKind.timeout,
                error=f"the tool did not finish within {self.call_timeout_s:g} s",
            ), None
        except Exception as exc:
            return ToolOutcome(
                tool.name, arguments, ok=False, error_kind=ToolErrorKind.exception, error=f"{type(exc).__name__}: {exc}"
            ), None
        outcome = _json_outcome(tool, arguments, value, self.limits.max_result_bytes)
        if outcome.ok and tool.stateful:
            what = "the tool's new state"
            problem = _unicode_problem(working, what) or _depth_problem(working, what)
            if problem is not None:
                failed = ToolOutcome(tool.name, arguments, ok=False, error_kind=ToolErrorKind.bad_output, error=problem)
                return failed, None
            return outcome, working
        return outcome, None

    def to_call_result(self, outcome: ToolOutcome) -> CallToolResult:
        tool = self.tools.get(outcome.tool)
        if not outcome.ok:
            return CallToolResult(content=[TextContent(type="text", text=f"Error: {outcome.error}")], is_error=True)
        value = outcome.value
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if outcome.truncated and tool is not None and tool.output_schema is not None:
            return CallToolResult(
                content=[
                    TextContent(type="text", text=f"Error: the result was too large and was truncated: {text[:2000]}")
                ],
                is_error=True,
            )
        if isinstance(value, dict) and not (tool is not None and tool.wrap_output):
            structured = value
        else:
            structured = {"result": value}
        if outcome.truncated:
            structured = {"result": value, "truncated": True}
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=structured, is_error=False
        )

    async def call_tool_result(
        self, name: str, arguments: dict[str, Any] | None, *, episode_id: str | None = None
    ) -> CallToolResult:
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


def _owns(owner: _Caller | None, caller: _Caller) -> bool:
    """Whether ``caller`` may use an episode opened by ``owner``: same identity and connection,
    wherever the opener had one."""
    if owner is None:
        return True
    same_identity = owner.auth is None or owner.auth == caller.auth
    return same_identity and (owner.connection is None or owner.connection == caller.connection)


def _clean_text(text: str) -> str:
    """``text`` that can be sent as UTF-8 (lone surrogates become ``\\udXXX`` escapes)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _scrub(value: Any) -> Any:
    """``value`` with every string made sendable as UTF-8 (see :func:`_clean_text`)."""
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def _unicode_problem(value: Any, what: str) -> str | None:
    """Why ``value`` cannot be sent as UTF-8 JSON (a lone surrogate somewhere), or None."""
    if value is None or isinstance(value, (bool, int, float)):
        return None
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} contains text that is not valid Unicode ({exc.reason} at character {exc.start})"
    except (TypeError, ValueError):
        return None  # not JSON at all: reported by the JSON checks
    return None


_CONTAINERS = (dict, list, tuple)


def _depth_problem(value: Any, what: str) -> str | None:
    """Why ``value`` is nested too deeply to be sent (see ``MAX_JSON_DEPTH``), or None. Level by level,
    keeping containers only (it runs on the event loop, over states of up to ``max_state_bytes``)."""
    level = [value] if isinstance(value, dict | list | tuple) else []
    depth = 1
    while level:
        if depth > MAX_JSON_DEPTH:
            return f"{what} is nested deeper than {MAX_JSON_DEPTH} levels"
        children: list[Any] = []
        for item in level:
            children.extend(item.values() if isinstance(item, dict) else item)
        level = list(itertools.compress(children, map(isinstance, children, itertools.repeat(_CONTAINERS))))
        depth += 1
    return None


def _json_size(value: Any) -> int:
    """Characters of ``value`` as JSON, what the memory budget counts (anything not JSON by its repr)."""
    if value is None:
        return 4
    try:
        return len(json.dumps(value, ensure_ascii=False, default=repr))
    except (ValueError, RecursionError):
        return len(repr(value))


def _json_outcome(tool: _Tool, arguments: dict[str, Any], value: Any, max_bytes: int) -> ToolOutcome:
    problem = _depth_problem(value, "the tool's result")
    if problem is not None:
        return ToolOutcome(tool.name, arguments, ok=False, error_kind=ToolErrorKind.bad_output, error=problem)
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return ToolOutcome(
            tool.name,
            arguments,
            ok=False,
            error_kind=ToolErrorKind.not_json,
            error=f"the tool returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}",
        )
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError as exc:
        return ToolOutcome(
            tool.name,
            arguments,
            ok=False,
            error_kind=ToolErrorKind.bad_output,
            error=f"the tool's result contains text that is not valid Unicode ({exc.reason} at character {exc.start})",
        )
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


class OpenParams(RequestParams):
    seed: int | None = None


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
    episode: str | None = None  # the handle (None: the connection's implicit episode)
    state: Any = None
    snapshot_id: str | None = None
    calls: list[dict[str, Any]] | None = None
    calls_dropped: int | None = None  # the episode's first calls whose records the memory budget removed
    closed: bool | None = None
    episode_ttl_s: float | None = None


class OpenEpisodeRequest(Request[OpenParams, Literal["astra/episode/open"]]):
    method: Literal["astra/episode/open"] = "astra/episode/open"


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


CONTROL_METHODS = (
    "astra/episode/open", "astra/reset", "astra/snapshot", "astra/restore", "astra/state", "astra/episode/close"
)


class _ControlExtension(Extension):
    identifier = CONTROL_EXTENSION

    def __init__(self, runtime: EnvironmentRuntime) -> None:
        self.runtime = runtime

    def settings(self) -> dict[str, Any]:
        return {"methods": list(CONTROL_METHODS), "episode_meta_key": EPISODE_META_KEY}

    def methods(self) -> Sequence[MethodBinding]:
        rt = self.runtime

        def handle(episode: _Episode) -> str | None:
            return episode.id if episode.kind is EpisodeKind.HANDLE else None

        async def open_episode(ctx: Any, params: OpenParams) -> ControlResult:
            key = rt.open_episode(seed=params.seed, owner=rt.caller(ctx))
            return ControlResult(episode=key, episode_ttl_s=rt.episode_ttl_s)

        async def reset(ctx: Any, params: ResetParams) -> ControlResult:
            caller = rt.caller(ctx)
            if params.episode is None and caller.connection is None:  # stateless: a new episode, as astra/episode/open
                episode = rt._episodes[rt.open_episode(seed=params.seed, owner=caller)]
            else:  # the handle's episode, or the connection's implicit one
                episode = rt.resolve(ctx, params.episode)
            state = _jsonable(rt.reset(episode.id, seed=params.seed))
            return ControlResult(episode=handle(episode), state=state, episode_ttl_s=rt.episode_ttl_s)

        async def snapshot(ctx: Any, params: EpisodeParams) -> ControlResult:
            episode = rt.resolve(ctx, params.episode)
            async with episode.lock:  # after the episode's call in flight, if any, has committed
                snap = rt._snapshot_of(episode)
                return ControlResult(episode=handle(episode), snapshot_id=snap.id, state=rt._wire_state(episode))

        async def restore(ctx: Any, params: RestoreParams) -> ControlResult:
            episode = rt.resolve(ctx, params.episode)
            async with episode.lock:  # a call in flight would otherwise commit over the restored state
                try:
                    state = rt._restore(episode, snapshot_id=params.snapshot_id, state=params.state)
                except (KeyError, ValueError) as exc:
                    raise MCPError(code=INVALID_PARAMS, message=str(exc).strip("'\"")) from exc
                return ControlResult(episode=handle(episode), state=_jsonable(state))

        async def state(ctx: Any, params: EpisodeParams) -> ControlResult:
            episode = rt.resolve(ctx, params.episode)
            return ControlResult(episode=handle(episode), state=rt._wire_state(episode),
                                 calls=_jsonable(list(episode.calls)), calls_dropped=episode.calls_dropped)

        async def close(ctx: Any, params: EpisodeParams) -> ControlResult:
            episode = rt.resolve(ctx, params.episode)
            return ControlResult(episode=handle(episode), closed=rt.close_episode(episode.id))

        return [
            MethodBinding("astra/episode/open", OpenParams, open_episode),
            MethodBinding("astra/reset", ResetParams, reset),
            MethodBinding("astra/snapshot", EpisodeParams, snapshot),
            MethodBinding("astra/restore", RestoreParams, restore),
            MethodBinding("astra/state", EpisodeParams, state),
            MethodBinding("astra/episode/close", EpisodeParams, close),
        ]


def _jsonable(value: Any) -> Any:
    """``value`` as new, plain JSON data that can be sent (anything else by its repr, lone surrogates
    escaped): one dumps and one loads in C; the per-item ``_scrub`` walk only where the text is not
    valid Unicode (it cost seconds on the event loop for a legal state of millions of items: R3-14)."""
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _scrub(data)
    return data


def request_context(context: Any) -> Any:
    """The SDK request context of a tool call's ``Context`` (its public ``request_context``), or
    None when there is none (a direct ``call_tool`` without a request)."""
    try:
        return context.request_context if context is not None else None
    except ValueError:  # the SDK's "Context is not available outside of a request"
        return None


class EnvironmentServer(MCPServer):
    """An ``MCPServer`` whose tools come from an environment (explicit JSON schemas, not signatures)."""

    def __init__(
        self, runtime: EnvironmentRuntime, *, bearer_token: str | None = None, public_url: str | None = None
    ) -> None:
        auth_kwargs: dict[str, Any] = {}
        if bearer_token:
            url = public_url or "http://127.0.0.1/mcp"
            auth_kwargs = {
                "token_verifier": _StaticToken(bearer_token),
                "auth": AuthSettings(issuer_url=AnyHttpUrl(url), resource_server_url=AnyHttpUrl(url),
                                     validate_token_resource=False),
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
        self.bearer_token_set = bool(bearer_token)

    def streamable_http_app(self, **kwargs: Any) -> Any:  # type: ignore[override]
        self.runtime.shared_lifespan = True  # the app's lifespan is entered once for every client
        return super().streamable_http_app(**kwargs)

    def sse_app(self, **kwargs: Any) -> Any:  # type: ignore[override]
        self.runtime.shared_lifespan = True
        return super().sse_app(**kwargs)

    async def list_tools(self) -> list[MCPTool]:
        return [tool.mcp() for tool in self.runtime.tools.values()]

    # Shim (no public way in mcp 2.3): MCPServer hands this method to its low-level Server as
    # ``get_tool_input_schema`` (Mcp-Param header validation), and its own version looks only at
    # tools registered from Python functions; ours come from JSON schemas. Guarded by
    # tests/servers/test_sdk_shims.py, which fails if the SDK stops calling it.
    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.runtime.tools.get(name)
        return None if tool is None else tool.input_schema

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> CallToolResult:  # type: ignore[override]
        ctx = request_context(context)
        meta = getattr(ctx, "meta", None)
        handle = meta.get(EPISODE_META_KEY) if isinstance(meta, Mapping) else None
        episode = self.runtime.resolve(ctx, handle)  # EpisodeRefused is the MCP error the client gets
        return self.runtime.to_call_result(await self.runtime.call_in(episode, name, arguments))


# --------------------------------------------------------------------------- builders


def _sandboxed_by_default(name: str, marked: Any) -> bool:
    """Whether a spec's tool code runs sandboxed when the caller did not say (see build_server_from_dict)."""
    if marked is not False:
        return True
    if not unsafe_opt_in():
        log.warning(
            "environment %r is marked unsandboxed (trusted code); its tools run in the sandbox anyway. "
            "To trust it, run with %s=1 / --unsafe-no-sandbox", name, UNSAFE_ENV,
        )
        return True
    message = (f"SANDBOX DISABLED BY THE SPEC and the user ({name!r} is marked \"sandboxed\": false, and "
               f"{UNSAFE_ENV}=1 / --unsafe-no-sandbox is set): its tool code runs in this process, WITHOUT bubblewrap "
               "isolation: serve only environments you trust")
    log.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
    return False


def build_server_from_dict(
    spec: Mapping[str, Any],
    *,
    sandboxed: bool | None = None,
    limits: SandboxLimits | None = None,
    bearer_token: str | None = None,
    public_url: str | None = None,
    **episode_options: Any,
) -> EnvironmentServer:
    """Serve the JSON form of an ``EnvironmentSpec``. ``episode_options``: ``max_episodes``,
    ``episode_ttl_s``, ``call_timeout_s``, ``episode_memory_bytes`` (see :class:`EnvironmentRuntime`).

    ``sandboxed=None``: sandboxed, also for a spec marked ``"sandboxed": false`` (trusted code), unless
    the *user* opted in with ``ASTRA_UNSAFE_NO_SANDBOX=1`` / ``--unsafe-no-sandbox``: a spec is data, and
    data must not be able to switch the sandbox off. ``sandboxed=False`` is the caller's own choice."""
    name = spec.get("name") or spec.get("id")
    if not name:
        raise EnvironmentError_("environment spec has no name")
    if sandboxed is None:
        sandboxed = _sandboxed_by_default(str(name), spec.get("sandboxed", True))
    tools = []
    for i, impl in enumerate(spec.get("tools") or []):
        if (
            not isinstance(impl, Mapping)
            or not isinstance(impl.get("spec"), Mapping)
            or not isinstance(impl.get("source"), str)
        ):
            raise EnvironmentError_(
                f"environment {name!r}: tools[{i}] needs 'spec' (a ToolSpec) and 'source' (Python code)"
            )
        tool_spec = impl["spec"]
        tools.append(
            _make_tool(
                tool_spec,
                source=impl["source"],
                entrypoint=impl.get("entrypoint") or tool_spec.get("name"),
                stateful=bool(impl.get("stateful")),
            )
        )
    runtime = EnvironmentRuntime(
        name=str(name),
        description=spec.get("description") or "",
        tools=tools,
        initial_state=dict(spec.get("initial_state") or {}),
        sandboxed=sandboxed,
        limits=limits,
        bearer_token=bearer_token,
        public_url=public_url,
        **episode_options,
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
    **episode_options: Any,
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
        # number fields reach the trusted code as floats (see _float_arguments)
        built.append(_make_tool(data, method=method_names.get(data["name"], data["name"]),
                                **_float_fields(data.get("input_schema") or {})))
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
        **episode_options,
    )
    return runtime.server


# --------------------------------------------------------------------------- wire control


class EnvironmentControl:
    """The harness side of the control channel, over any connected ``mcp.client.Client``.

    One control is one episode::

        ctl = EnvironmentControl(client)
        await ctl.open()                      # or: await ctl.reset(seed=0), which also opens one
        await ctl.call_tool("add_stock", {...})
        snap = await ctl.snapshot(); await ctl.restore(snapshot_id=snap.snapshot_id)
        await ctl.close()

    ``episode`` is a handle the server minted (``open``/``reset`` store it here). Without one,
    requests use the connection's implicit episode (stdio, in-process, stateful HTTP sessions).
    """

    def __init__(self, client: Any, episode: str | None = None) -> None:
        self.client = client
        self.episode = episode

    async def _send(self, request: Any) -> ControlResult:
        return await self.client.session.send_request(request, ControlResult)

    async def open(self, seed: int | None = None) -> str:
        """Open a fresh episode on the server and use it from now on; returns its handle."""
        result = await self._send(OpenEpisodeRequest(params=OpenParams(seed=seed)))
        assert result.episode is not None
        self.episode = result.episode
        return result.episode

    async def reset(self, seed: int | None = None) -> Any:
        """Back to the initial state; returns it. Without a handle: the connection's implicit
        episode, or on stateless HTTP a new episode whose handle is kept (use :meth:`open` for one
        episode per trajectory when several share a connection)."""
        result = await self._send(ResetRequest(params=ResetParams(episode=self.episode, seed=seed)))
        self.episode = result.episode or self.episode
        return result.state

    async def snapshot(self) -> ControlResult:
        return await self._send(SnapshotRequest(params=EpisodeParams(episode=self.episode)))

    async def restore(self, *, snapshot_id: str | None = None, state: dict[str, Any] | None = None) -> Any:
        return (
            await self._send(
                RestoreRequest(params=RestoreParams(episode=self.episode, snapshot_id=snapshot_id, state=state))
            )
        ).state

    async def state(self) -> ControlResult:
        return await self._send(StateRequest(params=EpisodeParams(episode=self.episode)))

    async def close(self) -> bool:
        """Close the episode (its state is dropped; the handle stops working)."""
        closed = bool((await self._send(CloseEpisodeRequest(params=EpisodeParams(episode=self.episode)))).closed)
        self.episode = None
        return closed

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        """``client.call_tool`` in this control's episode."""
        meta = {EPISODE_META_KEY: self.episode} if self.episode else None
        return await self.client.call_tool(name, arguments or {}, meta=meta)


# --------------------------------------------------------------------------- launching


class BindRefused(ValueError):
    """A non-loopback HTTP bind without a token and an explicit opt-in."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, *, token: str | None, allow_remote: bool) -> None:
    """Refuse to serve HTTP beyond this machine unless a bearer token is set and the caller
    said so explicitly (``--allow-remote``). Raises :class:`BindRefused`."""
    if is_loopback(host):
        return
    missing = [what for what, ok in (("--token", bool(token)), ("--allow-remote", allow_remote)) if not ok]
    if missing:
        raise BindRefused(
            f"refusing to serve on {host!r}, which is reachable from other machines: anyone who can reach it could "
            f"open episodes and run the tools. Bind 127.0.0.1, or pass {' and '.join(missing)} to serve remotely "
            "behind a bearer token"
        )


def serve(
    server: EnvironmentServer,
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
) -> None:
    """Serve over stdio, or streamable HTTP on ``host:port``. A bearer token, when wanted, is
    given to the builder (``build_server(..., bearer_token=...)``); a non-loopback ``host``
    needs one and ``allow_remote=True`` (:func:`check_bind`). On loopback, DNS-rebinding
    protection is on. Returns when the client goes away (stdio) or on interrupt; the sandbox
    worker is closed."""
    if http:
        check_bind(host, token="set" if server.bearer_token_set else None, allow_remote=allow_remote)

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
            # remote serving requires the token, which a rebinding page cannot send
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=is_loopback(host),
                allowed_hosts=[f"{host}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=[f"http://{host}:*", "http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
            await server.run_streamable_http_async(host=host, port=port, transport_security=security)
        finally:
            await server.runtime.aclose()

    anyio.run(run)


TOKEN_ENV = "ASTRA_ENV_TOKEN"


class TokenError(ValueError):
    """The bearer token options are contradictory or name an unusable file."""


def resolve_token(token: str | None, token_file: str | Path | None) -> str | None:
    """The HTTP bearer token: from ``--token-file`` (first line; a file readable by others is warned
    about), else ``--token`` (visible to every local user in the process list: warned about), else the
    ``ASTRA_ENV_TOKEN`` environment variable, else None."""
    if token is not None and token_file is not None:
        raise TokenError("give --token or --token-file, not both")
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except OSError as exc:
            raise TokenError(f"--token-file {path}: {exc.strerror or exc}") from None
        value = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not value:
            raise TokenError(f"--token-file {path}: the file is empty")
        if mode & 0o077:
            print(f"warning: {path} is readable by other users (chmod 600 it)", file=sys.stderr, flush=True)
        return value
    if token is not None:
        print(f"warning: --token is visible to every local user in the process list; prefer --token-file or "
              f"{TOKEN_ENV}", file=sys.stderr, flush=True)
        return token
    return os.environ.get(TOKEN_ENV) or None


def main(spec_path: str | Path, argv: Sequence[str] | None = None) -> None:
    """Entry point of an emitted ``server.py`` (see ``--help``)."""
    parser = argparse.ArgumentParser(description="Serve an ASTRA environment over MCP (stdio by default).")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1",
                        help="HTTP bind address (default 127.0.0.1; others need --token and --allow-remote)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--token", default=None,
                        help=f"require this bearer token on HTTP requests (visible in the process list: prefer "
                             f"--token-file or {TOKEN_ENV})")
    parser.add_argument("--token-file", default=None, help="read the bearer token from this file (chmod 600)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help=f"run the tool code WITHOUT the bubblewrap sandbox (dangerous; same as {UNSAFE_ENV}=1)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (needs --token)")
    parser.add_argument("--max-episodes", type=int, default=MAX_EPISODES,
                        help=f"open episodes at most; more are refused (default {MAX_EPISODES})")
    parser.add_argument("--episode-ttl", type=float, default=EPISODE_TTL_S,
                        help=f"seconds an idle episode lives (default {EPISODE_TTL_S:g}; 0: forever)")
    parser.add_argument("--call-timeout", type=float, default=CALL_TIMEOUT_S,
                        help=f"seconds an unsandboxed tool call may run (default {CALL_TIMEOUT_S:g})")
    parser.add_argument("--episode-memory", type=int, default=EPISODE_MEMORY_BYTES,
                        help="characters of call log and snapshots an episode keeps; the oldest call records "
                             f"give way first, snapshots beyond it are refused (default {EPISODE_MEMORY_BYTES})")
    args = parser.parse_args(argv)
    explicit_token = args.token is not None or args.token_file is not None
    try:
        args.token = resolve_token(args.token, args.token_file)
    except TokenError as exc:
        parser.error(str(exc))
    if args.unsafe_no_sandbox:
        import os

        os.environ[UNSAFE_ENV] = "1"
    if args.http:
        try:
            check_bind(args.host, token=args.token, allow_remote=args.allow_remote)
        except BindRefused as exc:
            parser.error(str(exc))
    if args.max_episodes < 1 or args.episode_ttl < 0 or args.call_timeout <= 0 or args.episode_memory < 1:
        parser.error("--max-episodes must be >= 1, --episode-ttl >= 0, --call-timeout > 0 and --episode-memory > 0")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    log.setLevel(logging.INFO)  # episode expiry is logged
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    url = f"http://{args.host}:{args.port}/mcp"
    server = build_server_from_dict(
        spec, bearer_token=args.token if args.http else None, public_url=url, max_episodes=args.max_episodes,
        episode_ttl_s=args.episode_ttl or None, call_timeout_s=args.call_timeout,
        episode_memory_bytes=args.episode_memory,
    )
    if explicit_token and not args.http:
        print("note: --token applies to --http only; stdio is not authenticated", file=sys.stderr)
    serve(server, http=args.http, host=args.host, port=args.port, allow_remote=args.allow_remote)
