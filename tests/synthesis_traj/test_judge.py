"""The trajectory judge: one structured call, item verdicts on the original's scales, rules first,
rules-only mode, never fail open."""

from __future__ import annotations

import json

import anyio
import pytest

from astra.client import ScriptedModel
from astra.records import ChatMessage, Step, Task, ToolCall, Trajectory
from astra.synthesis.trajectories import JudgeMode
from astra.synthesis.trajectories._reward import DIMENSIONS, itemise, original_keys, reward_trajectory, score_trajectory

from .conftest import judge_reply

TOOLS = [
    {"type": "function", "function": {"name": "search_city", "description": "Find a city",
                                      "parameters": {"type": "object", "properties": {"city_name": {"type": "string"}},
                                                     "required": ["city_name"]}}},
    {"type": "function", "function": {"name": "get_weather", "description": "Weather at coordinates",
                                      "parameters": {"type": "object", "properties": {
                                          "latitude": {"type": "number"}, "longitude": {"type": "number"}},
                                          "required": ["latitude", "longitude"]}}},
]
TASK = Task(id="t1", user_turns=["What is the weather in Lisbon?"], target_tools=["geo/search_city", "wx/get_weather"])


def build(calls: list[tuple[str, dict, object, bool]], answer: str | None, *, first_text: str | None = None,
          query: str = "What is the weather in Lisbon?", termination: str = "final_answer") -> Trajectory:
    """One call per assistant turn: (tool, arguments, result, is_error)."""
    msgs = [ChatMessage(role="system", content="sys"), ChatMessage(role="user", content=query)]
    steps = []
    for i, (name, args, result, err) in enumerate(calls):
        cid = f"c{i + 1}"
        msgs.append(ChatMessage(role="assistant", content=first_text if i == 0 else None,
                                tool_calls=[ToolCall(id=cid, name=name, arguments=json.dumps(args))]))
        msgs.append(ChatMessage(role="tool", tool_call_id=cid, name=name, content=json.dumps(result)))
        server = "geo" if name == "search_city" else "wx"
        steps.append(Step(call_id=cid, tool=name, server=server, server_tool=name, arguments=args, result=result,
                          is_error=err))
    if answer is not None:
        msgs.append(ChatMessage(role="assistant", content=answer))
    return Trajectory(id="traj-j", task_id="t1", model="scripted:p", tools=TOOLS, messages=msgs, steps=steps,
                      final_answer=answer if termination == "final_answer" else None, termination=termination)


GOOD = [("search_city", {"city_name": "Lisbon"}, {"latitude": 38.7, "longitude": -9.1}, False),
        ("get_weather", {"latitude": 38.7, "longitude": -9.1}, {"temperature_c": 21, "sky": "sunny"}, False)]


def run(coro_fn, *args, **kwargs):
    return anyio.run(lambda: coro_fn(*args, **kwargs))


def test_itemise_finds_the_originals_segments():
    calls = [*GOOD, ("get_weather", {"latitude": 38.7, "longitude": -9.1}, {"temperature_c": 21}, False)]
    found = itemise(TASK, build(calls, "Sunny, 21 C."))
    assert [c.ref for c in found.calls] == ["C1", "C2", "C3"]
    assert [r for r, _ in found.tool_messages] == ["T1", "T2", "T3"]
    # intermediate plans: turns 2 and 3 (after a result, more results follow); the last batch is not judged
    assert [r for r, _ in found.plan_segments] == ["P1", "P2"]
    assert [r for r, _ in found.understand_batches] == ["U1", "U2"]
    assert found.first_response == 2


def test_one_call_item_verdicts_and_means():
    traj = build(GOOD, "It is sunny and 21 C in Lisbon.", first_text="I'll find Lisbon, then get its weather.")
    prompts: list[str] = []

    def judge(messages, tools):
        prompt = messages[-1].content
        prompts.append(prompt)
        reply = json.loads(judge_reply(prompt).strip("`json\n"))
        reply["calls"][1]["score"] = 0  # the judge finds C2 redundant
        reply["plan_segments"][0]["score"] = 0.5
        reply["first_response_plan"]["score"] = 0.5
        return json.dumps(reply)

    reward, audit = run(reward_trajectory, TASK, traj, ScriptedModel([judge]))
    assert len(prompts) == 1 and reward.judge_calls == 1 and reward.mode == "llm"
    assert "C1: search_city" in prompts[0] and "TOOL RESULT T2" in prompts[0] and "FIRST RESPONSE" in prompts[0]
    assert tuple(reward.dimensions) == DIMENSIONS
    assert reward.dimensions == {"tool_concise": 0.5, "final_answer": 1.0, "tool_call": 1.0, "tool_plan": 0.5,
                                 "tool_understand": 1.0, "query_understand": 1.0, "query_plan": 0.5}
    assert reward.overall == round(sum(reward.dimensions.values()) / 7, 4)
    assert {i["ref"] for i in reward.items} >= {"C1", "C2", "T1", "T2", "P1", "U1", "F.plan", "A.summary"}
    keys = original_keys(reward)
    assert list(keys) == [*DIMENSIONS, "overall_score"] and keys["overall_score"] == reward.overall


def test_rules_override_the_judge():
    calls = [("search_city", {"city_name": "Lisbon"}, {"latitude": 38.7, "longitude": -9.1}, False),
             ("get_weather", {"latitude": "north"}, "error: latitude must be a number", True),
             ("search_city", {"city_name": "Lisbon"}, {"latitude": 38.7, "longitude": -9.1}, False),
             ("get_forecast", {"city": "Lisbon"}, "unknown tool", True)]
    traj = build(calls, "详见 https://meteo.example.com/lisbon ：里斯本今天晴朗，气温二十一度。")
    reward, _ = run(reward_trajectory, TASK, traj, ScriptedModel([lambda m, t: judge_reply(m[-1].content)]))
    by_ref = {i["ref"]: i for i in reward.items}
    assert by_ref["C1"]["score"] == 1.0 and by_ref["C1"]["source"] == "judge"
    assert by_ref["C2"]["score"] == 0.0 and "schema" in by_ref["C2"]["reason"]      # malformed parameters
    assert by_ref["C3"]["score"] == 0.0 and "repeats" in by_ref["C3"]["reason"]     # a repeated successful call
    assert by_ref["C4"]["score"] == 0.0 and "not one of the offered" in by_ref["C4"]["reason"]
    assert by_ref["T2"]["score"] == 0.5 and by_ref["T4"]["score"] == 0.5            # failed calls: half credit
    assert by_ref["A.relevance"]["score"] == 0.0 and "language" in by_ref["A.relevance"]["reason"]
    assert by_ref["A.summary"]["score"] == 0.0 and "URL" in by_ref["A.summary"]["reason"]
    assert reward.dimensions["tool_concise"] == 0.25 and reward.dimensions["tool_call"] == 0.75
    assert reward.dimensions["final_answer"] == 0.0


def test_language_detection():
    from astra.synthesis.trajectories._reward import (
        detect_language,
        language_consistent,
    )

    assert detect_language("What is the weather?") == "en" and detect_language("里斯本今天天气怎么样？") == "zh"
    assert detect_language("Какая погода?") == "ru" and detect_language("今日の天気はどうですか") == "ja"
    assert detect_language("12 + 7 = 19") == "unknown" and language_consistent("What is 12 + 7?", "19")
    assert not language_consistent("What is the weather?", "天气很好。")


def test_no_call_answer_gets_the_originals_rule_scores():
    traj = build([], "Lisbon is usually mild; I cannot check today's weather.")
    reward, _ = run(reward_trajectory, TASK, traj, ScriptedModel([lambda m, t: judge_reply(m[-1].content, 0.5)]))
    notes = [i for i in reward.items if i["ref"] == "-"]
    assert {i["kind"] for i in notes} == {"call", "tool_message", "plan_segment", "understand_batch"}
    assert all(i["source"] == "rule" for i in notes)
    assert reward.dimensions["tool_concise"] == reward.dimensions["tool_call"] == 1.0
    by_ref = {i["ref"]: i for i in reward.items}
    assert by_ref["A.summary"]["score"] == 1.0 and by_ref["A.summary"]["source"] == "rule"  # nothing to summarise
    assert by_ref["A.relevance"]["score"] == 0.5 and reward.dimensions["query_plan"] == 0.5


@pytest.mark.parametrize("bad", [
    "I think it is fine.",                                                # no JSON
    '{"calls": []}',                                                      # sections missing
    "WRONG_ID",                                                           # ids do not match the items
    "OFF_SCALE",                                                          # 0.7 is not on the scale
])
def test_malformed_judge_is_judge_failed_never_a_score(bad):
    traj = build(GOOD, "It is sunny and 21 C in Lisbon.")

    def reply(messages, tools):
        if bad == "WRONG_ID":
            r = json.loads(judge_reply(messages[1].content).strip("`json\n"))
            r["calls"][0]["id"] = "C9"
            return json.dumps(r)
        if bad == "OFF_SCALE":
            r = json.loads(judge_reply(messages[1].content).strip("`json\n"))
            r["answer_summary"]["score"] = 0.7
            return json.dumps(r)
        return bad

    reward, audit = run(reward_trajectory, TASK, traj, ScriptedModel([reply] * 3))
    assert reward.status == "judge_failed" and reward.overall is None and reward.dimensions == {}
    assert reward.judge_calls == 3 and len(audit) == 3 and reward.error


def test_a_repaired_reply_counts_two_calls():
    traj = build(GOOD, "It is sunny and 21 C in Lisbon.")
    reward, audit = run(reward_trajectory, TASK, traj,
                        ScriptedModel(["not json", lambda m, t: judge_reply(m[1].content)]))
    assert reward.status == "ok" and reward.judge_calls == 2 and reward.overall == 1.0


def test_rules_mode_makes_no_call_and_says_so():
    model = ScriptedModel([])  # any request would raise ScriptExhausted
    good, _ = run(reward_trajectory, TASK, build(GOOD, "Sunny and 21 C in Lisbon."), model, mode=JudgeMode.RULES)
    assert model.calls == 0 and good.mode == "rules" and good.judge_model == "rules" and good.judge_calls == 0
    assert all(i["source"] == "rule" for i in good.items) and good.overall == 1.0
    ungrounded, _ = run(reward_trajectory, TASK, build(GOOD, "It is snowing, -4 C."), None, mode=JudgeMode.RULES)
    assert ungrounded.dimensions["final_answer"] == 0.5  # relevant by rule, but no value from a tool result
    # "1" must not ground an answer that says "10"
    one = build([("search_city", {"city_name": "Lisbon"}, {"id": 1}, False)], "There are 10 cities.")
    assert run(reward_trajectory, TASK, one, None, mode=JudgeMode.RULES)[0].rules["grounded"] == 0.0
    partial, _ = run(reward_trajectory, TASK, build(GOOD[:1], "Lisbon is at 38.7 N."), None, mode=JudgeMode.RULES)
    assert partial.dimensions["query_plan"] == 0.5  # half the chain covered


def test_unanswered_trajectory_gets_no_reward_and_no_judge_call():
    model = ScriptedModel([])
    out = run(score_trajectory, TASK, build(GOOD, None, termination="max_steps"), model, JudgeMode.LLM)
    assert out.outputs == [] and out.dropped == "no_final_answer: ended by max_steps" and not out.failed
    assert model.calls == 0


def test_pipeline_with_rules_judge_and_llm_judge_call_counts(tmp_path, home):
    from astra.synthesis.trajectories import TrajectoryPipeline, run_trajectory_pipeline

    from .conftest import Router, router_model
    from .test_pipeline import _config

    router = Router()
    config = _config(tmp_path, home, chains={"num_chains": 2, "num_toolsets": 2}, rollout={"samples": 1},
                     reward={"judge": "rules", "threshold": 0.0})
    result = anyio.run(lambda: run_trajectory_pipeline(config, progress=False,
                                                       models={"scripted:router": router_model(router)}))
    assert "judge" not in router.seen and result.summary()["judge_calls_per_sample"] == 0.0
    from astra.records import Reward

    rewards = TrajectoryPipeline(config, progress=False).stage("reward", Reward).outputs()
    assert rewards and all(r.mode == "rules" and r.judge_model == "rules" for r in rewards)
    assert result.exported > 0
    from astra.synthesis.trajectories._export import SFTSample

    exported = TrajectoryPipeline(config, progress=False).stage("export", SFTSample).outputs()
    assert exported and all(s.judge == "rules" for s in exported)  # labelled rule-judged, never LLM-judged
    # the same run judged by the LLM: exactly one judge call per sample
    llm = _config(tmp_path / "llm", home, chains={"num_chains": 2, "num_toolsets": 2}, rollout={"samples": 1})
    result = anyio.run(lambda: run_trajectory_pipeline(llm, progress=False,
                                                       models={"scripted:router": router_model(Router())}))
    assert result.summary()["judge_calls_per_sample"] == 1.0


def test_reply_schema_requires_every_section_with_items():
    from astra.synthesis.trajectories._reward import reply_model

    schema = reply_model(itemise(TASK, build(GOOD, "Sunny, 21 C."))).model_json_schema()
    assert {"calls", "tool_messages", "plan_segments", "understand_batches"} <= set(schema["required"])
    assert "calls" not in reply_model(itemise(TASK, build([], "Hi there."))).model_json_schema().get("required", [])
