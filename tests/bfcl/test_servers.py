"""BFCL backends served as real MCP servers (in-process ``mcp.client.Client``), both implementations."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp.client import Client

from astra.bfcl import SERVER_IMPLEMENTATIONS, load_entries, server_name
from astra.bfcl._data import BACKEND_CLASSES, function_docs
from astra.bfcl._servers import BfclEpisodeServers

IMPLEMENTATIONS = pytest.mark.parametrize("implementation", SERVER_IMPLEMENTATIONS)


@IMPLEMENTATIONS
def test_every_backend_serves_its_documented_functions(implementation: str) -> None:
    entry = load_entries(["base"], ids=["base_0"])[0]

    async def main() -> None:
        servers = BfclEpisodeServers(list(BACKEND_CLASSES), entry.initial_config, long_context=False,
                                     implementation=implementation)
        for class_name in BACKEND_CLASSES:
            async with Client(servers.servers[server_name(class_name)]) as client:
                listed = {t.name: t for t in (await client.list_tools()).tools}
                assert set(listed) == {d["name"] for d in function_docs(class_name)}
                for tool in listed.values():
                    assert tool.input_schema["type"] == "object"
        servers.release()

    anyio.run(main)


@IMPLEMENTATIONS
def test_calls_change_only_this_episodes_state(implementation: str) -> None:
    entry = load_entries(["base"], ids=["base_0"])[0]  # GorillaFileSystem + TwitterAPI

    async def main() -> None:
        first = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=False,
                                   implementation=implementation)
        second = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=False,
                                    implementation=implementation)
        async with Client(first.servers["bfcl_GorillaFileSystem"]) as client:
            result = await client.call_tool("cd", {"folder": "document"})
            assert not result.is_error
            assert json.loads(result.content[0].text) == {"current_working_directory": "document"}
            assert result.structured_content == {"current_working_directory": "document"}
            assert not (await client.call_tool("mkdir", {"dir_name": "temp"})).is_error
            listing = json.loads((await client.call_tool("ls", {})).content[0].text)
            assert "temp" in listing["current_directory_content"]
        async with Client(second.servers["bfcl_GorillaFileSystem"]) as client:
            await client.call_tool("cd", {"folder": "document"})
            listing = json.loads((await client.call_tool("ls", {})).content[0].text)
            assert listing["current_directory_content"] == ["final_report.pdf", "previous_report.pdf"]
        assert "temp" in first.instances["GorillaFileSystem"]._current_dir.contents
        assert "temp" not in second.instances["GorillaFileSystem"]._current_dir.contents
        first.release()
        second.release()

    anyio.run(main)


def test_bad_arguments_bfcl_executes_astra_validates() -> None:
    entry = load_entries(["base"], ids=["base_0"])[0]

    async def call(implementation: str) -> str:
        servers = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=False,
                                     implementation=implementation)
        async with Client(servers.servers["bfcl_GorillaFileSystem"]) as client:
            result = await client.call_tool("cd", {"no_such_param": "x"})
        servers.release()
        assert result.is_error
        return result.content[0].text

    # BFCL's executor calls the method and reports the exception; astra.servers rejects on the schema.
    assert anyio.run(call, "bfcl").startswith("Error during execution: ")
    assert "'folder' is a required property" in anyio.run(call, "astra")


@IMPLEMENTATIONS
def test_initial_config_and_long_context_are_loaded_by_the_server(implementation: str) -> None:
    entry = load_entries(["long_context"], ids=["long_context_0"])[0]

    async def listing(long_context: bool) -> tuple[list[str], int]:
        servers = BfclEpisodeServers(entry.involved_classes, entry.initial_config, long_context=long_context,
                                     implementation=implementation)
        async with Client(servers.servers["bfcl_GorillaFileSystem"]) as client:
            await client.call_tool("cd", {"folder": "document"})
            names = json.loads((await client.call_tool("ls", {})).content[0].text)["current_directory_content"]
            async with Client(servers.servers["bfcl_TwitterAPI"]) as twitter:
                await twitter.call_tool("authenticate_twitter", {"username": "x", "password": "y"})
        tweets = len(servers.instances["TwitterAPI"].tweets)
        servers.release()
        return names, tweets

    short, short_tweets = anyio.run(listing, False)
    long, long_tweets = anyio.run(listing, True)
    assert short == ["final_report.pdf", "previous_report.pdf"]
    assert set(short) < set(long) and len(long) > 10, "long_context must load BFCL's extra content"
    assert short_tweets == len(entry.initial_config["TwitterAPI"]["tweets"])


@IMPLEMENTATIONS
def test_stateless_math(implementation: str) -> None:
    entry = next(e for e in load_entries(["base"]) if "MathAPI" in e.involved_classes)

    async def main() -> None:
        servers = BfclEpisodeServers(
            ["MathAPI"], entry.initial_config, long_context=False, implementation=implementation
        )
        async with Client(servers.servers["bfcl_MathAPI"]) as client:
            result = await client.call_tool("add", {"a": 2, "b": 3.5})
            assert json.loads(result.content[0].text) == {"result": 5.5}
        servers.release()

    anyio.run(main)


@pytest.mark.parametrize("class_name", ["TradingBot", "TravelAPI", "MessageAPI", "TicketAPI", "VehicleControlAPI"])
def test_each_stateful_backend_loads_its_scenario(class_name: str) -> None:
    entry = next(
        e for e in load_entries(["base"]) if class_name in e.involved_classes and class_name in e.initial_config
    )
    servers = BfclEpisodeServers([class_name], entry.initial_config, long_context=False, implementation="bfcl")
    instance = servers.instances[class_name]
    public = {k: v for k, v in vars(instance).items() if not k.startswith("_")}
    config = entry.initial_config[class_name]
    overlap = [k for k in config if k in public]
    assert overlap, f"{class_name}: no scenario key became state"
    assert any(public[k] == config[k] for k in overlap)
