"""Export profiles on the scripted 100-sample run: openai, hf, parquet (HF datasets), sharegpt, Mistral ids."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest

from astra.records import Reward, Task
from astra.synthesis.trajectories import RewardOptions, write_exports
from astra.synthesis.trajectories._export import hf_messages, select
from astra.synthesis.trajectories._reward import DIMENSIONS
from astra.synthesis.trajectories._templates import mistral_call_id

from ._matrix import sharegpt_alternation_ok
from ._run import MAX_STEPS, SCENARIOS


def _nulls(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


def test_the_run_has_every_scenario_and_the_export_keeps_only_answers(trajectories):
    assert len(trajectories) == 100
    assert Counter(t.termination for t in trajectories) == {"final_answer": 90, "max_steps": 10}
    tags = Counter(t.messages[1].content.split()[0].lstrip("[") for t in trajectories)
    assert tags == {kind: 20 for kind in SCENARIOS}
    assert sum(1 for t in trajectories for m in t.messages if m.tool_calls and len(m.tool_calls) > 1) == 20
    assert sum(1 for t in trajectories if sum(m.role == "user" for m in t.messages) == 2) == 20
    reward = Reward(id="r", trajectory_id="x", task_id="x", dimensions={d: 1.0 for d in DIMENSIONS}, overall=1.0)
    outcomes = [select(reward, t, Task(id=t.task_id, user_turns=["x"]), RewardOptions()) for t in trajectories]
    assert Counter(o.dropped for o in outcomes) == {None: 90, "no_final_answer: ended by max_steps": 10}
    for t, o in zip(trajectories, outcomes, strict=True):
        if o.outputs:
            assert t.messages[-1].role == "assistant" and t.messages[-1].content and not t.messages[-1].tool_calls


def test_tool_errors_reach_the_model_with_one_prefix(trajectories):
    errors = [m.content for t in trajectories for m in t.messages if m.role == "tool" and "nights must" in m.content]
    assert len(errors) == 10 + 10 * MAX_STEPS  # answering error tasks fail once; the 10 others at every step
    assert all(e == "Error: ValueError: nights must be at least 1" for e in errors)


def test_openai_and_hf_profiles(samples, tmp_path):
    paths = write_exports(samples, tmp_path, ["openai", "hf"])
    openai_rows = [json.loads(line) for line in open(paths["openai"], encoding="utf-8")]
    hf_rows = [json.loads(line) for line in open(paths["hf"], encoding="utf-8")]
    assert len(openai_rows) == len(hf_rows) == 90
    for o, h in zip(openai_rows, hf_rows, strict=True):
        o_calls = [c for m in o["messages"] for c in m.get("tool_calls") or ()]
        h_calls = [c for m in h["messages"] for c in m.get("tool_calls") or ()]
        assert all(isinstance(c["function"]["arguments"], str) for c in o_calls)  # the wire format
        assert [json.loads(c["function"]["arguments"]) for c in o_calls] == [
            c["function"]["arguments"] for c in h_calls]
        assert not _nulls(h["messages"]) and not _nulls(h["tools"])
        assert all(isinstance(m["content"], str) for m in h["messages"])
        for m in h["messages"]:  # every key is one the role uses
            allowed = {"assistant": {"role", "content", "tool_calls", "reasoning_content"},
                       "tool": {"role", "content", "tool_call_id", "name"}}.get(m["role"], {"role", "content"})
            assert set(m) <= allowed
        assert isinstance(h["tools"], list) and all(isinstance(t["function"]["description"], str) for t in h["tools"])
    text_beside = [m for h in hf_rows for m in h["messages"] if m.get("tool_calls") and m["content"]]
    assert len(text_beside) == 20 and all(m["content"].startswith("Let me check") for m in text_beside)


def test_parquet_loads_in_hf_datasets_as_the_hf_profile(samples, tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = write_exports(samples, tmp_path, ["hf", "parquet"])
    hf_rows = [json.loads(line) for line in open(paths["hf"], encoding="utf-8")]
    ds = datasets.load_dataset("parquet", data_files=paths["parquet"], split="train")
    assert ds.num_rows == 90
    for row, h in zip(ds, hf_rows, strict=True):
        assert row["id"] == h["id"]
        assert row["messages"] == h["messages"]  # no null-padded keys: each message keeps its own key set
        assert row["tools"] == h["tools"] and isinstance(row["tools"], list)


def test_sharegpt_for_llamafactory(samples, tmp_path):
    paths = write_exports(samples, tmp_path, ["sharegpt"])
    rows = json.load(open(paths["sharegpt"], encoding="utf-8"))
    info = json.load(open(tmp_path / "dataset_info.json"))["astra_traj"]
    assert info["file_name"] == "sharegpt.json" and info["formatting"] == "sharegpt"
    assert set(info["columns"].values()) <= set(rows[0])
    assert all(sharegpt_alternation_ok(r) for r in rows)
    by_id = {s.id: s for s in samples}
    for row in rows:
        sample = by_id[row["id"]]
        results = [m["content"] for m in sample.messages if m["role"] == "tool"]
        observations = [t["value"] for t in row["conversations"] if t["from"] == "observation"]
        assert observations == results  # one observation per tool result, in order
        assert isinstance(json.loads(row["tools"]), list) and row["system"] == sample.messages[0]["content"]
    beside = [t["value"] for r in rows for t in r["conversations"]
              if t["from"] == "function_call" and not t["value"].startswith("<tool_call>")]
    assert len(beside) == 20 and all(re.match(r"Let me check .+\n<tool_call>\[", v) for v in beside)


def test_mistral_target_ids(samples, templates, tmp_path):
    mistral = templates["Mistral-Nemo"]
    paths = write_exports(samples, tmp_path, ["hf"], template=mistral)
    rows = [json.loads(line) for line in open(paths["hf"], encoding="utf-8")]
    assert len(rows) == 90
    originals = {s.id: hf_messages(s.messages) for s in samples}
    for row in rows:
        ids = [c["id"] for m in row["messages"] for c in m.get("tool_calls") or ()]
        assert ids and all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids)
        old = [c["id"] for m in originals[row["id"]] for c in m.get("tool_calls") or ()]
        assert ids == [mistral_call_id(i) for i in old]  # deterministic from the original id
        answered = [m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"]
        assert answered == ids  # every result still points at its call
    assert mistral_call_id("call_0_get_weather") == mistral_call_id("call_0_get_weather") != mistral_call_id("call_1")


@pytest.mark.parametrize("name", ["SmolLM2", "Llama-3.1", "Mistral-Nemo"])
def test_sharegpt_for_a_target_template(name, templates, samples, tmp_path):
    paths = write_exports(samples, tmp_path, ["sharegpt"], template=templates[name])
    rows = json.load(open(paths["sharegpt"], encoding="utf-8"))
    assert len(rows) == 90 and all(sharegpt_alternation_ok(r) for r in rows)
    by_id = {s.id: s for s in samples}
    for row in rows:
        results = [m["content"] for m in by_id[row["id"]].messages if m["role"] == "tool"]
        assert [t["value"] for t in row["conversations"] if t["from"] == "observation"] == results
