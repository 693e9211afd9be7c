"""Scripted rollouts whose trajectories are pinned in ``golden/rollouts.jsonl``.

The golden file was written by the harness as it was before the rollout CPU work (issue 19)
and must not change: the same episodes give the same trajectories, up to timings. Each
scenario runs through the real OpenAI provider against :mod:`fake_openai` on 127.0.0.1, or
through the scripted model, with the test MCP server in-process and over stdio.

``python golden_rollouts.py --write`` rewrites the file (only when a change of trajectories
is intended; say so in the commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI, completion  # noqa: E402
from mcp_test_server import make_server  # noqa: E402

from astra.client import Connections, ModelSettings, OpenAIModel, RetryPolicy, ScriptedModel, run_episode  # noqa: E402
from astra.records import ChatMessage, StdioLaunch, Task, ToolCall  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "rollouts.jsonl"
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, jitter=0.0)


def _calls(*calls: tuple[str, dict[str, Any]], prefix: str = "c") -> list[tuple[str, str, dict[str, Any]]]:
    return [(f"{prefix}{i}", name, args) for i, (name, args) in enumerate(calls)]


# first user message -> the endpoint's replies, by the number of assistant turns so far
SCRIPTS: dict[str, list[Any]] = {
    "plan": [completion(tool_calls=_calls(("add", {"a": i, "b": 1}), prefix=f"p{i}_"),
                        reasoning="r" if i == 0 else None)
             for i in range(5)] + [completion("done after 5", usage=(30, 4))],
    "parallel": [completion(tool_calls=_calls(("add", {"a": 2, "b": 2}), ("echo", {"text": "über"}))),
                 completion("4 and über")],
    "malformed": [
        {**completion(), "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "let me try", "tool_calls": [
                {"id": "m1", "type": "function", "function": {"name": "no_such_tool", "arguments": "{}"}},
                {"id": "m2", "type": "function", "function": {"name": "add", "arguments": "{not json"}},
                {"id": "m3", "type": "function", "function": {"name": "add", "arguments": '{"a": "one", "b": 2}'}},
                {"id": "m4", "type": "function", "function": {"name": "add", "arguments": "[1, 2]"}},
                {"id": "m5", "type": "function", "function": {"name": "fail", "arguments": '{"message": "kaputt"}'}},
            ]}}]},
        completion("recovered"),
    ],
    "turn one": [completion(tool_calls=_calls(("echo", {"text": "t1"}))), completion("a1"),
                 completion(tool_calls=_calls(("add", {"a": 1, "b": 1}), prefix="t2_")), completion("a2")],
    "forever": [completion(tool_calls=_calls(("echo", {"text": str(i)}), prefix=f"f{i}_")) for i in range(10)],
    "down": "500",
}


def _reply(body: bytes) -> Any:
    request = json.loads(body)
    first_user = next(m["content"] for m in request["messages"] if m["role"] == "user")
    script = SCRIPTS[first_user]
    if script == "500":
        return 500, {"error": {"message": "down", "type": "server_error"}}, {}
    index = sum(1 for m in request["messages"] if m["role"] == "assistant")
    return 200, script[index], {}


def normalise(traj: Any) -> dict[str, Any]:
    """A trajectory without what varies from run to run (timings, the per-run episode id)."""
    record = json.loads(traj.model_dump_json())
    record.pop("timings", None)
    for step in record["steps"]:
        step.pop("latency_s", None)
    record["meta"].pop("step_latencies_s", None)
    record["meta"].pop("episode", None)
    return record


async def run_all() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stdio = StdioLaunch(command=sys.executable, args=[str(Path(__file__).parent / "mcp_test_server.py"), "stdio"])
    with FakeOpenAI(_reply, latency_s=0.001) as fake:
        model = OpenAIModel("golden", base_url=fake.base_url, retry=FAST,
                            settings=ModelSettings(temperature=0, seed=7))
        async with Connections([("s", make_server())]) as conns, Connections([("io", stdio)]) as io:
            async def ep(task: Any, *, on: Connections | None = None, **options: Any) -> None:
                out.append(normalise(await run_episode(model, on or conns, task, **options)))

            await ep(Task(id="plan", user_turns=["plan"]), system_prompt="Use the tools.")
            await ep(["parallel"])
            await ep(["malformed"], tool_names=["add", "echo", "fail"])
            await ep(["turn one", "turn two"], sample=3)
            await ep(["forever"], max_steps=3)
            await ep(["down"])
            await ep(Task(id="io", user_turns=["plan"], servers=["io"]), on=io, max_tokens_total=1000)
            scripted = ScriptedModel.from_plan(
                [("add", {"a": 40, "b": 2}), [("echo", {"text": "x"}), ("pid", {})]], "42")
            out.append(normalise(await run_episode(scripted, io, ["scripted"], tool_names=["add", "echo", "io/pid"])))
            wrong = ScriptedModel([ChatMessage(role="assistant",
                                               tool_calls=[ToolCall(id="w", name="add", arguments="{}")])])
            out.append(normalise(await run_episode(wrong, conns, ["exhausted"])))
    for record in out:  # the stdio server's pid changes from run to run
        for step in record["steps"]:
            if step["server_tool"] == "pid" and not step["is_error"]:
                step["result"] = "<pid>"
        for message in record["messages"]:
            if message["role"] == "tool" and message["name"] == "pid" and message["content"].isdigit():
                message["content"] = "<pid>"
    return out


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    records = anyio.run(run_all)
    if "--write" in sys.argv:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records))
        print(f"wrote {len(records)} trajectories to {GOLDEN}")
    else:
        print(json.dumps(records, indent=1)[:4000])
