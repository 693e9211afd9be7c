import json

import pytest

from astra.records import Step, Trajectory
from astra.synthesis.environments._answers import answers_match
from astra.synthesis.environments.reward import compute_score, f1_reward, parse_ground_truth, score_trajectory


@pytest.mark.parametrize(
    ("got", "expected"),
    [
        (1500, "1500"), (1.5, "1.50"), (3.3333, "3.33"), (2.0, "2"), ("1,200", 1200), ("$1,200", "1200"),
        ("12.5 km", 12.5), ("12.5km", "12.5 KM"), ("  Thursday ", "thursday."), ("OYKOT", "oykot"),
        (True, "yes"), ([1, 2], "1, 2"), ({"a": 1}, {"A": "1"}), ('{"result": 4}', '{"result": 4.0}'),
        (0.1 + 0.2, "0.3"), (["x"], "x"),
    ],
)
def test_answers_match(got, expected):
    assert answers_match(got, expected)


@pytest.mark.parametrize(
    ("got", "expected"),
    [
        ("Thursday, 29 February", "Thursday"),  # containment is not a match
        ("Paris is the capital", "Paris"),
        (3.4, "3.33"), (1501, "1500"), ("12.5 mi", "12.5 km"), (False, "yes"), ([1, 2, 3], "1, 2"),
        (None, "0"), ({"a": 1}, {"a": 1, "b": 2}), ("", "x"), (42, "421"),
    ],
)
def test_answers_do_not_match(got, expected):
    assert not answers_match(got, expected)


def test_f1_reward_hand_cases():
    assert f1_reward(3, 3, 3) == (1.0, 1.0, 1.0)
    recall, precision, reward = f1_reward(2, 4, 2)
    assert (recall, precision) == (0.5, 1.0) and reward == pytest.approx(2 / 3)
    assert f1_reward(2, 2, 4)[2] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_reward(0, 3, 5) == (0.0, 0.0, 0.0)
    assert f1_reward(1, 2, 0) == (0.5, 0.0, 0.0)  # no calls: no precision, no reward
    with pytest.raises(ValueError):
        f1_reward(-1, 2, 2)


SUB_QA = [
    {"id": "s1", "sub_question": "5 miles in km?", "sub_answer": "8.04672", "tool": "miles_to_km"},
    {"id": "s2", "sub_question": "3 miles in km?", "sub_answer": "4.828032", "tool": "miles_to_km"},
    {"id": "s3", "sub_question": "sum?", "sub_answer": "12.874752", "tool": "add_numbers"},
]


def _call(name, args, result):
    return (f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'
            f"<|im_end|>\n<|im_start|>user\n<tool_response>\n{result}\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_compute_score_verl_signature():
    perfect = (
        _call("miles_to_km", {"miles": 5}, '{"result": 8.04672}')
        + _call("miles_to_km", {"miles": 3}, "4.828032")
        + _call("add_numbers", {"a": 8.04672, "b": 4.828032}, "12.874752")
        + "The answer is 12.874752 km."
    )
    assert compute_score("astra_env", perfect, json.dumps(SUB_QA)) == 1.0
    # one wasted call: precision 3/4, recall 1
    wasted = _call("miles_to_km", {"miles": 50}, "80.4672") + perfect
    assert compute_score("astra_env", wasted, SUB_QA, extra_info={"index": 0}) == pytest.approx(2 * 0.75 / 1.75)
    # the same answer twice solves one sub-question once (matching, not double counting)
    twice = _call("miles_to_km", {"miles": 5}, "8.04672") * 2
    assert compute_score("astra_env", twice, SUB_QA) == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    # a final answer without tool calls earns nothing; an answer inside a longer text does not count
    assert compute_score("astra_env", "12.874752", SUB_QA) == 0.0
    assert compute_score("astra_env", _call("x", {}, "about 8.04672 km or so"), SUB_QA) == 0.0
    assert compute_score("astra_env", "", {"sub_qa": SUB_QA}) == 0.0


def test_ground_truth_malformed_is_an_error_not_a_score():
    with pytest.raises(ValueError):
        parse_ground_truth('{"answer": "x"}')
    with pytest.raises(ValueError):
        compute_score("astra_env", "<tool_response>1</tool_response>", "not json")


def test_score_trajectory_typed():
    steps = [
        Step(call_id="1", tool="miles_to_km", arguments={"miles": 5}, result={"result": 8.04672}),
        Step(call_id="2", tool="miles_to_km", arguments={"miles": 3}, result="boom", is_error=True),
        Step(call_id="3", tool="add_numbers", arguments={"a": 1, "b": 2}, result=12.874752),
    ]
    traj = Trajectory(id="t", task_id="task", model="m", steps=steps, termination="final_answer")
    reward = score_trajectory(traj, SUB_QA)
    assert (reward.solved, reward.total, reward.tool_calls) == (2, 3, 3)
    assert reward.solved_ids == ["s1", "s3"]
    assert reward.reward == pytest.approx(2 / 3)
