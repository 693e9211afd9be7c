"""Connections: stdio, HTTP and in-process servers; aggregation, schemas, restarts, timeouts."""

from __future__ import annotations

import os
import signal

import anyio
import pytest
from mcp_test_server import make_server

from astra.client import ConnectionFailed, Connections
from astra.client._schema import provider_schema
from astra.records import StdioLaunch

pytestmark = pytest.mark.anyio


async def test_aggregates_tools_without_collisions(time_launch):
    a, b = make_server("a"), make_server("b")
    with anyio.fail_after(60):
        async with Connections([("a", a), ("b", b), ("time", time_launch)]) as conns:
            names = {t.name for t in conns.tools}
            assert {"a__add", "b__add", "get_current_time", "convert_time"} <= names
            assert "add" not in names  # ambiguous plain name is never used
            binding = conns.binding("b__add")
            assert (binding.server, binding.tool.name) == ("b", "add")
            assert conns.resolve_names(["a/echo"]) == ["a__echo"]
            assert set(conns.resolve_names(["echo"])) == {"a__echo", "b__echo"}
            r = await conns.call("b__add", {"a": 2, "b": 3})
            assert not r.is_error and r.structured_content == {"result": 5} and r.text == "5"
            r = await conns.call("get_current_time", {"timezone": "UTC"})
            assert not r.is_error and r.structured_content["timezone"] == "UTC"
            oa = {t["function"]["name"]: t for t in conns.openai_tools()}
            assert oa["a__add"]["function"]["parameters"]["required"] == ["a", "b"]
            an = {t["name"]: t for t in conns.anthropic_tools(["convert_time"])}
            assert list(an) == ["convert_time"] and an["convert_time"]["input_schema"]["type"] == "object"


async def test_tool_errors_are_results_not_exceptions():
    with anyio.fail_after(30):
        async with Connections([("s", make_server())], call_timeout_s=0.5) as conns:
            r = await conns.call("fail", {"message": "boom"})
            assert r.is_error and r.error_kind == "tool_error" and "boom" in r.text
            r = await conns.call("nope", {})
            assert r.is_error and r.error_kind == "unknown_tool"
            r = await conns.call("sleep", {"seconds": 30})
            assert r.is_error and r.error_kind == "timeout" and r.latency_s < 5
            r = await conns.call("add", {"a": 1, "b": 1})  # the connection survives a timed-out call
            assert r.text == "2"


async def test_stdio_server_killed_is_restarted(test_stdio_launch):
    with anyio.fail_after(60):
        async with Connections([("s", test_stdio_launch)]) as conns:
            first = int((await conns.call("pid", {})).text)
            os.kill(first, signal.SIGKILL)
            await anyio.sleep(0.2)
            hit = await conns.call("add", {"a": 1, "b": 2})
            assert hit.is_error and hit.error_kind == "server_died"
            again = await conns.call("add", {"a": 1, "b": 2})
            assert not again.is_error and again.text == "3"
            second = int((await conns.call("pid", {})).text)
            assert second != first
            assert conns.server_status()["s"]["restarts"] == 1


async def test_restarts_exhausted_make_server_unavailable(test_stdio_launch):
    with anyio.fail_after(60):
        async with Connections([("s", test_stdio_launch)], max_restarts=0) as conns:
            os.kill(int((await conns.call("pid", {})).text), signal.SIGKILL)
            await anyio.sleep(0.2)
            assert (await conns.call("pid", {})).error_kind == "server_died"
            r = await conns.call("pid", {})
            assert r.is_error and r.error_kind == "server_unavailable"


async def test_http_server(http_server):
    with anyio.fail_after(60):
        async with Connections([("web", http_server)]) as conns:
            r = await conns.call("echo", {"text": "über"})
            assert r.text == "über" and not r.is_error


async def test_bad_launch_is_a_clear_error():
    with anyio.fail_after(30):
        with pytest.raises(ConnectionFailed, match="'ghost'"):
            async with Connections([("ghost", StdioLaunch(command="/nonexistent/server-binary"))]):
                pass


def test_normalize_schema_fixes_what_providers_reject():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/Point"}, "tags": {"type": "array"}},
        "required": ["p", "missing"],
        "anyOf": [{"required": ["p"]}],
    }
    out = provider_schema(schema)
    assert out["properties"]["p"] == {"type": "object", "properties": {"x": {"type": "number"}}}
    assert out["properties"]["tags"]["items"] == {}
    assert out["required"] == ["p"]
    assert "anyOf" not in out and "$defs" not in out and "$schema" not in out
    assert provider_schema({"type": "string"}) == {
        "type": "object", "properties": {"value": {"type": "string"}}, "required": ["value"]
    }
    assert provider_schema(None) == {"type": "object", "properties": {}}
