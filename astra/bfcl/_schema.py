"""BFCL function docs -> valid JSON Schema.

BFCL writes parameter types in its own dialect ("dict", "float", "tuple", "any", ...), which
JSON Schema validators reject. The type names map as BFCL's own ``GORILLA_TO_OPENAPI``
table does, except "any", which becomes an unconstrained schema rather than a string.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

# BFCL type name -> JSON Schema type (None: no type constraint).
_TYPE_MAP: dict[str, str | None] = {
    "integer": "integer",
    "int": "integer",
    "byte": "integer",
    "short": "integer",
    "long": "integer",
    "number": "number",
    "float": "number",
    "double": "number",
    "string": "string",
    "str": "string",
    "char": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "ArrayList": "array",
    "Array": "array",
    "dict": "object",
    "object": "object",
    "HashMap": "object",
    "any": None,
    "null": "null",
}


class SchemaConversionError(ValueError):
    """A BFCL doc that cannot be turned into a valid JSON Schema (names the function and field)."""


def _convert(node: Any, where: str) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            if isinstance(value, list):
                mapped = [_TYPE_MAP.get(v, v) for v in value]
                if any(m is None for m in mapped):
                    continue  # "any" in a union: no constraint
                out["type"] = mapped
            elif value in _TYPE_MAP:
                if _TYPE_MAP[value] is not None:
                    out["type"] = _TYPE_MAP[value]
            else:
                raise SchemaConversionError(f"{where}: unknown BFCL type {value!r}")
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _convert(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, f"{where}.{key}")
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out[key] = [_convert(sub, f"{where}.{key}[{i}]") for i, sub in enumerate(value)]
        else:
            out[key] = copy.deepcopy(value)
    if out.get("type") == "object" and "properties" in out:
        required = out.get("required")
        if required is not None:
            unknown = [r for r in required if r not in out["properties"]]
            if unknown:
                raise SchemaConversionError(f"{where}: required names unknown properties {unknown}")
    return out


def bfcl_schema_to_json_schema(schema: dict[str, Any], where: str = "parameters") -> dict[str, Any]:
    """Convert one BFCL schema node (and its children) to JSON Schema; checked against the metaschema."""
    converted = _convert(schema, where)
    try:
        jsonschema.Draft202012Validator.check_schema(converted)
    except jsonschema.SchemaError as exc:
        raise SchemaConversionError(f"{where}: not a valid JSON Schema after conversion: {exc.message}") from exc
    return converted


def function_input_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The MCP ``inputSchema`` of one BFCL function doc (always an object schema)."""
    name = doc.get("name", "<unnamed>")
    params = doc.get("parameters") or {"type": "dict", "properties": {}}
    schema = bfcl_schema_to_json_schema(params, f"{name}.parameters")
    if schema.get("type") != "object":
        raise SchemaConversionError(f"{name}.parameters: top-level type must be dict/object, got {params.get('type')!r}")
    schema.setdefault("properties", {})
    return schema
