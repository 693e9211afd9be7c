"""``astra registry ...`` and ``astra graph ...`` through typer's CliRunner (real servers, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import typer
from typer.testing import CliRunner

from astra.cli.graph import app as graph_app
from astra.cli.registry import app as registry_app
from astra.records import StdioLaunch
from astra.registry import SAMPLE_SERVERS, Registry, parse_graph

from .test_graph import sample_graph
from .test_import import astra_record, write_lines

cli = typer.Typer()
cli.add_typer(registry_app, name="registry")
cli.add_typer(graph_app, name="graph")
runner = CliRunner()


def run(*args: str):  # noqa: ANN201
    return runner.invoke(cli, [str(a) for a in args])


def test_import_json_summary_and_exit_codes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run("registry", "import", SAMPLE_SERVERS, "--home", home, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["imported"] == 6 and summary["rejected"] == 0 and summary["errors"] == []

    again = json.loads(run("registry", "import", SAMPLE_SERVERS, "--home", home, "--json").stdout)
    assert (again["imported"], again["unchanged"]) == (0, 6)

    mixed = write_lines(tmp_path / "mixed.jsonl", [astra_record("fine"), "{not json"])
    result = run("registry", "import", mixed, "--home", home, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["imported"], summary["rejected"]) == (1, 1)
    assert summary["errors"] == [f"{mixed}:2: json: Expecting property name enclosed in double quotes at column 2"]
    assert f"{mixed}:2: json:" in result.stderr  # and the human sees it too


def test_add_list_show_remove(tmp_path: Path, time_launch: StdioLaunch) -> None:
    home = tmp_path / "home"
    run("registry", "import", SAMPLE_SERVERS, "--home", home)
    result = run("registry", "add", "time", "--home", home, "--json", "--domain", "clock", "--", time_launch.command,
                 *time_launch.args)
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    assert added["ok"] and added["changed"] and added["tools"] == ["get_current_time", "convert_time"]
    assert added["launch"]["command"] == time_launch.command

    listing = json.loads(run("registry", "list", "--home", home, "--json").stdout)
    assert {s["name"] for s in listing} >= {"time", "hotel-booking"}
    assert next(s for s in listing if s["name"] == "time") | {"source": None} == {
        "name": "time", "title": None, "domain": "clock", "launch": "stdio", "tools": 2, "source": None}
    travel = json.loads(run("registry", "list", "--domain", "travel", "--home", home, "--json").stdout)
    assert sorted(s["name"] for s in travel) == ["flight-search", "hotel-booking"]

    shown = json.loads(run("registry", "show", "time", "--home", home, "--json").stdout)
    assert shown["launch"] == {"kind": "stdio", "command": time_launch.command, "args": time_launch.args,
                               "env": {}, "cwd": None}
    assert [t["name"] for t in shown["tools"]] == ["get_current_time", "convert_time"]
    human = run("registry", "show", "hotel-booking", "--home", home)
    assert human.exit_code == 0 and "book_hotel" in human.stderr

    missing = run("registry", "show", "nope", "--home", home)
    assert missing.exit_code == 2 and "no server named 'nope'" in missing.stderr
    assert json.loads(run("registry", "remove", "time", "--home", home, "--json").stdout) == {
        "name": "time", "removed": True}


def test_add_failure_names_command_and_writes_nothing(tmp_path: Path) -> None:
    import sys

    home = tmp_path / "home"
    result = run("registry", "add", "broken", "--home", home, "--json", "--timeout", "20", "--", sys.executable,
                 "-c", "import sys; sys.stderr.write('no config file\\n'); sys.exit(2)")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and "no config file" in payload["error"] and sys.executable in payload["error"]
    with Registry.open(home) as reg:
        assert reg.counts()["servers"] == 0


@pytest.mark.parametrize("argv, message", [
    (["registry", "add", "x"], "give -- COMMAND"),
    (["registry", "add", "x", "--url", "http://127.0.0.1:1/mcp", "--", "cmd"], "not both"),
    (["registry", "add", "x", "--url", "http://127.0.0.1:1/mcp", "--header", "novalue"], "expected KEY=VALUE"),
    (["registry", "add", "x", "--sse", "--", "cmd"], "apply to --url servers"),
])
def test_add_usage_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    result = run(*argv, "--home", tmp_path)
    assert result.exit_code == 2 and message in result.stderr


def test_add_http(tmp_path: Path, http_server) -> None:  # noqa: ANN001
    result = run("registry", "add", "calc", "--url", http_server.url, "--header", "X-Test=1", "--home", tmp_path,
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tools"] == ["add", "scale"]


def test_add_sse(tmp_path: Path, sse_server) -> None:  # noqa: ANN001
    result = run("registry", "add", "legacy", "--url", sse_server.url, "--sse", "--home", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tools"] == ["add", "scale"]
    shown = run("registry", "list", "--home", tmp_path)
    assert f"sse: {sse_server.url}" in shown.stdout + shown.stderr


def test_graph_list_show_export(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry.open(home) as reg:
        reg.save_graph(sample_graph())
        reg.save_graph(sample_graph())
    listing = json.loads(run("graph", "list", "--home", home, "--json").stdout)
    assert [(g["name"], g["version"], g["versions"], g["edges"]) for g in listing] == [("travel", 2, [1, 2], 3)]
    shown = json.loads(run("graph", "show", "travel", "--home", home, "--json").stdout)
    assert shown["edges"] == 3 and shown["kinds"] == {"data": 2, "order": 1} and shown["is_dag"] is True

    out = tmp_path / "g.graphml"
    result = run("graph", "export", "travel", "--format", "graphml", "--version", "1", "--out", out, "--home", home,
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == 1
    assert parse_graph(out.read_text(), "graphml") == sample_graph()

    as_json = run("graph", "export", "travel", "--format", "json", "--home", home)
    assert nx.node_link_graph(json.loads(as_json.stdout), edges="edges").number_of_edges() == 3
    as_dot = run("graph", "export", "travel", "--format", "dot", "--home", home)
    assert as_dot.stdout.startswith('digraph "travel"')

    bad = run("graph", "export", "travel", "--format", "gexf", "--home", home)
    assert bad.exit_code == 2 and "graphml, json, dot" in bad.stderr
    missing = run("graph", "show", "nope", "--home", home)
    assert missing.exit_code == 2 and "graphs: travel" in missing.stderr


def test_the_astra_entry_point(tmp_path: Path) -> None:
    """Through the real ``astra`` command line (all groups registered), in a subprocess."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "from astra.cli import main; main()", "registry", "import", str(SAMPLE_SERVERS),
         "--home", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["imported"] == 6
    proc = subprocess.run(
        [sys.executable, "-c", "from astra.cli import main; main()", "registry", "list", "--home", str(tmp_path),
         "--domain", "finance", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert sorted(s["name"] for s in json.loads(proc.stdout)) == ["currency-exchange", "stock-market"]
