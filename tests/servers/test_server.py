"""Serving the inventory environment: in-process, stdio and HTTP, with the official mcp client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client import Client

from astra.records import EnvironmentSpec, ToolErrorKind, ToolSpec
from astra.servers import (
    EnvironmentControl,
    EnvironmentSpecError,
    build_class_server,
    build_server,
    stdio_parameters,
    validate_emitted,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("sandboxed", [True, False])
async def test_in_process_tools_match_spec_and_results_are_structured(
    inventory: EnvironmentSpec, sandboxed: bool
) -> None:
    server = build_server(inventory, sandboxed=sandboxed)
    try:
        async with Client(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert list(tools) == [t.spec.name for t in inventory.tools]
            for impl in inventory.tools:
                assert tools[impl.spec.name].input_schema == impl.spec.input_schema
                assert tools[impl.spec.name].description == impl.spec.description
            # a non-object output schema is advertised wrapped, and the result follows it
            assert tools["stock_value"].output_schema == {
                "type": "object",
                "properties": {"result": {"type": "number"}},
                "required": ["result"],
            }
            result = await client.call_tool("get_item", {"sku": "WID-1"})
            assert not result.is_error
            assert result.structured_content == {
                "sku": "WID-1",
                "name": "Widget",
                "category": "tools",
                "price": 2.5,
                "quantity": 40,
            }
            assert json.loads(result.content[0].text) == result.structured_content
            value = await client.call_tool("stock_value", {})
            assert value.structured_content == {"result": 242.0}
            order = await client.call_tool("create_order", {"sku": "HAM-2", "quantity": 2, "customer": "ACME"})
            assert order.structured_content == {"order_id": "ORD-1", "total": 28.0}
            assert (await client.call_tool("get_item", {"sku": "HAM-2"})).structured_content["quantity"] == 1
    finally:
        await server.runtime.aclose()


async def test_tool_errors_reach_the_model_as_is_error(inventory: EnvironmentSpec) -> None:
    server = build_server(inventory)
    try:
        async with Client(server) as client:
            missing = await client.call_tool("get_item", {"sku": "NOPE"})
            assert missing.is_error and "KeyError" in missing.content[0].text and "NOPE" in missing.content[0].text
            bad = await client.call_tool("add_stock", {"sku": "WID-1", "quantity": 0})
            assert bad.is_error and "invalid arguments" in bad.content[0].text and "quantity" in bad.content[0].text
            extra = await client.call_tool("get_item", {"sku": "WID-1", "colour": "red"})
            assert extra.is_error and "colour" in extra.content[0].text
            unknown = await client.call_tool("launch_rockets", {})
            assert unknown.is_error and "unknown tool" in unknown.content[0].text
            short = await client.call_tool("create_order", {"sku": "HAM-2", "quantity": 99, "customer": "X"})
            assert short.is_error and "insufficient stock" in short.content[0].text
            # the failed order left the state alone
            assert (await client.call_tool("get_item", {"sku": "HAM-2"})).structured_content["quantity"] == 3
    finally:
        await server.runtime.aclose()


def test_bad_spec_is_a_clear_error(inventory: EnvironmentSpec) -> None:
    broken = inventory.model_copy(deep=True)
    broken.tools[0].spec.input_schema = {"type": "object", "properties": {"x": {"type": "no-such-type"}}}
    with pytest.raises(EnvironmentSpecError, match="list_items.*invalid JSON Schema"):
        build_server(broken)
    trusted = inventory.model_copy(deep=True)
    trusted.tools[1].source = "def something_else():\n    pass\n"
    with pytest.raises(EnvironmentSpecError, match="get_item.*no function"):
        build_server(trusted, sandboxed=False)


async def test_stdio_emitted_server_serves_and_controls(emitted: Path, inventory: EnvironmentSpec) -> None:
    assert sorted(p.name for p in emitted.iterdir()) == [
        "README.md",
        "astra_env_runtime",
        "environment.json",
        "mcp.json",
        "server.py",
    ]
    readme = (emitted / "README.md").read_text()
    assert '"mcpServers"' in readme and "--http --port" in readme
    async with Client(stdio_parameters(emitted)) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == [t.spec.name for t in inventory.tools]
        assert not any(n.startswith("astra") or "reset" in n for n in names)
        added = await client.call_tool("add_stock", {"sku": "WID-1", "quantity": 5})
        assert added.structured_content == {"sku": "WID-1", "quantity": 45}
        control = EnvironmentControl(client)
        snap = await control.snapshot()
        assert snap.state["items"]["WID-1"]["quantity"] == 45
        await client.call_tool("add_stock", {"sku": "WID-1", "quantity": 5})
        restored = await control.restore(snapshot_id=snap.snapshot_id)
        assert restored["items"]["WID-1"]["quantity"] == 45
        assert await control.reset(seed=7) == inventory.initial_state
        assert (await client.call_tool("get_item", {"sku": "WID-1"})).structured_content["quantity"] == 40


async def test_emitted_server_runs_without_astra(emitted: Path, tmp_path: Path) -> None:
    # A copy outside the repository, on an interpreter path with no access to the astra package.
    copy = tmp_path / "standalone"
    shutil.copytree(emitted, copy)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import astra_env_runtime, sys; print('astra' in sys.modules)",
            str(copy),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert probe.stdout.strip() == "False"
    report = await validate_emitted(copy)
    assert report.ok, report.model_dump()


async def test_validate_replays_reference_calls(emitted: Path, tmp_path: Path) -> None:
    report = await validate_emitted(emitted)
    assert report.ok and report.error is None
    assert sum(c.name.startswith("verifier") for c in report.checks) == 7  # 5 results + 2 state checks
    # a wrong expectation is caught and named
    broken = tmp_path / "broken"
    shutil.copytree(emitted, broken)
    data = json.loads((broken / "environment.json").read_text())
    data["verifiers"][0]["expected_result"]["quantity"] = 41
    (broken / "environment.json").write_text(json.dumps(data))
    bad = await validate_emitted(broken)
    assert not bad.ok
    assert [c.name for c in bad.failed] == ["verifier v1 (get_item)"]
    assert "41" in bad.failed[0].detail


async def test_http_with_token_and_dns_rebinding_protection(http_server) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {http_server.token}"}
    async with httpx2.AsyncClient(headers=headers) as http_client:
        from mcp.client.streamable_http import streamable_http_client

        async with Client(streamable_http_client(http_server.url, http_client=http_client)) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert "create_order" in names
            control = EnvironmentControl(client)
            await control.open()  # stateless HTTP: state lives in an episode the server opened
            result = await control.call_tool("get_order", {"order_id": "ORD-9"})
            assert result.is_error and "no order" in result.content[0].text
    async with httpx2.AsyncClient() as raw:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        no_token = await raw.post(http_server.url, json=body, headers={"Accept": "application/json, text/event-stream"})
        assert no_token.status_code == 401
        rebinding = await raw.post(
            http_server.url, json=body,
            headers={**headers, "Host": "evil.example:80", "Accept": "application/json, text/event-stream"},
        )
        assert rebinding.status_code in (403, 421)


async def test_http_episodes_by_handle_are_isolated(http_server) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {http_server.token}"}
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers) as http_client:
        async with Client(streamable_http_client(http_server.url, http_client=http_client)) as client:
            a, b = EnvironmentControl(client), EnvironmentControl(client)
            await a.open()
            await b.open()
            await a.call_tool("add_stock", {"sku": "BOLT-7", "quantity": 10})
            assert (await a.call_tool("get_item", {"sku": "BOLT-7"})).structured_content["quantity"] == 510
            assert (await b.call_tool("get_item", {"sku": "BOLT-7"})).structured_content["quantity"] == 500
            assert (await a.state()).state["items"]["BOLT-7"]["quantity"] == 510
            assert await a.reset() == (await b.state()).state


class Counter:
    """A trusted backend class, like BFCL's: methods are the tools."""

    def __init__(self, start: int) -> None:
        self.value = start
        self._secret = "hidden"

    def increment(self, by: int = 1) -> dict:
        self.value += by
        return {"value": self.value}

    def fail(self) -> None:
        raise RuntimeError("backend refused")


async def test_class_server_per_episode_instances() -> None:
    tools = [
        ToolSpec(
            server="counter",
            name="increment",
            description="add to the counter",
            input_schema={"type": "object", "properties": {"by": {"type": "integer"}}},
        ),
        ToolSpec(
            server="counter",
            name="explode",
            description="always fails",
            input_schema={"type": "object", "properties": {}},
        ),
    ]
    server = build_class_server(
        "counter",
        lambda cfg: Counter(cfg["start"]),
        tools,
        initial_config={"start": 10},
        method_names={"explode": "fail"},
    )
    async with Client(server) as one, Client(server) as two:
        assert (await one.call_tool("increment", {"by": 5})).structured_content == {"value": 15}
        assert (await two.call_tool("increment", {})).structured_content == {"value": 11}
        boom = await one.call_tool("explode", {})
        assert boom.is_error and "backend refused" in boom.content[0].text
        bad = await one.call_tool("increment", {"by": "lots"})
        assert bad.is_error and "invalid arguments" in bad.content[0].text
        control = EnvironmentControl(one)
        assert (await control.state()).state == {"value": 15}
        snap = await control.snapshot()
        await one.call_tool("increment", {"by": 100})
        assert await control.restore(snapshot_id=snap.snapshot_id) == {"value": 15}
        assert await control.reset() == {"value": 10}
    runtime = server.runtime
    episode = runtime.new_episode("direct")
    outcome = await runtime.call("increment", {"by": 2}, episode_id=episode)
    assert outcome.ok and runtime.instance(episode).value == 12


@pytest.mark.node
def test_mcp_inspector_cli_lists_and_calls(emitted: Path) -> None:
    inspector = Path(__file__).resolve().parents[2] / ".ci/node/node_modules/.bin/mcp-inspector"
    if not inspector.exists() or shutil.which("node") is None:
        pytest.skip("MCP Inspector not installed (.ci/run installs it)")
    base = [str(inspector), "--cli", sys.executable, str(emitted / "server.py")]
    listed = subprocess.run([*base, "--method", "tools/list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    tools = json.loads(listed.stdout)["tools"]
    assert [t["name"] for t in tools][:3] == ["list_items", "get_item", "add_stock"]
    assert tools[1]["inputSchema"]["required"] == ["sku"]
    called = subprocess.run(
        [
            *base,
            "--method",
            "tools/call",
            "--tool-name",
            "create_order",
            "--tool-arg",
            "sku=WID-1",
            "--tool-arg",
            "quantity=4",
            "--tool-arg",
            "customer=Inspector",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)
    assert result["isError"] is False and result["structuredContent"] == {"order_id": "ORD-1", "total": 10.0}
    failed = subprocess.run(
        [*base, "--method", "tools/call", "--tool-name", "get_item", "--tool-arg", "sku=NOPE"],
        capture_output=True, text=True, timeout=120,
    )
    assert json.loads(failed.stdout)["isError"] is True


async def test_class_server_gives_trusted_code_floats_for_number_arguments() -> None:
    # trusted class code runs in this process: int ** int from a model would hold the GIL (R3-15)
    class Types:
        def kinds(self, x: float, n: int, xs: list[float]) -> dict[str, Any]:
            return {"x": type(x).__name__, "n": type(n).__name__, "xs": [type(v).__name__ for v in xs]}

    schema = {"type": "object", "properties": {"x": {"type": "number"}, "n": {"type": "integer"},
                                               "xs": {"type": "array", "items": {"type": "number"}}}}
    server = build_class_server("types", lambda cfg: Types(), [{"name": "kinds", "input_schema": schema}])
    runtime = server.runtime
    episode = runtime.new_episode()
    outcome = await runtime.call("kinds", {"x": 3, "n": 4, "xs": [1, 2.5]}, episode_id=episode)
    assert outcome.ok and outcome.value == {"x": "float", "n": "int", "xs": ["float", "float"]}
    huge = await runtime.call("kinds", {"x": 10**400, "n": 1, "xs": []}, episode_id=episode)
    assert not huge.ok and huge.error_kind == ToolErrorKind.bad_arguments and "too large" in (huge.error or "")
