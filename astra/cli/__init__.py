"""``astra`` command line: thin; parses, calls a unit, prints a summary.

One module per command group; each defines ``app`` (a ``typer.Typer``), registered here.
"""

from __future__ import annotations

import importlib
import signal
import threading

import typer

from astra.errors import AstraError

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
    ("judge", "judge", "Trajectory judges: calibrate against the bundled labelled set."),
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


def _sigterm_as_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, ``kill``, a container stop) behaves exactly like Ctrl-C: the
    interrupted run is marked ``interrupted`` with what is kept and how to resume."""
    signal.raise_signal(signal.SIGINT)


def _astra_error(exc: BaseException) -> AstraError | None:
    """The ASTRA error inside ``exc`` (also inside task-group exception groups)."""
    if isinstance(exc, AstraError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:  # pyright: ignore[reportUnknownVariableType]
            found = _astra_error(inner)  # pyright: ignore[reportUnknownArgumentType]
            if found is not None:
                return found
    cause = exc.__cause__ or exc.__context__
    return _astra_error(cause) if isinstance(cause, BaseExceptionGroup) else None


def main() -> None:
    """The ``astra`` entry point: ASTRA's own errors are printed here, once, as one line."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        app()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        error = _astra_error(exc)
        if error is None:
            raise
        from astra.cli._common import fail

        raise SystemExit(fail(str(error), code=error.exit_code).exit_code) from None
