"""Episodes: isolation under concurrency, reset to the exact initial state, snapshot/restore."""

from __future__ import annotations

import copy

import anyio
import pytest
from mcp.client import Client

from astra.records import EnvironmentSpec
from astra.servers import EnvironmentControl, build_server

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("sandboxed", [True, False])
async def test_32_concurrent_client_episodes_are_isolated(inventory: EnvironmentSpec, sandboxed: bool) -> None:
    server = build_server(inventory, sandboxed=sandboxed)
    seen: dict[int, list[int]] = {}

    async def episode(i: int) -> None:
        async with Client(server) as client:
            quantities = []
            for _ in range(3):
                added = await client.call_tool("add_stock", {"sku": "BOLT-7", "quantity": i + 1})
                assert not added.is_error, added
                quantities.append(added.structured_content["quantity"])
                await anyio.sleep(0)  # interleave with the other episodes
            order = await client.call_tool("create_order", {"sku": "WID-1", "quantity": 1, "customer": f"c{i}"})
            assert order.structured_content["order_id"] == "ORD-1"  # every episode numbers its own orders
            state = (await EnvironmentControl(client).state()).state
            assert list(state["orders"]) == ["ORD-1"] and state["orders"]["ORD-1"]["customer"] == f"c{i}"
            seen[i] = quantities

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(episode, i)
        assert seen == {i: [500 + (i + 1), 500 + 2 * (i + 1), 500 + 3 * (i + 1)] for i in range(32)}
        # every client's episode was dropped when it disconnected; the default episode is untouched
        assert server.runtime.state() == inventory.initial_state
    finally:
        await server.runtime.aclose()


async def test_episode_handles_share_one_connection(inventory: EnvironmentSpec) -> None:
    server = build_server(inventory, sandboxed=False)
    async with Client(server) as client:
        controls = [EnvironmentControl(client) for _ in range(32)]
        for control in controls:
            await control.open()

        async def run(i: int, control: EnvironmentControl) -> None:
            await control.call_tool("add_stock", {"sku": "HAM-2", "quantity": i + 1})

        async with anyio.create_task_group() as tg:
            for i, control in enumerate(controls):
                tg.start_soon(run, i, control)
        for i, control in enumerate(controls):
            assert (await control.state()).state["items"]["HAM-2"]["quantity"] == 3 + i + 1
        connection_state = (await EnvironmentControl(client).state()).state
        assert connection_state == inventory.initial_state


async def test_reset_returns_the_exact_initial_state(inventory: EnvironmentSpec) -> None:
    server = build_server(inventory)
    runtime = server.runtime
    pristine = copy.deepcopy(inventory.initial_state)
    try:
        episode = runtime.new_episode()
        for args in (
            {"sku": "HAM-2", "quantity": 2, "customer": "A"},
            {"sku": "WID-1", "quantity": 5, "customer": "B"},
        ):
            assert (await runtime.call("create_order", args, episode_id=episode)).ok
        assert (await runtime.call("cancel_order", {"order_id": "ORD-1"}, episode_id=episode)).ok
        assert runtime.state(episode) != pristine
        assert len(runtime.calls(episode)) == 3
        assert runtime.reset(episode, seed=42) == pristine
        assert runtime.state(episode) == pristine and runtime.calls(episode) == []
        # the returned state is a copy: mutating it cannot leak into the episode or the initial state
        runtime.state(episode)["items"].clear()
        assert runtime.state(episode) == pristine and runtime.initial_state == pristine
        # the next episode numbers orders from 1 again
        assert (
            await runtime.call("create_order", {"sku": "WID-1", "quantity": 1, "customer": "C"}, episode_id=episode)
        ).value["order_id"] == "ORD-1"
    finally:
        await runtime.aclose()


async def test_snapshot_and_restore_in_process(inventory: EnvironmentSpec) -> None:
    runtime = build_server(inventory, sandboxed=False).runtime
    await runtime.call("add_stock", {"sku": "WID-1", "quantity": 10})
    snap = runtime.snapshot()
    await runtime.call("create_order", {"sku": "WID-1", "quantity": 50, "customer": "Z"})
    assert runtime.state()["items"]["WID-1"]["quantity"] == 0
    restored = runtime.restore(snapshot_id=snap.id)
    assert restored["items"]["WID-1"]["quantity"] == 50 and restored["orders"] == {}
    assert len(runtime.calls()) == 1
    runtime.restore(state={**inventory.initial_state, "next_order": 7})
    assert (await runtime.call("create_order", {"sku": "WID-1", "quantity": 1, "customer": "Y"})).value[
        "order_id"
    ] == "ORD-7"
    with pytest.raises(KeyError, match="unknown snapshot"):
        runtime.restore(snapshot_id="nope")


async def test_control_methods_are_not_tools(inventory: EnvironmentSpec) -> None:
    server = build_server(inventory, sandboxed=False)
    async with Client(server) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert not names & {"astra/reset", "reset", "snapshot", "restore", "state"}
        hidden = await client.call_tool("astra/reset", {})
        assert hidden.is_error and "unknown tool" in hidden.content[0].text
        assert "dev.astra/environment" in (client.server_capabilities.extensions or {})
