"""Driving entries the way BFCL does, and scoring with BFCL's multi_turn_checker."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from astra.bfcl import GOLD_MODEL, BfclResult, ground_truth_as_decoded, load_entries, run_bfcl, score_decoded
from astra.bfcl._data import ADDED_FUNCTIONS_PROMPT
from astra.bfcl._episode import run_entry
from astra.bfcl._gold import gold_model
from astra.bfcl._run import score_entry
from astra.bfcl._score import compare_with_direct_execution
from astra.client import ModelError, ScriptedModel
from astra.records import ChatMessage, ToolCall


def call(name: str, **arguments: Any) -> ChatMessage:
    return ChatMessage(
        role="assistant", tool_calls=[ToolCall(id=f"c_{name}", name=name, arguments=json.dumps(arguments))]
    )


def test_gold_replay_on_a_sample_of_each_category_matches_the_direct_checker(tmp_path) -> None:
    entries = load_entries(limit=5)
    assert [e.category for e in entries].count("miss_func") == 5
    summary = anyio.run(lambda: run_bfcl(GOLD_MODEL, entries, tmp_path, concurrency=4))
    assert summary.categories == {
        c: {"total": 5, "passed": 5, "accuracy": 1.0} for c in ("base", "long_context", "miss_func", "miss_param")
    }
    assert summary.overall == 1.0
    assert summary.failures == [] and summary.gold_disagreements == [] and summary.mcp_unfaithful == []
    results = [
        BfclResult.model_validate(r) for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())
    ]
    assert {r.id for r in results} == {e.id for e in entries}
    for r in results:
        assert r.ground_truth_valid is True and r.mcp_faithful is True
        assert all(isinstance(c, str) for turn in r.decoded for step in turn for c in step)


def test_a_wrong_call_sequence_fails_with_bfcls_error_type() -> None:
    entry = load_entries(ids=["base_0"])[0]
    # Turn 0 asks to create 'temp' in document and move the report there; this moves nothing.
    wrong = ScriptedModel([call("cd", folder="document"), call("mkdir", dir_name="tmp"), "done"] + ["ok"] * 10)
    result = anyio.run(lambda: score_entry(wrong, entry, model_name="wrong"))
    assert result.valid is False
    assert result.error_type == "multi_turn:instance_state_mismatch"
    assert result.decoded[0] == [["cd(folder='document')"], ["mkdir(dir_name='tmp')"]]
    assert result.mcp_faithful is True


def test_a_model_that_never_calls_fails_on_the_first_turn() -> None:
    entry = load_entries(ids=["base_0"])[0]
    silent = ScriptedModel(["I won't."] * len(entry.turns))
    result = anyio.run(lambda: score_entry(silent, entry, model_name="silent"))
    assert not result.valid
    assert result.error_type == "multi_turn:empty_turn_model_response"
    assert result.decoded == [[] for _ in entry.turns]


def test_direct_scoring_of_ground_truth_and_of_a_perturbed_one() -> None:
    entry = load_entries(ids=["base_1"])[0]
    assert score_decoded(entry, ground_truth_as_decoded(entry)).valid
    broken = ground_truth_as_decoded(entry)
    broken[-1] = []
    verdict = score_decoded(entry, broken)
    assert not verdict.valid and verdict.error_type
    short = score_decoded(entry, ground_truth_as_decoded(entry)[:-1])
    assert short.error_type == "multi_turn:force_terminated"


def test_miss_func_reveals_held_out_functions_at_bfcls_turn() -> None:
    entry = load_entries(ids=["miss_func_0"])[0]
    assert entry.missed_function == {"3": ["sort"]}
    offered: list[tuple[int, list[str], str | None]] = []
    script = gold_model(entry)

    class Recording(ScriptedModel):
        async def request(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = (), settings=None):
            users = [m for m in messages if m.role == "user"]
            offered.append((len(users) - 1, [t["function"]["name"] for t in tools], users[-1].content))
            return await script.request(messages, tools, settings)

    episode, _ = anyio.run(lambda: run_entry(Recording([]), entry))
    by_turn = {turn: (names, text) for turn, names, text in offered}
    assert "sort" not in by_turn[2][0]
    assert "sort" in by_turn[3][0]
    assert by_turn[3][1] == ADDED_FUNCTIONS_PROMPT
    assert episode.decoded[2] == [] and episode.decoded[3] == [["sort(file_name='final_report.pdf')"]]
    assert score_decoded(entry, episode.decoded).valid


def test_step_limit_force_quits_the_entry() -> None:
    entry = load_entries(ids=["base_0"])[0]
    looping = ScriptedModel([lambda m, t: call("pwd")] * 50)
    result = anyio.run(lambda: score_entry(looping, entry, model_name="loop", max_steps_per_turn=3))
    assert result.force_quit and result.steps == 4
    assert result.turns_run == 1
    assert result.error_type == "multi_turn:force_terminated"


def test_model_errors_are_recorded_failures_never_scores(tmp_path) -> None:
    entries = load_entries(ids=["base_2", "base_3"])

    class Broken(ScriptedModel):
        async def request(self, *args: Any, **kwargs: Any):
            raise ModelError("endpoint down")

    summary = anyio.run(lambda: run_bfcl(lambda e: Broken([]), entries, tmp_path, model_name="broken"))
    assert summary.categories["base"]["passed"] == 0
    assert {f["error_type"] for f in summary.failures} == {"astra:model_error"}


def test_undecodable_arguments_end_the_turn_without_executing() -> None:
    entry = load_entries(ids=["base_0"])[0]
    garbled = ChatMessage(role="assistant", tool_calls=[ToolCall(id="x", name="mkdir", arguments="{not json")])
    episode, servers = anyio.run(lambda: run_entry(ScriptedModel([garbled] + ["ok"] * 10), entry))
    assert episode.decoded[0] == []
    assert episode.messages[2].role == "tool" and "could not decode" in episode.messages[2].content
    assert compare_with_direct_execution(entry, episode.decoded, servers.instances).faithful


def test_mcp_fidelity_check_detects_divergent_state() -> None:
    entry = load_entries(ids=["base_0"])[0]
    episode, servers = anyio.run(lambda: run_entry(gold_model(entry), entry))
    assert compare_with_direct_execution(entry, episode.decoded, servers.instances).faithful
    servers.instances["GorillaFileSystem"].root.contents.clear()
    diff = compare_with_direct_execution(entry, episode.decoded, servers.instances)
    assert not diff.faithful and "GorillaFileSystem" in diff.differences


def test_resume_skips_done_entries_without_duplicates(tmp_path) -> None:
    first = anyio.run(lambda: run_bfcl(GOLD_MODEL, load_entries(["miss_param"], limit=2), tmp_path))
    assert first.scored_now == 2
    again = anyio.run(lambda: run_bfcl(GOLD_MODEL, load_entries(["miss_param"], limit=4), tmp_path))
    assert (again.scored_now, again.resumed) == (2, 2)
    ids = [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(e.id for e in load_entries(["miss_param"], limit=4))


def test_unknown_ids_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="multi_turn_base_999"):
        load_entries(["base"], ids=["base_999"])


def test_ground_truth_against_its_own_schema_astra_servers_reject_bfcl_executes() -> None:
    # BFCL's ground truth for entry 173 calls close_ticket(ticket_id='ticket_001') although the
    # doc says integer: astra.servers validates and refuses, BFCL's executor runs it. The
    # checker re-executes the decoded calls either way, so the verdict is the same; the state
    # check is what tells the two servers apart.
    entry = load_entries(ids=["base_173"])[0]
    astra = anyio.run(lambda: score_entry(gold_model(entry), entry, model_name="gold", servers="astra"))
    exact = anyio.run(lambda: score_entry(gold_model(entry), entry, model_name="gold", servers="bfcl"))
    assert astra.valid and exact.valid
    assert exact.mcp_faithful is True
    assert astra.mcp_faithful is False and set(astra.mcp_differences) == {"TicketAPI"}
    assert any("is not of type 'integer'" in (m.content or "") for m in astra.messages if m.role == "tool")


def test_kill_9_mid_run_then_resume_without_duplicates_or_loss(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(here / "bfcl_job.py"), str(tmp_path), "12"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= 3:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    partial = [json.loads(line)["id"] for line in results.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(partial) < 12
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["results"]["status"] == "running"
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=True)
    summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert summary["resumed"] >= len(partial) and summary["scored_now"] + summary["resumed"] == 12
    assert summary["categories"]["base"] == {"total": 12, "passed": 12, "accuracy": 1.0}
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == sorted(e.id for e in load_entries(["base"], limit=12))
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["results"]["status"] == "done"
