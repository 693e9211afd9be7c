"""Scoring with BFCL's own ``multi_turn_checker``, plus a fidelity check of our MCP servers.

The checker re-executes the decoded calls on its own backend objects, which it caches in
module globals under ``<model_name>_<entry id>_<class>_instance``; every call here uses a
fresh model name and removes its objects afterwards, so runs neither collide nor leak.
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false
# (bfcl_eval ships no type information)
import re
import uuid
from typing import Any

from pydantic import BaseModel, Field

from astra.bfcl._data import BfclEntry, package_root


class BfclVerdict(BaseModel):
    valid: bool
    error_type: str | None = None
    error_message: str | None = None


def _fresh_name() -> str:
    return f"astra_{uuid.uuid4().hex[:12]}"


def _forget(model_name: str) -> None:
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    prefix = re.sub(r"[-./:]", "_", model_name)
    for key in [k for k in vars(multi_turn_utils) if k.startswith(prefix)]:
        delattr(multi_turn_utils, key)


def score_decoded(entry: BfclEntry, decoded: list[list[list[str]]]) -> BfclVerdict:
    """BFCL's verdict on per-turn decoded calls, as ``bfcl_eval``'s eval runner computes it."""
    package_root()
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(decoded) != len(entry.ground_truth):
        # The eval runner's check for an entry whose inference stopped early.
        return BfclVerdict(
            valid=False,
            error_type="multi_turn:force_terminated",
            error_message=f"Model was force-terminated during inference phase. The length of the model result "
            f"turns ({len(decoded)}) does not match the length of the ground truth turns ({len(entry.ground_truth)}).",
        )
    # The eval runner drops empty steps before checking.
    decoded = [[step for step in turn if step] for turn in decoded]
    model_name = _fresh_name()
    try:
        result = multi_turn_checker(decoded, entry.ground_truth, entry.raw(), entry.category, model_name)
    except Exception as exc:  # noqa: BLE001 - a crashed checker is a failure, never a pass
        return BfclVerdict(
            valid=False, error_type="astra:checker_crashed", error_message=f"{type(exc).__name__}: {exc}"
        )
    finally:
        _forget(model_name)
    if result.get("valid"):
        return BfclVerdict(valid=True)
    return BfclVerdict(valid=False, error_type=result.get("error_type"), error_message=result.get("error_message"))


class StateDiff(BaseModel):
    """Where our MCP-served objects differ from BFCL executing the same calls directly."""

    faithful: bool
    differences: dict[str, Any] = Field(default_factory=dict)


def compare_with_direct_execution(
    entry: BfclEntry, decoded: list[list[list[str]]], instances: dict[str, Any]
) -> StateDiff:
    """Execute ``decoded`` with BFCL's executor and compare the final objects with ``instances``.

    ``instances`` are the backend objects our MCP servers ran the same calls on; equal public
    state (the checker's own comparison) means the MCP wrapping changed nothing.
    """
    package_root()
    # BFCL's own state comparison, which has no public name
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import (
        _compare_instances,  # pyright: ignore[reportPrivateUsage]
    )
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    model_name = _fresh_name()
    try:
        direct: dict[str, Any] = {}
        steps = [step for turn in decoded for step in turn] or [[]]
        for step in steps:
            _, direct = execute_multi_turn_func_call(
                step,
                entry.initial_config,
                entry.involved_classes,
                model_name,
                entry.id,
                long_context=entry.long_context,
            )
        differences: dict[str, Any] = {}
        for class_name, reference in direct.items():
            ours = instances.get(class_name)
            if ours is None:
                differences[class_name] = "not served"
                continue
            same, diff = _compare_instances(ours, reference)
            if not same:
                differences[class_name] = {
                    k: {"mcp": repr(v["model"])[:500], "direct": repr(v["ground_truth"])[:500]} for k, v in diff.items()
                }
        return StateDiff(faithful=not differences, differences=differences)
    finally:
        _forget(model_name)
