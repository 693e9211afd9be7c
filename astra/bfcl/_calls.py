"""BFCL's python-call strings: parse ground truth into (name, arguments), format model calls back.

BFCL's function-calling handlers decode each tool call ``{name: arguments}`` into
``name(k1=repr(v1),k2=repr(v2))`` (``bfcl_eval.model_handler.utils.convert_to_function_call``);
``multi_turn_checker`` then ``eval``s those strings against its own backend instances.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from astra.errors import AstraError


class CallParseError(AstraError, ValueError):
    """A ground-truth call string that is not ``name(literal args...)``."""


def format_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A tool call as BFCL decodes it: ``name(k=repr(v),...)``, keys in the model's order."""
    return f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def parse_call(call: str, parameter_names: Mapping[str, tuple[str, ...]] | None = None) -> tuple[str, dict[str, Any]]:
    """Parse ``name(a, k=v)`` (literal arguments only) into the name and keyword arguments.

    Positional arguments are named from ``parameter_names[name]`` (the backend method's
    signature), as Python would bind them.
    """
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as exc:
        raise CallParseError(f"{call!r}: not a python call: {exc.msg}") from exc
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise CallParseError(f"{call!r}: expected name(args...)")
    name = node.func.id
    arguments: dict[str, Any] = {}
    if node.args:
        names = (parameter_names or {}).get(name)
        if names is None:
            raise CallParseError(f"{call!r}: positional arguments but the signature of {name!r} is unknown")
        if len(node.args) > len(names):
            raise CallParseError(f"{call!r}: {len(node.args)} positional arguments, {name} takes {len(names)}")
        for param, arg in zip(names, node.args, strict=False):
            arguments[param] = _literal(arg, call)
    for kw in node.keywords:
        if kw.arg is None:
            raise CallParseError(f"{call!r}: **kwargs is not supported")
        if kw.arg in arguments:
            raise CallParseError(f"{call!r}: {kw.arg!r} given twice")
        arguments[kw.arg] = _literal(kw.value, call)
    return name, arguments


def _literal(node: ast.expr, call: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError as exc:
        raise CallParseError(f"{call!r}: argument {ast.unparse(node)!r} is not a literal") from exc
