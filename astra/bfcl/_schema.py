"""BFCL function docs -> MCP input schemas (valid JSON Schema).

BFCL writes parameter types in its own dialect ("dict", "float", "tuple", "any"); the
registry's :func:`astra.registry.normalize_schema` maps those loose names to JSON Schema and
checks the result against the Draft 2020-12 metaschema, naming the offending field.
"""

from __future__ import annotations

from typing import Any

from astra.registry import SchemaError, normalize_schema


def function_input_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The MCP ``inputSchema`` of one BFCL function doc (always an object schema).

    Raises :class:`astra.registry.SchemaError` naming ``<function>.parameters.<field>``.
    """
    return normalize_schema(doc.get("parameters"), field=f"{doc.get('name', '<unnamed>')}.parameters")


__all__ = ["SchemaError", "function_input_schema"]
