"""``astra/restore`` with a client-chosen state lives under the same bound as a tool's state
(red-team R3-17: a 64 MB state was accepted, then every call of the episode failed)."""

from __future__ import annotations

import dataclasses

import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError

from astra.records import EnvironmentSpec
from astra.servers import EnvironmentControl, build_server
from astra.servers._sandbox import SandboxLimits


@pytest.mark.anyio
async def test_a_restored_state_over_max_state_bytes_is_refused_and_changes_nothing(
    inventory: EnvironmentSpec,
) -> None:
    limits = dataclasses.replace(SandboxLimits.from_env(), max_state_bytes=4096)
    server = build_server(inventory, sandboxed=False, limits=limits)
    async with Client(server) as client:
        control = EnvironmentControl(client)
        await control.open()
        before = (await control.state()).state
        with pytest.raises(MCPError, match="max_state_bytes"):
            await control.restore(state={**before, "blob": "x" * 5000})
        assert (await control.state()).state == before
        small = {**before, "note": "fits"}
        assert await control.restore(state=small) == small
        assert not (await control.call_tool("stock_value", {})).is_error
