"""One small file per artifact of the original ASTRA, in its exact shapes (written from its
readers and writers in github.com/LianjiaTech/astra), read by ours: servers, graph detect output,
sub-chains, verified chains, tasks, questions, knowledge corpus and environment results; and the
pipelines resuming from them, and our runs written back in its trajectory and reward shapes."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from synthesis_traj.conftest import Router, router_model

from astra.client import ScriptedModel
from astra.records import Reward, SimulatedLaunch, Task, ToolGraph
from astra.registry import Registry, import_file
from astra.synthesis._original import (
    OriginalKind,
    detect_kind,
    parse_call_statement,
    read_env_results,
    read_graph_detect,
    read_knowledge_corpus,
    read_sub_chains,
    read_tasks,
    read_verified_chains,
    to_original_reward,
)
from astra.synthesis.environments import (
    EnvironmentPipelineConfig,
    PipelineContext,
    run_stage,
)
from astra.synthesis.trajectories import (
    TrajectoryConfig,
    TrajectoryPipeline,
    run_trajectory_pipeline,
)
from astra.synthesis.trajectories._reward import DIMENSIONS

from .conftest import base_info, mcp_info, task_line, write_jsonl

SCORES = {"tool_selection_difficulty": 4, "tool_selection_uniqueness": 3, "question_quality": 5, "scenario_realism": 5,
          "total_score": 17, "average_score": 4.25}


# --------------------------------------------------------------------------- mcp_servers.jsonl


def test_mcp_servers_jsonl_records_as_the_original_writes_them(tmp_path: Path) -> None:
    rows = [
        {"base_info": base_info("calc"), "features": {"category": "math"}, "call_info": {"mock_tool": True}},
        {"base_info": base_info(None, server_title=None, group_id=1042)},            # named by group_id
        {"mcp_info": mcp_info("wrapped"), "graph": {"graph_detect": []}},             # an intermediate record
        {"base_info": base_info("half", tools=[base_info()["tool_list"][0], {"name": "bad", "parameters": "nope"}])},
    ]
    path = write_jsonl(tmp_path / "mcp_servers.jsonl", rows)
    with Registry(tmp_path / "astra.db") as registry:
        report = import_file(registry, path)
        assert registry.server_names() == ["1042", "calc", "half", "wrapped"]
        assert report.errors == [f"{path}:4: base_info.tool_list[1].parameters: expected a JSON object (schema), "
                                 "got str (tool left out; the rest of 'half' is kept)"]
        assert [t.name for t in registry.get_server("half").tools] == ["add"]
        calc = registry.get_server("calc")
        assert calc.launch == SimulatedLaunch(call_info={"mock_tool": True}) and calc.domain == "math"
        assert calc.tools[0].input_schema["properties"]["a"] == {"type": "integer"}
    assert detect_kind(rows[0]) is OriginalKind.SERVERS and detect_kind(rows[2]) is OriginalKind.GRAPH_DETECT


# --------------------------------------------------------------------------- graph build outputs


def graph_detect_file(tmp_path: Path) -> Path:
    """1_gen_and_parse.py's parsed output: {mcp_info, graph: {graph_detect, num_chains, raw_response}}."""
    detected = [{"tool_graph_detect": "yes", "tool_graph_detect_chain": ["add", "scale"],
                 "tool_graph_detect_task": "add two numbers, then scale the sum"},
                {"tool_graph_detect": "yes", "tool_graph_detect_chain": ["add", "divide"],
                 "tool_graph_detect_task": "x"}]
    return write_jsonl(tmp_path / "graph_detect.jsonl", [
        {"mcp_info": mcp_info("calc", {"mock_tool": True}), "graph": {"graph_detect": detected, "num_chains": 2,
                                                                      "raw_response": json.dumps(detected)}},
        {"mcp_info": {"base_info": "broken"}, "graph": {"graph_detect": []}},
    ])


def test_graph_detect_output(tmp_path: Path) -> None:
    path = graph_detect_file(tmp_path)
    graph, found = read_graph_detect(path)
    assert [(e.src, e.dst, e.kind, e.provenance, e.rationale) for e in graph.edges] == [
        ("calc/add", "calc/scale", "order", "llm", "add two numbers, then scale the sum")]
    assert graph.nodes == ["calc/add", "calc/scale"]
    assert found.errors == [
        f"{path}:1: graph.graph_detect[1].tool_graph_detect_chain: ['divide'] not among the tools of 'calc' "
        "(chain left out)",
        f"{path}:2: base_info: expected an object, got str",
    ]


def sub_chains_file(tmp_path: Path) -> Path:
    """2_get_sub_chains.py's output: the graph detect record plus graph.sub_chains."""
    return write_jsonl(tmp_path / "sub_chains.jsonl", [
        {"mcp_info": mcp_info("calc", {"mock_tool": True}),
         "graph": {"graph_detect": [],
                   "sub_chains": [["add", "scale"], ["scale", "add"], ["add", "scale"], ["add", "nope"]]}},
    ])


def verified_chains_file(tmp_path: Path) -> Path:
    """run_operators.py's output: one line per sub-chain with chain_info.operator_results."""
    def line(chain: list[str], vote: bool | None, back: bool | None) -> dict:
        results = {}
        if vote is not None:
            results["vote_verify_chain1"] = {"vote_verify": {"answers": []}, "vote_result": {
                "is_valid": vote, "task_description": "", "user_query": "", "task_plan": "",
                "vote_count": {"true": int(vote), "false": int(not vote), "parse_error": 0},
                "selected_answer_index": 0}}
        else:
            results["vote_verify_chain1"] = {"error": "API timed out", "status": "failed"}
        if back is not None:
            results["back_translation"] = {"vote_valid": back, "back_verifies": []}
        return {"mcp_info": mcp_info("calc"), "graph": {"sub_chains": [chain]},
                "chain_info": {"sub_chain": chain, "operator_results": results}}
    return write_jsonl(tmp_path / "verified.jsonl", [
        line(["add", "scale"], True, True), line(["scale", "add"], True, False), line(["add", "add"], None, True),
        b"\xff\xfe not utf-8",
    ])


def test_sub_chains_and_verified_chains(tmp_path: Path) -> None:
    path = sub_chains_file(tmp_path)
    subs = read_sub_chains(path)
    assert [[c.tool for c in ch.calls] for ch in subs.items] == [["calc/add", "calc/scale"], ["calc/scale", "calc/add"]]
    assert subs.errors == [f"{path}:1: graph.sub_chains[3]: ['nope'] not among the tools of 'calc'"]

    path = verified_chains_file(tmp_path)
    verified = read_verified_chains(path)
    assert [[c.tool for c in ch.calls] for ch in verified.items] == [["calc/add", "calc/scale"]]
    assert verified.items[0].verification["operator_results"]["back_translation"]["vote_valid"] is True
    reasons = [why for _, why in verified.dropped]
    assert reasons[0].startswith("operator_rejected: back_translation")
    assert reasons[1].startswith("operator_failed: vote_verify_chain1: failed (API timed out)")  # never a pass
    assert verified.errors == [f"{path}:4: encoding: invalid UTF-8 byte 0xff at column 1"]


# --------------------------------------------------------------------------- tasks.jsonl


def tasks_file(tmp_path: Path) -> Path:
    base = task_line("What is 2 plus 3, doubled?", ["add", "scale"], scores=SCORES, sub_chain=["add", "scale"])
    aug = task_line("What is 2 plus 3, doubled?", ["add", "scale"], sub_chain=["add", "scale"],
                    augmented={"mode": "complicate", "augmented_question": "<question>Add 2 and 3, double it, "
                               "and tell me both numbers.</question>"})
    bad_scores = task_line("Bad scores", ["add"], scores={"question_quality": "great"})
    return write_jsonl(tmp_path / "tasks.jsonl", [
        base, aug, base,                                              # the original samples prompts repeatedly
        task_line("Unknown tool", ["divide"]),
        bad_scores,
        {"query_info": {"target_tools": ["add"]}, "mcp_info": mcp_info("calc")},
        Task(id="ours-1", user_turns=["our own task"], servers=["calc"]).model_dump(),
    ])


def test_tasks_jsonl_with_augmented_variants_and_provenance(tmp_path: Path) -> None:
    path = tasks_file(tmp_path)
    found = read_tasks(path)
    base, aug, ours = found.items
    assert base.user_turns == ["What is 2 plus 3, doubled?"] and base.target_tools == ["calc/add", "calc/scale"]
    assert base.servers == ["calc"] and base.quality == {"tool_selection_difficulty": 0.75, "uniqueness": 0.5,
                                                         "question_quality": 1.0, "realism": 1.0, "overall": 0.8125}
    assert base.provenance["variant"] == "base" and base.provenance["sub_chain"] == ["add", "scale"]
    assert aug.user_turns == ["Add 2 and 3, double it, and tell me both numbers."]  # the wrapping tag goes, as there
    assert aug.provenance["variant"] == "augmented:complicate" and aug.provenance["base_task"] == base.id
    assert aug.provenance["base_question"] == "What is 2 plus 3, doubled?" and aug.chain_id == base.chain_id
    assert ours.id == "ours-1"
    assert found.errors == [
        f"{path}:4: query_info.target_tools: ['divide'] not among the tools of 'calc'",
        f"{path}:5: query_info.query_score_info.quality_scores.question_quality: expected a number, got str",
        f"{path}:6: query_info.generated_question: missing",
    ]
    assert found.notices == [f"{path}:3: query_info: the same task as {path}:1 (kept once)"]
    assert list(found.servers) == ["calc"]


def test_trajectory_pipeline_from_tasks_jsonl_and_original_exports(tmp_path: Path) -> None:
    router = Router()
    config = TrajectoryConfig.model_validate(dict(
        out_dir=tmp_path / "run", home=tmp_path / "home", tasks_path=tasks_file(tmp_path), model="scripted:router",
        concurrency=2, export_formats=["openai", "astra-original"], reward={"threshold": 0.0}))
    result = anyio.run(lambda: run_trajectory_pipeline(config, progress=False,
                                                       models={"scripted:router": router_model(router)}))
    stages = {c.stage: c for c in result.funnel.stages}
    # no model call before the rollout: graph, chains and verify skipped, the original's scores used
    assert "edges" not in router.seen and "vote" not in router.seen and "quality" not in router.seen
    assert (stages["tasks"].outputs, stages["tasks"].dropped) == (3, 3)
    assert stages["rollout"].outputs == 3 and result.exported == 3
    pipe = TrajectoryPipeline(config, progress=False)
    assert pipe.run.manifest["stages"]["tasks"]["imported_from"] == str(config.tasks_path)
    assert pipe.run.manifest["stages"]["graph"]["skipped"]
    plan = json.loads((Path(result.run_dir) / "servers_plan.json").read_text())
    assert plan["calc"]["execution"] == "simulated"

    rows = [json.loads(x) for x in Path(result.exports["astra-original"]).read_text().splitlines()]
    by_q = {r["query_info"]["augmented_query_info"].get("augmented_question")
            or r["query_info"]["generated_question"]: r for r in rows}
    aug = by_q["Add 2 and 3, double it, and tell me both numbers."]
    assert aug["query_info"] == {"generated_question": "What is 2 plus 3, doubled?", "target_tools": ["add", "scale"],
                                 "augmented_query_info": {"mode": "complicate", "augmented_question":
                                                          "Add 2 and 3, double it, and tell me both numbers."}}
    assert aug["mcp_info"]["base_info"]["group_info"]["server_name"] == "calc"
    assert aug["chain_info"] == {"sub_chain": ["add", "scale"]}
    assert aug["trajectory"] == aug["messages"] and aug["trajectory"][1]["role"] == "user"
    assert {s["execution"] for s in aug["astra"]["steps"]} == {"simulated"}
    assert set(aug["reward"]) == set(DIMENSIONS) | {"overall_score", "astra"}
    assert all(0.0 <= aug["reward"][k]["score"] <= 1.0 for k in DIMENSIONS)
    assert aug["reward"]["tool_call"]["extra_info"]["items"]  # the per-item verdicts behind the score
    rewards = [json.loads(x) for x in Path(result.exports["astra-original-rewards"]).read_text().splitlines()]
    assert len(rewards) == 3


def test_original_reward_shape_never_writes_a_failed_judge() -> None:
    # a v1 reward (our old dimension names) is written under the original's keys
    ok = Reward(id="r", trajectory_id="t", task_id="k", dimensions={"tool_concision": 0.5, "final_answer": 1.0},
                overall=0.5)
    shape = to_original_reward(ok)
    assert shape["tool_concise"] == {"score": 0.5, "extra_info": {"items": [], "is_safe_score": 0}}
    assert shape["final_answer"]["score"] == 1.0
    assert shape["overall_score"] == 0.5
    assert to_original_reward(Reward(id="r", trajectory_id="t", task_id="k", status="judge_failed")) is None


def test_trajectory_pipeline_resumes_from_graph_detect_and_verified_chains(tmp_path: Path) -> None:
    router = Router()
    models = {"scripted:router": router_model(router)}
    config = TrajectoryConfig.model_validate(dict(
        out_dir=tmp_path / "run-graph", home=tmp_path / "home", resume_from=[graph_detect_file(tmp_path)],
        model="scripted:router", chains={"num_chains": 3, "num_toolsets": 0, "min_length": 2}))
    anyio.run(lambda: run_trajectory_pipeline(config, progress=False, models=models, stages=("graph", "chains")))
    pipe = TrajectoryPipeline(config, progress=False)
    graph = ToolGraph.model_validate_json((pipe.run.path / "graph.json").read_text())
    assert [(e.src, e.dst) for e in graph.edges] == [("calc/add", "calc/scale")] and router.seen == {}
    from astra.records import ToolChain

    sampled = pipe.stage("chains", ToolChain).outputs()
    assert sampled and {c.calls[0].tool for c in sampled} == {"calc/add"}  # walks over the original's graph

    config = config.model_copy(update={"out_dir": tmp_path / "run-verified",
                                       "resume_from": [sub_chains_file(tmp_path), verified_chains_file(tmp_path)]})
    anyio.run(lambda: run_trajectory_pipeline(config, progress=False, models=models,
                                              stages=("graph", "chains", "verify", "tasks")))
    pipe = TrajectoryPipeline(config, progress=False)
    verify = pipe.stage("verify", ToolChain).counts()
    assert (verify.outputs, verify.dropped) == (1, 3)  # one passed, one rejected, one failed operator, one bad line
    assert router.seen.get("vote") is None and router.seen["questions"] >= 1  # tasks generated from what passed


# --------------------------------------------------------------------------- environment pipeline inputs


def _env_config(tmp_path: Path, **over) -> EnvironmentPipelineConfig:
    return EnvironmentPipelineConfig.model_validate(dict(run_dir=tmp_path / "envs", model="scripted:x", concurrency=1,
                                                         save_to_registry=False, **over))


def _run(ctx: PipelineContext, *names: str) -> None:
    async def go() -> None:
        for name in names:
            await run_stage(ctx, name)
    anyio.run(go)


def test_questions_jsonl_decomposition_proposes_an_unverified_answer(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "questions.jsonl", [
        {"question": "How many minutes are in 3 hours and 15 minutes?", "domain": "time"},
        {"question": 42, "domain": "time"},
    ])
    reply = json.dumps({"steps": [
        {"id": "s1", "hop": 1, "sub_question": "How many minutes are in 3 hours?", "depends_on": [],
         "sub_answer": "180"},
        {"id": "s2", "hop": 2, "sub_question": "What is 180 + 15?", "depends_on": ["s1"], "sub_answer": "195"}]})
    prompts: list[str] = []

    def decompose(messages, tools):
        prompts.append(messages[-1].content)
        return reply

    model = ScriptedModel([decompose], per_conversation=True)
    ctx = PipelineContext(config=_env_config(tmp_path, qa_path=path), model=model, progress=False)
    _run(ctx, "qa", "decompose")
    from astra.records import Decomposition, QAItem

    (qa,) = ctx.outputs_of("qa", QAItem)
    assert (qa.answer, qa.answer_unverified, qa.domain) == ("", True, "time")
    (dec,) = ctx.outputs_of("decompose", Decomposition)
    assert (dec.answer, dec.answer_unverified) == ("195", True)
    assert "Final answer: (not given: work it out" in prompts[0]


def test_knowledge_corpus_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "context.jsonl", [
        {"domain": "weather", "knowledge_corpus": "background: Albuquerque, NM; sunset at 19:31 on 2025-09-04."},
        {"domain": "Search Engine", "knowledge_corpus": ""},
        {"domain": "x", "knowledge_corpus": ["not", "text"]},
    ])
    found = read_knowledge_corpus(path)
    assert found.items == [("weather", "background: Albuquerque, NM; sunset at 19:31 on 2025-09-04."),
                           ("Search Engine", "")]
    assert found.errors == [f"{path}:3: knowledge_corpus: expected str, got list"]
    gen = json.dumps({"items": [{"question": "When is sunset in Albuquerque on 2025-09-04, in minutes after 18:00?",
                                 "answer": "91"}]})
    ctx = PipelineContext(config=_env_config(tmp_path, corpus_path=path, questions_per_source=1),
                          model=ScriptedModel([gen], per_conversation=True), progress=False)
    counts, extra = anyio.run(lambda: run_stage(ctx, "qa"))
    assert (counts.inputs, counts.outputs) == (3, 2) and extra["input_errors"] == found.errors


def env_results_file(tmp_path: Path) -> Path:
    """step_04_env_synthesis.py's output (step 1-3 fields plus env_result)."""
    trace = [
        {"_uuid": 1, "hop_level": 1, "sub_question": "What is the sunrise time in Louisville on 2025-09-04?",
         "is_parallel": True, "dependency": None, "sub_answer": "07:11", "tool_necessity": True, "reason": "data"},
        {"_uuid": 2, "hop_level": 1, "sub_question": "What is the sunset time in Louisville on 2025-09-04?",
         "is_parallel": True, "dependency": None, "sub_answer": "20:04", "tool_necessity": True, "reason": "data"},
        {"_uuid": 3, "hop_level": 2, "sub_question": "How long is the day from 07:11 to 20:04?", "is_parallel": False,
         "dependency": [1, 2], "sub_answer": "12 h 53 min", "tool_necessity": True, "reason": "compute"},
    ]
    code = "def get_sun_times(city, date):\n    return {'sunrise': '07:11'}\n"
    env = {"1": {"question": trace[0]["sub_question"], "answer": "07:11", "env_synthesis_result": {"data": {
        "tool_document": {"name": "get_sun_times", "description": "Sun times",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                                          "date": {"type": "string"}}}},
        "tool_call_statement": "get_sun_times('Louisville', date='2025-09-04')", "code": code,
        "tool_call_ans": "{'sunrise': '07:11'}"}, "extra_info": {}}}, "2": None, "3": None}
    return write_jsonl(tmp_path / "env_results.jsonl", [
        {"uuid": "9b1c", "scenario_type": "Parallel Multi-Hop", "main_question": "How long is the day in Louisville "
         "on 2025-09-04?", "final_answer": "12 h 53 min", "decomposition_trace": trace,
         "_metadata": {"domain": "weather", "language": "en", "model_name": "m"}, "tool_necessity_legitimacy": True,
         "verify_result": {"score": 0.93, "extra_info": {}}, "env_result": env},
        {"uuid": "x", "main_question": "Broken", "decomposition_trace": [{"_uuid": 1, "hop_level": "one"}]},
    ])


def test_environment_results_resume_without_model_calls(tmp_path: Path) -> None:
    path = env_results_file(tmp_path)
    found = read_env_results(path)
    (item,) = found.items
    assert [s.depends_on for s in item.decomposition.steps] == [[], [], ["1", "2"]]
    assert item.decomposition.scores == {"original_verify_score": 0.93} and item.qa.domain == "weather"
    assert item.tools["1"]["tool_call_statement"].startswith("get_sun_times(")
    assert parse_call_statement(item.tools["1"]["tool_call_statement"], ["city", "date"]) == (
        "get_sun_times", {"city": "Louisville", "date": "2025-09-04"})
    assert found.errors == [f"{path}:2: decomposition_trace[0].hop_level: expected int, got str"]

    model = ScriptedModel([], per_conversation=True)  # any model call would fail loudly
    ctx = PipelineContext(config=_env_config(tmp_path, resume_from=path), model=model, progress=False)
    _run(ctx, "qa", "decompose", "necessity")
    for name, (outputs, dropped) in {"qa": (1, 1), "decompose": (1, 0), "necessity": (1, 0)}.items():
        counts = ctx.stage(name, object).counts()
        assert (counts.outputs, counts.dropped, counts.failed) == (outputs, dropped, 0), name
    assert model.calls == 0


@pytest.mark.parametrize("maker, kind", [(graph_detect_file, OriginalKind.GRAPH_DETECT),
                                         (sub_chains_file, OriginalKind.SUB_CHAINS),
                                         (verified_chains_file, OriginalKind.VERIFIED_CHAINS),
                                         (tasks_file, OriginalKind.TASKS),
                                         (env_results_file, OriginalKind.ENV_RESULTS)])
def test_each_artifact_is_recognised_by_its_shape(tmp_path: Path, maker, kind) -> None:
    from astra.synthesis._original import file_kind

    assert file_kind(maker(tmp_path)) is kind
