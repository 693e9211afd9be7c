"""``astra`` command line: thin; parses, calls a unit, prints a summary.

One module per command group; each defines ``app`` (a ``typer.Typer``), registered here.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="astra",
    help="ASTRA: synthesise tool-use trajectories and RLVR environments on real MCP servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module, command group name or None to merge its commands at top level, help)
_GROUPS: list[tuple[str, str | None, str]] = [
    ("registry", "registry", "MCP servers and tools: import, discover, list, show."),
    ("graph", "graph", "Tool dependency graphs: show, export."),
    ("env", "env", "Environments as MCP servers: emit, serve, validate, score."),
    ("rollout", None, "Rollouts of tasks through the MCP client harness."),
    ("traj", "traj", "Trajectory synthesis pipeline (SFT data)."),
    ("envs", "envs", "Environment synthesis pipeline (RLVR arenas)."),
    ("bfcl", "bfcl", "BFCL v3 multi-turn arena over MCP."),
    ("demo", None, "The main job on embedded defaults."),
]

for _module, _name, _help in _GROUPS:
    _sub = importlib.import_module(f"astra.cli.{_module}").app
    if _name is None:
        app.registered_commands.extend(_sub.registered_commands)
        app.registered_groups.extend(_sub.registered_groups)
    else:
        app.add_typer(_sub, name=_name, help=_help)


def main() -> None:
    app()
