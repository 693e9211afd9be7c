"""Fixtures: emitted environments (the inventory sample, twice under two names) and verl's own
code loaded without torch."""

from __future__ import annotations

import ast
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from astra.records import EnvironmentSpec
from astra.servers import emit, load_sample
from astra.trainers import ExportEnvironment

QUESTION = (
    "Check the widget stock, list the tools category, order 2 claw hammers for ACME, receive 10 more "
    "hammers and value the stock: what is the stock value?"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _copy(spec: EnvironmentSpec, name: str) -> EnvironmentSpec:
    return spec.model_copy(update={"name": name, "id": f"env-{name}"})


@pytest.fixture(scope="session")
def environments(tmp_path_factory: pytest.TempPathFactory) -> list[ExportEnvironment]:
    """Two emitted copies of the inventory environment (same tool names: the export must rename)."""
    root = tmp_path_factory.mktemp("envs")
    out = []
    for name in ("inventory", "warehouse"):
        spec = _copy(load_sample("inventory"), name)
        server_dir = emit(spec, root / name)
        out.append(ExportEnvironment(spec=spec, question=QUESTION, answer="354.0", server_dir=str(server_dir)))
    return out


@pytest.fixture(scope="session")
def inventory_env(environments: list[ExportEnvironment]) -> ExportEnvironment:
    return environments[0]


# ----------------------------------------------------------------------------- verl, without torch


def _shell_packages() -> None:
    """verl's package __init__ files import torch; its tool modules do not. Register the packages
    as plain namespaces so ``verl.tools.*`` and the tool parser import as they are."""
    if getattr(sys.modules.get("verl"), "__astra_shell__", False):
        return
    spec = importlib.util.find_spec("verl")
    assert spec is not None and spec.submodule_search_locations, "verl is not installed (scripts/setup.sh installs it)"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("verl", "verl.utils", "verl.experimental", "verl.experimental.agent_loop"):
        if name in sys.modules and getattr(sys.modules[name], "__file__", None):
            continue  # the real package (with torch) is importable here: use it
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        module.__astra_shell__ = True
        sys.modules[name] = module


def _from_tool_agent_loop(names: set[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute the named definitions of verl's tool_agent_loop.py (its source, unmodified) in
    ``namespace``: the module itself imports torch, these definitions do not use it."""
    path = (
        Path(importlib.util.find_spec("verl.tools.base_tool").origin).parents[1]
        / "experimental/agent_loop/tool_agent_loop.py"
    )
    tree = ast.parse(path.read_text())
    picked: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ToolAgentLoop":
            methods = [
                n for n in node.body if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef) and n.name in names
            ]
            picked.append(
                ast.ClassDef(
                    name="ToolAgentLoopTools", bases=[], keywords=[], body=methods, decorator_list=[], type_params=[]
                )
            )
        elif isinstance(node, ast.ClassDef) and node.name in names:
            picked.append(node)
    module = ast.Module(body=picked, type_ignores=[])
    ast.fix_missing_locations(module)
    exec(compile(module, str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="session")
def verl() -> types.SimpleNamespace:
    _shell_packages()
    import json
    from typing import Optional

    from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser
    from verl.tools.base_tool import BaseTool
    from verl.tools.function_tool import FunctionTool, normalize_function_tool_return
    from verl.tools.schemas import ToolResponse
    from verl.tools.tool_registry import initialize_tools_from_config

    annotations_only = types.SimpleNamespace(Tensor=object, Image=object)  # AgentData's type hints name torch / PIL
    ns = _from_tool_agent_loop(
        {"AgentData", "_call_tool"},
        {
            "json": json,
            "logger": logging.getLogger("verl.tool_agent_loop"),
            "Any": Any,
            "Optional": Optional,
            "FunctionTool": FunctionTool,
            "FunctionCall": FunctionCall,
            "ToolResponse": ToolResponse,
            "normalize_function_tool_return": normalize_function_tool_return,
            "torch": annotations_only,
            "Image": annotations_only,
            "AgentData": None,
        },
    )
    return types.SimpleNamespace(
        BaseTool=BaseTool,
        ToolParser=ToolParser,
        AgentData=ns["AgentData"],
        ToolAgentLoopTools=ns["ToolAgentLoopTools"],
        initialize_tools_from_config=initialize_tools_from_config,
    )


def _openenv_shells() -> None:
    """openenv-core's Environment base class and types (its package __init__ imports fastmcp, which
    pins another mcp: only interfaces.py and types.py are loaded, as they are)."""
    if getattr(sys.modules.get("openenv"), "__astra_shell__", False):
        return
    spec = importlib.util.find_spec("openenv")
    assert spec is not None and spec.submodule_search_locations, "openenv-core missing (scripts/setup.sh installs it)"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("openenv", "openenv.core", "openenv.core.env_server"):
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        module.__astra_shell__ = True
        sys.modules[name] = module


@pytest.fixture(scope="session")
def openenv() -> types.ModuleType:
    _openenv_shells()
    import astra.trainers.openenv as adapter

    return adapter
