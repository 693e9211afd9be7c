"""BFCL v3 multi-turn data: entries, ground truth, function docs, backend classes.

Everything is read from the installed ``bfcl-eval`` package (an optional extra, installed
with ``--no-deps``). The multi-turn files of BFCL v4 are the v3 multi-turn suite unchanged
(4 categories x 200 entries); the package names them ``BFCL_v4_multi_turn_<category>.json``.
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false
# (bfcl_eval ships no type information)
import functools
import importlib
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from astra.errors import UserError

CATEGORIES: tuple[str, ...] = ("base", "long_context", "miss_func", "miss_param")
"""The four BFCL v3 multi-turn categories, in the seed paper's column order."""

CATEGORY_TITLES: dict[str, str] = {
    "base": "Base",
    "long_context": "Long Context",
    "miss_func": "Miss Func",
    "miss_param": "Miss Param",
}

BACKEND_CLASSES: tuple[str, ...] = (
    "GorillaFileSystem",
    "MathAPI",
    "MessageAPI",
    "TwitterAPI",
    "TicketAPI",
    "TradingBot",
    "TravelAPI",
    "VehicleControlAPI",
)
"""The eight multi-turn backends (web search and memory belong to BFCL v4's agentic suite)."""

# What BFCL's own inference loop sends as the user turn where held-out functions come back
# (bfcl_eval.constants.default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC).
ADDED_FUNCTIONS_PROMPT = "I have updated some more functions you can choose from. What about now?"
MAX_STEPS_PER_TURN = 20
"""BFCL's MAXIMUM_STEP_LIMIT: more model steps than this in one turn force-quits the entry."""


class BfclUnavailable(UserError, RuntimeError):
    """bfcl-eval is not installed (a user mistake with a clear fix)."""


def _prepare_environment() -> None:
    # bfcl_eval.constants.eval_config creates result/score dirs under BFCL_PROJECT_ROOT at
    # import time (default: inside site-packages); point it at a scratch dir instead.
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "astra-bfcl"))


def bfcl_available() -> bool:
    try:
        package_root()
    except BfclUnavailable:
        return False
    return True


@functools.cache
def package_root() -> Path:
    _prepare_environment()
    try:
        import bfcl_eval
    except ImportError as exc:
        raise BfclUnavailable(
            "bfcl-eval is not installed; install it without its heavy dependencies: "
            "pip install --no-deps bfcl-eval==2026.3.23 mpmath"
        ) from exc
    return Path(bfcl_eval.__file__).resolve().parent


def _data_dir() -> Path:
    return package_root() / "data"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc}") from exc
    return rows


class BfclEntry(BaseModel):
    """One multi-turn entry with its ground truth, as BFCL's inference and checker see it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    turns: list[list[dict[str, Any]]] = Field(
        description="the user messages of each turn; [] where functions are added back"
    )
    initial_config: dict[str, Any]
    involved_classes: list[str]
    missed_function: dict[str, list[str]] = Field(
        default_factory=dict, description="turn index -> held-out function names"
    )
    ground_truth: list[list[str]] = Field(description="per turn: python-call strings")

    @property
    def long_context(self) -> bool:
        # Same rule as the checker: "long_context" in the category name.
        return "long_context" in self.category

    def held_out(self) -> set[str]:
        return {name for names in self.missed_function.values() for name in names}

    def revealed_at(self, turn: int) -> list[str]:
        return list(self.missed_function.get(str(turn), []))

    def raw(self) -> dict[str, Any]:
        """The entry in BFCL's own shape (what ``multi_turn_checker`` takes as ``test_entry``)."""
        return {
            "id": self.id,
            "question": self.turns,
            "initial_config": self.initial_config,
            "involved_classes": self.involved_classes,
            **({"missed_function": self.missed_function} if self.missed_function else {}),
        }


def entry_sort_key(entry_id: str) -> tuple[str, int]:
    head, _, tail = entry_id.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (entry_id, -1)


@functools.cache
def _load_category(category: str) -> tuple[BfclEntry, ...]:
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")
    name = f"BFCL_v4_multi_turn_{category}.json"
    prompts = _read_jsonl(_data_dir() / name)
    answers = {row["id"]: row["ground_truth"] for row in _read_jsonl(_data_dir() / "possible_answer" / name)}
    entries = []
    for row in prompts:
        if row["id"] not in answers:
            raise ValueError(f"{name}: entry {row['id']} has no ground truth in possible_answer/{name}")
        entries.append(
            BfclEntry(
                id=row["id"],
                category=category,
                turns=row["question"],
                initial_config=row.get("initial_config", {}),
                involved_classes=row["involved_classes"],
                missed_function=row.get("missed_function", {}),
                ground_truth=answers[row["id"]],
            )
        )
    return tuple(sorted(entries, key=lambda e: entry_sort_key(e.id)))


def load_entries(
    categories: list[str] | tuple[str, ...] = CATEGORIES,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[BfclEntry]:
    """Entries of the given categories (in order), optionally only ``ids``, at most ``limit`` per category.

    ``ids`` may be full ids (``multi_turn_base_3``) or ``<category>_<n>`` (``base_3``).
    """
    wanted = None
    if ids:
        wanted = {i if i.startswith("multi_turn_") else f"multi_turn_{i}" for i in ids}
    out: list[BfclEntry] = []
    for category in categories:
        chosen = [e for e in _load_category(category) if wanted is None or e.id in wanted]
        out.extend(chosen[:limit] if limit is not None else chosen)
    if wanted is not None:
        missing = wanted - {e.id for e in out}
        if missing and not limit:
            raise ValueError(f"unknown BFCL entry ids (or outside the chosen categories): {', '.join(sorted(missing))}")
    return out


@functools.cache
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """BFCL's function docs (name, description, parameters, response) of one backend class."""
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    if class_name not in MULTI_TURN_FUNC_DOC_FILE_MAPPING:
        raise ValueError(f"unknown BFCL backend class {class_name!r}")
    return tuple(_read_jsonl(_data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]))


@functools.cache
def backend_class(class_name: str) -> type:
    package_root()
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    if class_name not in CLASS_FILE_PATH_MAPPING:
        raise ValueError(f"unknown BFCL backend class {class_name!r}")
    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


def is_stateless(class_name: str) -> bool:
    from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

    return class_name in STATELESS_CLASSES


def new_backend_instance(class_name: str, initial_config: dict[str, Any], *, long_context: bool) -> Any:
    """A fresh backend object with the entry's scenario loaded, exactly as BFCL's executor does."""
    import copy

    instance = backend_class(class_name)()
    if not is_stateless(class_name):
        instance._load_scenario(copy.deepcopy(initial_config.get(class_name, {})), long_context=long_context)
    return instance


@functools.cache
def method_parameters(class_name: str) -> dict[str, tuple[str, ...]]:
    """Public method name -> its parameter names (for mapping positional ground-truth args)."""
    cls = backend_class(class_name)
    out = {}
    for name, fn in inspect.getmembers(cls, predicate=inspect.isfunction):
        if name.startswith("_"):
            continue
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        out[name] = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return out
