"""BFCL backends served as real MCP servers (in-process ``mcp.client.Client``)."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp.client import Client

from astra.bfcl import BACKEND_CLASSES, BfclEpisodeServers, function_docs, load_entries, server_name


def test_every_backend_serves_its_documented_functions() -> None:
    entry = load_entries(["base"], ids=["base_0"])[0]

    async def main() -> None:
        servers = BfclEpisodeServers(list(BACKEND_CLASSES), entry.initial_config, long_context=False)
        for class_name in BACKEND_CLASSES:
            async with Client(servers.servers[server_name(class_name)]) as client:
                listed = {t.name: t for t in (await client.list_tools()).tools}
                assert set(listed) == {d["name"] for d in function_docs(class_name)}
                for tool in listed.values():
                    assert tool.input_schema["type"] == "object"

    anyio.run(main)


def test_calls_return_bfcl_text_and_change_only_this_episodes_state() -> None:
    entry = load_entries(["base"], ids=["base_0"])[0]  # GorillaFileSystem + TwitterAPI

    async def main() -> None:
        first = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=False)
        second = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=False)
        async with Client(first.servers["bfcl_GorillaFileSystem"]) as client:
            result = await client.call_tool("cd", {"folder": "document"})
            assert not result.is_error
            assert json.loads(result.content[0].text) == {"current_working_directory": "document"}
            assert result.structured_content == {"current_working_directory": "document"}
            result = await client.call_tool("mkdir", {"dir_name": "temp"})
            assert not result.is_error
            listing = json.loads((await client.call_tool("ls", {})).content[0].text)
            assert "temp" in listing["current_directory_content"]
            # BFCL turns an exception into "Error during execution: ..." text
            bad = await client.call_tool("cd", {"no_such_param": "x"})
            assert bad.is_error and bad.content[0].text.startswith("Error during execution:")
        async with Client(second.servers["bfcl_GorillaFileSystem"]) as client:
            await client.call_tool("cd", {"folder": "document"})
            listing = json.loads((await client.call_tool("ls", {})).content[0].text)
            assert listing["current_directory_content"] == ["final_report.pdf", "previous_report.pdf"]
        assert first.instances["GorillaFileSystem"] != second.instances["GorillaFileSystem"]

    anyio.run(main)


def test_initial_config_and_long_context_are_loaded() -> None:
    entry = load_entries(["long_context"], ids=["long_context_0"])[0]
    short = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=False)
    long = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=True)
    tweets = entry.initial_config["TwitterAPI"]["tweets"]
    assert len(short.instances["TwitterAPI"].tweets) == len(tweets)
    short_fs = str(vars(short.instances["GorillaFileSystem"].root))
    long_fs = str(vars(long.instances["GorillaFileSystem"].root))
    assert "final_report.pdf" in short_fs
    assert len(long_fs) > 2 * len(short_fs), "long_context must load BFCL's extra long-context content"


def test_stateless_math_has_no_scenario() -> None:
    entry = next(e for e in load_entries(["base"]) if "MathAPI" in e.involved_classes)

    async def main() -> None:
        servers = BfclEpisodeServers(["MathAPI"], entry.initial_config, long_context=False)
        async with Client(servers.servers["bfcl_MathAPI"]) as client:
            result = await client.call_tool("add", {"a": 2, "b": 3.5})
            assert json.loads(result.content[0].text) == {"result": 5.5}

    anyio.run(main)


@pytest.mark.parametrize("class_name", ["TradingBot", "TravelAPI", "MessageAPI", "TicketAPI", "VehicleControlAPI"])
def test_each_stateful_backend_loads_its_scenario(class_name: str) -> None:
    entry = next(e for e in load_entries(["base"]) if class_name in e.involved_classes and class_name in e.initial_config)
    servers = BfclEpisodeServers([class_name], entry.initial_config, long_context=False)
    instance = servers.instances[class_name]
    public = {k: v for k, v in vars(instance).items() if not k.startswith("_")}
    config = entry.initial_config[class_name]
    overlap = [k for k in config if k in public]
    assert overlap, f"{class_name}: no scenario key became state"
    assert any(public[k] == config[k] for k in overlap)
