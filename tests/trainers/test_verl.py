"""verl: the native BaseTool adapter driven the way verl's tool agent loop drives it (verl's own
BaseTool, tool registry, hermes tool parser and ToolAgentLoop._call_tool), over parquet rows read
back with HF datasets (as verl's RLHFDataset does) and the generated tool-config YAML."""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any
from uuid import uuid4

import datasets
import pytest

from astra.servers import compute_score
from astra.trainers import (
    EpisodePool,
    ExportEnvironment,
    samples,
    verl_row,
    verl_tool_config,
    write_verl_parquet,
    write_yaml,
)


class ByteTokenizer:
    """Token ids are UTF-8 bytes: decode is exact, which is all verl's hermes parser asks of a tokenizer."""

    def decode(self, ids: list[int], **_: Any) -> str:
        return bytes(ids).decode("utf-8")


def _call_text(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def oracle(row: dict[str, Any], env: ExportEnvironment) -> list[str]:
    """One assistant turn per reference call, in the environment's order (the state carries over)."""
    truth = json.loads(row["reward_model"]["ground_truth"])
    by_id = {v.id: v for v in env.spec.verifiers}
    return [_call_text(t["tool"], by_id[t["id"]].arguments) for t in truth]


async def run_like_verl(
    verl: types.SimpleNamespace, tools: list[Any], row: dict[str, Any], responses: list[str]
) -> dict[str, Any]:
    loop = verl.ToolAgentLoopTools()
    loop.tools = {t.name: t for t in tools}
    loop.max_tool_response_length, loop.tool_response_truncate_side = 100_000, "middle"
    extra_info = row["extra_info"]
    agent_data = verl.AgentData(
        messages=[],
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
        metrics={},
        request_id=uuid4().hex,
        tools_kwargs=extra_info["tools_kwargs"],
    )
    # ToolAgentLoop.run: per-sample tool selection
    selected = {name: loop.tools[name] for name in extra_info["tool_selection"] if name in loop.tools}
    agent_data._active_tools = selected
    parser = verl.ToolParser.get_tool_parser("hermes", ByteTokenizer())
    text = ""
    for response in responses:
        _, calls = await parser.extract_tool_calls(list(response.encode()), [t.tool_schema for t in selected.values()])
        text += response + "<|im_end|>\n<|im_start|>user"
        for call in calls:
            reply, reward, _ = await loop._call_tool(call, agent_data.tools_kwargs, agent_data)
            if reward is not None:
                agent_data.tool_rewards.append(reward)
            text += f"\n<tool_response>\n{reply.text}\n</tool_response>"
        text += "<|im_end|>\n<|im_start|>assistant\n"
    text += "The stock is worth 354.0."
    # verl's reward manager: extra_info plus the agent loop's extra_fields
    reward_info = {**extra_info, **agent_data.extra_fields}
    score = compute_score(row["data_source"], text, row["reward_model"]["ground_truth"], reward_info)
    return {"score": score, "text": text, "tool_rewards": agent_data.tool_rewards, "agent_data": agent_data}


@pytest.fixture(scope="module")
def export(
    environments: list[ExportEnvironment], verl: types.SimpleNamespace, tmp_path_factory: pytest.TempPathFactory
):
    out = tmp_path_factory.mktemp("verl")
    made = samples(environments, n_distractors=2)
    write_verl_parquet([verl_row(s, i) for i, s in enumerate(made)], out / "train.parquet")
    write_yaml(verl_tool_config(made), out / "tool_config.yaml")
    rows = list(datasets.load_dataset("parquet", data_files=str(out / "train.parquet"))["train"])
    tools = verl.initialize_tools_from_config(str(out / "tool_config.yaml"))
    yield types.SimpleNamespace(rows=rows, tools=tools, samples=made, dir=out)
    for pool in list(EpisodePool._shared.values()):
        pool.close()
    EpisodePool._shared.clear()


def test_export_shape(export: Any, verl: types.SimpleNamespace) -> None:
    first, second = export.rows
    assert first["agent_name"] == "tool_agent"
    own = {t["function"]["name"] for t in json.loads(first["extra_info"]["tools"])}
    assert set(first["extra_info"]["tool_selection"]) == own
    assert len(first["extra_info"]["distractors"]) == 2
    assert all(d.startswith("warehouse__") for d in first["extra_info"]["distractors"])
    # every selected tool has its kwargs (never null); names are unique across the export
    for row in export.rows:
        assert set(row["extra_info"]["tools_kwargs"]) == set(row["extra_info"]["tool_selection"])  # no null padding
        for name in row["extra_info"]["tool_selection"]:
            assert row["extra_info"]["tools_kwargs"][name]["create_kwargs"]["ground_truth"]
    names = [t.name for t in export.tools]
    assert len(names) == len(set(names)) == 14
    assert all(isinstance(t, verl.BaseTool) for t in export.tools)
    truth_tools = {t["tool"] for t in json.loads(first["reward_model"]["ground_truth"])}
    assert truth_tools <= own - set(first["extra_info"]["distractors"])


@pytest.mark.anyio
async def test_oracle_scores_one_and_noop_zero(
    export: Any, verl: types.SimpleNamespace, environments: list[ExportEnvironment]
) -> None:
    row = export.rows[0]
    result = await run_like_verl(verl, export.tools, row, oracle(row, environments[0]))
    assert result["score"] == 1.0, result["text"]
    assert sum(result["tool_rewards"]) == pytest.approx(1.0)
    # the text alone (no recorded calls) scores the same
    assert compute_score(row["data_source"], result["text"], row["reward_model"]["ground_truth"]) == 1.0
    noop = await run_like_verl(verl, export.tools, row, ["I will not use tools. 354.0"])
    assert noop["score"] == 0.0 and noop["tool_rewards"] == []


@pytest.mark.anyio
async def test_calls_and_results_the_policy_writes_itself_score_zero(
    export: Any, verl: types.SimpleNamespace, environments: list[ExportEnvironment]
) -> None:
    """Reward hacking: a policy that copies a solved episode's text (calls and tool results) into its
    own reply without calling a tool must not be rewarded; the adapter's record is the evidence."""
    row = export.rows[0]
    solved = await run_like_verl(verl, export.tools, row, oracle(row, environments[0]))
    assert solved["score"] == 1.0
    # the solved text with its call tags dropped: verl's parser runs nothing, the calls and results stay
    untagged = solved["text"].replace("<tool_call>", "").replace("</tool_call>", "")
    for forged in (untagged, untagged.replace("<tool_response>", "").replace("</tool_response>", "")):
        hacked = await run_like_verl(verl, export.tools, row, [forged])
        assert hacked["tool_rewards"] == []
        assert hacked["score"] == 0.0, forged
        # and the reward function alone, given the row verl hands it
        assert compute_score(row["data_source"], forged, row["reward_model"]["ground_truth"], row["extra_info"]) == 0.0


@pytest.mark.anyio
async def test_a_tool_outside_the_selection_is_refused_and_distractors_never_solve(
    export: Any, verl: types.SimpleNamespace, environments: list[ExportEnvironment]
) -> None:
    row = export.rows[0]
    calls = oracle(row, environments[0])
    other = [n for n in (t.name for t in export.tools) if n not in row["extra_info"]["tool_selection"]][0]
    distractor = row["extra_info"]["distractors"][0]
    result = await run_like_verl(
        verl, export.tools, row, [_call_text(other, {}), _call_text(distractor, {"sku": "WID-1"})] + calls
    )
    assert "Unknown function" in result["text"]
    assert result["score"] == pytest.approx(2 * 1 * (5 / 7) / (1 + 5 / 7))  # two wasted calls, nothing extra solved


@pytest.mark.anyio
async def test_state_persists_within_and_never_crosses_16_concurrent_trajectories(
    export: Any, verl: types.SimpleNamespace, environments: list[ExportEnvironment]
) -> None:
    row = export.rows[1]
    results = await asyncio.gather(
        *[run_like_verl(verl, export.tools, row, oracle(row, environments[1])) for _ in range(16)]
    )
    assert [r["score"] for r in results] == [1.0] * 16
    # every trajectory got its own order counter and stock (ORD-1, 11 hammers): nothing leaked between them
    for r in results:
        calls = r["agent_data"].extra_fields["astra_calls"]
        assert [c["is_error"] for c in calls] == [False] * 5
        assert calls[2]["result"]["order_id"] == "ORD-1" and calls[3]["result"]["quantity"] == 11
    pool = export.tools[0].pool
    assert all(t.pool is pool for t in export.tools)  # one pooled connection per worker
    assert len(pool.connections.servers) == 2


@pytest.mark.anyio
async def test_lifecycle_without_a_trajectory_object(export: Any) -> None:
    """A loop that drives create/execute/calc_reward/release itself (no AgentData): one episode per
    instance, its process reward from calc_reward, closed on release."""
    row = export.rows[0]
    tool = next(t for t in export.tools if t.name == "inventory__get_item")
    pool = tool.pool
    before = pool.open_episodes
    instance, _ = await tool.create(create_kwargs=row["extra_info"]["tools_kwargs"][tool.name]["create_kwargs"])
    reply, step, _ = await tool.execute(instance, {"sku": "WID-1"})
    assert json.loads(reply.text)["quantity"] == 40
    assert await tool.calc_reward(instance) == pytest.approx(step) == pytest.approx(2 * 0.2 / 1.2)  # 1 of 5, 1 call
    assert pool.open_episodes == before + 1
    await tool.release(instance)
    assert pool.open_episodes == before
