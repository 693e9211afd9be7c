"""OpenEnv: the wrapper on openenv-core's own Environment base class and types; one episode per
session (a new instance per session, as OpenEnv's server makes them), state kept across steps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from astra.trainers import EpisodePool, ExportEnvironment, samples


@pytest.fixture(scope="module")
def sample(inventory_env: ExportEnvironment, openenv: Any):
    yield openenv.openenv_sample(samples([inventory_env])[0])
    for pool in list(EpisodePool._shared.values()):
        pool.close()
    EpisodePool._shared.clear()


async def session(
    openenv: Any, sample: dict[str, Any], env: ExportEnvironment, calls: bool = True
) -> tuple[Any, list[Any]]:
    environment = openenv.openenv_factory(sample)()
    first = await environment.reset_async(episode_id="s")
    assert first.question and len(first.tools) == 7 and not first.done
    seen = []
    if calls:
        for t in json.loads(sample["ground_truth"]):
            v = next(v for v in env.spec.verifiers if v.id == t["id"])
            seen.append(await environment.step_async(openenv.AstraAction(tool=t["tool"], arguments=v.arguments)))
    assert environment.state.step_count == len(seen)
    last = await environment.step_async(openenv.AstraAction(final_answer="354.0"))
    return last, seen


@pytest.mark.anyio
async def test_oracle_one_noop_zero(openenv: Any, sample: dict[str, Any], inventory_env: ExportEnvironment) -> None:
    from openenv.core.env_server.interfaces import Environment

    assert issubclass(openenv.AstraOpenEnv, Environment) and openenv.AstraOpenEnv.SUPPORTS_CONCURRENT_SESSIONS
    last, seen = await session(openenv, sample, inventory_env)
    assert last.done and last.metadata["process_reward"] == 1.0
    assert sum(o.reward for o in seen) == pytest.approx(1.0)
    assert json.loads(seen[2].text)["order_id"] == "ORD-1" and json.loads(seen[3].text)["quantity"] == 11
    noop, _ = await session(openenv, sample, inventory_env, calls=False)
    assert noop.done and noop.metadata["process_reward"] == 0.0
    # the synchronous API (OpenEnv's default step) works from a plain thread too
    environment = openenv.openenv_factory(sample)()
    environment.reset()
    reply = await asyncio.to_thread(environment.step, openenv.AstraAction(tool="get_item", arguments={"sku": "WID-1"}))
    assert json.loads(reply.text)["quantity"] == 40 and reply.reward > 0
    environment.close()  # a session that ends without a final answer closes its episode


@pytest.mark.anyio
async def test_16_concurrent_sessions(openenv: Any, sample: dict[str, Any], inventory_env: ExportEnvironment) -> None:
    results = await asyncio.gather(*[session(openenv, sample, inventory_env) for _ in range(16)])
    assert [last.metadata["process_reward"] for last, _ in results] == [1.0] * 16
    assert all(json.loads(seen[2].text)["order_id"] == "ORD-1" for _, seen in results)
    # every session's episode was closed on the server when it ended (nothing left open)
    pool = next(iter(EpisodePool._shared.values()))
    for _ in range(100):
        if pool.open_episodes == 0:
            break
        await asyncio.sleep(0.05)
    assert pool.open_episodes == 0
