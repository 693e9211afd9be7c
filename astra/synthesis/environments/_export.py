"""Stage 8: RLVR export — our RLSample JSONL and a verl-style Parquet.

verl row: ``data_source``, ``agent_name`` ("tool_agent"), ``prompt`` (chat messages),
``ability``, ``reward_model`` ``{"style": "rule", "ground_truth": <JSON list of
{id, sub_question, sub_answer, tool}>}``, ``extra_info`` ``{index, split, environment_id,
environment_name, server_dir, answer, tools (JSON, OpenAI function format),
need_tools_kwargs, tools_kwargs {tool: {"create_kwargs": {"environment_id"}}}}``.
The reward is :func:`astra.synthesis.environments.reward.compute_score`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from astra.records import ChatMessage, EnvironmentSpec, RLSample, stable_id
from astra.runs import JsonlLog
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._emit import current_environments, mcp_servers_block
from astra.synthesis.environments._models import EmittedEnvironment

SYSTEM_PROMPT = (
    "You answer a multi-step question with the tools provided. Call one tool per step, use the "
    "results of earlier calls as inputs of later ones, and finish with the final answer."
)


def openai_tools(spec: EnvironmentSpec) -> list[dict[str, Any]]:
    from astra.client import openai_tool

    return [openai_tool(t.spec.name, t.spec) for t in spec.tools]


def rl_sample(env: EmittedEnvironment, data_source: str) -> RLSample:
    sub_qa = [
        {"id": v.id, "sub_question": v.sub_question, "sub_answer": v.expected_answer, "tool": v.tool}
        for v in env.spec.verifiers
        if v.tool
    ]
    return RLSample(
        id=stable_id("rl", env.id, prefix="rl_"),
        prompt=[ChatMessage(role="system", content=SYSTEM_PROMPT), ChatMessage(role="user", content=env.question)],
        environment_id=env.id,
        tools=openai_tools(env.spec),
        sub_qa=sub_qa,
        answer=env.answer,
        data_source=data_source,
    )


def verl_row(sample: RLSample, env: EmittedEnvironment, index: int, split: str = "train") -> dict[str, Any]:
    return {
        "data_source": sample.data_source,
        "agent_name": "tool_agent",
        "prompt": [{"role": m.role, "content": m.content or ""} for m in sample.prompt],
        "ability": "tool_use",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(sample.sub_qa, ensure_ascii=False)},
        "extra_info": {
            "index": index,
            "split": split,
            "environment_id": env.id,
            "environment_name": env.spec.name,
            "server_dir": env.server_dir,
            "answer": sample.answer or "",
            "tools": json.dumps(sample.tools, ensure_ascii=False),
            "need_tools_kwargs": True,
            "tools_kwargs": {t["function"]["name"]: {"create_kwargs": {"environment_id": env.id}} for t in sample.tools},
        },
    }


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)
    return path


async def run_export(ctx: PipelineContext) -> tuple[StageCounts, dict[str, Path]]:
    envs = current_environments(ctx)
    data_source = ctx.config.data_source
    out = ctx.config.exports_dir
    out.mkdir(parents=True, exist_ok=True)

    async def one(env: EmittedEnvironment) -> Outcome:
        if not env.certificate.ok:  # never export an environment without its certificate
            return Outcome.drop("not_certified")
        return Outcome.keep(rl_sample(env, data_source))

    counts = await ctx.map_stage("export", RLSample, [(e.id, e) for e in envs], one)
    env_by_id = {e.id: e for e in envs}
    samples = sorted(
        (s for s in ctx.outputs_of("export", RLSample, set(env_by_id)) if s.environment_id in env_by_id), key=lambda s: s.id
    )
    jsonl = JsonlLog(out / "rl_samples.jsonl")
    jsonl.extend(samples)
    paths = {"rl_samples": jsonl.path}
    rows = [verl_row(s, env_by_id[s.environment_id], i) for i, s in enumerate(samples)]
    if rows:
        paths["verl_parquet"] = write_parquet(rows, out / "train.parquet")
    mcp = mcp_servers_block([env_by_id[s.environment_id] for s in samples])
    (out / "mcp_servers.json").write_text(json.dumps(mcp, indent=2), "utf-8")
    paths["mcp_servers"] = out / "mcp_servers.json"
    return counts, paths

