"""Why a tool call failed: one vocabulary for every layer (docs/ARCHITECTURE.md "Data contracts").

Dependency-free on purpose: an emitted environment server vendors this file (as
``astra_env_runtime/_kinds.py``, see :mod:`astra.servers._emit`) and runs with ``mcp`` alone.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ToolErrorKind"]


class ToolErrorKind(StrEnum):
    """Why a tool call failed: one vocabulary for every layer that records it (a trajectory's
    :attr:`Step.error_kind`, an environment server's call log, the sandbox). Members equal their
    string values, so records read back and compare unchanged."""

    # the client harness (astra.client): what a trajectory's steps record
    tool_error = "tool_error"  # the tool answered with isError
    unknown_tool = "unknown_tool"  # no tool of that name (model side) / on that server
    bad_json = "bad_json"  # the model's arguments are not valid JSON, or not a JSON object
    bad_arguments = "bad_arguments"  # arguments that do not match the tool's input schema
    timeout = "timeout"  # no answer in time (a call; in the sandbox: its wall-clock limit)
    server_died = "server_died"  # the server's process or connection went away during the call
    server_unavailable = "server_unavailable"  # the server stayed down after its reconnects
    protocol_error = "protocol_error"  # the server rejected the request (an MCP error reply)
    episode_refused = "episode_refused"  # the server refused the episode handle
    injected_error = "injected_error"  # a transient failure the tool simulator injected on purpose
    # an environment server (astra.servers): ToolOutcome in its call log (servers/_runtime.py)
    episode_unusable = "episode_unusable"  # an earlier call timed out while it may still change the state
    bad_output = "bad_output"  # the tool's result does not match its output schema
    exception = "exception"  # the tool raised
    # the sandbox (astra.servers._sandbox.ErrorKind: the subset a sandboxed call fails with)
    forbidden = "forbidden"
    not_json = "not_json"
    state_too_large = "state_too_large"
    cpu = "cpu"
    memory = "memory"
    file_size = "file_size"
    output_limit = "output_limit"
    bad_reply = "bad_reply"
    crash = "crash"
    sandbox = "sandbox"
