"""BFCL's backend classes served as real MCP servers.

Each backend object (a ``GorillaFileSystem``, a ``TradingBot``, ...) becomes one MCP server
whose tools are the object's public methods, described by BFCL's function docs converted to
JSON Schema; each episode gets fresh objects with the entry's ``initial_config`` loaded
(``long_context`` included). The code is BFCL's own, trusted, so it runs unsandboxed in
this process. Two implementations (:data:`SERVER_IMPLEMENTATIONS`):

- ``astra`` (default): ``astra.servers.build_class_server``, pooled per class (building one
  validates every tool schema); arguments are validated against the schema;
- ``bfcl``: a minimal ``MCPServer`` whose tools answer exactly the text BFCL's executor
  records (``json.dumps`` of a dict result, ``str`` of anything else, ``"Error during
  execution: ..."`` on an exception) and never validate, since BFCL's checker ``eval``s
  whatever the model sent.
"""

from __future__ import annotations

import copy
import decimal
import functools
import json
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools.base import Tool
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from astra.bfcl._data import backend_class, function_docs, is_stateless, new_backend_instance
from astra.bfcl._schema import function_input_schema

if TYPE_CHECKING:
    from astra.servers import EnvironmentServer

SERVER_PREFIX = "bfcl_"


def server_name(class_name: str) -> str:
    """The MCP server name of a backend class: ``bfcl_<ClassName>``."""
    return f"{SERVER_PREFIX}{class_name}"


def bfcl_result_text(result: Any) -> str:
    """What BFCL's ``execute_multi_turn_func_call`` records for a call's return value."""
    if type(result) is str:
        return result
    if type(result) is dict:
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def _placeholder() -> None:  # the SDK wants a function to take metadata from; run() replaces it
    return None


class BackendMethodTool(Tool):
    """An MCP tool that calls one bound method of a BFCL backend object."""

    method: Callable[..., Any] = Field(exclude=True)

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        try:
            value = self.method(**arguments)
        except Exception as exc:  # noqa: BLE001 - BFCL turns every exception into a result string
            return CallToolResult(
                content=[TextContent(type="text", text=f"Error during execution: {exc}")], is_error=True
            )
        structured = value if type(value) is dict and _json_safe(value) else None
        return CallToolResult(
            content=[TextContent(type="text", text=bfcl_result_text(value))],
            structured_content=structured,
        )


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def _tool_templates(class_name: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    # Building a Tool costs ~1 ms (the SDK makes a pydantic model per function); do it once
    # per class and bind each episode's methods into copies.
    out = []
    for doc in function_docs(class_name):
        base = Tool.from_function(
            _placeholder, name=doc["name"], description=doc.get("description", ""), structured_output=False
        )
        fields = {k: getattr(base, k) for k in type(base).model_fields}
        fields["parameters"] = function_input_schema(doc)
        out.append((doc["name"], fields))
    return tuple(out)


def backend_tools(class_name: str, instance: Any) -> list[Tool]:
    """One MCP tool per documented public method of ``instance``."""
    tools: list[Tool] = []
    for name, fields in _tool_templates(class_name):
        method = getattr(instance, name, None)
        if method is None or not callable(method):
            raise ValueError(f"BFCL doc names {class_name}.{name}, which the class does not define")
        tools.append(BackendMethodTool.model_construct(**fields, method=method))
    return tools


def backend_server(class_name: str, instance: Any) -> MCPServer:
    """An MCP server exposing ``instance`` (a BFCL backend object) as tools."""
    return MCPServer(
        name=server_name(class_name),
        instructions=f"BFCL multi-turn backend {class_name} (bfcl-eval), state is per episode.",
        tools=backend_tools(class_name, instance),
    )


@functools.cache
def _tool_specs(class_name: str) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"name": doc["name"], "description": doc.get("description", ""), "input_schema": function_input_schema(doc)}
        for doc in function_docs(class_name)
    )


MAX_PRECISION_DIGITS = 1000
"""The most digits a model may ask of MathAPI's ``logarithm``/``square_root`` on an astra server
(BFCL's data asks at most 10; the results are floats). Past it the call is a tool error: the work
is one long C call holding the GIL, which would stop every episode of the process."""

_MPMATH_LOCK = threading.Lock()  # mpmath's precision is process-global: one call at a time sets it


def _check_digits(name: str, value: Any) -> None:
    # an integer-valued float passes the schema's "integer" too
    if isinstance(value, int | float) and not 1 <= value <= MAX_PRECISION_DIGITS:
        raise ValueError(f"{name} must be between 1 and {MAX_PRECISION_DIGITS} digits, got {value}")


def _bounded_logarithm(self: Any, value: float, base: float, precision: int) -> Any:
    _check_digits("precision", precision)
    import mpmath  # pyright: ignore[reportMissingTypeStubs]

    with _MPMATH_LOCK, mpmath.workprec(mpmath.mp.prec):  # BFCL's method assigns mp.dps; restored on exit
        return type(self).logarithm(self, value, base, precision)


def _bounded_square_root(self: Any, number: float, precision: int) -> Any:
    _check_digits("precision", precision)
    with decimal.localcontext():  # BFCL's method assigns getcontext().prec; restored on exit
        return type(self).square_root(self, number, precision)


_BOUNDED_METHODS: dict[str, dict[str, Callable[..., Any]]] = {
    "MathAPI": {"logarithm": _bounded_logarithm, "square_root": _bounded_square_root},
}
"""Per class, the methods an astra server calls through a bound (and per-call precision): BFCL's own
``MathAPI`` assigns the process-global ``mpmath.mp.dps`` / the thread's decimal context, which would
change every later call's results in this process, and computes for as long as the digits asked."""


def bounded_method_name(name: str) -> str:
    """The private attribute of a backend object holding the bounded version of its method ``name``."""
    return f"_astra_bounded_{name}"


def bound_backend(class_name: str, instance: Any) -> Any:
    """``instance`` (BFCL's own class, unchanged: BFCL's checker compares types) with the bounded
    methods of :data:`_BOUNDED_METHODS` attached as private attributes, which the astra server calls."""
    for name, function in _BOUNDED_METHODS.get(class_name, {}).items():
        # a bound method: a snapshot's deep copy rebinds it to the copied object
        setattr(instance, bounded_method_name(name), types.MethodType(function, instance))
    return instance


class _EpisodeSlot:
    """What a pooled server's factory needs for the episode it currently serves."""

    def __init__(self) -> None:
        self.long_context = False
        self.on_instance: Callable[[Any], None] | None = None


def astra_backend_server(class_name: str) -> tuple[EnvironmentServer, _EpisodeSlot]:
    """``class_name`` served through ``astra.servers.build_class_server`` (trusted, unsandboxed).

    Every client connection is an episode with a fresh backend object built from the
    runtime's ``initial_config`` (set per entry, see :class:`AstraServerPool`); the slot's
    ``on_instance`` sees each object built (the harness keeps it for state checks).
    Unlike BFCL's executor, this server validates arguments against the schema and formats
    results as JSON (see :data:`SERVER_IMPLEMENTATIONS`).
    """
    from astra.servers import build_class_server

    slot = _EpisodeSlot()

    def factory(config: dict[str, Any]) -> Any:
        instance = bound_backend(class_name, backend_class(class_name)())
        if not is_stateless(class_name):
            instance._load_scenario(config, long_context=slot.long_context)
        if slot.on_instance is not None:
            slot.on_instance(instance)
        return instance

    server = build_class_server(
        server_name(class_name), factory, list(_tool_specs(class_name)),
        description=f"BFCL multi-turn backend {class_name} (bfcl-eval)",
        method_names={name: bounded_method_name(name) for name in _BOUNDED_METHODS.get(class_name, {})},
    )
    return server, slot


class AstraServerPool:
    """Class servers reused across entries: one per class per episode in flight.

    Building a server validates every tool schema (~10 ms a class), so servers are built
    once and lent to one episode at a time; an episode sets the runtime's
    ``initial_config`` to its entry's scenario before its client connects.
    """

    def __init__(self) -> None:
        self._free: dict[str, list[tuple[EnvironmentServer, _EpisodeSlot]]] = {}

    def acquire(self, class_name: str) -> tuple[EnvironmentServer, _EpisodeSlot]:
        free = self._free.setdefault(class_name, [])
        return free.pop() if free else astra_backend_server(class_name)

    def release(self, class_name: str, server: EnvironmentServer, slot: _EpisodeSlot) -> None:
        slot.on_instance = None
        self._free.setdefault(class_name, []).append((server, slot))


_POOL = AstraServerPool()


SERVER_IMPLEMENTATIONS = ("astra", "bfcl")
"""How a backend becomes an MCP server:

- ``astra``: ``astra.servers.build_class_server``, the project's environment server (episodes,
  control channel, arguments validated against the schema, results as JSON, errors as
  ``Error: <Type>: <message>``);
- ``bfcl``: a minimal ``MCPServer`` whose tools answer exactly what BFCL's executor
  records (no validation, ``str()`` of non-dict results, ``Error during execution: ...``),
  so that a model observes what it would under BFCL's own harness.

Either way, the score comes from BFCL's checker re-executing the decoded calls.
"""


class BfclEpisodeServers:
    """The MCP servers of one entry: fresh backend objects with the entry's initial_config loaded."""

    def __init__(
        self,
        involved_classes: list[str],
        initial_config: dict[str, Any],
        *,
        long_context: bool,
        implementation: str = "astra",
    ) -> None:
        if implementation not in SERVER_IMPLEMENTATIONS:
            raise ValueError(f"unknown server implementation {implementation!r}; choose from {SERVER_IMPLEMENTATIONS}")
        self._classes = list(involved_classes)
        self._initial_config = initial_config
        self._long_context = long_context
        self._instances: dict[str, Any] = {}
        self._leases: list[tuple[str, EnvironmentServer, _EpisodeSlot]] = []
        if implementation == "bfcl":
            self._instances = {
                name: new_backend_instance(name, initial_config, long_context=long_context) for name in involved_classes
            }
            self.servers: dict[str, MCPServer] = {
                server_name(name): backend_server(name, inst) for name, inst in self._instances.items()
            }
        else:
            self.servers = {}
            for name in involved_classes:
                server, slot = _POOL.acquire(name)
                server.runtime.initial_config = copy.deepcopy(initial_config.get(name, {}))
                slot.long_context = long_context
                slot.on_instance = lambda inst, name=name: self._instances.__setitem__(name, inst)
                self._leases.append((name, server, slot))
                self.servers[server_name(name)] = server

    def release(self) -> None:
        """Give pooled servers back (after every client of this episode has disconnected)."""
        for name, server, slot in self._leases:
            _POOL.release(name, server, slot)
        self._leases = []

    @property
    def instances(self) -> dict[str, Any]:
        """The backend objects the episode ran on (a class never called: its initial object)."""
        for name in self._classes:
            if name not in self._instances:
                self._instances[name] = new_backend_instance(
                    name, self._initial_config, long_context=self._long_context
                )
        return self._instances

    def targets(self) -> list[tuple[str, MCPServer]]:
        """``(name, MCPServer)`` pairs, the in-process targets of an MCP client."""
        return list(self.servers.items())
