"""A scripted 100-sample rollout run through the real runner and a real ASTRA environment server.

Scenarios (by task index modulo 5): one call; two parallel calls; text beside a call; two user
turns (the first answer carries reasoning, as thinking models return it); a tool error (the
environment raises) and a corrected retry. Every 10th error task never answers and hits the
step limit, so the export must leave it out. Arguments include non-ASCII text and nested values.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from astra.client import ScriptedModel, run_rollouts
from astra.records import ChatMessage, EnvironmentSpec, Task, ToolCall, ToolImplementation, ToolSpec, Trajectory
from astra.servers import build_server

CITIES = ["Lisbon", "São Paulo", "Zürich", "Kyoto", "Nairobi", "Oslo", "Québec", "Auckland"]
SYSTEM = "You are a travel assistant. Use the tools; answer briefly."
SCENARIOS = ("single", "parallel", "text_beside", "multi_turn", "tool_error")
MAX_STEPS = 4

_TOOLS = {
    "get_weather": ("The current weather of a city.", {
        "type": "object", "properties": {"city": {"type": "string", "description": "city name"},
                                         "units": {"type": "string", "enum": ["metric", "imperial"]}},
        "required": ["city"]}, """
        def get_weather(city, units="metric"):
            return {"city": city, "temperature": 10 + len(city), "units": units}
        """),
    "book_hotel": ("Book a hotel room.", {
        "type": "object", "properties": {"city": {"type": "string"}, "nights": {"type": "integer"},
                                         "guests": {"type": "array", "items": {"type": "string"}}},
        "required": ["city", "nights"]}, """
        def book_hotel(city, nights, guests=None):
            if nights < 1:
                raise ValueError("nights must be at least 1")
            return {"booking": city[:3].upper() + str(nights), "guests": guests or []}
        """),
    "convert_currency": ("Convert an amount between currencies.", {
        "type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
        "required": ["amount", "to"]}, """
        def convert_currency(amount, to):
            return round(amount * 1.1, 2)
        """),
}


def environment() -> EnvironmentSpec:
    tools = [ToolImplementation(spec=ToolSpec(server="travel", name=name, description=desc, input_schema=schema),
                                source=textwrap.dedent(src))
             for name, (desc, schema, src) in _TOOLS.items()]
    return EnvironmentSpec(id="env_travel", name="travel", tools=tools, sandboxed=False)


def tasks(n: int = 100) -> list[Task]:
    out = []
    for i in range(n):
        kind = SCENARIOS[i % len(SCENARIOS)]
        city = CITIES[i % len(CITIES)]
        turns = [f"[{kind} {i}] What is the weather in {city}?"]
        if kind == "multi_turn":
            turns.append(f"[{kind} {i}] Now book {i % 3 + 1} nights there.")
        out.append(Task(id=f"sft-{i:03d}", user_turns=turns))
    return out


def _call(index: int, name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(id=f"call_{index}_{name}", name=name, arguments=json.dumps(args, ensure_ascii=False))


def policy(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> ChatMessage:
    """The scripted agent: what to do next, from the task tag in the latest user turn."""
    users = [m for m in messages if m.role == "user"]
    tag = users[-1].content.split("]")[0].lstrip("[").split()
    kind, i = tag[0], int(tag[1])
    city = CITIES[i % len(CITIES)]
    since = messages[max(j for j, m in enumerate(messages) if m.role == "user") + 1:]
    step = sum(1 for m in since if m.role == "assistant")
    results = [m.content for m in since if m.role == "tool"]
    weather = {"city": city, "units": "metric"}
    if kind == "single":
        if step == 0:
            return ChatMessage(role="assistant", tool_calls=[_call(0, "get_weather", weather)])
        return ChatMessage(role="assistant", content=f"It is {results[-1]} in {city}.")
    if kind == "parallel":
        other = CITIES[(i + 3) % len(CITIES)]
        if step == 0:
            return ChatMessage(role="assistant", tool_calls=[
                _call(0, "get_weather", weather), _call(1, "get_weather", {"city": other}),
                _call(2, "convert_currency", {"amount": 12.5 + i, "to": "EUR"})])
        return ChatMessage(role="assistant", content=f"{city} and {other}: " + "; ".join(results))
    if kind == "text_beside":
        if step == 0:
            return ChatMessage(role="assistant", content=f"Let me check {city} for you.",
                               tool_calls=[_call(0, "get_weather", weather)])
        return ChatMessage(role="assistant", content=f"Done: {results[-1]}")
    if kind == "multi_turn":
        if len(users) == 1:
            if step == 0:
                return ChatMessage(role="assistant", tool_calls=[_call(0, "get_weather", weather)])
            return ChatMessage(role="assistant", content=f"Weather in {city}: {results[-1]}",
                               reasoning_content="The tool answered; summarise it.")
        if step == 0:
            return ChatMessage(role="assistant", tool_calls=[
                _call(1, "book_hotel", {"city": city, "nights": i % 3 + 1, "guests": ["Ana", "Björn"]})])
        return ChatMessage(role="assistant", content=f"Booked: {results[-1]}")
    # tool_error: a call the environment rejects, then a corrected one; every 10th never answers
    if i % 10 == 9 or step == 0:
        return ChatMessage(role="assistant", tool_calls=[_call(step, "book_hotel", {"city": city, "nights": 0})])
    if step == 1:
        return ChatMessage(role="assistant", tool_calls=[_call(step, "book_hotel", {"city": city, "nights": 2})])
    return ChatMessage(role="assistant", content=f"Booked after a retry: {results[-1]}")


def run(out_dir: Path, n: int = 100) -> list[Trajectory]:
    """Roll the scripted agent over ``n`` tasks; returns every trajectory the runner wrote."""
    model = ScriptedModel([policy] * (2 * MAX_STEPS + 2), name="sft-matrix", per_conversation=True)
    travel = build_server(environment(), sandboxed=False)  # trusted: the test's own code
    run_rollouts(tasks(n), model.name, out_dir, model=model, servers=[("travel", travel)],
                 system_prompt=SYSTEM, samples=1, concurrency=8, max_requests=MAX_STEPS, progress=False)
    lines = (out_dir / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    return [Trajectory.model_validate_json(line) for line in lines if line.strip()]
