"""The ONE process reward: the matching rule, per-step rewards, and the same score through every
entry point (typed trajectory, environment verifiers, verl compute_score over any template,
OpenAI messages, adapter-recorded calls) for random episodes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astra.records import EnvironmentSpec, Step, Trajectory, Verifier
from astra.servers import (
    ToolCallRecord,
    answer_in_result,
    calls_from_messages,
    calls_from_text,
    compute_score,
    score_calls,
    score_episode,
    score_trajectory,
    sub_questions,
)
from astra.synthesis.environments import reward as verl_reward_file

from .render import FORMATS, messages, render

TOOLS = ["lookup_price", "convert_units", "find_order", "count_items"]
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": n,
            "description": n,
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
    for n in TOOLS
]


@pytest.mark.parametrize(
    ("result", "answer"),
    [
        ({"sku": "WID-1", "quantity": 40}, 40),
        ('{"order": {"id": "ORD-1", "lines": [{"sku": "A"}]}}', "ord-1"),
        ({"result": 354}, 354.0),
        ({"items": [{"sku": "HAM-2"}, {"sku": "WID-1"}]}, ["WID-1", "HAM-2"]),
        ({"rows": [{"city": "Paris", "pop": 2.1}]}, {"city": "paris"}),
        ('"{\\"result\\": 8.04672}"', "8.04672"),  # JSON text inside a JSON string (Llama's tojson)
        ("Reservation ID: RES987654", "Reservation ID: RES987654"),
        ({"total": 3.3333}, "3.33"),
    ],
)
def test_a_leaf_of_the_result_equal_to_the_answer_solves(result: Any, answer: Any) -> None:
    assert answer_in_result(result, answer)


@pytest.mark.parametrize(
    ("result", "answer"),
    [
        ({"quantity": 10}, "1"),  # "1" never matches 10
        ({"quantity": 10}, 1),
        ("10", "1"),
        ("Paris is the capital", "Paris"),  # never a substring
        ({"note": "about 8.04672 km"}, 8.04672),
        ({"items": [{"sku": "HAM-2"}]}, ["WID-1", "HAM-2"]),
        ({"rows": [{"city": "Paris"}]}, {"city": "paris", "pop": 2}),
        ({"Paris": 3}, "Paris"),  # keys are not values
    ],
)
def test_no_substring_or_partial_match(result: Any, answer: Any) -> None:
    assert not answer_in_result(result, answer)


def test_tool_free_steps_do_not_count_and_calls_solve_once() -> None:
    truth = [
        {"id": "a", "sub_answer": 5, "tool": "count_items"},
        {"id": "b", "sub_answer": 5, "tool": "count_items"},
        {"id": "c", "sub_answer": "yes", "tool": None},
    ]
    calls = [
        ToolCallRecord(name="count_items", result={"n": 5}),
        ToolCallRecord(name="count_items", result={"n": 5}),
        ToolCallRecord(name="lookup_price", result={"n": 5}),
        ToolCallRecord(name="count_items", is_error=True),
    ]
    score = score_calls(calls, truth)
    assert (score.solved, score.total, score.tool_calls) == (2, 2, 4)  # c is tool-free; the wrong tool solves nothing
    assert score.reward == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert score.solved_by_step == ["a", "b", None, None]
    assert sum(score.step_rewards) == pytest.approx(score.reward)
    assert score.step_rewards[0] > 0 and score.step_rewards[2] < 0


def test_astra_rl_sub_qa_dict_is_read_not_raised() -> None:
    truth = json.dumps(
        {"reservation_finder": ["Reservation ID: RES987654"], "baggage_fee_calculator": ["Extra charge: ₹600"]}
    )
    subs = sub_questions(truth)
    assert [(s.tool, s.answer) for s in subs] == [
        ("reservation_finder", "Reservation ID: RES987654"),
        ("baggage_fee_calculator", "Extra charge: ₹600"),
    ]
    calls = [ToolCallRecord(name="reservation_finder", result="Reservation ID: RES987654")]
    assert score_calls(calls, truth).reward == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_malformed_ground_truth_is_an_error_not_a_score() -> None:
    for bad in (
        '{"answer": "x"}',
        "not json",
        [{"sub_question": "no answer"}],
        json.dumps([{"sub_answer": 1, "tool": None}]),
    ):
        with pytest.raises(ValueError):
            compute_score("astra_env", "", bad)


# ----------------------------------------------------------------------------- every entry point agrees

_answers = st.one_of(
    st.integers(-500, 5000),
    st.sampled_from(["ORD-7", "Paris", "blue whale", "3.5 km", "yes"]),
    st.floats(0.5, 900, allow_nan=False).map(lambda f: round(f, 3)),
)


@st.composite
def episodes(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any], Any, bool]]]:
    n_sub = draw(st.integers(1, 4))
    truth = [
        {"id": f"s{i}", "sub_question": f"q{i}?", "sub_answer": draw(_answers), "tool": draw(st.sampled_from(TOOLS))}
        for i in range(n_sub)
    ]
    calls = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(TOOLS))
        kind = draw(st.sampled_from(["answer", "answer", "wrapped", "wrong", "error", "text"]))
        target = draw(st.sampled_from(truth))["sub_answer"]
        if kind == "answer":
            result: Any = {"result": target}
        elif kind == "wrapped":
            result = {"record": {"value": target, "id": "x-99"}, "count": 1}
        elif kind == "wrong":
            result = {"value": f"{target}0"}
        elif kind == "text":
            result = f"the value is {target}"
        else:
            result = "KeyError: no such row"
        calls.append((name, {"x": str(draw(st.integers(0, 9)))}, result, kind == "error"))
    return truth, calls


def _trajectory(calls: list[tuple[str, dict[str, Any], Any, bool]]) -> Trajectory:
    steps = [
        Step(
            call_id=f"c{i}",
            tool=f"env__{name}",
            server="env",
            server_tool=name,
            arguments=args,
            result=f"Error: {result}" if error else result,
            is_error=error,
        )
        for i, (name, args, result, error) in enumerate(calls)
    ]
    return Trajectory(id="t", task_id="task", model="scripted:x", steps=steps, termination="final_answer")


def _spec(truth: list[dict[str, Any]]) -> EnvironmentSpec:
    verifiers = [
        Verifier(id=t["id"], sub_question=t["sub_question"], expected_answer=t["sub_answer"], tool=t["tool"])
        for t in truth
    ]
    verifiers.append(
        Verifier(id="free", sub_question="a reasoning step", expected_answer="42")
    )  # tool-free: never counted
    return EnvironmentSpec(id="env_x", name="env-x", verifiers=verifiers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_every_entry_point_gives_the_same_reward(episode: tuple[list[dict[str, Any]], list[Any]]) -> None:
    truth, calls = episode
    trajectory = _trajectory(calls)
    reference = score_trajectory(trajectory, truth)
    assert sum(reference.step_rewards) == pytest.approx(reference.reward)
    assert len(reference.step_rewards) == len(calls)

    assert score_episode(_spec(truth), trajectory).process_reward == pytest.approx(reference.reward)
    msgs = messages("question?", calls, "final answer")
    assert score_calls(calls_from_messages(msgs), truth).reward == pytest.approx(reference.reward)
    ground_truth = json.dumps(truth)
    assert compute_score("astra_env", json.dumps(msgs[1:]), ground_truth) == pytest.approx(reference.reward)
    assert verl_reward_file.compute_score("astra_env", json.dumps(msgs[1:]), ground_truth) == pytest.approx(
        reference.reward
    )
    for kind, strip in FORMATS:
        text = render(kind, msgs, OPENAI_TOOLS, strip=strip)
        parsed = calls_from_text(text)
        assert [c.name for c in parsed] == [c[0] for c in calls], (kind, strip, text)
        assert compute_score("astra_env", text, ground_truth) == pytest.approx(reference.reward), (kind, strip, text)
    recorded = [
        ToolCallRecord(name=n, arguments=a, result=None if e else r, is_error=e).model_dump() for n, a, r, e in calls
    ]
    assert compute_score("astra_env", "unparseable", ground_truth, {"astra_calls": recorded}) == pytest.approx(
        reference.reward
    )


@pytest.mark.parametrize(("kind", "strip"), FORMATS)
def test_failed_calls_are_failed_in_every_template(kind: str, strip: bool) -> None:
    msgs = messages(
        "q?",
        [("find_order", {"x": "1"}, {"result": "ORD-7"}, False), ("count_items", {"x": "2"}, "boom", True)],
        "done",
    )
    parsed = calls_from_text(render(kind, msgs, OPENAI_TOOLS, strip=strip))
    assert [(c.name, c.is_error) for c in parsed] == [("find_order", False), ("count_items", True)]
    assert answer_in_result(parsed[0].result, "ORD-7") and parsed[0].arguments == {"x": "1"}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,  # the C scanner raises RecursionError, not ValueError
        "[1," * 20000,
        "x" + '{"a":"' * 20000,
        "[" + "{" * 3000 + "]",
    ],
    ids=["deep-brackets", "deep-array", "unclosed-objects", "deep-objects"],
)
def test_policy_text_never_crashes_the_reward(text: str) -> None:
    """Sampled text is scored, never raised on: a crash here is a crashed training step (red-team R3-11)."""
    truth = [{"sub_question": "q", "sub_answer": "Paris", "tool": "get_capital"}]
    recorded = {"astra_calls": [{"name": "get_capital", "arguments": {}, "result": "Paris", "is_error": False}]}
    assert compute_score("astra_env", text, truth, recorded) == 1.0
    assert compute_score("astra_env", text, truth) == 0.0


def test_calls_after_deep_nesting_and_longer_than_the_decode_window_are_read() -> None:
    truth = [{"sub_question": "q", "sub_answer": "Paris", "tool": "get_capital"}]
    call = '<tool_call>{"name": "get_capital", "arguments": {"note": "%s"}}</tool_call>'
    call += "<tool_response>Paris</tool_response>"
    assert compute_score("astra_env", "[" * 3000 + " " + call % "x", truth) == 1.0
    assert compute_score("astra_env", call % ("y" * 50_000), truth) == 1.0
    (record,) = calls_from_text(call % ("y" * 50_000))
    assert record.arguments == {"note": "y" * 50_000}
