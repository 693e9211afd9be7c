"""Stage 7: SFT export — OpenAI messages+tools JSONL, ShareGPT / LLaMA-Factory JSON, HF Parquet."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from astra.records import Reward, Task, Trajectory
from astra.synthesis._stage import Outcome
from astra.synthesis.trajectories._config import RewardOptions
from astra.synthesis.trajectories._reward import DIMENSIONS


class SFTSample(BaseModel):
    """One exported training sample: the conversation in OpenAI format plus its provenance and reward."""

    id: str = Field(description="the trajectory id")
    task_id: str
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    reward: float
    dimensions: dict[str, float]
    rules: dict[str, float] = Field(default_factory=dict)
    simulated: bool = False
    chain_id: str | None = None


def select(reward: Reward, traj: Trajectory, task: Task, opts: RewardOptions) -> Outcome:
    """Keep a sample only when the judge succeeded and every threshold holds."""
    if reward.status != "ok" or reward.overall is None:
        return Outcome.drop(f"judge_failed: {(reward.error or '')[:120]}", failed=True)
    if opts.require_schema_valid and reward.rules.get("schema_valid", 0.0) < 1.0:
        return Outcome.drop("schema_invalid_arguments")
    checks = {"reward_threshold": (reward.overall, opts.threshold)}
    checks.update({f"dimension_minimum[{d}]": (v, opts.min_dimension) for d, v in reward.dimensions.items()})
    return Outcome.gated(checks, SFTSample(
        id=traj.id, task_id=task.id, model=traj.model, messages=[m.to_openai() for m in traj.messages],
        tools=traj.tools, reward=reward.overall, dimensions=reward.dimensions, rules=reward.rules,
        simulated=any(s.simulated for s in traj.steps), chain_id=task.chain_id,
    ))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def to_sharegpt(sample: SFTSample) -> dict[str, Any]:
    """LLaMA-Factory's ShareGPT shape: human/function_call/observation/gpt turns, tools as a JSON string."""
    system = ""
    conv: list[dict[str, str]] = []
    pending_obs: list[str] = []

    def flush() -> None:
        if pending_obs:
            conv.append({"from": "observation", "value": pending_obs[0] if len(pending_obs) == 1 else json.dumps(pending_obs, ensure_ascii=False)})
            pending_obs.clear()

    for m in sample.messages:
        role = m["role"]
        if role == "system":
            system = m.get("content") or ""
        elif role == "tool":
            pending_obs.append(m.get("content") or "")
        else:
            flush()
            if role == "user":
                conv.append({"from": "human", "value": m.get("content") or ""})
            elif m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    try:
                        args = json.loads(c["function"]["arguments"] or "{}")
                    except json.JSONDecodeError:
                        args = c["function"]["arguments"]
                    calls.append({"name": c["function"]["name"], "arguments": args})
                conv.append({"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)})
            else:
                conv.append({"from": "gpt", "value": m.get("content") or ""})
    flush()
    functions = [t.get("function", t) for t in sample.tools]
    return {"conversations": conv, "system": system, "tools": json.dumps(functions, ensure_ascii=False), "id": sample.id}


_TOOL_CALL = pa.struct([("id", pa.string()), ("type", pa.string()),
                        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.list_(_TOOL_CALL)),
                      ("tool_call_id", pa.string()), ("name", pa.string())])
PARQUET_SCHEMA = pa.schema([
    ("id", pa.string()), ("task_id", pa.string()), ("model", pa.string()), ("chain_id", pa.string()),
    ("messages", pa.list_(_MESSAGE)), ("tools", pa.string()), ("reward", pa.float64()),
    # a struct, not a map: HF datasets has no map type
    ("dimensions", pa.struct([(d, pa.float64()) for d in DIMENSIONS])), ("rules", pa.string()),
    ("simulated", pa.bool_()),
])


def write_exports(samples: Sequence[SFTSample], out_dir: Path, formats: Sequence[str]) -> dict[str, str]:
    """Write every requested format (rewritten whole, atomically); returns format -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = sorted(samples, key=lambda s: s.id)
    paths: dict[str, str] = {}
    if "openai" in formats:
        path = out_dir / "openai.jsonl"
        lines = [json.dumps({"messages": s.messages, "tools": s.tools}, ensure_ascii=False) for s in samples]
        _atomic_write(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        paths["openai"] = str(path)
    if "sharegpt" in formats:
        path = out_dir / "sharegpt.json"
        _atomic_write(path, json.dumps([to_sharegpt(s) for s in samples], ensure_ascii=False, indent=1).encode("utf-8"))
        info = {"astra_traj": {"file_name": path.name, "formatting": "sharegpt",
                               "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}}
        _atomic_write(out_dir / "dataset_info.json", json.dumps(info, indent=2).encode("utf-8"))
        paths["sharegpt"] = str(path)
    if "parquet" in formats:
        path = out_dir / "train.parquet"
        rows = []
        for s in samples:
            rows.append({
                "id": s.id, "task_id": s.task_id, "model": s.model, "chain_id": s.chain_id,
                "messages": [{"role": m["role"], "content": m.get("content"),
                              "tool_calls": m.get("tool_calls"), "tool_call_id": m.get("tool_call_id"),
                              "name": m.get("name")} for m in s.messages],
                "tools": json.dumps(s.tools, ensure_ascii=False), "reward": s.reward,
                "dimensions": {d: s.dimensions.get(d) for d in DIMENSIONS}, "rules": json.dumps(s.rules),
                "simulated": s.simulated,
            })
        table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        paths["parquet"] = str(path)
    return paths
