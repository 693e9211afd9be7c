"""Process reward (ASTRA recipe) and episode scoring; `astra env score`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from astra.cli import app
from astra.records import EnvironmentSpec, Step, Trajectory
from astra.servers import process_reward, score_episode
from astra.servers._rewards import answer_found


def test_process_reward_values() -> None:
    assert process_reward(0, 5, 3) == 0.0
    assert process_reward(2, 4, 0) == 0.0
    assert process_reward(0, 0, 0) == 0.0
    assert process_reward(4, 4, 4) == 1.0
    # r = 2/4, p = 2/8: F1 = 2 * 0.5 * 0.25 / 0.75 = 1/3
    assert process_reward(2, 4, 8) == pytest.approx(1 / 3)
    # r = 3/3, p = 3/6: F1 = 2/3
    assert process_reward(3, 3, 6) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="exceeds"):
        process_reward(5, 4, 10)


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 200))
def test_process_reward_is_a_bounded_f1(solved: int, total: int, calls: int) -> None:
    if solved > total:
        return
    reward = process_reward(solved, total, calls)
    assert 0.0 <= reward <= 1.0
    if solved and calls:
        r, p = solved / total, min(1.0, solved / calls)
        assert reward == pytest.approx(2 * p * r / (p + r))
        assert min(r, p) - 1e-12 <= reward <= max(r, p) + 1e-12


def _trajectory(steps: list[Step], tid: str = "t1") -> Trajectory:
    return Trajectory(id=tid, task_id="task", model="scripted:test", steps=steps, termination="final_answer")


def _step(i: int, tool: str, args: dict, result: object, error: bool = False) -> Step:
    return Step(
        call_id=f"c{i}",
        tool=f"inventory__{tool}",
        server="inventory",
        server_tool=tool,
        arguments=args,
        result=result,
        is_error=error,
    )


def test_score_episode_checks_calls_and_computes_process_reward(inventory: EnvironmentSpec) -> None:
    v = {x.id: x for x in inventory.verifiers}
    steps = [
        _step(0, "get_item", {"sku": "WID-1"}, json.dumps(v["v1"].expected_result)),  # solves v1, check passes
        _step(1, "get_item", {"sku": "HAM-9"}, "Error: KeyError", error=True),  # error: fails
        _step(2, "create_order", v["v3"].arguments, {"order_id": "ORD-1", "total": 28.0}),  # solves v3
        _step(3, "add_stock", v["v4"].arguments, {"sku": "HAM-2", "quantity": 12}),  # wrong result: fails, not solved
        _step(4, "stock_value", {}, {"result": 354.0}),  # solves v5
    ]
    score = score_episode(inventory, _trajectory(steps))
    assert [c.passed for c in score.per_call] == [True, False, True, False, True]
    assert score.per_call[3].verifier_id == "v4" and "expected" in score.per_call[3].reason
    assert score.solved_subquestions == ["v1", "v3", "v5"]
    assert (score.total_subquestions, score.tool_calls) == (5, 5)
    assert score.recall == pytest.approx(0.6) and score.precision == pytest.approx(0.6)
    assert score.process_reward == pytest.approx(0.6)
    assert score.call_reward == pytest.approx(3 / 5)
    assert score.status == "ok"


def test_an_environment_without_sub_questions_fails_loudly(inventory: EnvironmentSpec) -> None:
    bare = inventory.model_copy(update={"verifiers": []})
    score = score_episode(bare, _trajectory([_step(0, "get_item", {"sku": "WID-1"}, {})]))
    assert score.status == "failed" and "no sub-question" in (score.error or "")
    assert score.process_reward == 0.0


def test_answer_found() -> None:
    assert answer_found(40, {"sku": "WID-1", "quantity": 40})
    assert not answer_found(40, {"sku": "WID-1", "quantity": 400})
    assert answer_found("ord-1", '{"order_id": "ORD-1"}')
    assert answer_found(["WID-1", "HAM-2"], {"items": [{"sku": "HAM-2"}, {"sku": "WID-1"}]})
    assert not answer_found(["WID-1", "BOLT-7"], {"items": [{"sku": "HAM-2"}, {"sku": "WID-1"}]})
    assert answer_found(354.0, {"result": 354})
    assert answer_found("11", {"quantity": 11})


def test_cli_score(inventory: EnvironmentSpec, tmp_path: Path) -> None:
    v = {x.id: x for x in inventory.verifiers}
    good = _trajectory(
        [_step(i, x.tool, x.arguments, x.expected_result) for i, x in enumerate(inventory.verifiers)], "perfect"
    )
    half = _trajectory(
        [_step(0, "get_item", v["v1"].arguments, v["v1"].expected_result), _step(1, "list_items", {}, {"items": []})],
        "half",
    )
    path = tmp_path / "trajectories.jsonl"
    path.write_text(good.model_dump_json() + "\n" + half.model_dump_json() + "\n")
    spec_file = tmp_path / "env.json"
    spec_file.write_text(inventory.model_dump_json())
    result = CliRunner().invoke(
        app, ["env", "score", str(spec_file), str(path), "--json", "--home", str(tmp_path / "home")]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rewards = {s["trajectory_id"]: s["process_reward"] for s in out["scores"]}
    assert rewards["perfect"] == 1.0
    # 1 of 5 solved in 2 calls: r = 0.2, p = 0.5
    assert rewards["half"] == pytest.approx(2 * 0.2 * 0.5 / 0.7)
    # a broken line is reported with file:line and the rest is still scored
    path.write_text(good.model_dump_json() + "\n" + '{"id": "x"}\n')
    bad = CliRunner().invoke(
        app, ["env", "score", str(spec_file), str(path), "--json", "--home", str(tmp_path / "home")]
    )
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert len(report["scores"]) == 1 and report["errors"][0].startswith(f"{path}:2: ")
