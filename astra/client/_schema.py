"""MCP tool schemas -> OpenAI function tools and Anthropic tools.

MCP servers publish whatever JSON Schema their framework produces; providers reject some of
it (OpenAI: a non-object top level, top-level ``oneOf``/``anyOf``/``allOf``/``not``/``enum``,
arrays without ``items``; both: ``$ref`` into ``$defs`` they do not resolve, tool names
outside ``[A-Za-z0-9_-]{1,64}``). :func:`provider_schema` rewrites a schema into the common
subset both accept, keeping its meaning where it can.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

from astra.jsonutil import is_array, is_object
from astra.records import ToolSpec
from astra.tools import ToolDefinition, tool_definition

_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")
MAX_TOOL_NAME = 64
_DROP_KEYS = {"$schema", "$id", "$defs", "definitions", "$comment"}
_TOP_LEVEL_REJECTED = ("oneOf", "anyOf", "allOf", "not", "enum", "const")


def provider_tool_name(name: str) -> str:
    """A name providers accept: ``[A-Za-z0-9_-]{1,64}``; long names keep a hash suffix."""
    clean = _NAME_OK.sub("_", name) or "tool"
    if len(clean) > MAX_TOOL_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        clean = f"{clean[: MAX_TOOL_NAME - 9]}_{digest}"
    return clean


def _resolve_refs(node: Any, root: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if is_array(node):
        return [_resolve_refs(v, root, seen) for v in node]
    if not is_object(node):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        if ref in seen:  # recursive schema: cut the cycle with an unconstrained value
            return {"description": node.get("description", f"(recursive {ref.rsplit('/', 1)[-1]})")}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if is_object(target) else {}
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve_refs(merged, root, seen + (ref,))
    return {k: _resolve_refs(v, root, seen) for k, v in node.items() if k not in _DROP_KEYS}


def _fix_node(node: Any) -> Any:
    if is_array(node):
        return [_fix_node(v) for v in node]
    if not is_object(node):
        return node
    out = {k: _fix_node(v) for k, v in node.items()}
    types = out.get("type")
    array_type = types == "array" or (is_array(types) and "array" in types)
    object_type = types == "object" or (is_array(types) and "object" in types)
    if array_type and "items" not in out and "prefixItems" not in out:
        out["items"] = {}
    if object_type and not is_object(out.get("properties")):
        out["properties"] = {}
    if "required" in out and is_object(out.get("properties")):
        out["required"] = [r for r in out["required"] if r in out["properties"]]
        if not out["required"]:
            del out["required"]
    return out


def provider_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """A provider-acceptable copy of an MCP ``inputSchema`` (always ``type: object`` at the top)."""
    if not is_object(schema):
        return {"type": "object", "properties": {}}
    root = copy.deepcopy(schema)
    out: dict[str, Any] = _fix_node(_resolve_refs(root, root))
    out.pop("title", None)
    if out.get("type") != "object":
        if "properties" in out:
            out["type"] = "object"
        else:  # a scalar or composite top level: wrap it as a single argument
            inner = {k: v for k, v in out.items()}
            out = {"type": "object", "properties": {"value": inner}, "required": ["value"]}
    if is_array(out.get("allOf")):  # fold object-shaped allOf parts into the top level
        for part in out.pop("allOf"):
            if is_object(part):
                properties: dict[str, Any] = out.get("properties", {})
                part_properties: dict[str, Any] = part.get("properties", {})
                out["properties"] = {**properties, **part_properties}
                out["required"] = sorted(set(out.get("required", [])) | set(part.get("required", [])))
    dropped = [k for k in _TOP_LEVEL_REJECTED if k in out]
    for key in dropped:
        out.pop(key)
    if dropped:
        note = f"(constraints {', '.join(dropped)} not enforced by the provider schema)"
        out["description"] = f"{out.get('description', '')} {note}".strip()
    out.setdefault("properties", {})
    if not out.get("required"):
        out.pop("required", None)
    return out


def tool_definition_of(name: str, tool: ToolSpec) -> ToolDefinition:
    """The definition a model is offered for ``tool`` under the aggregated ``name`` (its schema made
    provider-safe by :func:`provider_schema`)."""
    return ToolDefinition(name=name, description=tool.description or tool.title or tool.name,
                          parameters=provider_schema(tool.input_schema))


def openai_tool(name: str, tool: ToolSpec) -> dict[str, Any]:
    """OpenAI Chat Completions function tool for ``tool`` under the aggregated ``name``."""
    return tool_definition_of(name, tool).openai()


def anthropic_tool(name: str, tool: ToolSpec) -> dict[str, Any]:
    """Anthropic Messages API tool for ``tool`` under the aggregated ``name``."""
    return tool_definition_of(name, tool).anthropic()


def openai_to_anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Convert an OpenAI function tool (the Model interface's format) to an Anthropic tool."""
    definition = tool_definition(tool)
    return definition.model_copy(update={"parameters": provider_schema(definition.parameters)}).anthropic()
