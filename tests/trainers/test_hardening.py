"""Hardening certificate: a sound environment passes every check; each way of gaming it is caught."""

from __future__ import annotations

from dataclasses import replace

import pytest

from astra.trainers import EpisodePool, ExportEnvironment, stdio_launch
from astra.trainers.hardening import HardeningCheck, harden, states_answer


@pytest.fixture
def pool(inventory_env: ExportEnvironment):
    pool = EpisodePool([(inventory_env.name, stdio_launch(inventory_env.server_dir))])
    yield pool
    pool.close()


def test_states_answer_is_a_whole_token_match() -> None:
    assert states_answer("It is worth 354.0 in total.", 354.0)
    assert states_answer("It is worth 354 in total.", "354.0")
    assert not states_answer("3540 units", 354) and not states_answer("10 items", 1)
    assert states_answer("the order ORD-1 is open", "ord-1") and not states_answer("ORD-12", "ORD-1")


@pytest.mark.anyio
async def test_a_sound_environment_is_certified(inventory_env: ExportEnvironment, pool: EpisodePool) -> None:
    cert = await harden(inventory_env, pool)
    assert cert.ok, cert.failures
    assert cert.oracle_reward == 1.0 and set(cert.passed) == set(HardeningCheck)


@pytest.mark.anyio
async def test_each_way_to_game_it_is_caught(inventory_env: ExportEnvironment, pool: EpisodePool) -> None:
    leaky_task = replace(inventory_env, question=inventory_env.question + " (It is 354.0.)")
    assert set((await harden(leaky_task, pool)).failures) == {HardeningCheck.TASK_LEAK}
    # the widget's price 2.5 shows up in get_item's and list_items' outputs, before the terminal call
    leaky_outputs = replace(inventory_env, answer="2.5")
    cert = await harden(leaky_outputs, pool)
    assert HardeningCheck.OUTPUT_LEAK in cert.failures and "v1" in cert.failures[HardeningCheck.OUTPUT_LEAK]
    assert cert.reason().startswith("not_hardened_output_leak: non-terminal outputs of v1")
    wrong = inventory_env.spec.model_copy(deep=True)
    wrong.verifiers[3].expected_answer = 12  # the reference calls no longer solve every sub-question
    assert HardeningCheck.ORACLE in (await harden(replace(inventory_env, spec=wrong), pool)).failures
    hidden = inventory_env.spec.model_copy(
        update={"tools": inventory_env.spec.tools[:-1]}
    )  # the server has one more tool
    assert HardeningCheck.SURFACE in (await harden(replace(inventory_env, spec=hidden), pool)).failures
