"""Rollouts under provider and infrastructure faults (issue 13, "Rollouts"), one test per class,
against real servers on 127.0.0.1: the fake OpenAI-compatible endpoint (a real HTTP server),
the test MCP server in-process and over stdio.

Every case must end as a trajectory (never an exception out of the episode) whose
termination and failure class say what happened: policy failures apart from
infrastructure faults, which are never scored as a policy's reward."""

from __future__ import annotations

import json
import os
import signal

import anyio
import pytest
from conftest import free_port
from fake_openai import CLOSE, TRUNCATE, FakeOpenAI, completion
from mcp_test_server import make_server

from astra.client import Connections, ModelSettings, OpenAIModel, RetryPolicy, ScriptedModel, run_episode
from astra.client._loop import classify
from astra.records import ChatMessage, FailureClass, InfraFault, Task, TerminationReason, ToolCall, Trajectory

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, jitter=0.0)

GOOD = completion("fine")
WRONG_SHAPES = {
    "not JSON": b"<html><body>502 Bad Gateway</body></html>",
    "empty body": b"",
    "JSON array": b"[1, 2, 3]",
    "JSON string": b'"ok"',
    "no choices": {"id": "x", "object": "chat.completion"},
    "empty choices": {**GOOD, "choices": []},
    "choices not a list": {**GOOD, "choices": "assistant"},
    "choice without message": {**GOOD, "choices": [{"index": 0, "finish_reason": "stop"}]},
    "message is a string": {**GOOD, "choices": [{"index": 0, "message": "hi"}]},
    "content is a number": {**GOOD, "choices": [{"index": 0, "message": {"role": "assistant", "content": 42}}]},
    "tool_calls not a list": {**GOOD, "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": {}}}]},
    "tool call without name": {**GOOD, "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"arguments": "{}"}}]}}]},
    "arguments are a number": {**GOOD, "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "add", "arguments": 7}}]}}]},
    "usage is a string": {**GOOD, "usage": "lots"},
    "token counts are strings": {**GOOD, "usage": {"prompt_tokens": "1", "completion_tokens": 1}},
    "finish_reason is a number": {**GOOD, "choices": [{**GOOD["choices"][0], "finish_reason": 3}]},
}


def assert_contained(traj: Trajectory, termination: str, failure: FailureClass, fault: InfraFault | None) -> None:
    assert (traj.termination, traj.failure_class, traj.infra_fault) == (termination, failure, fault), (
        traj.termination, traj.failure_class, traj.infra_fault, traj.error)
    Trajectory.model_validate_json(traj.model_dump_json())  # it is a well-formed record


def model(fake: FakeOpenAI, **options) -> OpenAIModel:
    return OpenAIModel("m", base_url=fake.base_url, retry=FAST, **options)


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
async def test_a_200_with_garbage_or_a_wrong_shape_is_a_retried_model_error(case):
    body = WRONG_SHAPES[case]
    with FakeOpenAI(lambda _: (200, body, {"content-type": "text/html"} if case == "not JSON" else {})) as fake:
        async with Connections([("s", make_server())]) as conns:
            with anyio.fail_after(30):
                traj = await run_episode(model(fake), conns, ["hi"])
    assert_contained(traj, "model_error", FailureClass.infrastructure, InfraFault.bad_response)
    assert fake.requests == FAST.max_attempts  # retried, then given up
    assert traj.final_answer is None and "failed after 2 attempts" in traj.error


async def test_garbage_then_a_good_reply_recovers():
    answers = iter([(200, b"{not json", {}), (200, GOOD, {})])
    with FakeOpenAI(lambda _: next(answers)) as fake:
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model(fake), conns, ["hi"])
    assert_contained(traj, "final_answer", FailureClass.none, None)
    assert traj.final_answer == "fine"


async def test_a_reply_cut_at_the_token_limit_is_max_tokens_never_final_answer():
    cut = completion("The answer is forty-", finish_reason="length")
    with FakeOpenAI(lambda _: (200, cut, {})) as fake:
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model(fake, settings=ModelSettings(max_tokens=5)), conns, ["hi"])
    assert_contained(traj, "max_tokens", FailureClass.policy, None)
    assert traj.final_answer is None and not traj.ends_with_answer
    assert traj.messages[-1].content == "The answer is forty-"  # kept for audit, not as an answer


async def test_anthropic_reply_cut_at_max_tokens_is_max_tokens():
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "The answer is forty-"}], "stop_reason": "max_tokens",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}}
    from astra.client import AnthropicModel

    with FakeOpenAI(lambda _: (200, body, {})) as fake:
        claude = AnthropicModel("claude-test", base_url=fake.base_url.removesuffix("/v1"), retry=FAST)
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(claude, conns, ["hi"])
        wrong = AnthropicModel("claude-test", base_url=fake.base_url.removesuffix("/v1"), retry=FAST)
        fake.reply = lambda _: (200, {**body, "content": "not blocks"}, {})
        async with Connections([("s", make_server())]) as conns:
            bad = await run_episode(wrong, conns, ["hi"])
    assert_contained(traj, "max_tokens", FailureClass.policy, None)
    assert_contained(bad, "model_error", FailureClass.infrastructure, InfraFault.bad_response)


@pytest.mark.parametrize("reply", [completion(None), completion(""), completion("  \n"),
                                   completion(None, reasoning="I thought about it but said nothing")])
async def test_an_episode_without_an_assistant_answer_is_marked_so(reply):
    with FakeOpenAI(lambda _: (200, reply, {})) as fake:
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model(fake), conns, ["hi"])
    assert_contained(traj, "no_answer", FailureClass.policy, None)
    assert not traj.ends_with_answer and traj.final_answer is None


async def test_transport_faults_are_infrastructure():
    """The endpoint drops the connection, cuts the body short, or is not there at all."""
    out = []
    for answer in (CLOSE, (TRUNCATE, json.dumps(GOOD))):
        with FakeOpenAI(lambda _, a=answer: a) as fake:
            async with Connections([("s", make_server())]) as conns:
                with anyio.fail_after(30):
                    out.append(await run_episode(model(fake), conns, ["hi"]))
    nobody = OpenAIModel("m", base_url=f"http://127.0.0.1:{free_port()}/v1", retry=FAST)
    async with Connections([("s", make_server())]) as conns:
        out.append(await run_episode(nobody, conns, ["hi"]))
    for traj in out:
        assert_contained(traj, "model_error", FailureClass.infrastructure, InfraFault.transport_error)
    slow = OpenAIModel("m", retry=FAST, settings=ModelSettings(timeout_s=0.3))
    with FakeOpenAI(lambda _: (200, GOOD, {}), latency_s=5) as fake:
        slow.base_url = fake.base_url
        async with Connections([("s", make_server())]) as conns:
            with anyio.fail_after(30):
                traj = await run_episode(slow, conns, ["hi"])
    assert_contained(traj, "model_error", FailureClass.infrastructure, InfraFault.transport_error)


async def test_provider_errors_are_infrastructure():
    with FakeOpenAI(lambda _: (503, {"error": {"message": "overloaded"}}, {})) as fake:
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model(fake), conns, ["hi"])
    assert_contained(traj, "model_error", FailureClass.infrastructure, InfraFault.provider_error)
    assert fake.requests == 2 and "HTTP 503" in traj.error


async def test_server_died_mid_episode_is_infrastructure_even_when_answered(test_stdio_launch):
    pids: list[int] = []

    def kill_server(messages, tools):
        pid = int(next(m.content for m in reversed(messages) if m.role == "tool"))
        pids.append(pid)
        os.kill(pid, signal.SIGKILL)
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="c2", name="add", arguments='{"a": 1, "b": 2}')])

    scripted = ScriptedModel([ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name="pid", arguments="{}")]),
                              kill_server, "3"], per_conversation=True)
    with anyio.fail_after(60):
        async with Connections([("io", test_stdio_launch)]) as conns:
            traj = await run_episode(scripted, conns, ["go"])
    assert traj.steps[1].error_kind == "server_died"
    assert_contained(traj, "final_answer", FailureClass.infrastructure, InfraFault.server_died)


async def test_server_gone_for_good_and_tool_timeouts_are_infrastructure(test_stdio_launch):
    def kill(messages, tools):
        os.kill(int(messages[-1].content), signal.SIGKILL)
        return ChatMessage(role="assistant", tool_calls=[ToolCall(id="a1", name="add", arguments='{"a": 1, "b": 2}')])

    again = ChatMessage(role="assistant", tool_calls=[ToolCall(id="a2", name="add", arguments='{"a": 1, "b": 2}')])
    gone = ScriptedModel([ChatMessage(role="assistant", tool_calls=[ToolCall(id="p", name="pid", arguments="{}")]),
                          kill, again, "never"])
    with anyio.fail_after(60):
        async with Connections([("io", test_stdio_launch)], max_restarts=0) as conns:
            traj = await run_episode(gone, conns, ["go"])
    assert_contained(traj, "server_error", FailureClass.infrastructure, InfraFault.server_died)
    hang = ScriptedModel.from_plan([("sleep", {"seconds": 30})], "gave up")
    async with Connections([("s", make_server())]) as conns:
        with anyio.fail_after(30):
            traj = await run_episode(hang, conns, ["wait"], call_timeout_s=0.3)
    assert traj.steps[0].error_kind == "timeout"
    assert_contained(traj, "final_answer", FailureClass.infrastructure, InfraFault.tool_timeout)


async def test_episode_deadline_is_infrastructure():
    with FakeOpenAI(lambda _: (200, GOOD, {}), latency_s=5) as fake:
        async with Connections([("s", make_server())]) as conns:
            with anyio.fail_after(30):
                traj = await run_episode(model(fake), conns, ["hi"], episode_timeout_s=0.3)
    assert_contained(traj, "timeout", FailureClass.infrastructure, InfraFault.timeout)


async def test_policy_failures_stay_policy_failures():
    loop = ChatMessage(role="assistant", tool_calls=[ToolCall(id="x", name="add", arguments='{"a": 1, "b": 1}')])
    async with Connections([("s", make_server())]) as conns:
        traj = await run_episode(ScriptedModel([loop] * 5), conns, ["go"], max_requests=3)
        bad_calls = await run_episode(ScriptedModel([ChatMessage(role="assistant", tool_calls=[
            ToolCall(id="y", name="nope", arguments="{}"), ToolCall(id="z", name="add", arguments="{bad")]), "sorry"]),
            conns, ["go"])
    assert_contained(traj, "max_steps", FailureClass.policy, None)
    assert_contained(bad_calls, "final_answer", FailureClass.none, None)  # its own mistakes, recovered


async def test_a_failed_judge_is_judge_failed_never_a_zero_reward():
    from astra.synthesis.trajectories._reward import reward_trajectory

    task = Task(id="t", user_turns=["2+2?"])
    async with Connections([("s", make_server())]) as conns:
        traj = await run_episode(ScriptedModel.from_plan([("add", {"a": 2, "b": 2})], "4"), conns, task)
    with FakeOpenAI(lambda _: (200, b"garbage", {})) as fake:
        reward, _ = await reward_trajectory(task, traj, model(fake))
    assert reward.status == "judge_failed" and reward.overall is None and reward.dimensions == {}
    assert classify(TerminationReason.final_answer, [], None) == (FailureClass.none, None)
