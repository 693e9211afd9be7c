"""Episode handles: minted by the server, bound to their creator, bounded in number and idle time.

Real servers: the emitted inventory server over streamable HTTP on 127.0.0.1 (2026-07-28 stateless
clients and 2025-11-25 session clients) and over stdio, driven by the official ``mcp`` client.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner

from astra.cli import app
from astra.client import Connections
from astra.records import EnvironmentSpec, HttpLaunch
from astra.servers import (
    BindRefused,
    EnvironmentControl,
    EpisodeRefusal,
    build_server,
    check_bind,
    sample_path,
    stdio_parameters,
)
from astra.servers._runtime import EpisodeRefused

pytestmark = pytest.mark.anyio

ADD = {"sku": "BOLT-7", "quantity": 10}


@contextlib.asynccontextmanager
async def http_client(server: Any, *, legacy: bool = False) -> AsyncIterator[Client]:
    """A client of ``server``: 2026-07-28 (stateless, the default) or 2025-11-25 with a session."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.token}"}) as http:
        transport = streamable_http_client(server.url, http_client=http)
        async with Client(transport, mode="legacy" if legacy else "auto") as client:
            yield client


async def refused(reason: EpisodeRefusal, attempt: Callable[[], Awaitable[Any]]) -> str:
    with pytest.raises(MCPError) as info:
        await attempt()
    assert info.value.error.data == {"reason": reason.value}, info.value.error
    return info.value.error.message


async def bolts(control: EnvironmentControl) -> int:
    return (await control.state()).state["items"]["BOLT-7"]["quantity"]


async def test_episodes_belong_to_whoever_opened_them(emitted: Path, inventory: EnvironmentSpec, launch: Any) -> None:
    with launch(emitted) as server:
        # 2025-11-25 clients with sessions: a handle opened in one session is refused in any other
        async with http_client(server, legacy=True) as alice, http_client(server, legacy=True) as mallory:
            assert alice.session.protocol_version == "2025-11-25"
            mine = EnvironmentControl(alice)
            handle = await mine.open()
            await mine.call_tool("add_stock", ADD)
            theirs = EnvironmentControl(mallory, episode=handle)
            for attempt in (theirs.state, theirs.snapshot, theirs.reset, theirs.close,
                            lambda: theirs.restore(state=inventory.initial_state),
                            lambda: theirs.call_tool("add_stock", ADD)):
                message = await refused(EpisodeRefusal.UNKNOWN, attempt)
                assert "astra/episode/open" in message
            assert await bolts(mine) == 510  # read, overwritten, reset, closed: none of it happened
            # a snapshot belongs to its episode: its id restores nothing elsewhere
            snap = await mine.snapshot()
            with pytest.raises(MCPError, match="unknown snapshot"):
                await EnvironmentControl(mallory).restore(snapshot_id=snap.snapshot_id)
            # each session's own (implicit) episode is separate and cannot be named by anyone
            await alice.call_tool("add_stock", ADD)
            assert (await mallory.call_tool("get_item", {"sku": "BOLT-7"})).structured_content["quantity"] == 500
        # 2026-07-28 stateless clients: no shared default episode, internal keys are not handles
        async with http_client(server) as carol, http_client(server) as dave:
            assert carol.session.protocol_version == "2026-07-28"
            await refused(EpisodeRefusal.NO_EPISODE, lambda: carol.call_tool("add_stock", ADD))
            await refused(EpisodeRefusal.NO_EPISODE, EnvironmentControl(dave).state)
            for forged in ("default", "implicit:default", "slot:0", f"implicit:http-session:{secrets.token_hex(16)}"):
                await refused(EpisodeRefusal.UNKNOWN, EnvironmentControl(dave, episode=forged).state)
            first, second = EnvironmentControl(carol), EnvironmentControl(dave)
            await first.open()
            assert (await second.reset()) == inventory.initial_state  # stateless reset opens an episode
            assert second.episode is not None and second.episode != first.episode
            await first.call_tool("add_stock", ADD)
            assert (await bolts(first), await bolts(second)) == (510, 500)

    # in process, every client is its own connection: another client's handle is refused
    built = build_server(inventory, sandboxed=False)
    async with Client(built) as one, Client(built) as two:
        handle = await EnvironmentControl(one).open()
        await refused(EpisodeRefusal.UNKNOWN, EnvironmentControl(two, episode=handle).state)
    assert built.runtime.open_episodes == 0  # the clients' episodes went with them
    # under an auth identity (a token's client_id), a handle works only for that identity
    runtime = build_server(inventory, sandboxed=False).runtime
    tokens = [auth_context_var.set(AuthenticatedUser(AccessToken(token=who, client_id=who, scopes=[])))
              for who in ("alice", "bob")]
    try:
        auth_context_var.reset(tokens[1])  # alice
        handle = runtime.open_episode(owner=runtime.caller(None))
        assert runtime.resolve(None, handle).id == handle
        auth_context_var.set(AuthenticatedUser(AccessToken(token="bob", client_id="bob", scopes=[])))
        with pytest.raises(EpisodeRefused):
            runtime.resolve(None, handle)
    finally:
        auth_context_var.reset(tokens[0])


async def test_guessed_episode_ids_are_refused(emitted: Path, inventory: EnvironmentSpec) -> None:
    guesses = ["ep-1", "default", "0", "a" * 43, secrets.token_urlsafe(32), "", "../default"]
    async with Client(stdio_parameters(emitted)) as client:
        for guess in guesses:
            meta = {"astra/episode": guess}
            await refused(EpisodeRefusal.UNKNOWN, lambda m=meta: client.call_tool("get_item", {"sku": "WID-1"}, meta=m))
            await refused(EpisodeRefusal.UNKNOWN, EnvironmentControl(client, episode=guess).reset)
        # nothing was created from a guess, and the server serves on
        added = await client.call_tool("add_stock", {"sku": "WID-1", "quantity": 1})
        assert added.structured_content == {"sku": "WID-1", "quantity": 41}
    built = build_server(inventory, sandboxed=False)
    async with Client(built) as client:
        for guess in guesses:
            meta = {"astra/episode": guess}
            await refused(EpisodeRefusal.UNKNOWN, lambda m=meta: client.call_tool("stock_value", {}, meta=m))
        assert built.runtime.open_episodes == 0


async def test_capacity_is_explicit_and_never_evicts(emitted: Path, launch: Any) -> None:
    with launch(emitted, "--max-episodes", "3") as server:
        async with http_client(server) as client:
            controls = [EnvironmentControl(client) for _ in range(3)]
            for i, control in enumerate(controls):
                await control.open()
                await control.call_tool("add_stock", {"sku": "BOLT-7", "quantity": i + 1})
            message = await refused(EpisodeRefusal.CAPACITY, EnvironmentControl(client).open)
            assert "max_episodes=3" in message
            await refused(EpisodeRefusal.CAPACITY, EnvironmentControl(client).reset)
            assert [await bolts(c) for c in controls] == [501, 502, 503]  # every live episode kept its state
            assert await controls[0].close()
            reopened = EnvironmentControl(client)
            await reopened.open()
            assert await bolts(reopened) == 500


async def test_idle_episodes_expire_and_say_so(emitted: Path, launch: Any) -> None:
    with launch(emitted, "--episode-ttl", "1") as server:
        async with http_client(server) as client:
            idle, busy = EnvironmentControl(client), EnvironmentControl(client)
            await idle.open()
            await busy.open()
            for _ in range(4):  # an episode in use stays
                await anyio.sleep(0.4)
                await busy.call_tool("add_stock", {"sku": "BOLT-7", "quantity": 1})
            await refused(EpisodeRefusal.UNKNOWN, idle.state)
            assert await bolts(busy) == 504
        assert "expired after" in server.stderr_text()


def test_non_loopback_bind_is_refused(emitted: Path) -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"):
        check_bind(host, token=None, allow_remote=False)
    refused_binds = (("0.0.0.0", None, False), ("0.0.0.0", "t", False), ("::", None, True), ("example.com", "t", False))
    for host, token, allow in refused_binds:
        with pytest.raises(BindRefused, match="refusing to serve"):
            check_bind(host, token=token, allow_remote=allow)
    check_bind("0.0.0.0", token="t", allow_remote=True)
    for extra in ([], ["--token", "t"], ["--allow-remote"]):
        run = subprocess.run([sys.executable, str(emitted / "server.py"), "--http", "--host", "0.0.0.0", "--port", "1",
                              *extra],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "refusing to serve on '0.0.0.0'" in run.stderr, run.stderr
    cli = CliRunner().invoke(app, ["env", "serve", str(sample_path()), "--http", "--host", "0.0.0.0", "--token", "t"])
    assert cli.exit_code == 2 and "--allow-remote" in cli.output, cli.output


async def test_16_concurrent_trajectories_on_one_pooled_connection(emitted: Path, launch: Any) -> None:
    with launch(emitted) as server:
        target = HttpLaunch(url=server.url, headers={"Authorization": f"Bearer {server.token}"})
        async with Connections([("inventory", target)]) as conns:
            assert conns.episode_servers() == ["inventory"]
            seen: dict[int, tuple[list[int], str, int]] = {}

            async def trajectory(i: int) -> None:
                handle = await conns.open_episode("inventory")
                quantities = []
                for _ in range(3):
                    added = await conns.call("add_stock", {"sku": "BOLT-7", "quantity": i + 1}, episode=handle)
                    assert not added.is_error, added
                    quantities.append(added.structured_content["quantity"])
                    await anyio.sleep(0)
                order = await conns.call("create_order", {"sku": "WID-1", "quantity": 1, "customer": f"c{i}"},
                                         episode=handle)
                stock = await conns.call("get_item", {"sku": "WID-1"}, episode={"inventory": handle})
                seen[i] = (quantities, order.structured_content["order_id"], stock.structured_content["quantity"])
                assert await conns.close_episode(handle)
                after = await conns.call("get_item", {"sku": "WID-1"}, episode=handle)
                assert after.is_error and after.error_kind == "episode_refused"

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        tg.start_soon(trajectory, i)
            assert seen == {i: ([500 + (i + 1), 500 + 2 * (i + 1), 500 + 3 * (i + 1)], "ORD-1", 39) for i in range(16)}
            assert await conns.close_episode("never-opened") is False
