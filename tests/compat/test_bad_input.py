"""Hostile input to registry import and the other readers of user files (issue 13, "Bad input"):
schemas nested hundreds of levels deep, FIFOs and devices, non-UTF-8 bytes and wrongly typed
configs give ``FILE:LINE: field: reason``, a non-zero exit, no traceback, and nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from astra.cli import app
from astra.registry import Registry, import_file
from astra.synthesis._original import read_tasks
from astra.synthesis.environments._qa import read_qa_jsonl

from .conftest import base_info, write_jsonl

runner = CliRunner()


def nested_schema_text(levels: int) -> str:
    """A tool schema ``levels`` objects deep, as text (json.dumps itself cannot write it)."""
    return '{"type":"object","properties":{"x":' * levels + '{"type":"string"}' + "}}" * levels


def record_text(name: str, parameters_text: str) -> str:
    return ('{"base_info":{"group_info":{"server_name":"' + name + '"},"tool_list":[{"name":"deep","parameters":'
            + parameters_text + '},{"name":"fine","parameters":{"type":"object"}}]}}')


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    deep = tmp_path / "deep.jsonl"
    deep.write_text(record_text("deep500", nested_schema_text(500)) + "\n"
                    + record_text("deep5000", nested_schema_text(5000)) + "\n")
    fifo = tmp_path / "servers.fifo"
    os.mkfifo(fifo)
    non_utf8 = write_jsonl(tmp_path / "latin1.jsonl", [
        b'{"base_info": {"group_info": {"server_name": "caf\xe9"}, "tool_list": []}}',
        {"base_info": base_info("good-one")},
    ])
    wrong = write_jsonl(tmp_path / "wrong_types.jsonl", [
        {"base_info": {"group_info": {"server_name": 7}, "tool_list": []}},
        {"base_info": {"group_info": {"server_name": "s"}, "tool_list": "add,scale"}},
        {"base_info": {"group_info": ["s"], "tool_list": []}},
        {"base_info": base_info("t", tools=[{"name": "a", "parameters": ["x"]}])},
        {"base_info": base_info("u"), "call_info": {"url": 5, "headers": {}}},
        {"base_info": base_info("v"), "call_info": {"url": "http://127.0.0.1:1/mcp", "headers": ["Authorization"]}},
        {"base_info": base_info("w"), "call_info": "http://x"},
        [1, 2, 3],
        {"base_info": base_info("good-two")},
    ])
    return {"deep": deep, "fifo": fifo, "zero": Path("/dev/zero"), "non_utf8": non_utf8, "wrong": wrong}


def test_registry_import_contains_every_class(tmp_path: Path, hostile: dict[str, Path]) -> None:
    home = tmp_path / "home"
    files = [hostile[k] for k in ("deep", "fifo", "zero", "non_utf8", "wrong")]
    # a real process with a deadline: a FIFO or /dev/zero must be refused, not read forever
    command = [sys.executable, "-c", "from astra.cli import main; main()", "registry", "import", *map(str, files)]
    proc = subprocess.run([*command, "--home", str(home)], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    deep, fifo, zero, latin, wrong = map(str, files)
    kept = "(tool left out; the rest of {!r} is kept)"
    expected = [
        f"{deep}:1: base_info.tool_list[0].parameters: nested deeper than 64 levels {kept.format('deep500')}",
        f"{deep}:2: json: nested deeper than 3000 levels",
        f"{fifo}:0: file: not a regular file (a FIFO); give a JSON or JSONL file",
        f"{zero}:0: file: not a regular file (a character device); give a JSON or JSONL file",
        f"{latin}:1: encoding: invalid UTF-8 byte 0xe9 at column 50",
        f"{wrong}:1: base_info.group_info.server_name: expected str, got int",
        f"{wrong}:2: base_info.tool_list: expected list, got str",
        f"{wrong}:3: base_info.group_info: expected dict, got list",
        f"{wrong}:4: base_info.tool_list[0].parameters: expected a JSON object (schema), got list {kept.format('t')}",
        f"{wrong}:5: call_info.url: expected a URL, got int",
        f"{wrong}:6: call_info.headers: expected an object, got list",
        f"{wrong}:7: call_info: expected an object, got str",
        f"{wrong}:8: record: expected a JSON object, got list",
    ]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    for message in expected:
        assert message in lines, (message, proc.stderr)
    with Registry.open(home) as registry:  # what was good is in, whole; nothing of a rejected record is
        assert registry.server_names() == ["deep500", "good-one", "good-two", "t"]
        assert [t.name for t in registry.get_server("deep500").tools] == ["fine"]
        assert registry.get_server("t").tools == []


def test_strict_import_of_a_hostile_file_writes_nothing(tmp_path: Path, hostile: dict[str, Path]) -> None:
    with Registry(tmp_path / "astra.db") as registry:
        for name in ("deep", "wrong", "non_utf8"):
            report = import_file(registry, hostile[name], strict=True)
            assert report.imported == 0 and report.rejected == report.records, report.errors
            if name != "deep":  # the others hold good records too: withheld, and said so
                assert "nothing imported (--strict:" in report.errors[-1], report.errors
        assert registry.server_names() == []


def test_other_readers_refuse_fifos_devices_and_bad_bytes(tmp_path: Path, hostile: dict[str, Path]) -> None:
    for path in (hostile["fifo"], hostile["zero"]):
        found = read_tasks(path)
        assert found.items == [] and found.errors[0].startswith(f"{path}:0: file: not a regular file")
        items, errors = read_qa_jsonl(path)
        assert items == [] and errors[0].startswith(f"{path}:0: file: not a regular file")
    result = runner.invoke(app, ["rollout", "--tasks", str(hostile["fifo"]), "--model", "scripted:echo",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))  # usage
    assert "not a regular file (a FIFO)" in result.output and "no valid tasks" in result.output
    questions = write_jsonl(tmp_path / "questions.jsonl", [b'{"question": "caf\xe9?"}', {"question": ["x"]},
                                                           {"question": "ok?", "domain": "d"}])
    items, errors = read_qa_jsonl(questions)
    assert [i.question for i in items] == ["ok?"]
    assert errors == [f"{questions}:1: (line): invalid UTF-8 byte 0xe9 at column 18",
                      f"{questions}:2: question: Input should be a valid string"]
    limit = sys.getrecursionlimit()
    deep_tasks = tmp_path / "deep_tasks.jsonl"
    deep_tasks.write_text('{"query_info": {"generated_question": "q", "x": ' + "[" * 5000 + "]" * 5000 + "}}\n")
    assert read_tasks(deep_tasks).errors == [f"{deep_tasks}:1: json: nested deeper than 3000 levels"]
    assert sys.getrecursionlimit() == limit  # the reader raised it only while parsing
