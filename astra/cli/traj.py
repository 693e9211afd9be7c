"""CLI group: ``astra traj`` — the trajectory synthesis pipeline, one verb per stage, and ``run``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from astra.cli._common import (
    USAGE,
    HomeOption,
    JsonOption,
    console,
    deprecated_option,
    emit_json,
    exit_code,
    fail,
    resumable_run,
)

app = typer.Typer(no_args_is_help=True)

ConfigArg = Annotated[
    Path, typer.Argument(help="run config (YAML or JSON): servers, model, judge, thresholds, counts, seed, out_dir")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _load(config: Path, home: Path | None) -> Any:
    from astra.synthesis.trajectories import ConfigError, TrajectoryConfig

    try:
        cfg = TrajectoryConfig.load(config)
    except ConfigError as exc:
        raise fail(str(exc), code=exc.exit_code) from None
    if home is not None:
        cfg = cfg.model_copy(update={"home": home})
    return cfg


def _run(config: Path, home: Path | None, as_json: bool, quiet: bool, stages: tuple[str, ...]) -> None:
    from astra.client import ModelError
    from astra.registry import DiscoveryError, RegistryError
    from astra.synthesis.trajectories import PipelineError, run_trajectory_pipeline

    cfg = _load(config, home)
    try:
        with resumable_run(cfg.out_dir):
            result = anyio.run(lambda: run_trajectory_pipeline(cfg, progress=not quiet and not as_json, stages=stages))
    except (PipelineError, ModelError, RegistryError, DiscoveryError, ValueError, KeyError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}", code=exit_code(exc)) from None
    if as_json:
        emit_json(result.summary())
    elif quiet:
        console.print(result.funnel.render())


def _verb(name: str, help_text: str) -> None:
    def command(
        config: ConfigArg, home: HomeOption = None, as_json: JsonOption = False, quiet: QuietOption = False
    ) -> None:
        _run(config, home, as_json, quiet, (name,))

    command.__doc__ = help_text
    app.command(name)(command)


_verb(
    "graph",
    "Stage 1: candidate edges from schemas, LLM verification in batches; store the graph (versioned) in the registry.",
)
_verb("chains", "Stage 2: seeded acyclic random walks (towards uncovered tools) and tool sets; reports coverage.")
_verb("verify", "Stage 3: LLM vote and back-translation; failing chains are dropped with the reason.")
_verb("tasks", "Stage 4: chain- and toolset-conditioned tasks, augmentations, multi-turn; quality scoring and filter.")
_verb("rollout", "Stage 5: episodes through the MCP client harness (real servers; simulated where none can run).")
_verb("reward", "Stage 6: the seven ASTRA reward dimensions, rule checks, LLM judge (judge_failed is never exported).")
_verb("export", "Stage 7: OpenAI JSONL, ShareGPT / LLaMA-Factory and Parquet, filtered by thresholds.")


@app.command("run")
def run(config: ConfigArg, home: HomeOption = None, as_json: JsonOption = False, quiet: QuietOption = False) -> None:
    """Run every stage (resumable: finished items are skipped) and print the funnel."""
    from astra.synthesis.trajectories import VERBS

    _run(config, home, as_json, quiet, VERBS)


@app.command("funnel")
def funnel(config: ConfigArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show the funnel of a run so far (items in/out per stage, drop reasons)."""
    import time

    from astra.synthesis.trajectories import TrajectoryPipeline

    cfg = _load(config, home)
    if not Path(cfg.out_dir).exists():
        raise fail(f"{cfg.out_dir}: no run directory yet", code=USAGE)
    result = TrajectoryPipeline(cfg, progress=False).result(time.perf_counter())
    if as_json:
        emit_json(result.summary())
    else:
        console.print(result.funnel.render())


@app.command("rejudge")
def rejudge(
    run_dir: Annotated[Path, typer.Argument(help="a trajectory run directory (holds rollout.jsonl and quality.jsonl)")],
    judge: Annotated[str, typer.Option("--judge", help="judge model spec, or 'rules' for the rule-only judge")],
    concurrency: Annotated[int, typer.Option(help="trajectories judged at once")] = 4,
    timeout_s: Annotated[float, typer.Option("--model-timeout", help="per judge request, seconds")] = 300.0,
    old_timeout_s: Annotated[
        float | None, typer.Option("--timeout", hidden=True, help="deprecated: --model-timeout")
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Re-score a finished run's trajectories with another judge: no rollout, no policy call; the new
    scores go to reward.<judge>.<version>.jsonl beside the run's reward.jsonl (resumable)."""
    from astra.client import ModelError
    from astra.synthesis.trajectories import JudgeMode
    from astra.synthesis.trajectories._rejudge import RejudgeError, rejudge_run

    mode = JudgeMode.RULES if judge == "rules" else JudgeMode.LLM
    if old_timeout_s is not None:
        deprecated_option("--timeout", "--model-timeout")
        timeout_s = old_timeout_s
    model = judge_model(judge, timeout_s) if mode is JudgeMode.LLM else None
    try:
        with resumable_run(run_dir):
            result = anyio.run(lambda: closing(model, rejudge_run(run_dir, model, mode=mode, concurrency=concurrency,
                                                                   progress=not quiet and not as_json)))
    except (RejudgeError, ModelError, ValueError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}", code=exit_code(exc)) from None
    if as_json:
        emit_json(result.summary())
        return
    from rich.table import Table

    table = Table(
        title=f"rejudge {result.run_dir} with {result.judge} ({result.judge_version}) -> {result.stage}.jsonl"
    )
    for col in ("key", "before (reward.jsonl)", "after"):
        table.add_column(col)
    for key, after in result.after.items():
        before = result.before.get(key)
        table.add_row(key, "-" if before is None else f"{before:.3f}", "-" if after is None else f"{after:.3f}")
    console.print(table)
    c = result.counts
    console.print(f"{c.outputs} scored, {c.dropped} dropped ({c.failed} failed); policy calls: 0; "
                  f"judge calls per sample: {result.judge_calls_per_sample:g}", highlight=False)


def judge_model(spec: str, timeout_s: float) -> Any:
    from astra.client import ModelError, resolve_model
    from astra.synthesis.trajectories._pipeline import TimeoutModel

    importlib.import_module("astra.synthesis.trajectories._calibration")  # registers scripted:calibration-oracle

    try:
        return TimeoutModel(resolve_model(spec), timeout_s)
    except (ModelError, ValueError, KeyError) as exc:
        raise fail(f"--judge {spec}: {exc}", code=USAGE) from None


async def closing(model: Any, coro: Any) -> Any:
    try:
        return await coro
    finally:
        if model is not None:
            await model.inner.aclose()


@app.command("export-original")
def export_original(
    config: ConfigArg,
    out: Annotated[Path | None, typer.Option("--out", help="folder (default: RUN/export/astra-original)")] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a run's trajectories and rewards in the original ASTRA's shapes (its interaction
    output with query_info / mcp_info / trajectory, and reward_all's keys); failed judges are left out."""
    from astra.synthesis.trajectories import TrajectoryPipeline

    cfg = _load(config, home)
    if not Path(cfg.out_dir).exists():
        raise fail(f"{cfg.out_dir}: no run directory yet")
    pipeline = TrajectoryPipeline(cfg, progress=False)
    if pipeline.run.status("rollout") is None:
        raise fail(f"{cfg.out_dir}: no rollouts yet; run `astra traj rollout` first")
    paths = pipeline.export_original(out or Path(cfg.out_dir) / "export" / "astra-original")
    if as_json:
        emit_json(paths)
    for key, path in paths.items():
        console.print(f"{key}: {path}", markup=False, highlight=False)
