"""The real small model (SmolLM2-135M GGUF): in-process (local:) and over HTTP (openai: against
``python -m llama_cpp.server`` on 127.0.0.1). Whatever the model answers, the trajectory must
be complete and well-formed."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest
from conftest import free_port, wait_for_port
from test_client_loop import assert_well_formed

from astra.client import Connections, ModelSettings, resolve_model, run_episode
from astra.client._local import smollm2_path
from astra.records import Task

pytestmark = [pytest.mark.local_model, pytest.mark.anyio]
TASK = Task(id="tokyo", user_turns=["What time is it now in Tokyo (timezone Asia/Tokyo)?"])
VALID_END = {"final_answer", "max_steps", "max_tokens"}


@pytest.fixture(scope="module")
def gguf() -> str:
    pytest.importorskip("llama_cpp")
    try:
        return str(smollm2_path())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"SmolLM2 GGUF unavailable: {exc}")


async def test_local_provider_in_process(gguf, time_launch):
    model = resolve_model("local:smollm2", n_ctx=2048)
    settings = ModelSettings(temperature=0.0, max_tokens=64, seed=1, timeout_s=120)
    with anyio.fail_after(240):
        async with Connections([("time", time_launch)]) as conns:
            traj = await run_episode(model, conns, TASK, settings=settings, max_steps=2)
    assert traj.termination in VALID_END, traj.error
    assert traj.usage.input_tokens > 0 and traj.usage.output_tokens > 0
    assert traj.meta["model_requests"] >= 1
    # grammar-constrained: every reply is a tool call of a real tool or an answer
    for m in traj.messages:
        if m.role == "assistant":
            assert m.tool_calls or m.content is not None
            for c in m.tool_calls or []:
                assert c.name in {"get_current_time", "convert_time"}
    assert_well_formed(traj)


async def test_local_json_output_without_tools(gguf):
    import json

    model = resolve_model("local:smollm2", n_ctx=2048)
    from astra.records import ChatMessage

    with anyio.fail_after(120):
        resp = await model.request([ChatMessage(role="user", content="Give a JSON object with a key 'city'.")],
                                   settings=ModelSettings(json_output=True, max_tokens=48, temperature=0))
    assert isinstance(json.loads(resp.message.content), dict)


@pytest.fixture(scope="module")
def llama_server(gguf):
    pytest.importorskip("llama_cpp.server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "2048", "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, timeout_s=120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_openai_provider_against_llama_cpp_server(llama_server, time_launch):
    model = resolve_model("openai:smollm2", base_url=llama_server)
    settings = ModelSettings(temperature=0.0, max_tokens=64, seed=1, timeout_s=120)
    with anyio.fail_after(300):
        async with Connections([("time", time_launch)]) as conns:
            traj = await run_episode(model, conns, TASK, settings=settings, max_steps=2)
    assert traj.termination in VALID_END | {"model_error"}, traj.error
    if traj.termination == "model_error":  # only an HTTP-level failure would be a bug
        pytest.fail(f"llama.cpp server request failed: {traj.error}")
    assert traj.usage.input_tokens > 0
    assert traj.meta["model_requests"] >= 1
    assert_well_formed(traj)
