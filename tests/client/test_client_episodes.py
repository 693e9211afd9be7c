"""Episodes that share one connection to an ASTRA environment keep separate states."""

import json

import anyio
import pytest

from astra.client import Connections, ScriptedModel, run_episode
from astra.records import ChatMessage, ToolCall
from astra.servers import build_server, load_sample


def _add_then_read(quantity: int) -> list:
    return [
        ChatMessage(
            role="assistant",
            tool_calls=[
                ToolCall(id="c1", name="add_stock", arguments=json.dumps({"sku": "HAM-2", "quantity": quantity}))
            ],
        ),
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="c2", name="get_item", arguments='{"sku": "HAM-2"}')]),
        "done",
    ]


def _quantity_seen(trajectory) -> int:
    result = trajectory.steps[-1].result
    text = json.dumps(result)
    item = result if isinstance(result, dict) else json.loads(result)
    assert "quantity" in text, text
    return item.get("quantity", item.get("item", {}).get("quantity"))


@pytest.mark.anyio
async def test_concurrent_episodes_on_one_connection_are_isolated():
    server = build_server(load_sample("inventory"), sandboxed=False)
    with anyio.fail_after(60):
        async with Connections([("inventory", server)]) as conns:
            results = {}

            async def one(quantity: int) -> None:
                model = ScriptedModel(_add_then_read(quantity))
                results[quantity] = await run_episode(model, conns, ["restock the hammers"], sample=quantity)

            async with anyio.create_task_group() as tg:
                for q in (1, 10, 100):
                    tg.start_soon(one, q)
    # the initial stock is 3: each episode sees only its own restock
    assert {q: _quantity_seen(t) for q, t in results.items()} == {1: 4, 10: 13, 100: 103}
    assert len({t.meta["episode"] for t in results.values()}) == 3
