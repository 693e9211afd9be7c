"""CLI group: envs — the environment synthesis pipeline (QA -> MCP environments -> RLVR data).

Every verb takes the run's CONFIG (JSON, or YAML with PyYAML): ``run`` runs (or resumes) all
stages, the others one stage each, reading the previous stage's output in the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from pydantic import ValidationError

from astra.cli._common import USAGE, HomeOption, JsonOption, console, emit_json, fail, resumable_run
from astra.errors import validation_problem
from astra.synthesis.environments import (
    EnvironmentPipelineConfig,
    PipelineContext,
    funnel_problems,
    run_environment_pipeline,
    run_stage,
    sample_qa_path,
)
from astra.synthesis.environments._pipeline import funnel_of

app = typer.Typer(no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="pipeline config (JSON or YAML)", exists=False)]
ModelOption = Annotated[str | None, typer.Option("--model", help="override the config's model spec")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _load(config_path: Path, model: str | None, home: Path | None) -> EnvironmentPipelineConfig:
    if not config_path.exists():
        raise fail(f"{config_path}: no such config file", code=USAGE)
    try:
        config = EnvironmentPipelineConfig.load(config_path)
    except json.JSONDecodeError as exc:
        raise fail(f"{config_path}:{exc.lineno}: invalid JSON: {exc.msg}", code=USAGE) from exc
    except ValidationError as exc:
        raise fail(validation_problem(str(config_path), exc), code=USAGE) from exc
    except ValueError as exc:
        raise fail(str(exc), code=USAGE) from exc
    update: dict[str, Any] = {}
    if model:
        update["model"] = model
    if home is not None:
        update["home"] = home
    return config.model_copy(update=update) if update else config


def _report(summary: dict[str, Any], as_json: bool, funnel: Any) -> None:
    console.print(funnel.render())
    for problem in summary.get("funnel_problems", []):
        console.print(f"[yellow]funnel inconsistency:[/] {problem}")
    for err in summary.get("input_errors", [])[:20]:
        console.print(f"[yellow]skipped:[/] {err}", highlight=False)
    if as_json:
        emit_json(summary)


def _stage_command(name: str, help_text: str) -> None:
    def command(config: ConfigArg, model: ModelOption = None, home: HomeOption = None, as_json: JsonOption = False,
                quiet: QuietOption = False) -> None:
        cfg = _load(config, model, home)
        ctx = PipelineContext(config=cfg, progress=not quiet)

        async def go() -> Any:
            try:
                return await run_stage(ctx, name)
            finally:
                if ctx.model is not None:
                    await ctx.model.aclose()

        try:
            with resumable_run(cfg.run_dir):
                counts, extra = anyio.run(go)
        except ValueError as exc:  # a user mistake in the config (missing input file, no input)
            raise fail(str(exc), code=USAGE) from exc
        funnel = funnel_of(ctx)
        summary = {"stage": name, "run_dir": str(cfg.run_dir), "counts": counts.model_dump(),
                   "funnel": funnel.model_dump()["stages"], **{k: v for k, v in extra.items()}}
        _report(summary, as_json, funnel)

    command.__doc__ = help_text
    app.command(name)(command)


for _name, _help in (
    ("qa", "Stage 1: read QA JSONL (bad lines reported FILE:LINE: field: reason) and/or generate QA."),
    ("decompose", "Stage 2: decompose each question into hops (checked: dependencies, cycles, final answer)."),
    ("necessity", "Stage 3: per step, does it need a tool (flags steps depending on no-tool steps)."),
    ("verify", "Stage 4: four checks + LLM judge; a threshold filters."),
    ("synthesize", "Stage 5: tool document, call and stdlib implementation, verified in the sandbox."),
    ("merge", "Stage 6: cluster same-intent tools and merge them (every call re-verified)."),
    ("emit", "Stage 7: emit MCP servers, certify them over stdio, save them in the registry."),
    ("export", "Stage 8: RLVR export (verl Parquet + RLSample JSONL + mcpServers block)."),
):
    _stage_command(_name, _help)


@app.command("run")
def run(config: ConfigArg, model: ModelOption = None, home: HomeOption = None, as_json: JsonOption = False,
        quiet: QuietOption = False) -> None:
    """Run (or resume) every stage; ends with the funnel, the mcpServers block and the export paths."""
    cfg = _load(config, model, home)
    try:
        with resumable_run(cfg.run_dir):
            result = anyio.run(lambda: run_environment_pipeline(cfg, progress=not quiet))
    except ValueError as exc:  # a user mistake in the config (missing input file, no input)
        raise fail(str(exc), code=USAGE) from exc
    summary = {
        "run_dir": str(result.run_dir),
        "funnel": result.funnel.model_dump()["stages"],
        "funnel_problems": funnel_problems(result.funnel),
        "server_dirs": [str(p) for p in result.server_dirs],
        "mcp_servers": result.mcp_servers,
        "exports": {k: str(v) for k, v in result.exports.items()},
        "timings": result.timings,
        "input_errors": result.input_errors,
    }
    _report(summary, as_json, result.funnel)
    if not as_json:
        console.print_json(json.dumps(result.mcp_servers))
        for key, path in result.exports.items():
            console.print(f"{key}: {path}")


@app.command("init")
def init(
    path: Annotated[Path, typer.Argument(help="where to write the config")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="run directory (default: next to the config)")] = Path(
        "envs-run"
    ),
    qa: Annotated[Path | None, typer.Option("--qa", help="QA JSONL (default: the bundled sample set)")] = None,
    model: Annotated[str, typer.Option("--model")] = "local:smollm2",
    as_json: JsonOption = False,
) -> None:
    """Write a starter config (the bundled QA set, the embedded model)."""
    if path.exists():
        raise fail(f"{path} exists; not overwriting", code=USAGE)
    data = {"run_dir": str(run_dir), "qa_path": str(qa or sample_qa_path()), "model": model}
    EnvironmentPipelineConfig.model_validate(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    console.print(f"wrote {path}; run it with: astra envs run {path}")
    if as_json:
        emit_json({"config": str(path), **data})


