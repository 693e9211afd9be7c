"""TRL: the generated environment_factory module, introspected the way TRL 1.16's GRPOTrainer does
(public functions of the class are the tools, schemas from transformers' get_json_schema, the
prompt rendered with TRL's own chat template) and rolled out through its tool dict."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import types
from typing import Any

import pytest
from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import render_jinja_template

from astra.trainers import EpisodePool, ExportEnvironment, samples
from astra.trainers.trl import trl_module_source, trl_rows

from .render import TEMPLATES


@pytest.fixture(scope="module")
def trl_export(environments: list[ExportEnvironment], tmp_path_factory: pytest.TempPathFactory):
    made = samples(environments, n_distractors=1)
    path = tmp_path_factory.mktemp("trl") / "trl_env.py"
    path.write_text(trl_module_source(made))
    spec = importlib.util.spec_from_file_location("astra_test_trl_env", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield types.SimpleNamespace(module=module, rows=trl_rows(made), samples=made)
    for pool in list(EpisodePool._shared.values()):
        pool.close()
    EpisodePool._shared.clear()


def trl_tools(environment: Any) -> list[Any]:
    """GRPOTrainer (trl 1.16.0) `_generate_and_score_completions`: the rollout's tool methods."""
    return [
        getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


def start(module: Any, row: dict[str, Any]) -> Any:
    environment = module.ENVIRONMENTS[row["environment"]]()
    # multi-environment mode: `environment` is a control field, the rest of the row goes to reset
    assert environment.reset(**{k: v for k, v in row.items() if k != "environment"}) is None
    return environment


async def oracle(environment: Any, row: dict[str, Any], env: ExportEnvironment) -> list[Any]:
    tools = {t.__name__: t for t in trl_tools(environment)}
    by_id = {v.id: v for v in env.spec.verifiers}
    return [await tools[t["tool"]](**by_id[t["id"]].arguments) for t in json.loads(row["ground_truth"])]


def test_methods_are_the_sample_tools_with_their_schemas(trl_export: Any) -> None:
    for sample, row in zip(trl_export.samples, trl_export.rows, strict=True):
        environment = start(trl_export.module, row)
        methods = trl_tools(environment)
        schemas = {s["function"]["name"]: s["function"] for s in (get_json_schema(m) for m in methods)}
        assert set(schemas) == {t["function"]["name"] for t in sample.tools}
        for tool in sample.tools:
            fn = tool["function"]
            got = schemas[fn["name"]]["parameters"]
            assert set(got["properties"]) == set(fn["parameters"]["properties"])
            assert set(got.get("required", [])) == set(fn["parameters"].get("required", []))
        text = render_jinja_template(
            [row["prompt"]],
            tools=methods,
            chat_template=(TEMPLATES / "qwen2_5.jinja").read_text(),
            add_generation_prompt=True,
        )[0][0]
        assert all(f'"name": "{name}"' in text for name in schemas)


@pytest.mark.anyio
async def test_oracle_scores_one_noop_zero_and_reset_starts_fresh(
    trl_export: Any, environments: list[ExportEnvironment]
) -> None:
    module, row = trl_export.module, trl_export.rows[0]
    environment = start(module, row)
    replies = await oracle(environment, row, environments[0])
    assert json.loads(replies[2])["order_id"] == "ORD-1"
    assert module.process_reward(environments=[environment]) == [1.0]
    assert sum(environment.rollout.reward().step_rewards) == pytest.approx(1.0)
    environment.reset(**{k: v for k, v in row.items() if k != "environment"})
    assert module.process_reward(environments=[environment]) == [0.0]  # a no-op trajectory
    replies = await oracle(environment, row, environments[0])  # a fresh episode: ORD-1 again, stock as new
    assert json.loads(replies[2])["order_id"] == "ORD-1" and json.loads(replies[3])["quantity"] == 11
    assert module.process_reward(environments=[environment]) == [1.0]


@pytest.mark.anyio
async def test_16_concurrent_rollouts_keep_their_own_state(
    trl_export: Any, environments: list[ExportEnvironment]
) -> None:
    module = trl_export.module
    rows = [trl_export.rows[i % 2] for i in range(16)]
    envs = [start(module, row) for row in rows]
    replies = await asyncio.gather(
        *[oracle(e, row, environments[i % 2]) for i, (e, row) in enumerate(zip(envs, rows, strict=True))]
    )
    assert module.process_reward(environments=envs) == [1.0] * 16
    assert all(json.loads(r[2])["order_id"] == "ORD-1" and json.loads(r[3])["quantity"] == 11 for r in replies)


@pytest.mark.anyio
async def test_model_written_parameter_names_always_make_a_valid_distinct_signature() -> None:
    """'self', names that fold to one identifier ('a b'/'a-b', 'a'/'ª' under NFKC, '1'/'p_1') once made the
    whole trl_env.py a SyntaxError (red-team R3-12); each parameter now has its own identifier and the
    call still sends the schema's real name."""
    from astra.trainers.trl import tool_method_source

    props = {"self": {"type": "string"}, "a b": {}, "a-b": {}, "a": {}, "\u00aa": {}, "1": {}, "p_1": {}}
    tool = {"function": {"name": "lookup", "description": "d", "parameters": {"properties": props}}}
    namespace: dict[str, Any] = {}
    fake_call = "    async def _call(self, name, arguments):\n        return arguments\n"
    exec("class Env:\n" + fake_call + tool_method_source(tool), namespace)
    method = namespace["Env"].lookup
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    assert len(params) == len(set(params)) == len(props)
    assert all(p.isascii() and p.isidentifier() for p in params)
    sent = await method(namespace["Env"](), **{p: i for i, p in enumerate(params)})
    assert sorted(sent) == sorted(props)  # every real name, each from its own parameter
    assert sorted(sent.values()) == list(range(len(props)))
    assert set(get_json_schema(method)["function"]["parameters"]["properties"]) == set(params)
