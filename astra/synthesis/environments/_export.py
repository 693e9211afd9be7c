"""Stage 8: RLVR export — RLSample JSONL, verl parquet + tool-config YAML, TRL, MCP host configs.

Only environments with a solvability certificate AND a hardening certificate
(:mod:`astra.trainers.hardening`: oracle 1.0, no-op 0, answer-without-tools 0, only tools
reachable, no answer leak in the task or non-terminal outputs) are exported; the funnel
names the failed check (``not_hardened_<check>``).

Samples come from :mod:`astra.trainers.export` (tool names unique across the export, optional
distractor tools, ground truth naming the exported tools). verl row: ``data_source``,
``agent_name`` ("tool_agent"), ``prompt``, ``ability``, ``reward_model`` ``{"style": "rule",
"ground_truth": <JSON list of {id, sub_question, sub_answer, tool}>}``, ``extra_info``
``{index, split, environment_id, environment_name, server_dir, answer, tools, tool_selection,
distractors, need_tools_kwargs, tools_kwargs}`` (``tools_kwargs`` for the sample's tools only).
``trl_env.py`` + ``trl_dataset.jsonl``: TRL ``environment_factory`` classes; ``mcp.json`` and
``.vscode/mcp.json``: MCP host configs. ``verl_tool_config.yaml`` declares
:class:`astra.trainers.verl.AstraTool` for every tool; the
reward is :func:`astra.synthesis.environments.reward.compute_score` (the one process reward).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from astra.records import ChatMessage, RLSample, stable_id
from astra.runs import JsonlLog
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._emit import current_environments, mcp_servers_block
from astra.synthesis.environments._models import EmittedEnvironment
from astra.trainers._pool import EpisodePool, stdio_launch
from astra.trainers.export import (
    SYSTEM_PROMPT,
    ExportEnvironment,
    Sample,
    samples,
    verl_row,
    verl_tool_config,
    write_verl_parquet,
    write_yaml,
)
from astra.trainers.hardening import harden
from astra.trainers.hosts import write_host_configs
from astra.trainers.trl import trl_module_source, trl_rows
from astra.trainers.verifiers_package import write_verifiers_package

__all__ = ["SYSTEM_PROMPT", "export_environment", "rl_sample", "run_export"]


def export_environment(env: EmittedEnvironment) -> ExportEnvironment:
    return ExportEnvironment(spec=env.spec, question=env.question, answer=env.answer, server_dir=env.server_dir)


def rl_sample(sample: Sample, data_source: str) -> RLSample:
    return RLSample(
        id=stable_id("rl", sample.env.spec.id, prefix="rl_"),
        prompt=[ChatMessage(role=m["role"], content=m["content"]) for m in sample.prompt],  # type: ignore[arg-type]
        environment_id=sample.env.spec.id,
        tools=sample.tools,
        sub_qa=sample.truth,
        answer=sample.env.answer,
        data_source=data_source,
    )


async def run_export(ctx: PipelineContext) -> tuple[StageCounts, dict[str, Path]]:
    envs = current_environments(ctx)
    data_source = ctx.config.data_source
    out = ctx.config.exports_dir
    out.mkdir(parents=True, exist_ok=True)

    certified = [e for e in envs if e.certificate.ok]
    pool = (
        EpisodePool(
            [(e.spec.name, stdio_launch(e.server_dir)) for e in certified], call_timeout_s=ctx.config.certify_timeout_s
        )
        if certified
        else None
    )

    async def one(env: EmittedEnvironment) -> Outcome:
        if not env.certificate.ok:  # never export an environment without its certificate
            return Outcome.drop("not_certified")
        assert pool is not None
        try:
            hardening = await harden(export_environment(env), pool)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed certificate, never a pass
            return Outcome.drop(f"not_hardened_error: {type(exc).__name__}: {exc}"[:400], failed=True)
        if not hardening.ok:  # gameable: never exported; the funnel says which check failed
            return Outcome.drop(hardening.reason())
        return Outcome.keep(rl_sample(samples([export_environment(env)])[0], data_source))

    try:
        counts = await ctx.map_stage("export", RLSample, [(e.id, e) for e in envs], one)
    finally:
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close)
    env_by_id = {e.id: e for e in envs}
    kept = sorted({s.environment_id for s in ctx.outputs_of("export", RLSample, set(env_by_id))} & set(env_by_id))
    made = samples([export_environment(env_by_id[i]) for i in kept], n_distractors=ctx.config.distractors)
    jsonl = JsonlLog(out / "rl_samples.jsonl")
    rows = sorted((rl_sample(s, data_source) for s in made), key=lambda r: r.id)
    jsonl.extend(rows)
    paths = {"rl_samples": jsonl.path}
    if made:
        paths["verl_parquet"] = write_verl_parquet(
            [verl_row(s, i, data_source=data_source) for i, s in enumerate(made)], out / "train.parquet"
        )
        paths["verl_tool_config"] = write_yaml(verl_tool_config(made), out / "verl_tool_config.yaml")
        (out / "trl_env.py").write_text(trl_module_source(made), "utf-8")
        paths["trl_env"] = out / "trl_env.py"
        paths["trl_dataset"] = out / "trl_dataset.jsonl"
        paths["trl_dataset"].write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in trl_rows(made)), "utf-8"
        )
        paths["verifiers_env"] = write_verifiers_package(made, out / "verifiers_env")
        paths.update(write_host_configs([s.env for s in made], out))
    mcp = mcp_servers_block([env_by_id[i] for i in kept])
    (out / "mcp_servers.json").write_text(json.dumps(mcp, indent=2), "utf-8")
    paths["mcp_servers"] = out / "mcp_servers.json"
    return counts, paths
