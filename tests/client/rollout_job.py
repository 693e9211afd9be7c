"""A rollout run in its own process (the kill -9 test kills it mid-run)."""

from __future__ import annotations

import sys

from mcp_test_server import make_server

from astra.client import ScriptedModel, register_script, run_rollouts
from astra.records import Task


def tasks(n: int) -> list[Task]:
    return [Task(id=f"task-{i:03d}", user_turns=[f"add {i} and {i}"]) for i in range(n)]


def slow_plan() -> ScriptedModel:
    return ScriptedModel.from_plan([("add", {"a": 1, "b": 1})], "2", name="slow-plan", delay_s=0.05)


register_script("slow-plan", slow_plan)
register_script("pid-plan", lambda: ScriptedModel.from_plan([("pid", {})], "done", name="pid-plan", delay_s=0.2))

if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2])
    summary = run_rollouts(tasks(n), "scripted:slow-plan", out, servers=[("s", make_server())],
                           samples=2, concurrency=4, progress=False)
    print(summary.model_dump_json())
