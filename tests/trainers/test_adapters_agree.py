"""Random trajectories through every adapter give the reward the one definition gives: verl (its
agent-loop path, recorded calls and the rendered text), TRL's environment, OpenEnv's session and
`score_calls` over the replies the server really returned."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astra.servers import ToolCallRecord, compute_score, score_calls
from astra.trainers import EpisodePool, ExportEnvironment, samples, verl_row, verl_tool_config, write_yaml
from astra.trainers.trl import trl_module_source, trl_rows

from .test_verl import _call_text, run_like_verl

CALLS = st.lists(
    st.sampled_from(
        [
            ("get_item", {"sku": "WID-1"}),
            ("get_item", {"sku": "NOPE-0"}),
            ("list_items", {"category": "tools"}),
            ("list_items", {"category": "food"}),
            ("create_order", {"sku": "HAM-2", "quantity": 2, "customer": "ACME"}),
            ("add_stock", {"sku": "HAM-2", "quantity": 10}),
            ("stock_value", {}),
            ("get_order", {"order_id": "ORD-1"}),
        ]
    ),
    max_size=6,
)


@pytest.fixture(scope="module")
def adapters(inventory_env: ExportEnvironment, verl: types.SimpleNamespace, openenv: Any, tmp_path_factory):
    import importlib.util

    out = tmp_path_factory.mktemp("agree")
    sample = samples([inventory_env])[0]
    write_yaml(verl_tool_config([sample]), out / "tools.yaml")
    (out / "trl_env_agree.py").write_text(trl_module_source([sample]))
    spec = importlib.util.spec_from_file_location("trl_env_agree", out / "trl_env_agree.py")
    trl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trl)
    row = verl_row(sample, 0)
    yield types.SimpleNamespace(
        sample=sample,
        row=row,
        verl_tools=verl.initialize_tools_from_config(str(out / "tools.yaml")),
        trl=trl,
        trl_row={k: v for k, v in trl_rows([sample])[0].items() if k != "environment"},
        openenv=openenv,
        openenv_sample=openenv.openenv_sample(sample),
    )
    for pool in list(EpisodePool._shared.values()):
        pool.close()
    EpisodePool._shared.clear()


async def _all_paths(
    adapters: Any, verl: types.SimpleNamespace, calls: list[tuple[str, dict[str, Any]]]
) -> dict[str, float]:
    truth = adapters.row["reward_model"]["ground_truth"]
    verl_run = await run_like_verl(verl, adapters.verl_tools, adapters.row, [_call_text(n, a) for n, a in calls])
    recorded = [ToolCallRecord.model_validate(c) for c in verl_run["agent_data"].extra_fields.get("astra_calls", [])]
    trl_env = adapters.trl.ENVIRONMENTS[adapters.sample.env.name]()
    trl_env.reset(**adapters.trl_row)
    for name, args in calls:
        await getattr(trl_env, name)(**args)
    session = adapters.openenv.openenv_factory(adapters.openenv_sample)()
    await session.reset_async()
    for name, args in calls:
        await session.step_async(adapters.openenv.AstraAction(tool=name, arguments=args))
    last = await session.step_async(adapters.openenv.AstraAction(final_answer="354.0"))
    return {
        "verl": verl_run["score"],
        "verl_text_only": compute_score("astra_env", verl_run["text"], truth),
        "verl_step_sum": sum(verl_run["tool_rewards"]),
        "trl": adapters.trl.process_reward(environments=[trl_env])[0],
        "openenv": last.metadata["process_reward"],
        "offline": score_calls(recorded, truth).reward,
    }


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(CALLS)
def test_every_adapter_gives_the_same_reward(adapters: Any, verl: types.SimpleNamespace, calls: list[Any]) -> None:
    got = asyncio.run(_all_paths(adapters, verl, calls))
    assert len({round(v, 9) for v in got.values()}) == 1, (calls, got)
