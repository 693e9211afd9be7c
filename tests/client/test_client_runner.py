"""The rollout runner: resumable JSONL, kill -9 and rerun, summary, CLI, Ray on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mcp_test_server import make_server
from rollout_job import tasks
from typer.testing import CliRunner

from astra.client import ScriptedModel, register_script, run_rollouts
from astra.client._loop import trajectory_id
from astra.records import ChatMessage, Task, ToolCall

HERE = Path(__file__).parent


def read_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "trajectories.jsonl").read_text().splitlines() if line.strip()]


def test_run_rollouts_resume_and_summary(tmp_path):
    calls = {"n": 0}

    def plan():
        calls["n"] += 1
        return ScriptedModel.from_plan([[("add", {"a": 1, "b": 2}), ("echo", {"text": "x"})]], "3", delay_s=0.01)

    register_script("runner-plan", plan)
    ts = tasks(5) + [Task(id="scoped", user_turns=["x"], servers=["s"])]
    summary = run_rollouts(ts, "scripted:runner-plan", tmp_path, servers=[("s", make_server())],
                           samples=2, concurrency=3, progress=False)
    assert summary.planned == 12 and summary.written == 12 and summary.already_done == 0 and summary.failed == 0
    assert summary.by_termination == {"final_answer": 12}
    assert summary.step_latency_p50_s is not None and summary.step_latency_p95_s >= summary.step_latency_p50_s
    ids = read_ids(tmp_path)
    assert sorted(ids) == sorted(trajectory_id(t.id, "scripted:runner-plan", s) for t in ts for s in range(2))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["trajectories"]["status"] == "done"
    again = run_rollouts(
        ts, "scripted:runner-plan", tmp_path, servers=[("s", make_server())], samples=3, progress=False
    )
    assert (again.already_done, again.written, again.total_in_file) == (12, 6, 18)
    assert len(read_ids(tmp_path)) == len(set(read_ids(tmp_path))) == 18


def test_model_failures_are_recorded_and_the_run_goes_on(tmp_path):
    def flaky(messages, tools):
        if "bad" in messages[0].content:
            raise RuntimeError("boom")  # a harness-level crash: not written, counted as failed
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="c", name="add", arguments='{"a": 1}')])

    register_script("flaky", lambda: ScriptedModel([flaky], per_conversation=True))
    ts = [Task(id="ok", user_turns=["fine"]), Task(id="bad", user_turns=["bad"])]
    summary = run_rollouts(ts, "scripted:flaky", tmp_path, servers=[("s", make_server())], progress=False)
    # "ok": a schema-invalid call goes back as an error, then the script runs out -> model_error
    assert summary.by_termination == {"model_error": 1} and summary.failed == 1 and "boom" in summary.errors[0]
    assert json.loads((tmp_path / "trajectories.jsonl").read_text())["steps"][0]["error_kind"] == "bad_arguments"


def test_kill_9_mid_run_then_rerun(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(HERE / "rollout_job.py"), str(out), "40"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    log = out / "trajectories.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_bytes().count(b"\n") >= 10:
            break
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    partial = read_ids(out) if log.exists() else []
    assert 10 <= len(partial) < 80
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=True)
    summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert summary["already_done"] >= len(partial) and summary["total_in_file"] == 80
    ids = read_ids(out)
    expected = {trajectory_id(t.id, "scripted:slow-plan", s) for t in tasks(40) for s in range(2)}
    assert set(ids) == expected and len(ids) == len(expected)
    assert not [i for i, n in Counter(ids).items() if n > 1]


def test_interrupted_run_is_marked_and_resumes(tmp_path):
    """A run cancelled from outside (Ctrl-C reaches the runner as a cancellation) keeps every
    finished trajectory, says "interrupted" in the manifest, and a rerun completes the set."""
    import anyio

    from astra.client import arun_rollouts

    register_script("slow-for-interrupt", lambda: ScriptedModel.from_plan(
        [("add", {"a": 1, "b": 1})], "2", name="slow-for-interrupt", delay_s=0.05))
    ts = tasks(40)

    async def interrupted() -> None:
        with anyio.move_on_after(0.6) as scope:
            await arun_rollouts(ts, "scripted:slow-for-interrupt", tmp_path, servers=[("s", make_server())],
                                concurrency=4, progress=False)
        assert scope.cancelled_caught

    anyio.run(interrupted)
    stage = json.loads((tmp_path / "manifest.json").read_text())["stages"]["trajectories"]
    kept = read_ids(tmp_path)
    assert stage["status"] == "interrupted" and stage["in_file"] == len(kept) and 0 < len(kept) < 40
    summary = run_rollouts(ts, "scripted:slow-for-interrupt", tmp_path, servers=[("s", make_server())],
                           concurrency=8, progress=False)
    assert summary.already_done == len(kept) and summary.total_in_file == 40
    assert len(read_ids(tmp_path)) == len(set(read_ids(tmp_path))) == 40
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["trajectories"]["status"] == "done"


def test_cli_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, monkeypatch):
    import astra.client
    from astra.cli import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(astra.client, "run_rollouts", interrupted)
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text(Task(id="a", user_turns=["hello"]).model_dump_json() + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["rollout", "--tasks", str(task_file), "--model", "scripted:echo",
                                      "--out", str(out)])
    assert result.exit_code == 130
    assert (
        "interrupted" in result.stderr and str(out) in result.stderr and "run the same command again" in result.stderr
    )


def test_cli_rollout_json(tmp_path):
    from astra.cli import app

    task_file = tmp_path / "tasks.jsonl"
    lines = [Task(id="a", user_turns=["hello"]).model_dump_json(), "{not json", json.dumps({"id": "b"}),
             Task(id="c", user_turns=["one", "two"]).model_dump_json()]
    task_file.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["rollout", "--tasks", str(task_file), "--model", "scripted:echo",
                                      "--out", str(tmp_path / "out"), "--samples", "2", "--json",
                                      "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["planned"] == 4 and summary["written"] == 4 and summary["by_termination"] == {"final_answer": 4}
    assert "tasks.jsonl:2" in result.stderr and "tasks.jsonl:3" in result.stderr and "user_turns" in result.stderr
    records = [json.loads(x) for x in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    c = next(r for r in records if r["task_id"] == "c")
    assert c["final_answer"] == "echo: two" and [m["role"] for m in c["messages"]] == ["user", "assistant"] * 2


def test_cli_unknown_model_is_a_clear_error(tmp_path):
    from astra.cli import app

    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text(Task(id="a", user_turns=["hello"]).model_dump_json() + "\n")
    result = CliRunner().invoke(app, ["rollout", "--tasks", str(task_file), "--model", "scripted:ghost",
                                      "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code != 0


@pytest.mark.ray
def test_ray_executor_on_loopback(tmp_path, test_stdio_launch, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    from netcheck import off_loopback, tcp_sockets

    from astra.client._runner import _ray_init

    try:
        _ray_init(None, 2)
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        summary = run_rollouts(tasks(6), "scripted:slow-plan", tmp_path, servers=[("s", test_stdio_launch)],
                               executor="ray", progress=False, imports=["rollout_job"])
        assert summary.written == 6 and summary.failed == 0 and summary.by_termination == {"final_answer": 6}
        assert summary.executor == "ray"
        sockets = tcp_sockets()
        assert sockets and not off_loopback(sockets), off_loopback(sockets)
    finally:
        ray.shutdown()


def test_local_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(ValueError, match="in-process servers"):
        run_rollouts(
            tasks(8), "scripted:slow-plan", tmp_path / "x", servers=[("s", make_server())], workers=2, progress=False
        )
    # a module-level factory crosses processes: each worker builds its own in-process server
    summary = run_rollouts(tasks(8), "scripted:slow-plan", tmp_path / "y", servers=[("s", make_server)],
                           workers=2, concurrency=4, progress=False, imports=["rollout_job"])
    assert (summary.written, summary.failed, summary.executor) == (8, 0, "local x2")
    records = [json.loads(x) for x in (tmp_path / "y" / "trajectories.jsonl").read_text().splitlines()]
    assert all(r["termination"] == "final_answer" and r["steps"][0]["result"] == {"result": 2} for r in records)


def test_cli_rollout_with_registry_servers(tmp_path, time_launch):
    from astra.cli import app
    from astra.records import ServerSpec
    from astra.registry import Registry

    home = tmp_path / "home"
    reg = Registry.open(home)
    try:
        reg.upsert_server(ServerSpec(id="srv-time", name="time", launch=time_launch))
    finally:
        reg.close()
    register_script("cli-time", lambda: ScriptedModel.from_plan([("get_current_time", {"timezone": "UTC"})], "noon"))
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text(Task(id="t", user_turns=["time?"]).model_dump_json() + "\n")
    args = ["rollout", "--tasks", str(task_file), "--model", "scripted:cli-time", "--out", str(tmp_path / "out"),
            "--servers", "time", "--home", str(home), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["by_termination"] == {"final_answer": 1}
    record = json.loads((tmp_path / "out" / "trajectories.jsonl").read_text())
    assert record["steps"][0]["server"] == "time" and record["steps"][0]["result"]["timezone"] == "UTC"
    bad = CliRunner().invoke(app, [*args[:-5], "--servers", "nosuch", "--home", str(home), "--json"])
    assert bad.exit_code == 2 and "nosuch" in bad.stderr


def test_warm_workers_are_reused_and_a_dead_worker_fails_only_its_episodes(tmp_path, monkeypatch, test_stdio_launch):
    import anyio

    from astra.client._runner import EpisodeConfig, RolloutWorkers

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    spec = "scripted:pid-plan"
    config = EpisodeConfig(model_spec=spec, concurrency=2, imports=["rollout_job"])

    def items(lo: int, hi: int) -> list:
        return [(trajectory_id(t.id, spec, 0), t, 0) for t in tasks(hi)[lo:]]

    def server_pids(path: Path) -> set[int]:
        return {json.loads(x)["steps"][0]["result"]["result"] for x in path.read_text().splitlines()}

    async def main() -> None:
        async with RolloutWorkers(2, config, [("io", test_stdio_launch)], batch_size=1) as pool:
            first = await pool.run(items(0, 6), str(tmp_path / "a.jsonl"))
            second = await pool.run(items(6, 12), str(tmp_path / "b.jsonl"))
            assert (first.written, second.written, first.errors) == (6, 6, [])
            assert first.by_termination == {"final_answer": 6} and first.worker_cpu_s > 0
            # one server per worker, launched once: the same two processes served both runs
            assert server_pids(tmp_path / "a.jsonl") == server_pids(tmp_path / "b.jsonl")
            assert len(server_pids(tmp_path / "a.jsonl")) == 2
            async with anyio.create_task_group() as tg:
                async def kill_worker_0() -> None:
                    await anyio.sleep(0.3)
                    os.kill(pool._procs[0].pid, signal.SIGKILL)

                tg.start_soon(kill_worker_0)
                third = await pool.run(items(12, 24), str(tmp_path / "c.jsonl"))
            assert third.errors and all("rollout worker 0 died" in e for e in third.errors)
            assert third.written + len(third.errors) == 12
            rest = [i for i in items(12, 24) if i[0] not in set(read_ids_file(tmp_path / "c.jsonl"))]
            again = await pool.run(rest, str(tmp_path / "c.jsonl"))  # the surviving worker takes them
            assert (again.written, again.errors) == (len(rest), [])

    anyio.run(main)


def read_ids_file(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_group_commit_writes_each_id_once(tmp_path):
    from astra.runs import JsonlLog

    log = JsonlLog(tmp_path / "t.jsonl")
    assert log.write_lines([("a", b'{"id":"a"}\n'), ("b", b'{"id":"b"}\n'), ("a", b'{"id":"a"}\n')]) == [
        True,
        True,
        False,
    ]
    assert log.write_lines([("b", b'{"id":"b"}\n'), ("c", b'{"id":"c"}\n')]) == [False, True]
    assert read_ids_file(tmp_path / "t.jsonl") == ["a", "b", "c"] and len(JsonlLog(tmp_path / "t.jsonl")) == 3


def test_server_replicas_pin_each_episode_to_one_copy_and_gc_is_restored(tmp_path, test_stdio_launch):
    import gc

    register_script("pid-twice", lambda: ScriptedModel.from_plan([("pid", {}), ("pid", {})], "done", delay_s=0.05))
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    summary = run_rollouts(tasks(8), "scripted:pid-twice", tmp_path, servers=[("io", test_stdio_launch)],
                           server_replicas=2, concurrency=4, progress=False)
    assert (summary.written, summary.failed) == (8, 0)
    records = [json.loads(x) for x in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    pids = [[s["result"]["result"] for s in r["steps"]] for r in records]
    assert all(len(p) == 2 and p[0] == p[1] for p in pids), pids  # an episode stays on one server copy
    assert len({p[0] for p in pids}) == 2  # both copies served episodes
    # the runner's GC settings (frozen start-up objects, rarer young collections) end with the run
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)


def test_gc_settings_of_overlapping_runs_are_restored_when_the_last_ends():
    import gc

    from astra.client._runner import GC_YOUNG_THRESHOLD, _gc_for_rollouts

    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    first, second = _gc_for_rollouts(), _gc_for_rollouts()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # runs of one process may end in any order
    assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD and gc.get_freeze_count() > 0  # the second still runs
    second.__exit__(None, None, None)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)
