"""Typed tool definitions (astra.tools), ToolRef from the harness to the reward, one error-kind vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra.client._schema import anthropic_tool, openai_to_anthropic_tool, openai_tool, tool_definition_of
from astra.records import Step, ToolErrorKind, ToolSpec, Trajectory
from astra.servers import ToolCallRecord, emit, load_sample, score_calls
from astra.servers._rewards import calls_from_trajectory, calls_tool
from astra.servers._sandbox import ErrorKind as SandboxErrorKind
from astra.tools import ToolDefinition, ToolRef, function_object, tool_definition

SPEC = ToolSpec(server="weather", name="get_forecast", description="Forecast for a city",
                input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_provider_shapes_are_mappings_of_one_definition() -> None:
    definition = tool_definition_of("weather__get_forecast", SPEC)
    assert definition == ToolDefinition(name="weather__get_forecast", description="Forecast for a city",
                                        parameters=PARAMS)
    # the wire shapes, key order included (trajectories and SFT exports are compared byte for byte)
    assert json.dumps(openai_tool("weather__get_forecast", SPEC)) == json.dumps(
        {"type": "function", "function": {"name": "weather__get_forecast", "description": "Forecast for a city",
                                          "parameters": PARAMS}})
    assert json.dumps(anthropic_tool("weather__get_forecast", SPEC)) == json.dumps(
        {"name": "weather__get_forecast", "description": "Forecast for a city", "input_schema": PARAMS})
    assert definition.chat_template() == definition.openai()
    assert openai_to_anthropic_tool(definition.openai()) == definition.anthropic()
    strict = definition.model_copy(update={"strict": True})
    assert strict.openai()["function"]["strict"] is True and "strict" not in definition.openai()["function"]


def test_one_reader_for_every_tool_shape() -> None:
    definition = ToolDefinition(name="f", description="d", parameters=PARAMS)
    for shape in (definition.openai(), definition.function(), definition.anthropic(), definition.chat_template()):
        assert tool_definition(shape) == definition
    bare = tool_definition({"name": "f", "description": None})  # null description, no parameters
    assert (bare.description, bare.parameters) == ("", {"type": "object", "properties": {}})
    assert tool_definition({"name": "f", "parameters": {}}).parameters == {"type": "object", "properties": {}}
    assert function_object({"type": "function", "function": {"name": "f"}}) == {"name": "f"}
    assert function_object({"name": "f"}) == {"name": "f"}
    with pytest.raises(ValueError, match="name: missing"):
        tool_definition({"type": "function", "function": {"description": "no name"}})
    with pytest.raises(ValueError, match="parameters: not an object"):
        tool_definition({"name": "f", "parameters": ["x"]})
    with pytest.raises(ValueError, match="description: not a string"):
        tool_definition({"name": "f", "description": 3})


def test_tool_ref_names_a_tool_exactly() -> None:
    ref = ToolRef(server="weather", tool="get_forecast", exposed="weather__get_forecast")
    assert [ref.is_tool(n) for n in ("get_forecast", "weather/get_forecast", "weather__get_forecast")] == [True] * 3
    assert not ref.is_tool("forecast") and not ref.is_tool("other/get_forecast") and not ref.is_tool(None)
    step = Step(call_id="c", tool="weather__get_forecast", server="weather", server_tool="get_forecast")
    assert step.ref == ref
    assert Step(call_id="c", tool="nope", error_kind="unknown_tool").ref is None


def test_reward_matches_through_the_ref_never_by_suffix() -> None:
    truth = [{"id": "s1", "sub_question": "forecast?", "sub_answer": "sunny", "tool": "get_forecast"}]
    traj = Trajectory(id="t", task_id="k", model="m", termination="final_answer", steps=[
        Step(call_id="c", tool="weather__get_forecast", server="weather", server_tool="get_forecast",
             result={"sky": "sunny"})])
    calls = calls_from_trajectory(traj)
    assert calls[0].ref == traj.steps[0].ref
    assert score_calls(calls, truth).solved == 1
    # a bare aggregated name (no ref: e.g. read from rendered text) is not guessed to be the tool
    bare = ToolCallRecord(name="weather__get_forecast", result={"sky": "sunny"})
    assert not calls_tool(bare, "get_forecast")
    assert score_calls([bare], truth).solved == 0
    assert calls_tool(ToolCallRecord(name="get_forecast"), "get_forecast")
    assert calls_tool(bare, "*")
    # the recorded ref survives the JSON trip verl makes (extra_info["astra_calls"])
    again = ToolCallRecord.model_validate(json.loads(calls[0].model_dump_json()))
    assert again.ref == calls[0].ref and score_calls([again], truth).solved == 1


def test_error_kinds_are_one_vocabulary() -> None:
    # the sandbox's kinds are the subset a sandboxed call fails with
    assert {k.value for k in SandboxErrorKind} <= {k.value for k in ToolErrorKind}
    step = Step(call_id="c", tool="x", is_error=True, error_kind="bad_arguments")
    assert step.error_kind is ToolErrorKind.bad_arguments
    line = step.model_dump_json()
    assert '"error_kind":"bad_arguments"' in line
    assert Step.model_validate_json(line).error_kind is ToolErrorKind.bad_arguments
    # a kind written by a newer version reads back as the string it is
    assert Step(call_id="c", tool="x", error_kind="from_the_future").error_kind == "from_the_future"


def test_emitted_runtime_vendors_the_same_error_kinds(tmp_path: Path) -> None:
    out = emit(load_sample("inventory"), tmp_path / "env")
    vendored = out / "astra_env_runtime" / "_kinds.py"
    assert vendored.read_text("utf-8") == (Path(__file__).parents[1] / "astra" / "tool_errors.py").read_text("utf-8")
