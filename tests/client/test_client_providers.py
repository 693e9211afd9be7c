"""Providers through their real SDKs over an httpx transport replaying recorded responses."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp_test_server import make_server

from astra.client import (
    AnthropicModel,
    Connections,
    ModelError,
    ModelSettings,
    OpenAIModel,
    RetryPolicy,
    ScriptedModel,
    register_script,
    resolve_model,
    run_episode,
)
from astra.client._cache import CachedModel
from astra.client._local import parse_tool_reply
from astra.records import ChatMessage

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, jitter=0.0)
RECORDED = Path(__file__).parent / "recorded"


def openai_completion(content=None, tool_calls=None, reasoning=None):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(tool_calls)
        ]
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


class Replay:
    """A transport answering each request with the next (status, body, headers)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.times: list[float] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        import time

        self.times.append(time.monotonic())
        self.requests.append(json.loads(request.content))
        status, body, headers = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return httpx2.Response(status, json=body, headers=headers)

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self))


async def test_openai_429_then_200_honours_retry_after():
    replay = Replay([
        (429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "0.3"}),
        (200, openai_completion("hi", reasoning="thinking..."), {}),
    ])
    model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", retry=FAST, http_client=replay.client())
    with anyio.fail_after(30):
        resp = await model.request(
            [ChatMessage(role="user", content="hello")], settings=ModelSettings(temperature=0, seed=3)
        )
    assert resp.message.content == "hi" and resp.message.reasoning_content == "thinking..."
    assert resp.raw["attempts"] == 2 and resp.usage.input_tokens == 11
    assert replay.times[1] - replay.times[0] >= 0.29  # Retry-After beat the 10 ms backoff
    assert replay.requests[0]["temperature"] == 0 and replay.requests[0]["seed"] == 3


async def test_openai_500_forever_is_model_error_and_episode_records_it():
    replay = Replay([(500, {"error": {"message": "down"}}, {})])
    model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", retry=FAST, http_client=replay.client())
    with anyio.fail_after(30):
        with pytest.raises(ModelError, match="after 3 attempts") as info:
            await model.request([ChatMessage(role="user", content="x")])
        assert info.value.status == 500 and len(replay.requests) == 3
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["x"])
    assert traj.termination == "model_error" and "HTTP 500" in traj.error and traj.steps == []


async def test_openai_400_is_not_retried():
    replay = Replay([(400, {"error": {"message": "bad tools"}}, {})])
    model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", retry=FAST, http_client=replay.client())
    with anyio.fail_after(30), pytest.raises(ModelError, match="HTTP 400"):
        await model.request([ChatMessage(role="user", content="x")])
    assert len(replay.requests) == 1


async def test_openai_tool_calls_drive_an_episode():
    replay = Replay([(200, openai_completion(tool_calls=[("add", {"a": 2, "b": 2}), ("echo", {"text": "x"})]), {})])
    replay.answers.append((200, openai_completion("4"), {}))
    model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", retry=FAST, http_client=replay.client())
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["2+2?"])
    assert traj.termination == "final_answer" and traj.final_answer == "4"
    assert [s.result for s in traj.steps] == [{"result": 4}, {"result": "x"}]
    second = replay.requests[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool", "tool"]
    assert second[2]["tool_call_id"] == "call_0" and second[2]["content"] == "4"
    assert {t["function"]["name"] for t in replay.requests[0]["tools"]} >= {"add", "echo"}
    assert traj.usage.input_tokens == 22


async def test_anthropic_recorded_messages_api_episode():
    recorded = json.loads((RECORDED / "anthropic_messages.json").read_text())
    replay = Replay([(200, body, {}) for body in recorded])
    model = AnthropicModel("claude-test", base_url="http://127.0.0.1:9", retry=FAST, http_client=replay.client())
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["What is 20 + 22?"], system_prompt="Be brief.")
    assert traj.termination == "final_answer" and traj.final_answer == "20 + 22 = 42."
    assert traj.steps[0].tool == "add" and traj.steps[0].result == {"result": 42}
    assert traj.messages[2].reasoning_content == "I should use the add tool."
    first, second = replay.requests
    assert first["system"] == "Be brief." and first["max_tokens"] == 1024
    assert {t["name"] for t in first["tools"]} >= {"add"} and "input_schema" in first["tools"][0]
    tool_use = second["messages"][1]["content"][-1]
    assert tool_use["type"] == "tool_use" and tool_use["input"] == {"a": 20, "b": 22}
    # the thinking block goes back first and verbatim, signature included
    assert second["messages"][1]["content"][0] == {
        "type": "thinking", "thinking": "I should use the add tool.", "signature": "sig"}
    assert "thinking" not in first  # not asked for: not sent
    result = second["messages"][2]
    assert result["role"] == "user" and result["content"][0] == {
        "type": "tool_result", "tool_use_id": tool_use["id"], "content": "42"}
    assert traj.usage.input_tokens == 380 + 460


async def test_anthropic_extended_thinking_round_trip():
    """With thinking on, each tool-use continuation must carry the turn's thinking and
    redacted_thinking blocks unchanged; the request carries the thinking option."""
    recorded = json.loads((RECORDED / "anthropic_messages.json").read_text())
    first_reply = json.loads(json.dumps(recorded[0]))
    first_reply["content"].insert(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"})
    replay = Replay([(200, first_reply, {}), (200, recorded[1], {})])
    thinking = {"type": "enabled", "budget_tokens": 2048}
    model = AnthropicModel("claude-test", base_url="http://127.0.0.1:9", retry=FAST, http_client=replay.client(),
                           settings=ModelSettings(max_tokens=4096, thinking=thinking))
    with anyio.fail_after(30):
        async with Connections([("s", make_server())]) as conns:
            traj = await run_episode(model, conns, ["What is 20 + 22?"])
    assert traj.termination == "final_answer"
    assert [b["type"] for b in traj.messages[1].thinking_blocks] == ["thinking", "redacted_thinking"]
    first, second = replay.requests
    assert first["thinking"] == thinking and second["thinking"] == thinking and first["max_tokens"] == 4096
    assert second["messages"][1]["content"][:2] == [
        {"type": "thinking", "thinking": "I should use the add tool.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    ]
    # what a trajectory stores survives the JSONL round trip and still converts the same way
    again = type(traj).model_validate_json(traj.model_dump_json())
    assert again.messages[1].thinking_blocks == traj.messages[1].thinking_blocks


async def test_anthropic_529_overloaded_is_retried():
    recorded = json.loads((RECORDED / "anthropic_messages.json").read_text())
    replay = Replay([(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, {}),
                     (200, recorded[1], {})])
    model = AnthropicModel("claude-test", base_url="http://127.0.0.1:9", retry=FAST, http_client=replay.client())
    with anyio.fail_after(30):
        resp = await model.request([ChatMessage(role="user", content="hi")])
    assert resp.message.content == "20 + 22 = 42." and resp.raw["attempts"] == 2


async def test_cached_model(tmp_path):
    model = CachedModel(ScriptedModel(["first", "second"]), tmp_path)
    msgs = [ChatMessage(role="user", content="q")]
    a = await model.request(msgs)
    b = await model.request(msgs)
    c = await model.request(msgs, settings=ModelSettings(temperature=0.5))
    assert (a.message.content, b.message.content, c.message.content) == ("first", "first", "second")
    assert (model.hits, model.misses) == (1, 2)
    again = CachedModel(ScriptedModel([]), tmp_path)  # a fresh process would hit the same files
    again.name = model.name
    again.model.name = model.model.name
    assert (await again.request(msgs)).message.content == "first"


def test_resolve_model_specs(tmp_path):
    with pytest.raises(ModelError, match="no script registered as 'scripted:nope'"):
        resolve_model("scripted:nope")
    with pytest.raises(ValueError, match="unknown provider"):
        resolve_model("bogus:x")
    with pytest.raises(ValueError, match="expected"):
        resolve_model("gpt-4o")
    register_script("two-step", lambda: ["a", "b"])
    model = resolve_model("scripted:two-step")
    assert isinstance(model, ScriptedModel) and model.per_conversation
    m = resolve_model("openai:qwen", base_url="http://127.0.0.1:1/v1")
    assert isinstance(m, OpenAIModel) and m.endpoint == "http://127.0.0.1:1/v1" and m.name == "openai:qwen"
    assert isinstance(resolve_model("anthropic:claude-x"), AnthropicModel)
    assert isinstance(resolve_model("scripted:echo", cache_dir=tmp_path), CachedModel)


async def test_openai_client_is_shared_per_endpoint():
    a = OpenAIModel("a", base_url="http://127.0.0.1:1/v1")
    b = OpenAIModel("b", base_url="http://127.0.0.1:1/v1")
    c = OpenAIModel("c", base_url="http://127.0.0.1:2/v1")
    assert a._client() is b._client() and a._client() is not c._client()


def test_parse_tool_reply_is_lenient():
    names = ["add", "echo"]
    assert (
        parse_tool_reply('{"tool": "add", "arguments": {"a": 1, "b": 2}}', names)[1][0].arguments == '{"a": 1, "b": 2}'
    )
    answer, calls = parse_tool_reply('Sure!\n```json\n{"name": "echo", "arguments": {"text": "x"}}\n```', names)
    assert calls[0].name == "echo" and json.loads(calls[0].arguments) == {"text": "x"}
    _, calls = parse_tool_reply(
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
        '<tool_call>{"name": "echo", "arguments": {}}</tool_call>',
        names,
    )
    assert [c.name for c in calls] == ["add", "echo"]
    assert parse_tool_reply('{"answer": "42"}', names) == ("42", [])
    assert parse_tool_reply("just text {not json", names) == ("just text {not json", [])
    assert parse_tool_reply('{"city": "Paris"}', names) == ('{"city": "Paris"}', [])
