"""Stages 3-7 one at a time with the scripted model: verification, tasks, simulated tools, rewards, export."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp.client import Client

from astra.client import ScriptedModel
from astra.records import (
    ChainCall,
    ChatMessage,
    Reward,
    ServerSpec,
    Step,
    Task,
    ToolCall,
    ToolChain,
    ToolSpec,
    Trajectory,
)
from astra.synthesis.trajectories import RewardOptions, SimulatedServer, TaskOptions, VerifyOptions, write_exports
from astra.synthesis.trajectories._export import SFTSample, select, to_sharegpt
from astra.synthesis.trajectories._reward import DIMENSIONS, rule_scores
from astra.synthesis.trajectories._tasks import generate_tasks, load_personas, score_task
from astra.synthesis.trajectories._verify import order_similarity, verify_chain

from .conftest import Router, router_model

TOOLS = {
    "geo/search_city": ToolSpec(server="geo", name="search_city", description="Find a city; returns its coordinates.",
                                input_schema={"type": "object", "properties": {"city_name": {"type": "string"}},
                                              "required": ["city_name"]}),
    "wx/get_weather": ToolSpec(server="wx", name="get_weather", description="Weather at coordinates.",
                               input_schema={"type": "object", "properties": {"latitude": {"type": "number"},
                                             "longitude": {"type": "number"}}, "required": ["latitude", "longitude"]}),
    "wx/get_alerts": ToolSpec(server="wx", name="get_alerts", description="Weather alerts for a region."),
}
CHAIN = ToolChain(id="ch-1", calls=[ChainCall(tool="geo/search_city"),
                                    ChainCall(tool="wx/get_weather", bindings={"latitude": "0.latitude"})])


def _run(coro_fn, *args, **kwargs):
    return anyio.run(lambda: coro_fn(*args, **kwargs))


# ----------------------------------------------------------------------------- verification


def test_verify_keeps_a_chain_that_survives_vote_and_back_translation():
    out = _run(verify_chain, CHAIN, TOOLS, router_model(Router()), VerifyOptions(votes=3))
    assert out.dropped is None and len(out.outputs) == 1
    record = out.outputs[0].verification
    assert len(record["votes"]) == 3 and record["back_translation"]["similarity"] == 1.0
    assert set(CHAIN.calls[0].tool for _ in [0]) <= set(record["back_translation"]["offered"])


def test_verify_drops_on_vote_with_reason():
    model = ScriptedModel(['{"valid": false, "reason": "weather needs no city"}', '{"valid": true}',
                           '{"valid": false, "reason": "no"}'])
    out = _run(verify_chain, CHAIN, TOOLS, model, VerifyOptions(votes=3))
    assert out.outputs == [] and out.dropped.startswith("vote_rejected: weather needs no city") and not out.failed


def test_verify_drops_on_back_translation_mismatch():
    model = ScriptedModel(['{"valid": true}', '{"query": "What is the weather in Porto today?"}',
                           '{"tools": ["wx/get_alerts"]}'])
    out = _run(verify_chain, CHAIN, TOOLS, model, VerifyOptions())
    assert out.dropped.startswith("back_translation_mismatch: similarity 0.00") and not out.failed


def test_verify_malformed_judge_is_a_failed_drop_with_audit():
    model = ScriptedModel(["sure!", "```json\n{\"valid\": \"maybe\"}\n```", "no"])
    out = _run(verify_chain, CHAIN, TOOLS, model, VerifyOptions())
    assert out.failed and out.dropped.startswith("judge_failed") and len(out.audit) == 3


def test_toolsets_skip_chain_verification():
    ts = ToolChain(id="ts-1", kind="toolset", calls=[ChainCall(tool="wx/get_alerts")])
    out = _run(verify_chain, ts, TOOLS, ScriptedModel([]), VerifyOptions())
    assert out.outputs[0].verification == {"skipped": "toolset"}


def test_order_similarity():
    assert order_similarity(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert order_similarity(["a", "b"], ["b", "a"]) == 0.5
    assert order_similarity(["a", "b"], ["a", "b", "x", "y"]) == 0.5


# ----------------------------------------------------------------------------- tasks


def test_tasks_base_augmentations_and_multi_turn():
    out = _run(generate_tasks, CHAIN, TOOLS, router_model(Router()), TaskOptions())
    tasks = out.outputs
    variants = {t.provenance["variant"] for t in tasks}
    assert variants == {"base", "context_shift", "complicate", "persona", "multi_turn"}
    multi = next(t for t in tasks if t.provenance["variant"] == "multi_turn")
    assert len(multi.user_turns) == 2
    persona = next(t for t in tasks if t.provenance["variant"] == "persona")
    bundled = {p.describe() for p in load_personas()[0]}
    assert persona.persona in bundled  # drawn from the persona file, never invented
    assert all(t.target_tools == ["geo/search_city", "wx/get_weather"] and t.servers == ["geo", "wx"] for t in tasks)
    assert all(t.chain_id == "ch-1" for t in tasks) and len({t.id for t in tasks}) == len(tasks)
    assert TaskOptions(augmentations=["wording", "complex"]).augmentations == ["context_shift", "complicate"]


def test_n_variants_for_every_base_question_from_my_personas(tmp_path):
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"persona": "a beekeeper in the Alentejo who sells honey at markets"}\n{"oops": 1}\n'
                        '{"age": 70, "occupation": "retired sailor", "hobbies": "knots"}\n')
    found, errors = load_personas(personas)
    assert len(found) == 2 and errors == [f"{personas}:2: persona: empty (give \"persona\" or profile fields)"]
    router = Router()
    two_bases = ScriptedModel(['{"questions": ["What is the weather in Lisbon now?", "Is it raining in Faro today?"]}',
                               *[router] * 2])
    opts = TaskOptions(per_chain=2, variants=3, personas=personas, multi_turn=False)
    out = _run(generate_tasks, CHAIN, TOOLS, two_bases, opts)
    by = {}
    for t in out.outputs:
        by.setdefault((t.provenance["base_task"], t.provenance["variant"]), []).append(t)
    bases = [t for t in out.outputs if t.provenance["variant"] == "base"]
    assert len(bases) == 2 and router.seen == {"variants": 2}  # one augmentation call per base question
    for b in bases:
        for mode in ("context_shift", "complicate", "persona"):
            assert len(by[(b.id, mode)]) == 3, (b.id, mode)
        assert {t.persona for t in by[(b.id, "persona")]} <= {p.describe() for p in found}


def test_variants_naming_a_tool_or_repeating_are_rejected():
    def reply(messages, tools):
        return json.dumps({"context_shift": ["Use search_city to find Porto, then its weather."],
                           "complicate": ["What is the weather in Lisbon?"], "persona": ["ok then"]})
    model = ScriptedModel(['{"questions": ["What is the weather in Lisbon?"]}', reply])
    out = _run(generate_tasks, CHAIN, TOOLS, model, TaskOptions(multi_turn=False))
    assert [t.provenance["variant"] for t in out.outputs] == ["base"]
    rejected = next(a["variants_rejected"] for a in out.audit if "variants_rejected" in a)
    assert rejected == ["context_shift[0]: names the tool search_city", "complicate[0]: a repeat",
                        "persona[0]: too short"]


def test_tasks_generation_failure_and_partial_augmentation():
    bad = ScriptedModel(["nothing useful", '{"questions": []}', '{"questions": ["short"]}'])
    out = _run(generate_tasks, CHAIN, TOOLS, bad, TaskOptions())
    assert out.failed and out.dropped.startswith("generation_failed")
    # the base question stands when the augmentation reply is junk or has the wrong number of variants
    wrong_count = json.dumps({"context_shift": ["a", "b"], "complicate": ["c"], "persona": ["d"], "turns": ["x", "y"]})
    partial = ScriptedModel(
        ['{"questions": ["Find Lisbon and tell me its weather now."]}', "junk", wrong_count, "junk"]
    )
    out = _run(generate_tasks, CHAIN, TOOLS, partial, TaskOptions())
    assert [t.provenance["variant"] for t in out.outputs] == ["base"]
    assert any("augmentation_failed" in a for a in out.audit)


@pytest.mark.parametrize(("score", "kept"), [(4, True), (2, False)])
def test_quality_threshold(score, kept):
    task = Task(id="t1", user_turns=["What is the weather in Lisbon?"], target_tools=["wx/get_weather"])
    reply = json.dumps({d: score for d in ("tool_selection_difficulty", "uniqueness", "question_quality", "realism")})
    out = _run(score_task, task, TOOLS, ScriptedModel([reply]), 0.5)
    if kept:
        assert out.outputs[0].quality["overall"] == 0.75
    else:
        assert out.outputs == [] and out.dropped.startswith("below_quality_threshold: 0.25")


def test_quality_judge_sees_every_tool_of_the_servers():
    task = Task(id="t1", user_turns=["What is the weather in Lisbon?"], target_tools=["wx/get_weather"], servers=["wx"])
    prompts = []

    def judge(messages, tools):
        prompts.append(messages[-1].content)
        return json.dumps({d: 4 for d in ("tool_selection_difficulty", "uniqueness", "question_quality", "realism")})

    _run(score_task, task, TOOLS, ScriptedModel([judge]), 0.5)
    assert "All available tools (2)" in prompts[0] and "wx/get_alerts" in prompts[0]
    assert "geo/search_city" not in prompts[0] and "Target tools of this task: wx/get_weather" in prompts[0]


def test_quality_out_of_range_is_judge_failed():
    task = Task(id="t1", user_turns=["What is the weather?"])
    reply = json.dumps({"tool_selection_difficulty": 9, "uniqueness": 3, "question_quality": 3, "realism": 3})
    out = _run(score_task, task, TOOLS, ScriptedModel([reply] * 3), 0.5)
    assert out.failed and out.dropped.startswith("judge_failed: invalid_reply")


# ----------------------------------------------------------------------------- simulated server


def test_simulated_server_over_mcp_client():
    spec = ServerSpec(id="x", name="geo", tools=[TOOLS["geo/search_city"]])
    sim_replies = ['{"result": {"latitude": 38.7, "longitude": -9.1}}', '{"error": "city not found"}', "junk", "junk"]
    server = SimulatedServer(spec, ScriptedModel(sim_replies))

    async def main():
        async with Client(server) as client:
            listed = await client.list_tools()
            assert [t.name for t in listed.tools] == ["search_city"]
            assert listed.tools[0].input_schema == TOOLS["geo/search_city"].input_schema
            ok = await client.call_tool("search_city", {"city_name": "Lisbon"})
            assert not ok.is_error and json.loads(ok.content[0].text) == {"latitude": 38.7, "longitude": -9.1}
            err = await client.call_tool("search_city", {"city_name": "Atlantis"})
            assert err.is_error and err.content[0].text == "city not found"
            bad = await client.call_tool("search_city", {"city_name": 3})
            assert bad.is_error and "invalid arguments" in bad.content[0].text
            junk = await client.call_tool("search_city", {"city_name": "Porto"})
            assert junk.is_error and "simulator_failed" in junk.content[0].text
    anyio.run(main)
    assert server.calls == 3  # the schema-invalid call never reached the model


# ----------------------------------------------------------------------------- rewards and export


def _trajectory(steps: list[Step], answer: str | None = "Sunny, 21 C.") -> Trajectory:
    tools = [{"type": "function", "function": {"name": t.name, "parameters": t.input_schema}} for t in TOOLS.values()]
    msgs = [ChatMessage(role="user", content="Weather in Lisbon?")]
    for s in steps:
        msgs.append(
            ChatMessage(
                role="assistant", tool_calls=[ToolCall(id=s.call_id, name=s.tool, arguments=json.dumps(s.arguments))]
            )
        )
        msgs.append(ChatMessage(role="tool", tool_call_id=s.call_id, name=s.tool, content=json.dumps(s.result)))
    if answer:
        msgs.append(ChatMessage(role="assistant", content=answer))
    return Trajectory(id="traj-1", task_id="t1", model="scripted:x", tools=tools, messages=msgs, steps=steps,
                      final_answer=answer, termination="final_answer")


TASK = Task(id="t1", user_turns=["Weather in Lisbon?"], target_tools=["geo/search_city", "wx/get_weather"])
STEPS = [
    Step(call_id="c1", tool="search_city", server="geo", server_tool="search_city", arguments={"city_name": "Lisbon"},
         result={"latitude": 38.7}, simulated=True),
    Step(call_id="c2", tool="get_weather", server="wx", server_tool="get_weather", arguments={"latitude": "x"},
         result="bad", is_error=True),
    Step(call_id="c3", tool="get_weather", server="wx", server_tool="get_weather",
         arguments={"latitude": 38.7, "longitude": -9.1}, result={"t": 21}),
]


def test_rule_scores():
    rules, process = rule_scores(TASK, _trajectory(STEPS))
    assert rules["schema_valid"] == round(2 / 3, 4) and rules["error_rate"] == round(1 / 3, 4)
    assert rules["chain_coverage"] == 1.0 and rules["simulated_share"] == round(1 / 3, 4)
    assert rules["grounded"] == 1.0  # "21" comes from the last call's result
    assert process == [1.0, 0.0, 1.0]
    rules, process = rule_scores(TASK, _trajectory([], answer=None))
    assert rules["answered"] == 0.0 and rules["grounded"] == 0.0 and process == []


def test_export_thresholds():
    traj = _trajectory(STEPS)
    reward = Reward(id="r", trajectory_id=traj.id, task_id="t1", dimensions={d: 0.8 for d in DIMENSIONS}, overall=0.8,
                    rules={"schema_valid": 0.66})
    assert select(reward, traj, TASK, RewardOptions(threshold=0.6)).outputs
    assert select(reward, traj, TASK, RewardOptions(threshold=0.9)).dropped.startswith("below_reward_threshold")
    assert (
        select(reward, traj, TASK, RewardOptions(threshold=0.6, require_schema_valid=True)).dropped
        == "schema_invalid_arguments"
    )
    low = reward.model_copy(update={"dimensions": {**reward.dimensions, "tool_planning": 0.1}})
    assert (
        select(low, traj, TASK, RewardOptions(threshold=0.6, min_dimension=0.5)).dropped
        == "below_dimension_minimum: tool_planning (0.10 < 0.5)"
    )


def test_export_formats_and_hf_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    traj = _trajectory(STEPS)
    reward = Reward(id="r", trajectory_id=traj.id, task_id="t1", dimensions={d: 0.8 for d in DIMENSIONS}, overall=0.8)
    sample = select(reward, traj, TASK, RewardOptions()).outputs[0]
    assert isinstance(sample, SFTSample) and sample.simulated
    other = sample.model_copy(update={"id": "traj-2", "reward": 0.7})
    paths = write_exports([sample, other], tmp_path / "export", ["openai", "hf", "sharegpt", "parquet"])
    rows = [json.loads(line) for line in open(paths["openai"])]
    assert len(rows) == 2 and set(rows[0]) == {"messages", "tools"}
    assert rows[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "search_city"
    assert rows[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city_name": "Lisbon"}'
    hf = [json.loads(line) for line in open(paths["hf"])]
    assert hf[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city_name": "Lisbon"}
    assert hf[0]["messages"][1]["content"] == ""
    share = json.load(open(paths["sharegpt"]))
    roles = [t["from"] for t in share[0]["conversations"]]
    assert roles == ["human", "function_call", "observation"] * 1 + ["function_call", "observation"] * 2 + ["gpt"]
    call = share[0]["conversations"][1]["value"]
    assert json.loads(call.removeprefix("<tool_call>").removesuffix("</tool_call>")) == [
        {"name": "search_city", "arguments": {"city_name": "Lisbon"}}]
    assert json.loads(share[0]["tools"])[0]["name"] == "search_city"
    assert json.load(open(tmp_path / "export" / "dataset_info.json"))["astra_traj"]["formatting"] == "sharegpt"
    ds = datasets.load_dataset("parquet", data_files=paths["parquet"], split="train")
    assert ds.num_rows == 2 and sorted(ds["id"]) == ["traj-1", "traj-2"]
    row = ds[0]
    assert row["messages"] == hf[0]["messages"] and row["tools"] == hf[0]["tools"]
    assert row["dimensions"] == {d: 0.8 for d in DIMENSIONS} and row["reward"] in (0.8, 0.7)


def test_export_drops_trajectories_without_an_answer():
    reward = Reward(id="r", trajectory_id="traj-1", task_id="t1", dimensions={d: 1.0 for d in DIMENSIONS}, overall=1.0)
    capped = _trajectory(STEPS, answer=None).model_copy(update={"termination": "max_steps"})
    assert select(reward, capped, TASK, RewardOptions()).dropped == "no_final_answer: ended by max_steps"
    # an answer written just as the token budget ran out still ends by max_tokens: never exported
    over = _trajectory(STEPS).model_copy(update={"termination": "max_tokens"})
    assert select(reward, over, TASK, RewardOptions()).dropped == "no_final_answer: ended by max_tokens"
    unanswered = _trajectory(STEPS, answer=None)
    assert select(reward, unanswered, TASK, RewardOptions()).dropped.startswith("no_final_answer: the last message")


def test_sharegpt_one_observation_per_result_and_text_beside_calls():
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                {"id": "2", "type": "function", "function": {"name": "b", "arguments": '{"x": 1}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "A"},
        {"role": "tool", "tool_call_id": "2", "content": "B"},
        {"role": "assistant", "content": "done"},
    ]
    s = SFTSample(id="i", task_id="t", model="m", messages=msgs, tools=[], reward=1, dimensions={})
    conv = to_sharegpt(s)
    assert conv["system"] == "sys"
    assert [c["from"] for c in conv["conversations"]] == [
        "human", "function_call", "observation", "function_call", "observation", "gpt"]
    assert (
        conv["conversations"][1]["value"] == 'Checking both.\n<tool_call>[{"name": "a", "arguments": {}}]</tool_call>'
    )
    assert conv["conversations"][3]["value"] == '<tool_call>[{"name": "b", "arguments": {"x": 1}}]</tool_call>'
    assert [conv["conversations"][i]["value"] for i in (2, 4)] == ["A", "B"]


# ----------------------------------------------------------------------------- simulator: memory, query, injection


def test_simulator_memory_user_query_and_injected_errors():
    from astra.servers import EPISODE_META_KEY
    from astra.synthesis.trajectories._simulate import INJECTED_KIND, mark_injected

    spec = ServerSpec(id="x", name="geo", tools=[TOOLS["geo/search_city"]])
    prompts = []

    def sim(messages, tools):
        prompts.append(messages[-1].content)
        return json.dumps({"result": {"city_id": f"c-{len(prompts)}", "latitude": 38.7}})

    server = SimulatedServer(spec, ScriptedModel([sim] * 50), user_query=lambda ep: {"traj-a": "Plan my day in Lisbon"}
                             .get(ep.rsplit(":", 1)[0]))

    async def calls(srv, episode, cities):
        async with Client(srv) as client:
            return [await client.call_tool("search_city", {"city_name": c}, meta={EPISODE_META_KEY: episode})
                    for c in cities]

    anyio.run(calls, server, "traj-a:e1", ["Lisbon", "Porto"])
    anyio.run(calls, server, "traj-b:e2", ["Faro"])
    assert "Plan my day in Lisbon" in prompts[0] and "Earlier calls" not in prompts[0]
    assert "Earlier calls" in prompts[1] and '"city_id": "c-1"' in prompts[1]  # remembers its own episode
    assert "c-1" not in prompts[2] and "Plan my day" not in prompts[2]          # not another episode's
    assert [c["arguments"]["city_name"] for c in server.episode_calls("traj-a:e1")] == ["Lisbon", "Porto"]

    # error injection: seeded, about the configured share, no model call for an injected failure
    cities = [f"city {i}" for i in range(60)]
    a = SimulatedServer(spec, ScriptedModel([sim] * 200), error_rate=0.3, seed=7)
    b = SimulatedServer(spec, ScriptedModel([sim] * 200), error_rate=0.3, seed=7)
    ra, rb = anyio.run(calls, a, "traj-c:e", cities), anyio.run(calls, b, "traj-c:e", cities)
    failed = [r.is_error for r in ra]
    assert failed == [r.is_error for r in rb] and 8 <= sum(failed) <= 30
    assert a.calls == len(cities) - sum(failed)
    none = SimulatedServer(spec, ScriptedModel([]), error_rate=1.0)
    from astra.synthesis.trajectories._simulate import INJECTED_ERRORS

    only = anyio.run(calls, none, "traj-d:e", ["Lisbon", "Porto"])
    assert all(r.is_error and r.content[0].text in INJECTED_ERRORS for r in only) and none.calls == 0
    # the pipeline marks exactly the injected steps in the trajectory
    steps = [Step(call_id=f"k{i}", tool="search_city", server="geo", server_tool="search_city",
                  arguments={"city_name": c}, result=r.content[0].text, is_error=r.is_error, error_kind=
                  "tool_error" if r.is_error else None) for i, (c, r) in enumerate(zip(cities, ra, strict=True))]
    traj = Trajectory(id="traj-c", task_id="t", model="m", steps=steps, termination="final_answer")
    marked = mark_injected(traj, {"geo": a})
    assert [s.error_kind == INJECTED_KIND for s in marked.steps] == failed
    assert marked.meta["injected_errors"] == sum(failed)


def test_rule_quality_judges_by_rules_and_says_so():
    from astra.records import ToolSpec
    from astra.synthesis.trajectories._tasks import rule_quality

    tools = {"time/convert_time": ToolSpec(server="time", name="convert_time", input_schema={
        "type": "object", "properties": {"source_timezone": {"type": "string"}, "time": {"type": "string"}}})}
    good = Task(id="g", user_turns=["What time is it in Tokyo when it is 16:30 in New York?"],
                target_tools=["time/convert_time"])
    kept = rule_quality(good, tools, 0.5)
    assert kept.outputs and kept.outputs[0].provenance["quality_judge"] == "rules"
    assert kept.outputs[0].quality["realism"] == 1.0 and kept.outputs[0].quality["question_quality"] == 1.0
    named = Task(id="n", user_turns=["call convert_time with source_timezone <tz>"], target_tools=["time/convert_time"])
    dropped = rule_quality(named, tools, 0.5)
    assert not dropped.outputs and dropped.dropped.startswith("below_quality_threshold")
    assert dropped.gate is not None and dropped.gate.held  # a relaxed threshold re-decides it without a judge


def test_demo_config_uses_real_servers_and_rules_for_the_embedded_model(tmp_path):
    from astra.records import StdioLaunch
    from astra.synthesis.trajectories import demo_config
    from astra.synthesis.trajectories._config import JudgeMode

    cfg = demo_config(tmp_path / "run", "local:smollm2", tmp_path / "home")
    assert cfg.servers == [] and [s.name for s in cfg.inline_servers] == ["time", "inventory"]
    inventory = cfg.inline_servers[1].launch
    assert isinstance(inventory, StdioLaunch) and inventory.args[0].endswith("server.py")
    assert (tmp_path / "run" / "servers" / "inventory" / "environment.json").is_file()
    assert not cfg.graph.llm_verify and not cfg.verify.enabled
    assert cfg.tasks.quality_judge == JudgeMode.RULES and cfg.reward.judge == JudgeMode.RULES
    real = demo_config(tmp_path / "run2", "openai:gpt-x", tmp_path / "home")
    assert real.graph.llm_verify and real.tasks.quality_judge == JudgeMode.LLM and real.reward.judge == JudgeMode.LLM
