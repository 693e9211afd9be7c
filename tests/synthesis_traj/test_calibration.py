"""The bundled calibration set (labels checked by rules), the agreement metrics, rejudge (no policy
call) and the CLI commands."""

from __future__ import annotations

import json
from collections import Counter

import anyio
import pytest
from typer.testing import CliRunner

from astra.cli import app
from astra.client import ScriptedModel, register_script, resolve_model
from astra.records import Reward, Task, Trajectory
from astra.runs import RunDir
from astra.synthesis._stage import Outcome, Stage
from astra.synthesis.trajectories import JudgeMode
from astra.synthesis.trajectories._calibration import (
    Defect,
    calibrate,
    cohen_kappa,
    dimension_of_ref,
    load_calibration_set,
)
from astra.synthesis.trajectories._reward import DIMENSIONS, itemise, rule_items

from .conftest import judge_reply

CASES, ERRORS = load_calibration_set()


def test_bundled_set_is_complete_and_justified():
    assert ERRORS == [] and len(CASES) >= 40
    kinds = Counter(c.defect for c in CASES)
    assert set(kinds) == set(Defect) and all(n >= 4 for n in kinds.values())
    for case in CASES:
        found = itemise(case.task, case.trajectory)
        refs = {c.ref for c in found.calls} | {r for r, _ in found.tool_messages} | {r for r, _ in found.plan_segments}
        refs |= {r for r, _ in found.understand_batches} | {"F.understand", "F.plan", "A.relevance", "A.summary"}
        assert {lb.ref for lb in case.labels} == refs, case.id
        assert all(len(lb.why) > 10 for lb in case.labels), case.id


def test_labels_agree_with_every_rule_that_can_decide():
    decided = Counter()
    for case in CASES:
        labels = {lb.ref: lb.score for lb in case.labels}
        for ref, verdict in rule_items(case.task, case.trajectory, itemise(case.task, case.trajectory)).items():
            assert labels[ref] == verdict.score, (case.id, ref, verdict.reason)
            decided[case.defect] += 1
    # the rule-decidable defects are really decided by rules
    for defect in (Defect.REDUNDANT_CALL, Defect.IGNORED_ERROR, Defect.FABRICATED_URL, Defect.LANGUAGE_MISMATCH):
        assert decided[defect] >= 5, defect


def test_cohen_kappa_textbook_values():
    # 2x2: 20 both yes, 15 both no, 5 + 10 disagreements: p_o 0.7, p_e 0.5 -> kappa 0.4
    pairs = [(1.0, 1.0)] * 20 + [(0.0, 0.0)] * 15 + [(1.0, 0.0)] * 5 + [(0.0, 1.0)] * 10
    assert cohen_kappa(pairs) == 0.4
    assert cohen_kappa([(1.0, 1.0)] * 4) == 1.0 and cohen_kappa([]) is None
    assert cohen_kappa([(0.5, 1.0), (1.0, 0.5)]) == -1.0


def test_oracle_judge_report_is_exact():
    judge = resolve_model("scripted:calibration-oracle")
    report = anyio.run(lambda: calibrate(CASES, judge, repeats=2))
    assert judge.calls == 2 * len(CASES) and report.judge_calls_per_case == 1.0
    for s in report.spread:
        assert (s.accuracy_mean, s.accuracy_min, s.accuracy_max, s.accuracy_stdev, s.kappa_mean, s.changed_items) == (
            1.0, 1.0, 1.0, 0.0, 1.0, 0.0), s
    assert set(report.runs[0].by_defect.values()) == {1.0} and report.items == sum(len(c.labels) for c in CASES)


def _expected_lenient_accuracy() -> dict[str, float]:
    """A judge that passes everything: each item's verdict is the rule's where a rule fires, else 1."""
    right, total = Counter(), Counter()
    for case in CASES:
        fixed = rule_items(case.task, case.trajectory, itemise(case.task, case.trajectory))
        for lb in case.labels:
            verdict = fixed[lb.ref].score if lb.ref in fixed else 1.0
            dim = dimension_of_ref(lb.ref)
            total[dim] += 1
            right[dim] += verdict == lb.score
    return {d: round(right[d] / total[d], 4) for d in total}


def test_lenient_judge_is_measured_as_lenient():
    lenient = ScriptedModel([lambda m, t: judge_reply(m[-1].content)] * len(CASES), name="lenient")
    report = anyio.run(lambda: calibrate(CASES, lenient, concurrency=1))
    got = {d.dimension: d.accuracy for d in report.runs[0].dimensions}
    assert got == _expected_lenient_accuracy()
    assert got["tool_understand"] < 1.0 and got["final_answer"] < 1.0
    assert report.runs[0].by_defect["clean"] == 1.0 and report.runs[0].by_defect["wrong_answer"] < 1.0


def test_failing_judge_never_agrees():
    junk = ScriptedModel(["no idea"] * 3 * len(CASES), name="junk")
    report = anyio.run(lambda: calibrate(CASES, junk, concurrency=1))
    run = report.runs[0]
    assert len(run.failed_cases) == len(CASES) and run.judge_calls == 3 * len(CASES)
    assert all(d.accuracy == 0.0 for d in run.dimensions)


def test_rules_judge_calibration_makes_no_call():
    report = anyio.run(lambda: calibrate(CASES, None, mode=JudgeMode.RULES))
    assert report.judge == "rules" and report.judge_calls_per_case == 0.0
    acc = {d.dimension: d.accuracy for d in report.runs[0].dimensions}
    assert acc["tool_call"] == 1.0 and acc["final_answer"] < 1.0  # rules cannot see a wrong answer


def test_bad_lines_in_a_set_are_reported_and_skipped(tmp_path):
    good = CASES[0].model_dump_json()
    bad_label = json.loads(good)
    bad_label["id"] = "other"
    bad_label["labels"][0]["score"] = 0.7
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join([good, "{not json", json.dumps(bad_label), good]) + "\n")
    cases, errors = load_calibration_set(path)
    assert [c.id for c in cases] == [CASES[0].id]
    assert errors[0].startswith(f"{path}:2: ") and errors[1].startswith(f"{path}:3: labels.0.score")
    assert errors[2] == f"{path}:4: id: duplicate case {CASES[0].id!r}"


def test_calibrate_cli_json():
    out = CliRunner().invoke(app, ["judge", "calibrate", "--judge", "scripted:calibration-oracle", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["cases"] == len(CASES) and all(s["kappa_mean"] == 1.0 for s in report["spread"])


# ----------------------------------------------------------------------------- rejudge


class Tripwire:
    built = 0

    def __init__(self, **_):
        Tripwire.built += 1
        raise AssertionError("rejudge built the policy model")


register_script("policy-tripwire", Tripwire)


def _stored_run(tmp_path):
    """A finished run: tasks, rollouts (one unanswered) and a v1 reward, written through the stages."""
    run = RunDir(tmp_path / "run", config={"model": "scripted:policy-tripwire", "out_dir": str(tmp_path / "run")})
    cases = [c for c in CASES if c.defect in (Defect.CLEAN, Defect.WRONG_ANSWER)][:4]
    tasks = {c.task.id: c.task for c in cases}
    trajs = [c.trajectory.model_copy(update={"task_id": c.task.id}) for c in cases]
    cut = trajs[0].model_copy(update={"id": "unanswered", "final_answer": None, "termination": "max_steps",
                                      "messages": trajs[0].messages[:-1]})

    async def keep(x):
        return Outcome.keep(x)

    async def write():
        await Stage(run, "quality", Task).run_items([(t.id, t) for t in tasks.values()], keep, progress=False)
        await Stage(run, "rollout", Trajectory).run_items([(t.id, t) for t in [*trajs, cut]], keep, progress=False)
        old = Reward(id="r-old", trajectory_id=trajs[0].id, task_id=trajs[0].task_id, overall=0.9,
                     dimensions={"tool_concision": 1.0, "final_answer": 0.8, "tool_planning": 0.9})
        await Stage(run, "reward", Reward).run_items([("old", old)], keep, progress=False)

    anyio.run(write)
    return run.path, trajs


def test_rejudge_cli_scores_beside_the_old_with_no_policy_call(tmp_path):
    path, trajs = _stored_run(tmp_path)
    before = {p.name: p.read_bytes() for p in path.glob("*.jsonl")}
    seen: list[str] = []

    def judge(messages, tools):
        seen.append(messages[-1].content)
        return judge_reply(messages[-1].content)

    register_script("rejudge-test", lambda: ScriptedModel([judge] * 10, name="rejudge-test"))
    out = CliRunner().invoke(app, ["traj", "rejudge", str(path), "--judge", "scripted:rejudge-test", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert Tripwire.built == 0 and result["policy_calls"] == 0
    assert len(seen) == len(trajs) and result["judge_calls_per_sample"] == round(len(trajs) / (len(trajs) + 1), 2)
    assert result["stage"] == "reward.scripted_rejudge-test.traj-judge-v2"
    assert result["counts"]["dropped"] == 1 and result["counts"]["drop_reasons"] == {"no_final_answer": 1}
    assert result["before"]["tool_concise"] == 1.0 and result["before"]["overall_score"] == 0.9  # v1 keys renamed
    new = Stage(RunDir(path), result["stage"], Reward).outputs()
    assert len(new) == len(trajs) and all(r.mode == "llm" and r.judge_version == "traj-judge-v2" for r in new)
    assert all(set(r.dimensions) == set(DIMENSIONS) for r in new)
    # the old files are untouched; a second rejudge resumes without asking again
    assert {n: (path / n).read_bytes() for n in before} == before
    again = CliRunner().invoke(app, ["traj", "rejudge", str(path), "--judge", "scripted:rejudge-test", "--json"])
    assert again.exit_code == 0 and len(seen) == len(trajs)


def test_rejudge_rules_and_errors(tmp_path):
    path, trajs = _stored_run(tmp_path)
    out = CliRunner().invoke(app, ["traj", "rejudge", str(path), "--judge", "rules", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["stage"] == "reward.rules.traj-rules-v1" and Tripwire.built == 0
    missing = CliRunner().invoke(app, ["traj", "rejudge", str(tmp_path / "nowhere"), "--judge", "rules"])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


@pytest.mark.parametrize("spec", ["nonsense", "scripted:no-such-script"])
def test_rejudge_bad_judge_spec(tmp_path, spec):
    path, _ = _stored_run(tmp_path)
    out = CliRunner().invoke(app, ["traj", "rejudge", str(path), "--judge", spec])
    assert out.exit_code == 2 and "--judge" in out.output
