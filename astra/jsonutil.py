"""JSON-shaped values: typed narrowing, and lenient extraction from model text.

:func:`is_object` / :func:`is_array` narrow a decoded value (``Any``) to ``dict[str, Any]`` /
``list[Any]``, what a bare ``isinstance(value, dict)`` leaves as ``dict[Unknown, Unknown]`` for the
type checker (docs/ARCHITECTURE.md "Checks").

Small and weak models wrap JSON in prose, code fences or ``<tool_call>`` tags; the extraction
helpers find the first complete JSON value without guessing at its content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from typing_extensions import TypeIs

from astra.errors import AstraError


def is_object(value: Any) -> TypeIs[dict[str, Any]]:
    """Whether a decoded JSON value is an object (its keys are strings)."""
    return isinstance(value, dict)


def is_array(value: Any) -> TypeIs[list[Any]]:
    """Whether a decoded JSON value is an array."""
    return isinstance(value, list)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TAG = re.compile(r"<(tool_call|json|answer)>\s*(.*?)\s*</\1>", re.DOTALL)


class JSONExtractionError(AstraError, ValueError):
    """No JSON value could be found in the text."""


def _first_json_value(text: str) -> Any:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value
    raise JSONExtractionError("no JSON object or array found")


def extract_json(text: str | None) -> Any:
    """Return the first JSON value found in ``text``.

    Tries, in order: the whole text, ``<tool_call>/<json>/<answer>`` tags, fenced code
    blocks, then the first ``{`` or ``[`` that starts a complete JSON value.
    """
    if text is None or not text.strip():
        raise JSONExtractionError("empty text")
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    for pattern, group in ((_TAG, 2), (_FENCE, 1)):
        for match in pattern.finditer(stripped):
            try:
                return json.loads(match.group(group).strip())
            except json.JSONDecodeError:
                continue
    return _first_json_value(stripped)


def extract_all_json_objects(text: str) -> list[Any]:
    """Every top-level JSON object or array in ``text``, in order (for several tool calls)."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    pos = 0
    while True:
        match = re.compile(r"[\{\[]").search(text, pos)
        if not match:
            return out
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            pos = match.start() + 1
            continue
        out.append(value)
        pos = end
