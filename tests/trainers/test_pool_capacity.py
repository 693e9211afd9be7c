"""Past ``max_open_episodes`` the pool closes the least recently used episode; that trajectory must
fail loudly, never go on in a fresh episode (red-team R3-07: it silently continued in a reset world)."""

from __future__ import annotations

import pytest

from astra.servers import compute_score
from astra.trainers import EpisodeEvicted, EpisodePool, ExportEnvironment, stdio_launch


def test_an_evicted_trajectory_fails_and_never_reopens(environments: list[ExportEnvironment]) -> None:
    env = environments[0]
    pool = EpisodePool([(env.name, stdio_launch(env.server_dir))], max_open_episodes=2)
    try:
        a = pool.rollout()
        made = a.call_sync(env.name, "create_order", {"sku": "HAM-2", "quantity": 2, "customer": "ACME"})
        assert not made.is_error, made.text
        order = a.call_sync(env.name, "get_order", {"order_id": "ORD-1"})
        assert not order.is_error and "ORD-1" in order.text
        b, c = pool.rollout(), pool.rollout()
        assert not b.call_sync(env.name, "stock_value", {}).is_error
        assert not c.call_sync(env.name, "stock_value", {}).is_error  # the third: A's episode is closed
        handle = a.episodes[env.name].handle
        with pytest.raises(EpisodeEvicted, match="max_open_episodes"):
            a.call_sync(env.name, "get_order", {"order_id": "ORD-1"})
        assert a.episodes[env.name].handle == handle  # no fresh episode was opened behind its back
        assert len(a.calls) == 2  # nothing recorded for the failed call
        # the others go on in their own worlds
        assert b.call_sync(env.name, "get_order", {"order_id": "ORD-1"}).is_error  # A's order is not in B's world
        assert not c.call_sync(env.name, "stock_value", {}).is_error
    finally:
        pool.close()


def test_the_verl_reward_refuses_a_rollout_the_adapter_marked_failed() -> None:
    truth = [{"sub_question": "q", "sub_answer": "Paris", "tool": "get_capital"}]
    calls = [{"name": "get_capital", "arguments": {}, "result": "Paris", "is_error": False}]
    with pytest.raises(RuntimeError, match="evicted"):
        compute_score("astra_env", "", truth, {"astra_calls": calls, "astra_error": "the episode was evicted"})


def test_a_trajectory_whose_episode_went_with_its_loop_fails_the_same_way(
    environments: list[ExportEnvironment],
) -> None:
    """A pool on the caller's loop loses its connections when that loop closes: the trajectory that
    held an episode there fails with the same error the adapters refuse to score, never a fresh one."""
    import asyncio

    from astra.trainers._pool import PoolLoop

    env = environments[0]
    pool = EpisodePool([(env.name, stdio_launch(env.server_dir))], loop=PoolLoop.CALLER)
    try:
        a = pool.rollout()
        made = asyncio.run(a.call(env.name, "create_order", {"sku": "HAM-2", "quantity": 2, "customer": "ACME"}))
        assert not made.is_error, made.text
        with pytest.raises(EpisodeEvicted, match="lost with the event loop"):
            asyncio.run(a.call(env.name, "get_order", {"order_id": "ORD-1"}))
        assert len(a.calls) == 1
    finally:
        pool.close()
