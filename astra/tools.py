"""Tool definitions at the model/tool boundary, and where a call goes (docs/ARCHITECTURE.md "Tools").

- :class:`ToolDefinition` is what a model is offered: name, description, JSON-Schema
  parameters, strictness (pydantic-ai's ``ToolDefinition`` is the model). Every provider's
  shape is a mapping of it, in this module only: :meth:`ToolDefinition.openai` (Chat
  Completions ``tools``, also the shape trajectories store), :meth:`ToolDefinition.anthropic`
  (Messages API ``tools``), :meth:`ToolDefinition.chat_template` (the ``tools`` of
  ``apply_chat_template`` / the SFT ``hf`` profile) and :meth:`ToolDefinition.function` (the
  bare function object that text-format prompts and LLaMA-Factory's tools column list).
- :func:`tool_definition` reads any of those shapes back (one reader instead of a
  ``get("function", t)`` at each site); :func:`function_object` is its unwrapping step, for
  loose readers with their own field errors.
- :class:`ToolRef` is where a call goes: the server, the tool's own name there and the name the
  model saw (``exposed``, aggregated and provider-safe). It travels from the client's
  aggregation through rollouts (:attr:`astra.records.Step.ref`) to the exporters and the reward
  side, which match a ground-truth tool against it exactly instead of guessing by suffix.

This module sits with :mod:`astra.records` at the bottom of the layering: it imports no unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

JSONSchema = dict[str, Any]


def empty_parameters() -> JSONSchema:
    """The parameters of a tool that takes none (a fresh dict each time: callers may mutate it)."""
    return {"type": "object", "properties": {}}


class ToolRef(BaseModel):
    """One tool of one server, and the name a model calls it by."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str = Field(description="the MCP server (registry name) the tool belongs to")
    tool: str = Field(description="the tool's own name on that server")
    exposed: str = Field(description="the name the model saw and called (aggregated, provider-safe)")

    @property
    def qualified(self) -> str:
        """``server/tool``: how the registry, tool graphs and chains name a tool."""
        return f"{self.server}/{self.tool}"

    def is_tool(self, wanted: str | None) -> bool:
        """Whether ``wanted`` names this tool: its own name, ``server/tool`` or the exposed name."""
        return wanted is not None and wanted in (self.tool, self.exposed, self.qualified)


class ToolDefinition(BaseModel):
    """A tool as a model is offered it (see the module docstring for its provider shapes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="the name the model calls it by")
    description: str = ""
    parameters: JSONSchema = Field(default_factory=empty_parameters, description="JSON Schema of the arguments")
    strict: bool | None = Field(default=None, description="OpenAI strict mode; None: not sent")

    def function(self) -> dict[str, Any]:
        """The bare function object ``{name, description, parameters}`` (+ ``strict`` when set)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description, "parameters": self.parameters}
        if self.strict is not None:
            out["strict"] = self.strict
        return out

    def openai(self) -> dict[str, Any]:
        """OpenAI Chat Completions function tool (the shape :attr:`Trajectory.tools` stores)."""
        return {"type": "function", "function": self.function()}

    def anthropic(self) -> dict[str, Any]:
        """Anthropic Messages API tool."""
        return {"name": self.name, "description": self.description, "input_schema": self.parameters}

    def chat_template(self) -> dict[str, Any]:
        """A ``tools`` entry for ``apply_chat_template`` (transformers, TRL; the SFT ``hf`` profile):
        the OpenAI shape with a string description and an object schema, which templates concatenate."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def function_object(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function object of an OpenAI tool ``{"type": "function", "function": {...}}``; any other
    shape (a bare function, an Anthropic tool) is its own function object."""
    function = tool.get("function")
    return cast("Mapping[str, Any]", function) if isinstance(function, Mapping) else tool


def tool_definition(tool: Mapping[str, Any]) -> ToolDefinition:
    """The definition in any tool shape ASTRA reads: OpenAI ``{"type": "function", "function":
    {...}}``, a bare function ``{name, description, parameters}`` or an Anthropic tool
    ``{name, description, input_schema}``. A missing or null description is ``""``, missing or
    empty parameters the empty object schema. Raises ValueError naming what is wrong."""
    fn = function_object(tool)
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("tool: name: missing" if name is None else f"tool: name: not a non-empty string: {name!r}")
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"tool {name!r}: description: not a string")
    parameters = fn.get("parameters", fn.get("input_schema"))
    if parameters is not None and not isinstance(parameters, dict):
        raise ValueError(f"tool {name!r}: parameters: not an object")
    strict = fn.get("strict")
    # built without a second validation: every field is checked above (readers run per request)
    return ToolDefinition.model_construct(
        name=name, description=description or "", parameters=parameters or empty_parameters(),
        strict=strict if isinstance(strict, bool) else None)


def tool_definitions(tools: Iterable[Mapping[str, Any]]) -> list[ToolDefinition]:
    """:func:`tool_definition` of each tool, in order."""
    return [tool_definition(t) for t in tools]
