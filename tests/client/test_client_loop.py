"""The agent loop with the scripted model against real servers (stdio, in-process, HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import anyio
import pytest
from conftest import free_port, start_test_server
from mcp_test_server import make_server

from astra.client import Connections, EpisodeTurn, ScriptedModel, run_episode
from astra.client._loop import trajectory_id
from astra.records import ChatMessage, HttpLaunch, Task, ToolCall, Trajectory

pytestmark = pytest.mark.anyio


def assert_well_formed(traj: Trajectory) -> None:
    """Every tool call has exactly one tool message, in order; steps match calls."""
    Trajectory.model_validate_json(traj.model_dump_json())  # JSON round trip
    calls = [c for m in traj.messages if m.role == "assistant" for c in (m.tool_calls or [])]
    answered = [m.tool_call_id for m in traj.messages if m.role == "tool"]
    assert [c.id for c in calls] == answered
    assert [s.call_id for s in traj.steps] == answered
    assert traj.messages[0].role in ("system", "user")
    assert traj.meta["model_requests"] == sum(1 for m in traj.messages if m.role == "assistant")


async def test_plan_against_mcp_server_time_stdio(time_launch):
    model = ScriptedModel.from_plan(
        [("get_current_time", {"timezone": "Europe/Paris"}),
         ("convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})],
        "It is 21:00 in Tokyo.",
    )
    task = Task(id="t1", user_turns=["What time is it in Tokyo at noon UTC?"])
    with anyio.fail_after(60):
        async with Connections([("time", time_launch)]) as conns:
            traj = await run_episode(model, conns, task, system_prompt="Use the tools.")
    assert traj.termination == "final_answer" and traj.final_answer == "It is 21:00 in Tokyo."
    assert [s.tool for s in traj.steps] == ["get_current_time", "convert_time"]
    assert not any(s.is_error for s in traj.steps)
    assert traj.steps[1].result["target"]["timezone"] == "Asia/Tokyo"
    assert traj.steps[0].server == "time" and traj.steps[0].server_tool == "get_current_time"
    assert traj.id == trajectory_id("t1", "scripted:plan", 0)
    assert {t["function"]["name"] for t in traj.tools} == {"get_current_time", "convert_time"}
    assert_well_formed(traj)


async def test_parallel_calls_run_concurrently_in_process():
    model = ScriptedModel.from_plan(
        [[("sleep", {"seconds": 0.4}), ("sleep", {"seconds": 0.4}), ("add", {"a": 1, "b": 2})]], "done"
    )
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["go"])
    assert traj.termination == "final_answer"
    assert [s.result for s in traj.steps] == [{"result": "slept 0.4"}, {"result": "slept 0.4"}, {"result": 3}]
    assert traj.timings["tools_s"] < 0.75  # two 0.4 s calls overlapped
    assert_well_formed(traj)


async def test_http_server_episode(http_server):
    model = ScriptedModel.from_plan([("echo", {"text": "hello"})], "said hello")
    with anyio.fail_after(60):
        async with Connections([("web", http_server)]) as conns:
            traj = await run_episode(model, conns, ["say hello"])
    assert traj.termination == "final_answer" and traj.steps[0].result == {"result": "hello"}
    assert_well_formed(traj)


async def test_legacy_sse_server_episode(sse_server):
    model = ScriptedModel.from_plan([("add", {"a": 40, "b": 2}), ("echo", {"text": "über"})], "42")
    with anyio.fail_after(60):
        async with Connections([("legacy", sse_server)]) as conns:
            traj = await run_episode(model, conns, ["add, then echo"])
    assert traj.termination == "final_answer"
    assert [s.result for s in traj.steps] == [{"result": 42}, {"result": "über"}]
    assert_well_formed(traj)


async def test_malformed_calls_go_back_to_the_model_as_errors():
    bad = ChatMessage(role="assistant", tool_calls=[
        ToolCall(id="c1", name="no_such_tool", arguments="{}"),
        ToolCall(id="c2", name="add", arguments="{not json"),
        ToolCall(id="c3", name="add", arguments='{"a": "one", "b": 2}'),
        ToolCall(id="c4", name="add", arguments="[1, 2]"),
        ToolCall(id="c5", name="fail", arguments='{"message": "kaputt"}'),
    ])
    seen: list[list[ChatMessage]] = []

    def final(messages, tools):
        seen.append(list(messages))
        return "recovered"

    model = ScriptedModel([bad, final])
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["x"])
    assert traj.termination == "final_answer" and traj.final_answer == "recovered"
    kinds = [s.error_kind for s in traj.steps]
    assert kinds == ["unknown_tool", "bad_json", "bad_arguments", "bad_json", "tool_error"]
    assert all(s.is_error for s in traj.steps)
    tool_msgs = [m for m in seen[0] if m.role == "tool"]
    assert len(tool_msgs) == 5 and all(m.content.startswith("Error:") for m in tool_msgs)
    assert "kaputt" in tool_msgs[4].content and "'one' is not of type 'integer'" in tool_msgs[2].content
    assert_well_formed(traj)


async def test_garbage_forever_ends_at_max_steps():
    garbage = ChatMessage(role="assistant", tool_calls=[ToolCall(id="g", name="??", arguments="%%%")])
    model = ScriptedModel([garbage] * 10)
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["x"], max_requests=4)
    assert traj.termination == "max_steps" and len(traj.steps) == 4 and traj.final_answer is None
    assert_well_formed(traj)


async def test_script_exhausted_is_model_error():
    model = ScriptedModel.from_plan([("add", {"a": 1, "b": 1})], "two")
    model.replies.pop()  # no final answer
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["x"])
    assert traj.termination == "model_error" and "exhausted" in traj.error
    assert len(traj.steps) == 1


async def test_multi_turn_reveals_tools():
    def second(messages, tools):
        names = {t["function"]["name"] for t in tools}
        assert "echo" in names, names
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="e", name="echo", arguments='{"text": "hi"}')])

    model = ScriptedModel([
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="x", name="echo", arguments='{"text": "early"}')]),
        "I cannot echo yet.",
        second,
        "echoed",
    ])
    turns = [EpisodeTurn(content="echo early"), EpisodeTurn(content="now you can", add_tools=["echo"])]
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, turns, tool_names=["add"])
    assert traj.termination == "final_answer" and traj.final_answer == "echoed"
    assert [(s.turn, s.tool, s.error_kind) for s in traj.steps] == [(0, "echo", "unknown_tool"), (1, "echo", None)]
    assert [m.content for m in traj.messages if m.role == "user"] == ["echo early", "now you can"]
    assert {t["function"]["name"] for t in traj.tools} == {"add", "echo"}
    assert_well_formed(traj)


async def test_server_killed_mid_episode(test_stdio_launch):
    def kill_then_add(messages, tools):
        pid = int(json.loads(messages[-1].content) if messages[-1].content.startswith("{") else messages[-1].content)
        os.kill(pid, signal.SIGKILL)
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="a1", name="add", arguments='{"a": 1, "b": 2}')])

    model = ScriptedModel([
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="p", name="pid", arguments="{}")]),
        kill_then_add,
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="a2", name="add", arguments='{"a": 1, "b": 2}')]),
        "3",
    ])
    with anyio.fail_after(60):
        async with Connections([("s", test_stdio_launch)]) as conns:
            traj = await run_episode(model, conns, ["add"])
    assert traj.termination == "final_answer"
    assert [s.error_kind for s in traj.steps] == [None, "server_died", None]
    assert traj.steps[2].result == {"result": 3}
    assert_well_formed(traj)


async def test_server_gone_for_good_is_server_error(test_stdio_launch):
    def kill(messages, tools):
        os.kill(int(messages[-1].content), signal.SIGKILL)
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="a1", name="add", arguments='{"a": 1, "b": 2}')])

    again = ChatMessage(role="assistant", tool_calls=[ToolCall(id="a2", name="add", arguments='{"a": 1, "b": 2}')])
    model = ScriptedModel(
        [ChatMessage(role="assistant", tool_calls=[ToolCall(id="p", name="pid", arguments="{}")]), kill, again, "never"]
    )
    with anyio.fail_after(60):
        async with Connections([("s", test_stdio_launch)], max_restarts=0) as conns:
            traj = await run_episode(model, conns, ["add"])
    assert traj.termination == "server_error" and "unavailable" in traj.error
    assert [s.error_kind for s in traj.steps] == [None, "server_died", "server_unavailable"]


class HttpServerProcess:
    """The test server over streamable HTTP on 127.0.0.1, killable and restartable on one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc, _ = start_test_server("http", self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def launch(self) -> HttpLaunch:
        return HttpLaunch(url=f"http://127.0.0.1:{self.port}/mcp")


@pytest.fixture
def http_process():
    server = HttpServerProcess()
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_http_server_killed_mid_episode_and_restarted(http_process):
    """The endpoint dies under a call (server_died, the episode goes on), its supervisor
    brings it back on the same port, the next call reconnects and works."""
    def kill_then_echo(messages, tools):
        http_process.kill()
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="e", name="echo", arguments='{"text": "x"}')])

    def restart_then_pid(messages, tools):
        http_process.start()
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="p2", name="pid", arguments="{}")])

    model = ScriptedModel([
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="p1", name="pid", arguments="{}")]),
        kill_then_echo, restart_then_pid, "done",
    ])
    with anyio.fail_after(60):
        async with Connections([("web", http_process.launch)], call_timeout_s=20, reconnect_delay_s=0.1) as conns:
            first_pid = http_process.proc.pid
            traj = await run_episode(model, conns, ["pids"])
            status = conns.server_status()["web"]
    assert traj.termination == "final_answer"
    assert [s.error_kind for s in traj.steps] == [None, "server_died", None]
    assert traj.steps[0].result == {"result": first_pid}
    assert traj.steps[2].result == {"result": http_process.proc.pid} != {"result": first_pid}
    assert status["connected"] and status["restarts"] >= 1
    assert_well_formed(traj)


async def test_http_server_gone_for_good_ends_in_bounded_time(http_process):
    """An endpoint that never comes back: reconnects back off, then give up; the episode
    ends as server_error with the transport's own reason, well within its deadline."""
    def kill_then_echo(messages, tools):
        http_process.kill()
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="e1", name="echo", arguments='{"text": "x"}')])

    again = [ChatMessage(role="assistant", tool_calls=[ToolCall(id=f"e{i}", name="echo", arguments='{"text": "y"}')])
             for i in range(2, 6)]
    model = ScriptedModel([
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="p1", name="pid", arguments="{}")]),
        kill_then_echo, *again, "never",
    ])
    with anyio.fail_after(60):
        async with Connections([("web", http_process.launch)], call_timeout_s=10, max_restarts=2,
                               reconnect_delay_s=0.05) as conns:
            traj = await run_episode(model, conns, ["echo"])
    assert traj.termination == "server_error"
    assert [s.error_kind for s in traj.steps] == [None, "server_died", "server_unavailable"]
    assert "gave up after 2 restarts in a row" in traj.error and "ConnectError" in traj.error
    assert "ExceptionGroup" not in traj.error  # the cause, not its wrapper


async def test_hanging_tool_times_out_and_episode_goes_on():
    model = ScriptedModel.from_plan([("sleep", {"seconds": 60})], "gave up waiting")
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["wait"], call_timeout_s=0.3)
    assert traj.termination == "final_answer"
    assert traj.steps[0].error_kind == "timeout" and traj.steps[0].latency_s < 5


async def test_episode_deadline_is_timeout():
    model = ScriptedModel.from_plan([("sleep", {"seconds": 60})], "never", delay_s=0.0)
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["wait"], episode_timeout_s=0.5, call_timeout_s=60)
    assert traj.termination == "timeout" and traj.timings["total_s"] < 5


async def test_max_tokens_total():
    from astra.client import Model, ModelResponse
    from astra.records import Usage

    class Costly(Model):
        name = "costly"

        async def request(self, messages, tools=(), settings=None):
            return ModelResponse(
                message=ChatMessage(
                    role="assistant",
                    tool_calls=[ToolCall(id=f"c{len(messages)}", name="add", arguments='{"a":1,"b":1}')],
                ),
                usage=Usage(input_tokens=60, output_tokens=10),
            )

    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(Costly(), conns, ["x"], max_tokens_total=200)
    assert traj.termination == "max_tokens" and traj.usage.input_tokens == 180 and len(traj.steps) == 3


async def test_max_steps_is_the_old_name_of_max_requests():
    loop = ChatMessage(role="assistant", tool_calls=[ToolCall(id="x", name="add", arguments='{"a": 1, "b": 1}')])
    async with Connections([("s", make_server())]) as conns:
        with pytest.warns(FutureWarning, match="max_steps=\\) is deprecated"):
            traj = await run_episode(ScriptedModel([loop] * 5), conns, ["go"], max_steps=2)
    assert traj.termination == "max_steps" and traj.meta["model_requests"] == 2
