"""Tool parameter schemas: normalise loose (ASTRA / OpenAPI-ish) schemas to JSON Schema and validate them.

Validation is against the Draft 2020-12 metaschema. ``jsonschema-rs`` answers "is it valid"
in microseconds (the Python validator needs ~2 ms per tool schema, 40 s for an ASTRA-scale
corpus); the Python ``jsonschema`` validator is used to explain a failure, because its errors
carry the path of the offending field.
"""

from __future__ import annotations

import copy
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from astra.errors import AstraError
from astra.jsonutil import is_array, is_object

try:  # optional fast path; the result is the same without it, only slower
    import jsonschema_rs as _rs
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _rs = None

__all__ = ["SchemaError", "normalize_schema", "validate_schema", "TYPE_ALIASES"]

TYPE_ALIASES: dict[str, str | None] = {
    "object": "object",
    "dict": "object",
    "map": "object",
    "mapping": "object",
    "json": "object",
    "number": "number",
    "float": "number",
    "double": "number",
    "decimal": "number",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "string": "string",
    "str": "string",
    "text": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "set": "array",
    "null": "null",
    "none": "null",
    "nonetype": "null",
    "any": None,  # no constraint: the keyword is dropped
}
"""Loose type names seen in tool docs -> JSON Schema type (None: drop the constraint)."""

# keywords whose value is one subschema / a list of subschemas / a name -> subschema map
_SUBSCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else",
              "unevaluatedItems", "unevaluatedProperties", "additionalItems")
_SUBSCHEMA_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

_META_VALIDATOR = Draft202012Validator(Draft202012Validator.META_SCHEMA)


class SchemaError(AstraError, ValueError):
    """A tool schema that is not valid JSON Schema; ``field`` is the dotted path of the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _path(base: str, parts: Any) -> str:
    out = base
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _normalize_type(value: Any, field: str) -> Any:
    if isinstance(value, str):
        key = value.strip().lower()
        return TYPE_ALIASES.get(key, value)  # unknown names stay: validation names them
    if is_array(value):
        out: list[Any] = []
        for item in value:
            mapped = _normalize_type(item, field)
            if mapped is None:  # "any" inside a union makes the whole union unconstrained
                return None
            if mapped not in out:
                out.append(mapped)
        return out[0] if len(out) == 1 else out
    return value


def _normalize_node(node: Any, field: str) -> Any:
    """Normalise one (sub)schema in place-free fashion; returns the new node."""
    if isinstance(node, str):  # "items": "string" and similar shorthands
        mapped = _normalize_type(node, field)
        return {} if mapped is None else {"type": mapped}
    if not is_object(node):
        return node  # booleans are valid schemas; anything else fails validation with its path
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            mapped = _normalize_type(value, f"{field}.type")
            if mapped is not None:
                out["type"] = mapped
        elif key in _SUBSCHEMA:
            if key == "items" and is_array(value):  # draft-4 tuple form -> 2020-12 prefixItems
                out["prefixItems"] = [_normalize_node(v, f"{field}.items[{i}]") for i, v in enumerate(value)]
            else:
                out[key] = _normalize_node(value, f"{field}.{key}")
        elif key in _SUBSCHEMA_LIST and is_array(value):
            out[key] = [_normalize_node(v, f"{field}.{key}[{i}]") for i, v in enumerate(value)]
        elif key in _SUBSCHEMA_MAP:
            out[key] = _normalize_map(value, f"{field}.{key}") if key == "properties" else (
                {k: _normalize_node(v, f"{field}.{key}.{k}") for k, v in value.items()}
                if is_object(value) else value
            )
        elif isinstance(value, (dict, list)):
            out[key] = copy.deepcopy(value)
        else:  # immutable JSON scalar
            out[key] = value

    # OpenAPI 3.0 "nullable: true" -> a union with null
    nullable = out.pop("nullable", None)
    if nullable is True and "type" in out:
        types = out["type"] if is_array(out["type"]) else [out["type"]]
        if "null" not in types:
            out["type"] = [*types, "null"]

    # a schema with properties but no type is an object; with items, an array
    if "type" not in out:
        if "properties" in out or "required" in out:
            out["type"] = "object"
        elif "items" in out or "prefixItems" in out:
            out["type"] = "array"

    if is_object(out.get("properties")):
        required = _clean_required(out.get("required"), out["properties"])
        # per-property booleans (OpenAPI 2 / loose docs): "required": true, "optional": true
        for name, prop in out["properties"].items():
            if is_object(prop):
                flag = prop.get("required")
                if isinstance(flag, bool):
                    del prop["required"]
                    if flag and name not in required:
                        required.append(name)
                optional = prop.pop("optional", None)
                if optional is True and name in required:
                    required.remove(name)
        if required:
            out["required"] = required
        else:
            out.pop("required", None)
    elif "required" in out and isinstance(out["required"], (str, list)):
        cleaned = _clean_required(out["required"], None)
        if cleaned:
            out["required"] = cleaned
        else:
            out.pop("required")
    return out


def _normalize_map(value: Any, field: str) -> Any:
    """``properties``: a name -> schema map, or a list of ``{"name": ..., ...}`` entries."""
    if is_array(value) and all(is_object(v) and isinstance(v.get("name"), str) for v in value):
        value = {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in value}
    if not is_object(value):
        return value
    return {k: _normalize_node(v, f"{field}.{k}") for k, v in value.items()}


def _clean_required(required: Any, properties: dict[str, Any] | None) -> list[str]:
    """A list of unique property names; names of missing properties are dropped."""
    if isinstance(required, str):
        required = [required]
    if not is_array(required):
        return []
    out: list[str] = []
    for name in required:
        if isinstance(name, str) and name not in out and (properties is None or name in properties):
            out.append(name)
    return out


def normalize_schema(parameters: Any, *, field: str = "parameters", top_level_object: bool = True) -> dict[str, Any]:
    """Normalise a loose tool schema to valid JSON Schema (Draft 2020-12) and validate it.

    ``"dict"`` -> ``"object"``, ``"float"`` -> ``"number"``, ``"int"`` -> ``"integer"``,
    ``"str"`` -> ``"string"``, ``"bool"`` -> ``"boolean"``, ``"list"``/``"tuple"`` ->
    ``"array"``; a missing schema is an empty object schema; a missing type is inferred
    (``properties`` -> object, ``items`` -> array); ``required`` becomes a list of unique
    names of existing properties (per-property ``required: true`` is hoisted); OpenAPI
    ``nullable`` becomes a union with ``null``. The result is checked against the metaschema.

    Raises :class:`SchemaError` naming the offending field (``field`` is the prefix, e.g.
    ``tool_list[2].parameters``). MCP requires a tool's input schema to be an object schema:
    with ``top_level_object`` a missing top-level type is ``object`` and any other is an error.
    """
    if parameters is None:
        parameters = {}
    if not is_object(parameters):
        raise SchemaError(field, f"expected a JSON object (schema), got {type(parameters).__name__}")
    schema = _normalize_node(parameters, field)
    if top_level_object:
        kind = schema.get("type")
        if kind is None:
            schema = {"type": "object", **schema}
        elif kind != "object":
            raise SchemaError(f"{field}.type", f"a tool schema must be of type 'object', got {kind!r}")
        schema.setdefault("properties", {})
    validate_schema(schema, field=field)
    return schema


def validate_schema(schema: Any, *, field: str = "schema") -> None:
    """Check ``schema`` against the JSON Schema Draft 2020-12 metaschema; raise :class:`SchemaError`."""
    if _rs is not None and not (is_object(schema) and "$schema" in schema):
        try:
            if _rs.meta.is_valid(schema):
                return
        except Exception:  # e.g. a non-JSON value: let the reference validator explain it
            pass
    error = best_match(_META_VALIDATOR.iter_errors(schema))
    if error is None:
        return
    message = error.message
    if len(message) > 200:
        message = message[:200] + "..."
    raise SchemaError(_path(field, error.absolute_path), message)
