"""Each stage with the scripted oracle: realistic replies, malformed replies, and the drop paths."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from astra.client import ScriptedModel
from astra.records import Decomposition, QAItem
from astra.synthesis.environments import (
    EnvironmentPipelineConfig,
    PipelineContext,
    _decompose,
    _necessity,
    _verify,
    run_stage,
)
from astra.synthesis.environments._merge import cluster_tools, merge_cluster
from astra.synthesis.environments._models import SynthesizedTool
from astra.synthesis.environments._qa import read_qa_jsonl
from astra.synthesis.environments._sandbox import SandboxRunner
from astra.synthesis.environments._synthesize import synthesize_one

from .envs_gold import (
    GOLD,
    decomposition_reply,
    oracle_model,
    tool,
    tool_reply,
    verify_reply,
)


def _ctx(config: EnvironmentPipelineConfig, model=None, **update) -> PipelineContext:
    return PipelineContext(config=config.model_copy(update=update), model=model or oracle_model(), progress=False)


def _entries(ctx: PipelineContext, stage: str) -> dict[str, dict]:
    return {e.id: e.model_dump() for e in ctx.stage(stage, QAItem).entries()}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _qa_file(tmp_path: Path, keys: list[str]) -> Path:
    from astra.synthesis.environments import sample_qa_path

    lines = [line for line in sample_qa_path().read_text().splitlines() if any(k in line for k in keys)]
    return _write(tmp_path / "qa.jsonl", lines)


def run(ctx: PipelineContext, *names: str):
    async def go():
        return [await run_stage(ctx, n) for n in names]

    return anyio.run(go)


# ------------------------------------------------------------------ stage 1: QA


def test_qa_input_reports_bad_lines_and_keeps_going(tmp_path, config):
    path = _write(tmp_path / "qa.jsonl", [
        '{"question": "What is 2 + 3, times 4?", "answer": 20, "domain": "math"}',
        '{"question": "no answer here"}',
        "{not json",
        '["a list"]',
        '{"question": "   ", "answer": "x"}',
        '{"question": "What is 2 + 3, times 4?", "answer": 20, "domain": "math"}',
        "",
        '{"question": "Reverse abc.", "answer": "cba", "extra": "ignored"}',
    ])
    items, errors = read_qa_jsonl(path)
    # a question without an answer (the original ASTRA's questions.jsonl): kept, its answer to be proposed
    assert [(i.answer, i.answer_unverified) for i in items] == [("20", False), ("", True), ("cba", False)]
    assert errors == [
        f"{path}:3: (line): invalid JSON: Expecting property name enclosed in double quotes at column 2",
        f"{path}:4: (line): expected a JSON object, got list",
        f"{path}:5: question: Value error, must not be blank",
        f"{path}:6: question: duplicate of line 1",
    ]
    ctx = _ctx(config, qa_path=path)
    [(counts, extra)] = run(ctx, "qa")
    assert (counts.inputs, counts.outputs, counts.dropped, counts.failed) == (7, 3, 4, 0)
    assert counts.drop_reasons == {"bad_input": 4}
    assert extra["input_errors"] == errors


def test_qa_generation_realistic_and_malformed(tmp_path, config):
    good = json.dumps({"items": [{"question": "A box holds 12 eggs. How many eggs are in 7 boxes, in dozens plus 3?",
                                  "answer": "10"}, {"question": "What is 3 km in metres, halved?", "answer": 1500}]})
    model = ScriptedModel([good, "Sure! Here are some questions: 1. ...", "still not json", "nope"])
    ctx = _ctx(config, model=model, qa_path=None, domains=["cooking", "geometry"], questions_per_source=2,
               llm_retries=1, concurrency=1)
    [(counts, _)] = run(ctx, "qa")
    assert (counts.inputs, counts.outputs, counts.dropped, counts.failed) == (2, 2, 1, 1)
    assert counts.drop_reasons == {"generation_failed": 1}
    items = ctx.outputs_of("qa", QAItem)
    assert {i.domain for i in items} == {"cooking"} and {i.answer for i in items} == {"10", "1500"}
    failed = [e for e in _entries(ctx, "qa").values() if e["dropped"]][0]
    assert [a["raw"] for a in failed["audit"]] == ["Sure! Here are some questions: 1. ...", "still not json"]


# ------------------------------------------------------------------ stage 2: decomposition


def test_decomposition_checks(tmp_path, config):
    qa = _qa_file(tmp_path, ["Alice ran", "A recipe", "A meeting", "Take the capital", "A jacket"])
    alice = json.loads(decomposition_reply(GOLD["Alice ran 5 miles"]))
    cyclic = json.loads(decomposition_reply(GOLD["A recipe needs 250 grams"]))
    cyclic["steps"][0]["depends_on"] = ["s2"]
    mismatch = json.loads(decomposition_reply(GOLD["A meeting was scheduled"]))
    mismatch["steps"][1]["sub_answer"] = "Thursday, 29 February 2024"  # contains the answer: still a mismatch
    unknown = json.loads(decomposition_reply(GOLD["Take the capital"]))
    unknown["steps"][1]["depends_on"] = ["s9"]
    # hops given wrongly by the model are recomputed from the dependency graph; a bare list is accepted
    alice["steps"][2]["hop"] = 7
    overrides = {
        ("decompose", "Alice ran"): json.dumps(alice["steps"]),
        ("decompose", "A recipe"): json.dumps(cyclic),
        ("decompose", "A meeting"): json.dumps(mismatch),
        ("decompose", "Take the capital"): json.dumps(unknown),
        ("decompose", "A jacket"): "```json\n{\"steps\": [{\"id\": \"s1\"}]}\n```",
    }
    ctx = _ctx(config, oracle_model(overrides), qa_path=qa, llm_retries=1)
    (_, _), (counts, _) = run(ctx, "qa", "decompose")
    assert (counts.inputs, counts.outputs, counts.dropped, counts.failed) == (5, 1, 4, 1)
    assert counts.drop_reasons == {"cycle": 1, "answer_mismatch": 1, "unknown_dependency": 1, "decomposition_failed": 1}
    [dec] = ctx.outputs_of("decompose", Decomposition)
    assert [(s.id, s.hop, s.depends_on) for s in dec.steps] == [("s1", 1, []), ("s2", 1, []), ("s3", 2, ["s1", "s2"])]
    assert dec.scores["hop_mismatches"] == 1.0
    reasons = sorted(e["dropped"] for e in _entries(ctx, "decompose").values() if e["dropped"])
    assert any(r.startswith("cycle: s1 -> s2") or r.startswith("cycle: s2 -> s1") for r in reasons)
    assert any("step s2 depends on s9" in r for r in reasons)


# ------------------------------------------------------------------ stages 3 + 4: necessity, verification


def test_necessity_hard_rule_and_item_level_verification(tmp_path, config):
    qa = _qa_file(tmp_path, ["A recipe", "Alice ran", "A meeting", "Take the capital", "A jacket"])
    no_tool_first = json.dumps({"steps": [{"id": "s1", "needs_tool": False, "reason": "stated in the question"},
                                          {"id": "s2", "needs_tool": True, "reason": "unit conversion"}]})
    none_needed = json.dumps({"steps": [{"id": "s1", "needs_tool": False, "reason": "x"},
                                        {"id": "s2", "needs_tool": False, "reason": "y"}]})
    missing_verdict = json.dumps({"steps": [{"id": "s1", "needs_tool": True, "reason": "x"}]})
    prompts: list[str] = []
    overrides = {
        ("necessity", "A recipe"): no_tool_first,
        ("necessity", "A meeting"): none_needed,
        ("necessity", "Take the capital"): missing_verdict,
        ("verify", "A jacket"): '{"dependency": "high"}',  # a judge that never answers properly
    }
    oracle = oracle_model(overrides)
    inner = oracle.replies[0]

    def reply(messages, tools):
        first = messages[1].content or ""
        if "Alice ran" in first and messages[0].content == _verify.SYSTEM:
            prompts.append(first)
            return verify_reply(first, atomic=0, no_forced_wait=0, contributes=0)  # every step judged bad
        return inner(messages, tools)

    ctx = _ctx(config, ScriptedModel([reply] * 200), qa_path=qa, llm_retries=1)
    results = run(ctx, "qa", "decompose", "necessity", "verify")
    necessity, verify = results[2][0], results[3][0]
    assert (necessity.inputs, necessity.outputs, necessity.dropped, necessity.failed) == (5, 2, 3, 1)
    assert necessity.drop_reasons == {"no_tool_needed": 1, "necessity_incomplete": 1, "necessity_violated": 1}
    violated = next(e["dropped"] for e in _entries(ctx, "necessity").values()
                    if (e["dropped"] or "").startswith("necessity_violated"))
    assert violated == "necessity_violated: s1 is used by s2 but needs no tool"
    assert (verify.inputs, verify.outputs, verify.dropped, verify.failed) == (2, 0, 2, 1)
    assert verify.drop_reasons == {"below_verify_threshold": 1, "judge_failed": 1}
    # one call per question, one item per dependency and per step
    [prompt] = prompts
    shape = json.loads(prompt[prompt.rindex("Reply as ") + 9:])
    assert [d["id"] for d in shape["dependencies"]] == ["s3"] and [s["id"] for s in shape["steps"]] == [
        "s1",
        "s2",
        "s3",
    ]
    entry = next(e for e in _entries(ctx, "verify").values() if e["gate"])
    assert entry["gate"]["scores"]["verify_threshold"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.5) / 4)
    verdicts = next(a["verdicts"] for a in entry["audit"] if "verdicts" in a)
    assert [s["atomic"] for s in verdicts["steps"]] == [0, 0, 0]


def test_verification_reply_must_cover_every_item(tmp_path, config):
    qa = _qa_file(tmp_path, ["Alice ran"])

    def partial(messages, tools):
        if messages[0].content == _verify.SYSTEM:
            r = json.loads(verify_reply(messages[1].content))
            r["steps"] = r["steps"][:2]  # a step without a verdict
            return json.dumps(r)
        return oracle_model().replies[0](messages, tools)

    ctx = _ctx(config, ScriptedModel([partial] * 50), qa_path=qa, llm_retries=1)
    verify = run(ctx, "qa", "decompose", "necessity", "verify")[3][0]
    assert verify.failed == 1 and verify.drop_reasons == {"judge_failed": 1}


def test_percentile_threshold_from_the_runs_scores(tmp_path, config):
    qa = _qa_file(tmp_path, ["A recipe", "Alice ran", "A meeting", "Take the capital", "A jacket"])
    weak = {"Alice ran": dict(atomic=0), "A jacket": dict(atomic=0, no_forced_wait=0)}
    base = oracle_model().replies[0]

    def reply(messages, tools):
        first = messages[1].content or ""
        if messages[0].content == _verify.SYSTEM:
            key = next((k for k in weak if k in first), None)
            return verify_reply(first, **(weak[key] if key else {}))
        return base(messages, tools)

    model = ScriptedModel([reply] * 200)
    ctx = _ctx(config, model, qa_path=qa, verify_percentile=40.0)
    verify = run(ctx, "qa", "decompose", "necessity", "verify")[3][0]
    scores = sorted(e["gate"]["scores"]["verify_threshold"] for e in _entries(ctx, "verify").values())
    assert len(scores) == 5 and scores[0] < scores[1] < scores[2] == scores[-1]
    threshold = ctx.run.manifest["stages"]["verify_threshold"]["threshold"]
    assert threshold == pytest.approx(scores[1] + (scores[2] - scores[1]) * 0.6)  # 40th percentile of five
    assert (verify.outputs, verify.dropped) == (3, 2)
    # a fixed threshold on the same run re-decides without a model call
    calls = model.calls
    ctx2 = _ctx(config, model, qa_path=qa, verify_threshold=0.0)
    again = run(ctx2, "verify")[0][0]
    assert again.outputs == 5 and model.calls == calls


def test_single_hop_and_free_text_final_answers(tmp_path, config):
    qa = _write(tmp_path / "qa.jsonl", [
        json.dumps({"question": "How many kilometres is 5 miles?", "answer": "8.04672"}),
        json.dumps({"question": "Which day of the week was 2024-02-29?",
                    "answer": "It fell on a Thursday, the leap day of 2024."}),
        json.dumps({"question": "Which day of the week was 2024-03-01?", "answer": "It was a Saturday, I believe."}),
    ])
    one_hop = json.dumps({"steps": [{"id": "s1", "sub_question": "How many kilometres is 5 miles?", "depends_on": [],
                                     "sub_answer": "8.04672"}]})
    leap = json.dumps(
        {"steps": [{"id": "s1", "sub_question": "Which weekday is 2024-02-29?", "sub_answer": "Thursday"}]}
    )
    march = json.dumps(
        {"steps": [{"id": "s1", "sub_question": "Which weekday is 2024-03-01?", "sub_answer": "Friday"}]}
    )

    def reply(messages, tools):
        system, first = messages[0].content, messages[1].content or ""
        if system == _decompose.SYSTEM:
            return one_hop if "5 miles" in first else leap if "02-29" in first else march
        if system == _necessity.SYSTEM:
            return json.dumps({"steps": [{"id": "s1", "needs_tool": True, "reason": "a conversion"}]})
        if system == _verify.SYSTEM:
            agrees = "2024-03-01" not in first
            return verify_reply(first, final={"consistent": int(agrees), "reason": "Saturday is not Friday"
                                              if not agrees else "says Thursday"})
        raise AssertionError(system)

    ctx = _ctx(config, ScriptedModel([reply] * 50), qa_path=qa)
    results = run(ctx, "qa", "decompose", "necessity", "verify")
    decompose, verify = results[1][0], results[3][0]
    assert decompose.outputs == 3  # a single hop is a decomposition; free text need not equal the last hop
    flags = {d.question[:30]: d.flags for d in ctx.outputs_of("decompose", Decomposition)}
    assert flags["How many kilometres is 5 miles"] == [] and all(f == ["free_text_answer"] for k, f in flags.items()
                                                                  if k.startswith("Which"))
    assert verify.outputs == 2 and verify.drop_reasons == {"final_answer_inconsistent": 1}
    # a bare value that differs from the last hop is still a mismatch (no judge can rescue it)
    from astra.synthesis.environments._decompose import StepReply, structural_problems

    steps = [StepReply(id="s1", sub_question="?", sub_answer="Friday")]
    assert structural_problems(steps, "Saturday")[0].startswith("answer_mismatch")


def test_synthesized_tool_may_return_a_record_holding_the_answer():
    from astra.synthesis.environments._answers import answer_in_result

    assert answer_in_result({"km": 8.04672, "unit": "km"}, "8.04672")
    assert answer_in_result({"rows": [{"id": 10}, {"id": 1}]}, "1")
    assert not answer_in_result({"id": 10}, "1")  # "1" never matches "10"


def test_verification_rules_catch_compound_steps_and_dangling_steps():
    from astra.records import DecompositionStep
    from astra.synthesis.environments._verify import rule_scores

    steps = [
        DecompositionStep(id="a", sub_question="What is 2+2 and what is 3+3?", sub_answer="4", needs_tool=True),
        DecompositionStep(id="b", sub_question="What is 4*2?", sub_answer="8", depends_on=["a"], needs_tool=True),
        DecompositionStep(id="c", sub_question="What colour is the sky?", sub_answer="blue", needs_tool=True),
        DecompositionStep(id="d", sub_question="What is 8+1?", sub_answer="9", depends_on=["b"], needs_tool=True),
    ]
    dec = Decomposition(id="d1", qa_id="q", question="?", answer="9", steps=steps)
    rules = rule_scores(dec)
    assert rules["atomicity"] == 0.75  # step a asks two things
    assert rules["completeness"] == 0.75  # step c contributes nothing to the final hop
    assert rules["dependency"] == 1.0


# ------------------------------------------------------------------ stage 5: synthesis


def _dec_and_step(key: str, step_id: str):
    steps = GOLD[key]
    question = next(line for line in _sample_lines() if key in line)
    q = json.loads(question)
    from astra.records import DecompositionStep

    dsteps = [
        DecompositionStep(
            id=s["id"],
            sub_question=s["sub_question"],
            sub_answer=s["sub_answer"],
            depends_on=s["depends_on"],
            is_parallel=s["is_parallel"],
            needs_tool=True,
        )
        for s in steps
    ]
    dec = Decomposition(id="dec_x", qa_id="qa_x", question=q["question"], answer=q["answer"], steps=dsteps)
    return dec, next(s for s in dsteps if s.id == step_id)


def _sample_lines() -> list[str]:
    from astra.synthesis.environments import sample_qa_path

    return sample_qa_path().read_text().splitlines()


def _synth(config, replies, key="A meeting was scheduled", step_id="s2", **update):
    ctx = _ctx(config, ScriptedModel(replies), **update)
    dec, step = _dec_and_step(key, step_id)

    async def go():
        with anyio.fail_after(60):
            async with SandboxRunner(ctx.config) as sandbox:
                return await synthesize_one(ctx, sandbox, dec, step)

    return anyio.run(go)


def test_synthesis_feedback_retry_and_attempt_record(config):
    gold = json.loads(tool_reply(GOLD["A meeting was scheduled"][1]))
    substring = {**gold, "code": "import datetime\n\ndef weekday_of(date):\n    d = datetime.date.fromisoformat(date)\n"
                 "    return d.strftime('%A, %d %B %Y')\n"}
    outcome = _synth(config, [json.dumps(substring), json.dumps(gold)], llm_retries=0)
    [tool] = outcome.outputs
    assert isinstance(tool, SynthesizedTool)
    assert [a.ok for a in tool.attempts] == [False, True]
    assert tool.attempts[0].error.startswith("wrong_result: the call returned \"Thursday, 29 February 2024\"")
    assert tool.attempts[1].result == "Thursday"
    assert tool.call.arguments == {"date": "2024-02-29"} and tool.call.expected == "Thursday"
    # the failure was fed back to the model before the second attempt
    assert "That tool failed: wrong_result" in outcome.audit[-1]["raw"] or len(outcome.audit) == 2


def test_synthesis_static_checks_and_bounded_attempts(config):
    gold = json.loads(tool_reply(GOLD["A meeting was scheduled"][1]))
    hard_coded = {**gold, "code": "def weekday_of(date):\n    return 'Thursday'\n"}
    third_party = {**gold, "code": "import dateutil\n\ndef weekday_of(date):\n    return dateutil.parse(date)\n"}
    bad_args = {**gold, "arguments": {"day": "2024-02-29"}}
    outcome = _synth(config, [json.dumps(hard_coded), json.dumps(third_party), json.dumps(bad_args)],
                     synth_attempts=3, llm_retries=0)
    assert not outcome.outputs and outcome.failed
    assert outcome.dropped.startswith("synthesis_failed: 3 attempt(s)")
    attempts = outcome.audit[-1]["attempts"]
    assert "hard-coded" in attempts[0]["error"]
    assert "'dateutil', which is not in the standard library" in attempts[1]["error"]
    assert "arguments: 'date' is a required property" in attempts[2]["error"]


def test_synthesis_complexity_scaling_kept_only_when_it_still_verifies(config):
    gold = json.loads(tool_reply(GOLD["Take the capital"][1]))
    scaled = {
        **gold,
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}, "upper": {"type": "boolean"}},
            "required": ["text"],
        },
        "code": "def reverse_upper(text, upper=True):\n    if not isinstance(text, str):\n"
        "        raise TypeError('text must be a string')\n    out = text[::-1]\n"
        "    return out.upper() if upper else out\n",
    }
    outcome = _synth(config, [json.dumps(gold), json.dumps(scaled)], key="Take the capital", complexity_scaling=True)
    [tool] = outcome.outputs
    assert tool.variant == "scaled" and "upper=True" in tool.implementation.source
    broken = {**scaled, "code": "def reverse_upper(text, upper=False):\n    return text.upper()\n"}
    outcome = _synth(config, [json.dumps(gold), json.dumps(broken)], key="Take the capital", complexity_scaling=True)
    [tool] = outcome.outputs
    assert tool.variant == "base" and [a.variant for a in tool.attempts] == ["base", "scaled"]
    assert tool.attempts[1].error.startswith("wrong_result")


ATTACKS = {  # each uses its argument, so static checks let it through to the sandbox
    "infinite_loop": "def weekday_of(date):\n    while date:\n        pass\n",
    "read_secret_env": "import os\n\ndef weekday_of(date):\n    return os.environ.get('ASTRA_TEST_SECRET', date)\n",
    "write_outside_scratch": "def weekday_of(date):\n    open('{outside}', 'w').write(date)\n    return date\n",
    "read_host_file": "def weekday_of(date):\n    return open('{secret_file}').read() + date[:0]\n",
    "network": "import socket\n\ndef weekday_of(date):\n"
               "    socket.create_connection(('127.0.0.1', 9))\n    return date\n",
    "shell": "import os\n\ndef weekday_of(date):\n    os.system('echo ' + date + ' > {outside}')\n    return date\n",
    "memory_bomb": "def weekday_of(date):\n    blob = [date * 10_000_000 for _ in range(1000)]\n    return len(blob)\n",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_generated_code_attacking_the_sandbox_is_contained(attack, config, tmp_path, monkeypatch):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("Thursday")
    outside = tmp_path / "outside.txt"
    monkeypatch.setenv("ASTRA_TEST_SECRET", "Thursday")  # if it leaked, the call would 'pass'
    gold = json.loads(tool_reply(GOLD["A meeting was scheduled"][1]))
    code = ATTACKS[attack].format(outside=outside, secret_file=secret_file)
    reply = json.dumps({**gold, "code": code})
    outcome = _synth(config, [reply], synth_attempts=1, llm_retries=0, sandbox_timeout_s=1.0)
    assert not outcome.outputs and outcome.failed, outcome
    assert not outside.exists()
    error = outcome.audit[-1]["attempts"][0]["error"]
    assert error and not error.startswith("wrong_result: the call returned \"Thursday\""), error
    print(attack, "->", error)


# ------------------------------------------------------------------ stage 6: merging


def _synth_tool(tid: str, t: dict, args: dict, expected: str) -> SynthesizedTool:
    from astra.records import ToolImplementation, ToolSpec
    from astra.synthesis.environments._models import ReferenceCall

    impl = ToolImplementation(spec=ToolSpec(server="synthesized", name=t["name"], description=t["description"],
                                            input_schema=t["parameters"]), source=t["code"], entrypoint=t["name"])
    return SynthesizedTool(id=tid, decomposition_id="d", qa_id="q", step_id="s", sub_question="?", implementation=impl,
                           call=ReferenceCall(synth_id=tid, arguments=args, expected=expected))


def _merge(config, cluster, replies=()):
    ctx = _ctx(config, ScriptedModel(list(replies)), llm_retries=0)

    async def go():
        async with SandboxRunner(ctx.config) as sandbox:
            return await merge_cluster(ctx, sandbox, cluster)

    return anyio.run(go)


def test_merge_clusters_by_intent_and_reverifies_every_call(config):
    km = tool("miles_to_km", "Convert a distance in miles to kilometres.", {"miles": "number"},
              "def miles_to_km(miles):\n    return miles * 1.609344\n")
    km_rounded = tool("convert_miles_to_km", "Convert miles into kilometres.", {"miles": "number"},
                      "def convert_miles_to_km(miles):\n    return round(miles * 1.609, 1)\n")
    add = tool(
        "add_numbers", "Add two numbers.", {"a": "number", "b": "number"}, "def add_numbers(a, b):\n    return a + b\n"
    )
    mul = tool(
        "multiply", "Multiply two numbers.", {"a": "number", "b": "number"}, "def multiply(a, b):\n    return a * b\n"
    )
    tools = [
        _synth_tool("t1", km, {"miles": 5}, "8.04672"),
        _synth_tool("t2", km_rounded, {"miles": 3}, "4.8"),  # rounded: served by the precise tool too
        _synth_tool("t3", add, {"a": 1, "b": 2}, "3"),
        _synth_tool("t4", mul, {"a": 2, "b": 3}, "6"),
    ]
    clusters = cluster_tools(tools)
    assert sorted(sorted(t.id for t in c) for c in clusters) == [["t1", "t2"], ["t3"], ["t4"]]
    outcome = _merge(config, clusters[0] if len(clusters[0]) == 2 else next(c for c in clusters if len(c) == 2))
    [merged] = outcome.outputs
    assert merged.merged and merged.members == ["t1", "t2"] and len(merged.calls) == 2
    assert merged.implementation.spec.name == "miles_to_km"  # the precise one serves both calls


def test_merge_that_breaks_a_call_is_rejected(config):
    add = tool(
        "add_numbers", "Add two numbers.", {"a": "number", "b": "number"}, "def add_numbers(a, b):\n    return a + b\n"
    )
    add_wrong = tool("sum_numbers", "Add two numbers together.", {"a": "number", "b": "number"},
                     "def sum_numbers(a, b):\n    return a - b\n")
    cluster = [_synth_tool("t1", add, {"a": 1, "b": 2}, "3"), _synth_tool("t2", add_wrong, {"a": 5, "b": 2}, "3")]
    assert len(cluster_tools(cluster)) == 1
    # neither member serves both calls; the LLM's merged tool breaks one call too -> rejected
    llm_bad = json.dumps({**add, "arguments": {"a": 1, "b": 2}})
    outcome = _merge(config, cluster, [llm_bad])
    assert [o.members for o in outcome.outputs] == [["t1"], ["t2"]]
    assert all(not o.merged and o.merge_note.startswith("merge_rejected") for o in outcome.outputs)
    assert "call t2: returned 7, expected '3'" in outcome.outputs[0].merge_note
    # an LLM-merged implementation that serves every call is accepted
    llm_good = json.dumps({"name": "combine", "description": "a+b or a-b", "parameters": add["parameters"],
                           "arguments": {}, "code": "def combine(a, b):\n    return a + b if a < b else a - b\n"})
    outcome = _merge(config, cluster, [llm_good])
    [merged] = outcome.outputs
    assert merged.merged and merged.implementation.spec.name == "combine"


def _servers_attacks() -> dict[str, tuple[str, dict, set[str]]]:
    """The servers unit's sandbox attack cases (tests/servers/test_sandbox.py), loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "servers" / "test_sandbox.py"
    if not path.is_file():
        pytest.skip("tests/servers/test_sandbox.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("_servers_sandbox_attacks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ATTACKS


def test_servers_attack_cases_as_synthesised_tools_are_contained(config, tmp_path):
    """Every attack of the servers' suite, offered by the 'model' as a tool implementation, is
    contained: the synthesis fails with the sandbox's verdict and nothing escapes."""
    attacks = _servers_attacks()
    target = tmp_path / "outside" / "pwned.txt"
    target.parent.mkdir()
    replies, names = [], sorted(attacks)
    for name in names:
        source, _, _ = attacks[name]
        params = {"path": {"type": "string"}} if "def attack(path)" in source else {}
        args = {"path": str(target)} if params else {}
        replies.append(json.dumps({"name": "attack", "description": f"attack {name}", "code": source, "arguments": args,
                                   "parameters": {"type": "object", "properties": params, "required": list(params)}}))
    ctx = _ctx(config, ScriptedModel(replies), synth_attempts=1, llm_retries=0, sandbox_timeout_s=3.0)
    dec, step = _dec_and_step("A meeting was scheduled", "s2")

    async def go():
        with anyio.fail_after(240):
            async with SandboxRunner(ctx.config, size=1) as sandbox:
                return [await synthesize_one(ctx, sandbox, dec, step) for _ in names]

    outcomes = anyio.run(go)
    for name, outcome in zip(names, outcomes, strict=True):
        assert not outcome.outputs and outcome.failed, name
        attempt = outcome.audit[-1]["attempts"][0]
        # the attack's own verdict, or an earlier limit on this loaded machine (never a result)
        kinds = attacks[name][2] | {"timeout", "cpu", "memory", "crash"}
        assert attempt["error"].split(":", 1)[0] in kinds, (name, attempt["error"])
    assert not target.exists()
    assert not Path("/tmp/astra-sandbox-pwned").exists()


def test_qa_generation_from_a_corpus_is_grounded_per_paragraph(tmp_path, config):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Nile is 6650 km long.\n\nMount Fuji is 3776 m high.\n")
    seen: list[str] = []

    def reply(messages, tools):
        prompt = messages[-1].content
        seen.append(prompt)
        fact = "Nile" if "Nile" in prompt else "Fuji"
        return json.dumps(
            {"items": [{"question": f"How long/high is the {fact} in miles/feet, doubled?", "answer": fact}]}
        )

    ctx = _ctx(config, ScriptedModel([reply, reply]), qa_path=None, corpus_path=corpus, questions_per_source=1)
    [(counts, _)] = run(ctx, "qa")
    assert (counts.inputs, counts.outputs) == (2, 2)
    assert sorted(q.answer for q in ctx.outputs_of("qa", QAItem)) == ["Fuji", "Nile"]
    assert all(q.source.startswith("generated:scripted:") for q in ctx.outputs_of("qa", QAItem))
    assert any("The Nile is 6650 km long." in p for p in seen) and any("Mount Fuji" in p for p in seen)
