"""verifiers 0.4: the generated taskset package run by verifiers' own ``vf-eval`` in its own venv
(``.venv-verifiers``, made by scripts/setup.sh: verifiers pins mcp==2.0.0): its null harness's chat
loop over MCP, its taskset-scoped toolset server and per-rollout state channel, its interception
and scoring, against a scripted fake OpenAI endpoint on 127.0.0.1. One ``vf-eval`` run, two
environments x 8 rollouts, all 16 concurrent: per environment seven scripted oracles and one no-op."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from astra.trainers import ExportEnvironment, samples
from astra.trainers.verifiers_package import write_verifiers_package

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-verifiers"
WHEELS = ROOT / ".ci" / "cache" / "vf-wheels"
sys.path.insert(0, str(ROOT / "tests" / "client"))
from fake_openai import FakeOpenAI, completion  # noqa: E402

ROLLOUTS = 8
ORACLES_PER_ENV = 7


def _sse(body: dict[str, Any]) -> str:
    """A chat completion as the stream verifiers' eval client asks for (``stream: true``)."""
    choice = body["choices"][0]
    delta = {"role": "assistant", "content": choice["message"].get("content")}
    if choice["message"].get("tool_calls"):
        delta["tool_calls"] = [dict(index=i, **c) for i, c in enumerate(choice["message"]["tool_calls"])]
    base = {"id": body["id"], "created": body["created"], "model": body["model"], "object": "chat.completion.chunk"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
         "usage": body["usage"]},
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


class Script:
    """The fake model: a rollout's first request decides its part (the first seven per environment
    replay the oracle, the eighth answers at once: a no-op); later turns continue the oracle."""

    def __init__(self, oracle: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
        self.oracle = oracle
        self.started: dict[str, int] = {}
        self.finished: dict[str, list[list[str]]] = {env: [] for env in oracle}
        self.lock = threading.Lock()

    def reply(self, body: bytes) -> Any:
        request = json.loads(body)
        messages = request["messages"]
        user = next(m["content"] for m in messages if m["role"] == "user")
        env = next(e for e in self.oracle if f"[{e}]" in user)
        turn = sum(1 for m in messages if m["role"] == "assistant")
        calls = self.oracle[env]
        with self.lock:
            if turn == 0:
                self.started[env] = self.started.get(env, 0) + 1
                noop = self.started[env] > ORACLES_PER_ENV
            else:
                noop = False
            if noop:
                answer = completion("I do not know.")
            elif turn < len(calls):
                answer = completion(tool_calls=[(f"call_{turn}", *calls[turn])])
            else:
                self.finished[env].append([m["content"] for m in messages if m["role"] == "tool"])
                answer = completion("354.0")
        if request.get("stream"):
            return 200, _sse(answer), {"content-type": "text/event-stream"}
        return 200, answer, {}


def _vf_env(pkg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(pkg)]),  # this checkout's astra, the generated package
        PATH=os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")]),  # verifiers' uv
        # verifiers' chat program is a PEP 723 script `uv sync`s: offline, from the wheels setup.sh keeps
        UV_NO_INDEX="1",
        UV_FIND_LINKS=str(WHEELS),
        UV_PYTHON_DOWNLOADS="never",
        FAKE_OPENAI_KEY="not-a-secret",
    )
    return env


def test_vf_eval_oracle_scores_one_noop_zero_state_per_rollout(
    environments: list[ExportEnvironment], tmp_path: Path
) -> None:
    if not (VENV / "bin" / "vf-eval").exists() or not WHEELS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{VENV} or {WHEELS} missing: scripts/setup.sh makes them")
        pytest.skip("no .venv-verifiers: run scripts/setup.sh")
    # the same question in both environments: tag each prompt so the fake knows the task
    tagged = [dataclasses.replace(e, question=f"[{e.name}] {e.question}") for e in environments]
    made = samples(tagged, n_distractors=1)
    write_verifiers_package(made, tmp_path / "pkg", package="astra_arena_test")
    oracle: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for sample in made:
        by_id = {v.id: v for v in sample.env.spec.verifiers}
        oracle[sample.env.name] = [(t["tool"], by_id[t["id"]].arguments) for t in sample.truth]
    script = Script(oracle)
    with FakeOpenAI(script.reply) as fake:
        run = subprocess.run(
            [
                str(VENV / "bin" / "vf-eval"), "astra_arena_test", "--model", "scripted",
                "--client.base-url", fake.base_url, "--client.api-key-var", "FAKE_OPENAI_KEY",
                "--env.agent.runtime.type", "subprocess", "--no-push",
                "-n", str(len(made)), "-r", str(ROLLOUTS),
                "--output-dir", str(tmp_path / "out"), "--run.name", "ci",
            ],
            env=_vf_env(tmp_path / "pkg"), cwd=tmp_path, capture_output=True, text=True, timeout=420,
        )
    assert run.returncode == 0, run.stderr[-4000:]
    episodes = [json.loads(line) for line in (tmp_path / "out" / "ci" / "traces.jsonl").read_text().splitlines()]
    traces = [t for e in episodes for t in e["traces"]]
    assert len(traces) == len(made) * ROLLOUTS and all(e["ok"] and not e["errors"] for e in episodes)
    by_env: dict[str, list[tuple[float, float]]] = {}
    for trace in traces:
        reward = trace["rewards"]["process_reward"]["score"]
        calls = trace["metrics"]["tool_calls"]
        by_env.setdefault(trace["task"]["data"]["environment"], []).append((calls, reward))
        assert sum(trace["info"]["astra_step_rewards"]) == pytest.approx(reward)
    for env, calls in oracle.items():
        # the oracles: every call in the rollout's own episode (state kept across its calls) -> 1.0;
        # the no-op: no call -> 0
        assert sorted(by_env[env]) == [(0.0, 0.0)] + [(float(len(calls)), 1.0)] * ORACLES_PER_ENV
        # seven concurrent oracle rollouts on one environment, each from the initial state: every one
        # created ORD-1 and saw 11 claw hammers after receiving 10 (never another rollout's)
        assert len(script.finished[env]) == ORACLES_PER_ENV
        for tool_results in script.finished[env]:
            assert json.loads(tool_results[2])["order_id"] == "ORD-1"
            assert json.loads(tool_results[3])["quantity"] == 11
