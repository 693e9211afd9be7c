import json

import pytest
from pydantic import ValidationError

from astra.records import ChatMessage, Reward, ServerSpec, StdioLaunch, ToolCall, stable_id
from astra.runs import JsonlLog, RunDir


def test_stable_id_depends_on_inputs_and_order():
    assert stable_id("a", 1) == stable_id("a", 1)
    assert stable_id("a", 1) != stable_id(1, "a")
    assert stable_id({"x": 1, "y": 2}) == stable_id({"y": 2, "x": 1})


def test_server_spec_launch_is_discriminated():
    spec = ServerSpec(id="s1", name="time", launch={"kind": "stdio", "command": "mcp-server-time"})
    assert isinstance(spec.launch, StdioLaunch)
    again = ServerSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


def test_reward_dimensions_must_be_in_unit_interval():
    with pytest.raises(ValidationError):
        Reward(id="r", trajectory_id="t", task_id="k", dimensions={"final_answer": 1.5})


def test_chat_message_to_openai_shape():
    msg = ChatMessage(role="assistant", content=None, tool_calls=[ToolCall(id="c1", name="f", arguments='{"a":1}')])
    out = msg.to_openai()
    assert out["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}


def test_jsonl_log_skips_duplicates_and_repairs_torn_tail(tmp_path):
    log = JsonlLog(tmp_path / "x.jsonl")
    assert log.append({"id": "a", "v": 1})
    assert not log.append({"id": "a", "v": 2})
    with (tmp_path / "x.jsonl").open("ab") as fh:
        fh.write(b'{"id": "b", "v"')  # a kill -9 mid-write
    again = JsonlLog(tmp_path / "x.jsonl")
    assert again.ids == {"a"}
    assert again.append({"id": "b", "v": 3})
    lines = (tmp_path / "x.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]


def test_run_dir_manifest_persists_stage_status(tmp_path):
    run = RunDir(tmp_path / "run", config={"k": 1})
    run.mark("graph", "done", count=3)
    again = RunDir(tmp_path / "run")
    assert again.status("graph") == "done"
    assert again.manifest["config"] == {"k": 1}
