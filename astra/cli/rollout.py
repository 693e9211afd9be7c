"""``astra rollout``: run tasks through the MCP client harness (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from astra.cli._common import (
    USAGE,
    HomeOption,
    JsonOption,
    console,
    deprecated_option,
    emit_json,
    fail,
    resumable_run,
)

if TYPE_CHECKING:
    from astra.records import ServerSpec

app = typer.Typer(no_args_is_help=True)


def load_tasks(path: Path) -> tuple[list[Any], list[ServerSpec]]:
    """(tasks, servers) from a JSONL file of records.Task and/or the original ASTRA's tasks.jsonl lines
    (their ``mcp_info`` servers come along); a bad line is reported FILE:LINE: field: reason and skipped."""
    from astra.synthesis._original import read_tasks

    found = read_tasks(path)
    for error in found.errors:
        console.print(f"[yellow]skipped[/] {error}", markup=False, highlight=False, soft_wrap=True)
    for notice in found.notices:
        console.print(notice, style="dim", markup=False, highlight=False, soft_wrap=True)
    return found.items, list(found.servers.values())


@app.command("rollout")
def rollout(
    tasks: Annotated[Path, typer.Option("--tasks", help="JSONL file of Task records", exists=True, dir_okay=False)],
    model: Annotated[
        str, typer.Option("--model", help="openai:<m> | anthropic:<m> | local:<gguf|smollm2> | scripted:<name>")
    ],
    out: Annotated[Path, typer.Option("--out", help="run directory (resumed if it exists)")],
    servers: Annotated[list[str] | None, typer.Option("--servers", help="registry server names (repeatable)")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1)] = 1,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="concurrent episodes per process")] = 8,
    per_endpoint: Annotated[int | None, typer.Option("--per-endpoint-concurrency", min=1)] = None,
    server_replicas: Annotated[int, typer.Option(
        "--server-replicas", min=1, help="copies of each server per process, an episode pinned to one "
        "(for servers whose state is per episode or none)")] = 1,
    executor: Annotated[str, typer.Option("--executor", help="local | ray")] = "local",
    workers: Annotated[int, typer.Option("--workers", min=1, help="local worker processes")] = 1,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="join this Ray cluster")] = None,
    max_requests: Annotated[int, typer.Option("--max-requests", min=1, help="model requests per episode")] = 16,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, hidden=True, help="deprecated: --max-requests")
    ] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint (openai:)")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature")] = None,
    call_timeout: Annotated[float, typer.Option("--call-timeout", help="seconds per tool call")] = 30.0,
    system_prompt: Annotated[str | None, typer.Option("--system-prompt")] = None,
    live_remote: Annotated[
        bool,
        typer.Option(
            "--live-remote",
            help="call the remote endpoints of documented "
            "servers (call_info) live when reachable; otherwise they are simulated",
        ),
    ] = False,
    simulator_model: Annotated[
        str | None, typer.Option("--simulator-model", help="simulates documented servers' tools (default: --model)")
    ] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run TASKS x SAMPLES rollouts of MODEL against registry SERVERS into OUT (JSONL, resumable).

    TASKS may be the original ASTRA's tasks.jsonl: each line's mcp_info server is used (live over
    its call_info endpoint with --live-remote when reachable, else simulated; every step records which)."""
    from astra.client import ModelSettings, provider_of, run_rollouts

    if max_steps is not None:
        deprecated_option("--max-steps", "--max-requests")
        max_requests = max_steps
    if executor not in ("local", "ray"):
        raise fail(f"--executor must be 'local' or 'ray', not {executor!r}", code=USAGE)
    task_list, file_servers = load_tasks(tasks)
    if not task_list:
        raise fail(f"{tasks}: no valid tasks", code=USAGE)
    model_options = {"base_url": base_url} if base_url and provider_of(model) == "openai" else {}
    targets: list[Any] = list(servers or [])
    if file_servers:
        targets += _plan_file_servers(file_servers, set(targets), out, live_remote, simulator_model or model,
                                      model_options if not simulator_model else {})
    with resumable_run(out):  # outside the try: typer's Exit is a RuntimeError
        try:
            summary = run_rollouts(
                task_list, model, out,
                servers=targets, samples=samples, concurrency=concurrency,
                per_endpoint_concurrency=per_endpoint, server_replicas=server_replicas, executor=executor,
                workers=workers, ray_address=ray_address,
                progress=not json_out, home=home, model_options=model_options, max_requests=max_requests,
                settings=ModelSettings(temperature=temperature) if temperature is not None else None,
                call_timeout_s=call_timeout, system_prompt=system_prompt,
            )
        except (KeyError, ValueError, RuntimeError, OSError) as exc:
            # an unknown server, a bad model spec, duplicate task ids: the user's to fix
            raise fail(str(exc).strip("'\""), code=USAGE if isinstance(exc, (KeyError, ValueError)) else 1) from None
    if json_out:
        emit_json(summary.model_dump(mode="json"))
    table = Table(title=f"rollouts -> {summary.out_dir}", show_header=False)
    for key in ("model", "executor", "planned", "already_done", "written", "failed", "total_in_file",
                "input_tokens", "output_tokens", "step_latency_p50_s", "step_latency_p95_s", "wall_s"):
        value = getattr(summary, key)
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    for reason, n in summary.by_termination.items():
        table.add_row(f"termination {reason}", str(n))
    console.print(table)
    for err in summary.errors[:5]:
        console.print(f"[red]error:[/] {err}", highlight=False)
    if summary.failed:
        raise typer.Exit(1)


def _plan_file_servers(specs: list[ServerSpec], named: set[str], out: Path, live_remote: bool, simulator_spec: str,
                       simulator_options: dict[str, Any]) -> list[Any]:
    """Targets for the servers a tasks file brings (those not named by --servers), live or
    simulated; the plan is printed and kept in OUT/servers_plan.json."""
    import anyio

    from astra.client import resolve_model
    from astra.records import SimulatedLaunch
    from astra.synthesis._original import plan_servers

    specs = [s for s in specs if s.name not in named]
    needs_simulator = any(isinstance(s.launch, SimulatedLaunch) for s in specs)
    simulator = resolve_model(simulator_spec, **simulator_options) if needs_simulator else None
    from astra.synthesis.trajectories._simulate import SimulatedServer

    def simulate(spec: Any) -> Any:
        assert simulator is not None  # plan_servers simulates only SimulatedLaunch servers, which made one
        return SimulatedServer(spec, simulator)

    try:
        targets, plans = anyio.run(lambda: plan_servers(specs, live_remote=live_remote,
                                                        simulate=simulate if simulator is not None else None))
    except ValueError as exc:
        raise fail(str(exc), code=USAGE) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "servers_plan.json").write_text(json.dumps({n: p.model_dump(mode="json") for n, p in plans.items()},
                                                      indent=1) + "\n", "utf-8")
    for plan in plans.values():
        console.print(f"server {plan.name}: {plan.execution.value} ({plan.why})", markup=False, highlight=False)
    return targets
