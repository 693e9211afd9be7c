"""``astra demo``: the main job on the embedded defaults, fully offline.

1. registry: import the bundled sample servers, discover a real MCP server
   (``mcp-server-time`` over stdio) and store its tools;
2. trajectory synthesis: tool graph -> chains -> tasks -> rollouts -> rewards -> SFT export;
3. environment synthesis: QA -> decomposition -> tools (sandboxed) -> MCP servers -> RLVR export.

Each pipeline writes a resumable run directory under ``--out``; rerunning the demo resumes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.table import Table

from astra.cli._common import HomeOption, JsonOption, console, emit_json, fail

app = typer.Typer()

DEFAULT_MODEL = "local:smollm2"


def _registry_step(home: Path | None) -> dict[str, Any]:
    from astra.records import StdioLaunch
    from astra.registry import SAMPLE_SERVERS, DiscoveryError, Registry, add_server, import_file

    with Registry.open(home) as registry:
        report = import_file(registry, SAMPLE_SERVERS)
        time_launch = StdioLaunch(command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"])
        try:
            spec, _ = add_server(registry, "time", time_launch, domain="time",
                                 description="Current time and time zone conversion (PyPI mcp-server-time).")
            discovered = {"server": spec.name, "tools": [t.name for t in spec.tools]}
        except DiscoveryError as exc:
            # the demo goes on with the simulated sample servers; the failure is reported
            discovered = {"server": "time", "error": str(exc)}
        servers = registry.list_servers()
        table = Table(title=f"registry ({registry.path})")
        for col in ("server", "domain", "launch", "tools"):
            table.add_column(col)
        for s in servers:
            table.add_row(s.name, s.domain or "", s.launch.kind, str(len(s.tools)))
        console.print(table)
        return {
            "db": str(registry.path),
            "imported": report.imported,
            "unchanged": report.unchanged,
            "rejected": report.rejected,
            "discovered": discovered,
            "servers": len(servers),
            "tools": sum(len(s.tools) for s in servers),
        }


async def _trajectory_step(out: Path, model: str, home: Path | None, judge: str | None) -> dict[str, Any]:
    from astra.synthesis.trajectories import demo_config, run_trajectory_pipeline

    # the pipeline prints its own funnel and export paths
    result = await run_trajectory_pipeline(demo_config(out / "trajectories", model, home, judge_model=judge))
    return result.summary()


async def _environment_step(out: Path, model: str, home: Path | None) -> dict[str, Any]:
    from astra.synthesis.environments import demo_config, run_environment_pipeline

    # the embedded 135M model takes up to minutes per question on 2 cores: a short demo set
    limit = 3 if model.startswith("local:") else None
    result = await run_environment_pipeline(demo_config(out / "environments", model, home, limit=limit))
    console.print(result.funnel.render())
    if result.mcp_servers.get("mcpServers"):
        console.print("[bold]mcpServers block for MCP hosts:[/]")
        console.print_json(json.dumps(result.mcp_servers))
    return json.loads(result.model_dump_json())


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="model spec: local:smollm2, openai:MODEL, anthropic:MODEL")] = DEFAULT_MODEL,
    judge_model: Annotated[str | None, typer.Option(help="judge model spec (default: --model)")] = None,
    out: Annotated[Path, typer.Option(help="where the run directories go")] = Path("runs/demo"),
    skip_trajectories: Annotated[bool, typer.Option(help="skip the trajectory pipeline")] = False,
    skip_environments: Annotated[bool, typer.Option(help="skip the environment pipeline")] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run the main job offline on bundled sample servers with the embedded model."""
    started = time.perf_counter()
    summary: dict[str, Any] = {"model": model, "out": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]1/3 registry: import sample servers, discover mcp-server-time")
    summary["registry"] = _registry_step(home)
    failures: list[str] = []
    if not skip_trajectories:
        console.rule("[bold]2/3 trajectory synthesis (SFT data)")
        try:
            summary["trajectories"] = anyio.run(_trajectory_step, out, model, home, judge_model)
        except Exception as exc:  # top level of a pipeline: report it, run the other one
            failures.append(f"trajectories: {type(exc).__name__}: {exc}")
    if not skip_environments:
        console.rule("[bold]3/3 environment synthesis (RLVR arenas)")
        try:
            summary["environments"] = anyio.run(_environment_step, out, model, home)
        except Exception as exc:
            failures.append(f"environments: {type(exc).__name__}: {exc}")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["failures"] = failures

    console.rule("[bold]summary")
    reg = summary["registry"]
    console.print(f"registry: {reg['servers']} servers, {reg['tools']} tools in {reg['db']}")
    if "trajectories" in summary:
        t = summary["trajectories"]
        console.print(f"trajectories: {t['exported']} SFT samples exported; files: {t['exports']}")
    if "environments" in summary:
        e = summary["environments"]
        console.print(f"environments: {len(e['server_dirs'])} MCP servers emitted; exports: {e['exports']}")
    console.print(f"done in {summary['seconds']} s")
    if json_out:
        emit_json(summary)
    if failures:
        raise fail("; ".join(failures))
