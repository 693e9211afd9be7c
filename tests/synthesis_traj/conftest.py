"""Shared fixtures: a registry with the bundled sample servers, and a scripted "router" model
whose replies depend on the prompt (so one deterministic script serves every stage, at any
concurrency), with switches for malformed replies."""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections.abc import Sequence
from typing import Any

import pytest

from astra.client import ScriptedModel
from astra.records import ChatMessage, ServerSpec, StdioLaunch, ToolCall, stable_id


def _value_for(name: str, schema: dict[str, Any]) -> Any:
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return 2
    if kind == "number":
        return 38.7
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    if "timezone" in name:
        return "Europe/Lisbon"
    if name == "time":
        return "12:30"
    return "Lisbon"


def example_args(parameters: dict[str, Any]) -> dict[str, Any]:
    props = parameters.get("properties") or {}
    return {p: _value_for(p, props.get(p) or {}) for p in parameters.get("required") or []}


class Router:
    """Answers each pipeline prompt realistically; ``bad`` names prompt kinds to answer with junk."""

    def __init__(self, bad: Sequence[str] = (), low_quality: bool = False) -> None:
        self.bad = set(bad)
        self.low_quality = low_quality
        self.seen: dict[str, int] = {}

    def kind(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> str:
        system = next((m.content or "" for m in messages if m.role == "system"), "")
        user = next((m.content or "" for m in messages if m.role == "user"), "")
        if tools:
            return "agent"
        if "You simulate an API tool" in system:
            return "simulate"
        for key, marker in (("edges", "candidate dependency"), ("vote", "coherent workflow"),
                            ("query", "Write one realistic user request"), ("recover", "Which tools, in which order"),
                            ("questions", "self-contained user request"), ("variants", "Give variants"),
                            ("quality", "Rate this task"), ("judge", "Judge this tool-using assistant"),
                            ("chains", "Detect the dependency relationships between the tools of one server")):
            if marker in user:
                return key
        raise AssertionError(f"router: unknown prompt {user[:200]!r}")

    def __call__(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> ChatMessage | str:
        kind = self.kind(messages, tools)
        self.seen[kind] = self.seen.get(kind, 0) + 1
        user = next((m.content or "" for m in messages if m.role == "user"), "")
        if kind in self.bad:
            return "I'm sorry, I cannot answer in JSON {broken"
        if kind == "agent":
            return self.agent(messages, tools)
        if kind == "simulate":
            return '{"result": {"city_id": "c-lis", "latitude": 38.7, "longitude": -9.1, "temperature_c": 21}}'
        if kind == "edges":
            n = len(re.findall(r'^\{"index": \d+', user, flags=re.M))
            items = [{"index": i, "valid": i != 1, "score": 0.9, "bindings": {}, "reason": "fits"} for i in range(n)]
            return "Here you go:\n```json\n" + json.dumps({"items": items}) + "\n```"
        if kind == "vote":
            return '{"valid": true, "reason": "each step uses the previous result"}'
        if kind == "query":
            names = re.search(r"in this order: (.*?)\. Do not", user).group(1)
            return json.dumps({"query": f"Please help me, I need this done step by step [{names}]"})
        if kind == "recover":
            names = re.search(r"\[(.*?)\]", user).group(1).split(" -> ")
            return json.dumps({"tools": names})
        if kind == "questions":
            return '{"questions": ["What is the weather like in Lisbon right now, and what time is it there?"]}'
        if kind == "variants":
            return variants_reply(user)
        if kind == "quality":
            s = 2 if self.low_quality else 4
            return json.dumps({"tool_selection_difficulty": s, "uniqueness": s, "question_quality": s, "realism": s,
                               "reason": "clear"})
        if kind == "judge":
            return judge_reply(user)
        if kind == "chains":
            names = re.findall(r'^\{"name": "([^"]+)"', user, flags=re.M)
            return json.dumps(
                [
                    {
                        "tool_graph_detect": "yes",
                        "tool_graph_detect_chain": names[:2] + ["nope"],
                        "tool_graph_detect_task": "use the first two tools",
                    },
                    {"tool_graph_detect": "not sure", "tool_graph_detect_chain": [], "tool_graph_detect_task": ""},
                ]
            )
        raise AssertionError(kind)

    def agent(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> ChatMessage | str:
        if any(m.role == "tool" for m in messages):
            return "It is sunny and 21 C in Lisbon, local time 12:30."
        # one offered tool, picked by a stable hash of the request and the offer: over many tasks every server
        # of a mixed task gets called (always the first would leave servers that sort late unused)
        user = next((m.content or "" for m in messages if m.role == "user"), "")
        offer = ",".join(t["function"]["name"] for t in tools)
        fn = tools[zlib.crc32(f"{user}|{offer}".encode()) % len(tools)]["function"]
        return ChatMessage(role="assistant", content=None, tool_calls=[
            ToolCall(id="call_0", name=fn["name"], arguments=json.dumps(example_args(fn.get("parameters") or {})))])


VARIANTS = {
    "context_shift": "I'm planning a cycling trip in Porto: what's the weather there now and the local time?",
    "complicate": "Compare the weather in Lisbon with Porto, and tell me the local time in both before 9 am.",
    "persona": "As a teacher planning a field trip in Lisbon, what's the weather now?",
}


def variants_reply(prompt: str) -> str:
    """A realistic augmentation reply: the requested shape, numbered variants per mode."""
    shape = json.loads(prompt[prompt.rindex("Reply as ") + len("Reply as "):])
    original = re.search(r"Original request: (.*)", prompt).group(1)[:40]
    out = {mode: [f"{VARIANTS[mode]} (variant {i + 1} of '{original}')" for i in range(len(v))]
           for mode, v in shape.items() if mode != "turns"}
    if "turns" in shape:
        out["turns"] = ["I'm going to Lisbon.", "What is the weather and time there?"]
    return json.dumps(out)


def judge_reply(prompt: str, score: float = 1.0) -> str:
    """A judge's reply to a trajectory-judge prompt: the requested shape, every item at ``score``."""
    shape = json.loads(prompt[prompt.rindex("\n{") + 1:])
    for value in shape.values():
        for item in value if isinstance(value, list) else [value]:
            if "success" in item:
                item["success"] = score >= 1.0
            else:
                item["score"] = score
            item["reason"] = "looks right" if score >= 1.0 else "not quite"
    return "```json\n" + json.dumps(shape) + "\n```"


def router_model(router: Router, name: str = "router") -> ScriptedModel:
    """The library's ScriptedModel, per conversation: every reply slot is the router."""
    return ScriptedModel([router] * 32, name=name, per_conversation=True)


def time_server() -> ServerSpec:
    return ServerSpec(
        id=stable_id("test", "time"),
        name="time",
        domain="weather",
        launch=StdioLaunch(command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"]),
    )


@pytest.fixture
def home(tmp_path):
    from astra.registry import SAMPLE_SERVERS, Registry, import_file

    h = tmp_path / "home"
    with Registry.open(h) as reg:
        assert import_file(reg, SAMPLE_SERVERS).ok
    return h
