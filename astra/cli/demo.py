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

from astra.cli._common import HomeOption, JsonOption, console, emit_json, fail, user
from astra.records import ToolErrorKind

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
    from astra.client import provider_of
    from astra.synthesis.environments import demo_config, run_environment_pipeline

    # the embedded 135M model takes up to minutes per question on 2 cores: a short demo set
    limit = 3 if provider_of(model) == "local" else None
    result = await run_environment_pipeline(demo_config(out / "environments", model, home, limit=limit))
    console.print(result.funnel.render())
    if result.mcp_servers.get("mcpServers"):
        console.print("[bold]mcpServers block for MCP hosts:[/]")
        console.print_json(json.dumps(result.mcp_servers))
    return json.loads(result.model_dump_json())


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds per stage of a run, from the manifest's stage timestamps (stages run in order)."""
    manifest = json.loads((run_dir / "manifest.json").read_text("utf-8"))
    last = float(manifest.get("created", 0.0))
    times: dict[str, float] = {}
    for name, entry in sorted(manifest.get("stages", {}).items(), key=lambda kv: kv[1].get("updated", 0.0)):
        updated = float(entry.get("updated", last))
        times[name] = round(max(0.0, updated - last), 1)
        last = updated
    return times


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _reached_a_server(step: dict[str, Any]) -> bool:
    """A call that a real (not simulated) MCP server received."""
    return bool(step.get("server")) and not step.get("simulated", False) and step.get("error_kind") not in (
        ToolErrorKind.unknown_tool, ToolErrorKind.bad_json, ToolErrorKind.bad_arguments)


def _made(out: Path, summary: dict[str, Any]) -> list[dict[str, str]]:
    """What the demo made, each with one command to look at it."""
    made: list[dict[str, str]] = []
    traj = summary.get("trajectories")
    if traj:
        run = Path(traj["run_dir"])
        rollouts = [o for e in _jsonl(run / "rollout.jsonl") for o in e.get("outputs", [])]
        real = [t for t in rollouts if any(_reached_a_server(s) for s in t.get("steps", []))]
        made.append(
            {
                "what": "rollouts",
                "detail": f"{len(rollouts)} trajectories, {len(real)} of them called a real MCP "
                f"server over stdio (mcp-server-time, the emitted inventory server)",
                "look": f"jq -c '.outputs[0].steps[] | [.tool, .arguments, .is_error]' {run / 'rollout.jsonl'}",
            }
        )
        exports = traj.get("exports", {})
        first = exports.get("openai") or next(iter(exports.values()), "")
        judges = sorted({str(e.get("judge", "?")) for e in _jsonl(Path(first))}) if first.endswith(".jsonl") else []
        made.append(
            {
                "what": "SFT samples",
                "detail": f"{traj['exported']} exported"
                + (f" (judged by: {', '.join(judges)})" if judges else "")
                + f"; files: {', '.join(exports.values())}",
                "look": f"head -1 {first} | jq ." if first else "",
            }
        )
    env = summary.get("environments")
    if env:
        for directory in env.get("server_dirs", []):
            made.append({"what": "MCP server (certified)", "detail": str(directory),
                         "look": f"astra env serve {directory}   |   npx @modelcontextprotocol/inspector --cli "
                                 f"{sys.executable} {Path(directory) / 'server.py'} --method tools/list"})
        for name, path in env.get("exports", {}).items():
            look = (f"{sys.executable} -c \"import pyarrow.parquet as pq; print(pq.read_table('{path}').slice(0, 1)"
                    f".to_pylist())\"") if str(path).endswith(".parquet") else f"head -c 2000 {path}"
            made.append({"what": f"RL export ({name})", "detail": str(path), "look": look})
    return made


@app.command()
def demo(
    model: Annotated[
        str, typer.Option(help="model spec: local:smollm2, openai:MODEL, anthropic:MODEL")
    ] = DEFAULT_MODEL,
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
    summary["stage_seconds"] = {name: _stage_seconds(out / name) for name in ("trajectories", "environments/envs-run")
                                if (out / name / "manifest.json").is_file()}
    summary["made"] = _made(out, summary)

    console.rule("[bold]summary")
    reg = summary["registry"]
    console.print(f"registry: {reg['servers']} servers, {reg['tools']} tools in {user(reg['db'])}", highlight=False)
    for run, stages in summary["stage_seconds"].items():
        console.print(f"{run} stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), highlight=False)
    for item in summary["made"]:
        console.print(f"[bold]{user(item['what'])}[/]: {user(item['detail'])}", highlight=False)
        if item.get("look"):
            console.print(f"  look: {user(item['look'])}", highlight=False)
    console.print(f"done in {summary['seconds']} s")
    if json_out:
        emit_json(summary)
    if failures:
        raise fail("; ".join(failures))
