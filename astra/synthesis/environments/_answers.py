"""Normalised answer comparison: the acceptance test of synthesised tools and of rewards.

Two answers match when they are the same value after normalisation — never when one merely
contains the other. Numbers compare with a tolerance (relative 1e-6, or equal at the
precision the expected answer was written with: expected ``3.33`` accepts ``3.3333``),
strings compare case- and whitespace-insensitively, lists and dicts element by element.
A number with a unit (``12.5 km``, ``$1,200``) matches the same number with the same unit,
or the bare number.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["answers_match", "normalize_text", "parse_tool_value"]

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_QUANTITY = re.compile(rf"^(?P<pre>[$€£¥])?\s*(?P<num>{_NUMBER})\s*(?P<unit>[^\d\s][^\d]*)?$")
_SPACE = re.compile(r"\s+")
_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}


def normalize_text(value: str) -> str:
    """Casefold, collapse whitespace, strip quotes and trailing sentence punctuation."""
    text = _SPACE.sub(" ", str(value)).strip().casefold()
    text = text.strip("\"'`")
    while text and text[-1] in ".!;":
        text = text[:-1].rstrip()
    return text


def _quantity(value: Any) -> tuple[float, str, int | None] | None:
    """(number, unit, decimals written) for numbers and number-with-unit strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return (float(value), "", None) if math.isfinite(float(value)) else None
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(normalize_text(value))
    if not match:
        return None
    num = match.group("num").replace(",", "")
    unit = (match.group("pre") or "") + (match.group("unit") or "").strip()
    decimals = len(num.split(".", 1)[1]) if "." in num and "e" not in num.lower() else None
    try:
        number = float(num)
    except ValueError:
        return None
    return number, unit, decimals


def _numbers_match(got: tuple[float, str, int | None], expected: tuple[float, str, int | None]) -> bool:
    g, g_unit, _ = got
    e, e_unit, e_decimals = expected
    if g_unit and e_unit and g_unit != e_unit:
        return False
    if math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-9):
        return True
    # written at a precision: the expected value is the got value rounded to that precision
    if e_decimals is not None:
        return math.isclose(round(g, e_decimals), e, rel_tol=0, abs_tol=10 ** (-e_decimals) / 2)
    return False


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = normalize_text(value)
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def answers_match(got: Any, expected: Any) -> bool:
    """Whether ``got`` is the ``expected`` answer after normalisation (not a substring test)."""
    got, expected = _maybe_json(got), _maybe_json(expected)
    if isinstance(expected, dict) or isinstance(got, dict):
        if not (isinstance(expected, dict) and isinstance(got, dict)):
            return False
        if {normalize_text(k) for k in got} != {normalize_text(k) for k in expected}:
            return False
        got_by_key = {normalize_text(k): v for k, v in got.items()}
        return all(answers_match(got_by_key[normalize_text(k)], v) for k, v in expected.items())
    if isinstance(expected, list | tuple) or isinstance(got, list | tuple):
        if isinstance(got, list | tuple) and isinstance(expected, list | tuple):
            return len(got) == len(expected) and all(answers_match(g, e) for g, e in zip(got, expected, strict=True))
        # a one-element list against a scalar: the same answer
        if isinstance(got, list | tuple) and len(got) == 1:
            return answers_match(got[0], expected)
        if isinstance(expected, list | tuple) and len(expected) == 1:
            return answers_match(got, expected[0])
        if isinstance(expected, str) and isinstance(got, list | tuple):
            parts = [p for p in re.split(r"\s*,\s*", expected.strip()) if p]
            return len(parts) == len(got) and all(answers_match(g, p) for g, p in zip(got, parts, strict=True))
        return False
    got_bool, expected_bool = _bool(got), _bool(expected)
    if got_bool is not None and expected_bool is not None:
        return got_bool == expected_bool
    got_q, expected_q = _quantity(got), _quantity(expected)
    if got_q is not None and expected_q is not None:
        return _numbers_match(got_q, expected_q)
    if got is None or expected is None:
        return got is None and expected is None
    return normalize_text(str(got)) == normalize_text(str(expected))


def parse_tool_value(value: Any) -> Any:
    """The value inside a tool result: unwraps ``{"result": x}`` and JSON text."""
    value = _maybe_json(value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, dict) and set(value) == {"result"}:
        return value["result"]
    return value
