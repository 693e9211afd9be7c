"""The whole pipeline: QA -> decomposition -> necessity -> verification -> tools -> merge -> emit -> export."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from astra.client import Model, provider_of
from astra.synthesis._stage import Funnel, StageCounts
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._decompose import run_decompose
from astra.synthesis.environments._emit import current_environments, mcp_servers_block, run_emit
from astra.synthesis.environments._export import run_export
from astra.synthesis.environments._merge import run_merge
from astra.synthesis.environments._models import STAGES, EmittedEnvironment, EnvironmentPipelineConfig, PipelineResult
from astra.synthesis.environments._necessity import run_necessity
from astra.synthesis.environments._qa import run_qa
from astra.synthesis.environments._synthesize import run_synthesize
from astra.synthesis.environments._verify import run_verify
from astra.synthesis.trajectories._config import JudgeMode


def sample_qa_path() -> Path:
    """The bundled multi-hop QA set (answers computable with standard-library code)."""
    return Path(str(resources.files("astra.synthesis.environments") / "data" / "sample_qa.jsonl"))


def demo_qa_path() -> Path:
    """The embedded model's demo QA: single-hop questions in the shape of the decomposition and
    synthesis prompts' worked example (a 135M model follows an example; it does not plan)."""
    return Path(str(resources.files("astra.synthesis.environments") / "data" / "demo_qa.jsonl"))


def demo_config(
    out_dir: str | Path, model_spec: str = "local:smollm2", home: str | Path | None = None, limit: int | None = None
) -> EnvironmentPipelineConfig:
    """The config ``astra demo`` runs: the bundled QA set (the embedded model: the demo QA set),
    its first ``limit`` questions, one run directory under ``out_dir``."""
    out_dir = Path(out_dir)
    local = provider_of(model_spec) == "local"
    qa_path = demo_qa_path() if local else sample_qa_path()
    if limit is not None:
        lines = [line for line in qa_path.read_text("utf-8").splitlines() if line.strip()][: max(1, limit)]
        qa_path = out_dir / "sample_qa.jsonl"
        qa_path.parent.mkdir(parents=True, exist_ok=True)
        qa_path.write_text("\n".join(lines) + "\n", "utf-8")
    return EnvironmentPipelineConfig(
        run_dir=out_dir / "envs-run",
        qa_path=qa_path,
        model=model_spec,
        home=Path(home) if home is not None else None,
        # the embedded 135M model: short bounded replies (a tool in the example's shape is ~120
        # tokens, a single-hop decomposition ~60) and no retries (it rarely repairs a reply, and the
        # repair prompt doubles the context); it cannot judge, so necessity and verification are
        # rules (recorded as judge: rules) and the sandbox run of each tool is the real check.
        # One request at a time: llama.cpp serialises them anyway.
        max_tokens=200 if local else 1024,
        max_hops=1 if local else 8,
        judge=JudgeMode.RULES if local else JudgeMode.LLM,
        llm_retries=0 if local else 2,
        synth_attempts=2 if local else 3,
        model_timeout_s=120.0,
        concurrency=1 if local else 2,
    )


_SIMPLE_STAGES = {
    "decompose": run_decompose,
    "necessity": run_necessity,
    "verify": run_verify,
    "synthesize": run_synthesize,
    "merge": run_merge,
    "emit": run_emit,
}


async def run_stage(ctx: PipelineContext, name: str) -> tuple[StageCounts, dict[str, Any]]:
    """Run one stage (its inputs are the previous stage's outputs in the run directory)."""
    if name == "qa":
        counts, errors = await run_qa(ctx)
        return counts, {"input_errors": errors}
    if name == "export":
        counts, exports = await run_export(ctx)
        return counts, {"exports": exports}
    if name not in _SIMPLE_STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return await _SIMPLE_STAGES[name](ctx), {}


def funnel_of(ctx: PipelineContext) -> Funnel:
    funnel = Funnel()
    for name in STAGES:
        if ctx.run.status(name) is not None:
            funnel.add(ctx.stage(name, EmittedEnvironment).counts())
    return funnel


async def run_environment_pipeline(
    config: EnvironmentPipelineConfig,
    *,
    progress: bool = True,
    model: Model | None = None,
    stages: tuple[str, ...] = STAGES,
) -> PipelineResult:
    """Run (or resume) every stage; returns the funnel, emitted servers, mcpServers block and export paths.

    ``model`` overrides ``config.model`` (tests pass a ScriptedModel). Each stage skips the
    inputs its JSONL already holds, so a killed run resumes without duplicates.
    """
    ctx = PipelineContext(config=config, model=model, progress=progress)
    timings: dict[str, float] = {}
    result = PipelineResult(run_dir=config.run_dir, funnel=Funnel())
    try:
        for name in stages:
            start = time.perf_counter()
            _, extra = await run_stage(ctx, name)
            timings[name] = round(time.perf_counter() - start, 3)
            result.input_errors += extra.get("input_errors", [])
            result.exports.update(extra.get("exports", {}))
    finally:
        if model is None and ctx.model is not None:
            await ctx.model.aclose()
    envs = current_environments(ctx)
    result.funnel = funnel_of(ctx)
    result.server_dirs = [Path(e.server_dir) for e in envs]
    result.mcp_servers = mcp_servers_block(envs)
    result.timings = timings
    ctx.run.mark("pipeline", "done", timings=timings)
    return result


def funnel_problems(funnel: Funnel) -> list[str]:
    """Inconsistencies in a funnel (empty when consistent): every input is either kept or dropped,
    and each stage consumes what the stage before it produced."""
    problems: list[str] = []
    by = {s.stage: s for s in funnel.stages}
    for s in funnel.stages:
        kept = s.inputs - s.dropped
        if kept < 0 or (s.outputs == 0 and kept != 0) or s.failed > s.dropped:
            problems.append(
                f"{s.stage}: inputs {s.inputs}, outputs {s.outputs}, dropped {s.dropped}, failed {s.failed}"
            )
    for prev, nxt in (("qa", "decompose"), ("decompose", "necessity"), ("necessity", "verify"), ("verify", "emit")):
        if prev in by and nxt in by and by[prev].outputs != by[nxt].inputs:
            problems.append(f"{prev} produced {by[prev].outputs} but {nxt} consumed {by[nxt].inputs}")
    if "emit" in by and "export" in by and by["emit"].outputs != by["export"].inputs:
        problems.append(f"emit produced {by['emit'].outputs} but export consumed {by['export'].inputs}")
    return problems
