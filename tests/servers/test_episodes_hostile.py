"""Hostile input against emitted servers: a catastrophic ``pattern``, a tool that hangs, results
that are not valid Unicode. Each must stay inside its own episode: the server keeps serving and
every other episode keeps its state. Real servers (emitted, over streamable HTTP and stdio)
driven by the official ``mcp`` client, plus the client harness's own argument check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from astra.client import Connections
from astra.records import EnvironmentSpec, HttpLaunch, ToolImplementation, ToolSpec
from astra.servers import EnvironmentControl, _runtime, build_server, emit, stdio_parameters

pytestmark = pytest.mark.anyio

EVIL = "^(a+)+$"
EVIL_ARGUMENT = "a" * 27 + "!"  # ~10 s of backtracking for Python's re (2**27 ways to split the a's)


def _tool(name: str, source: str, schema: dict[str, Any] | None = None, *,
          stateful: bool = False) -> ToolImplementation:
    spec = ToolSpec(server="hostile", name=name, description=f"{name} (hostile-input test tool)",
                    input_schema=schema or {"type": "object", "properties": {}})
    return ToolImplementation(spec=spec, source=source, stateful=stateful)


def hostile_spec(*, sandboxed: bool) -> EnvironmentSpec:
    return EnvironmentSpec(
        id="env-hostile",
        name="hostile",
        description="tools that misbehave",
        sandboxed=sandboxed,
        initial_state={"count": 0, "notes": []},
        tools=[
            _tool("bump", "def bump(state):\n    state['count'] += 1\n    return {'count': state['count']}\n",
                  stateful=True),
            _tool("lookup", "def lookup(code):\n    return {'code': code}\n",
                  {"type": "object", "properties": {"code": {"type": "string", "pattern": EVIL}},
                   "required": ["code"]}),
            _tool("hang", "import time\n\ndef hang():\n    time.sleep(30)\n    return 'late'\n"),
            _tool("surrogate", "def surrogate():\n    return {'text': 'ok \\ud800 then'}\n"),
            _tool("bad_bytes", "def bad_bytes():\n    return b'caf\\xe9 \\xff'.decode('utf-8', 'surrogateescape')\n"),
            _tool("poison_state",
                  "def poison_state(state):\n    state['notes'].append('\\udcff')\n    return 'noted'\n",
                  stateful=True),
        ],
    )


@pytest.fixture(scope="module")
def unsandboxed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emit(hostile_spec(sandboxed=False), tmp_path_factory.mktemp("hostile") / "env")


@pytest.fixture(scope="module")
def sandboxed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emit(hostile_spec(sandboxed=True), tmp_path_factory.mktemp("hostile-sb") / "env")


async def _count(control: EnvironmentControl) -> int:
    return (await control.state()).state["count"]


async def test_catastrophic_pattern_stalls_neither_server_nor_harness(unsandboxed_dir: Path, launch: Any) -> None:
    with launch(unsandboxed_dir, "--unsafe-no-sandbox") as server:  # a spec marked trusted runs in-process only so
        headers = {"Authorization": f"Bearer {server.token}"}
        async with httpx2.AsyncClient(headers=headers) as http, \
                Client(streamable_http_client(server.url, http_client=http)) as client:
            evil, other = EnvironmentControl(client), EnvironmentControl(client)
            await evil.open()
            await other.open()
            done: dict[str, Any] = {}

            async def pathological() -> None:
                done["evil"] = await evil.call_tool("lookup", {"code": EVIL_ARGUMENT})

            with anyio.fail_after(2):  # Python's re alone would take ~10 s on this argument
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pathological)
                    for _ in range(5):
                        assert not (await other.call_tool("bump", {})).is_error
            assert done["evil"].is_error and "does not match" in done["evil"].content[0].text
            assert await _count(other) == 5
            assert not (await evil.call_tool("lookup", {"code": "aaaa"})).is_error
        # the client harness checks arguments against the same schema before calling
        launch_target = HttpLaunch(url=server.url, headers=headers)
        async with Connections([("hostile", launch_target)]) as conns:
            started = time.perf_counter()
            problem = conns.argument_errors("lookup", {"code": EVIL_ARGUMENT * 4})
            assert problem is not None and "does not match" in problem
            assert time.perf_counter() - started < 1.0
            assert conns.argument_errors("lookup", {"code": "a" * 100_000}) is None


async def test_without_jsonschema_rs_patterns_are_checked_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "_rs", None)
    monkeypatch.setattr(_runtime, "PATTERN_CHECK_S", 3.0)
    server = build_server(hostile_spec(sandboxed=False), sandboxed=False)
    assert server.runtime.tools["lookup"].validator.fast is None
    async with Client(server) as client:
        evil, other = EnvironmentControl(client), EnvironmentControl(client)
        await evil.open()
        await other.open()
        ok = await evil.call_tool("lookup", {"code": "aaa"})  # the checking process started with the client
        assert not ok.is_error, ok
        done: dict[str, Any] = {}

        async def pathological() -> None:
            done["evil"] = await evil.call_tool("lookup", {"code": EVIL_ARGUMENT})

        with anyio.fail_after(8):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pathological)
                with anyio.fail_after(1):  # the other episode is served while the pattern is checked
                    for _ in range(5):
                        assert not (await other.call_tool("bump", {})).is_error
        assert done["evil"].is_error and "could not be checked" in done["evil"].content[0].text
        assert await _count(other) == 5


@pytest.mark.parametrize("sandboxed", [False, True])  # the sandbox runs calls on up to max_workers workers
async def test_a_hanging_tool_delays_only_its_own_episode(sandboxed: bool, unsandboxed_dir: Path, sandboxed_dir: Path,
                                                          launch: Any) -> None:
    directory = sandboxed_dir if sandboxed else unsandboxed_dir
    trust = [] if sandboxed else ["--unsafe-no-sandbox"]
    with launch(directory, "--call-timeout", "2", *trust) as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        async with httpx2.AsyncClient(headers=headers) as http, \
                Client(streamable_http_client(server.url, http_client=http)) as client:
            stuck, other = EnvironmentControl(client), EnvironmentControl(client)
            await stuck.open()
            await other.open()
            done: dict[str, Any] = {}

            async def hang() -> None:
                done["hang"] = await stuck.call_tool("hang", {})

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(hang)
                    await anyio.sleep(0.3)  # the hanging call is running
                    with anyio.fail_after(1.5):
                        for _ in range(3):
                            assert not (await other.call_tool("bump", {})).is_error
            assert done["hang"].is_error and "did not finish" in done["hang"].content[0].text
            assert await _count(other) == 3
            assert not (await stuck.call_tool("bump", {})).is_error  # a stateless spec tool: the episode goes on


async def test_lone_surrogate_results_are_clean_tool_errors(sandboxed_dir: Path, unsandboxed_dir: Path) -> None:
    for directory, trust in ((sandboxed_dir, []), (unsandboxed_dir, ["--unsafe-no-sandbox"])):
        params = stdio_parameters(directory)
        params.args.extend(trust)
        async with Client(params) as client:
            bad, other = EnvironmentControl(client), EnvironmentControl(client)
            await bad.open()
            await other.open()
            await other.call_tool("bump", {})
            await bad.call_tool("bump", {})
            for tool in ("surrogate", "bad_bytes", "poison_state"):
                result = await bad.call_tool(tool, {})
                text = result.content[0].text
                unicode_error = "not valid Unicode" in text or "surrogates not allowed" in text
                assert result.is_error and unicode_error, (tool, text)
            # the server survived, the poisoned state change was not kept, the other episode is intact
            assert (await bad.state()).state == {"count": 1, "notes": []}
            assert (await other.state()).state == {"count": 1, "notes": []}
            assert (await other.call_tool("bump", {})).structured_content == {"count": 2}
    # in process no JSON parser stands between client and server: lone surrogates in arguments
    server = build_server(hostile_spec(sandboxed=False), sandboxed=False)
    async with Client(server) as client:
        control = EnvironmentControl(client)
        await control.open()
        result = await control.call_tool("lookup", {"code": "a\ud800"})
        assert result.is_error and "not valid Unicode" in result.content[0].text
        assert (await control.state()).calls[-1]["arguments"] == {"code": "a\\ud800"}
