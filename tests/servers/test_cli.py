"""`astra env emit / list / validate / serve` end to end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from typer.testing import CliRunner

from astra.cli import app
from astra.servers import sample_path


def test_emit_list_validate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "env"
    runner = CliRunner()
    emitted = runner.invoke(app, ["env", "emit", str(sample_path()), "--out", str(out), "--json", "--home", str(home)])
    assert emitted.exit_code == 0, emitted.output
    summary = json.loads(emitted.stdout)
    assert summary["directory"] == str(out.resolve()) and len(summary["tools"]) == 7
    assert summary["mcp_servers"]["mcpServers"]["inventory"]["args"] == [str(out.resolve() / "server.py")]
    listed = json.loads(runner.invoke(app, ["env", "list", "--json", "--home", str(home)]).stdout)
    assert [(e["name"], e["location"]) for e in listed["environments"]] == [("inventory", str(out.resolve()))]
    assert "inventory" in listed["samples"]
    validated = runner.invoke(app, ["env", "validate", str(out), "--json"])
    assert validated.exit_code == 0, validated.output
    report = json.loads(validated.stdout)
    assert report["ok"] and report["failed"] == 0


def test_emit_rejects_a_bad_spec_with_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    data = json.loads(sample_path().read_text())
    del data["tools"][2]["spec"]["name"]
    bad.write_text(json.dumps(data))
    result = CliRunner().invoke(
        app, ["env", "emit", str(bad), "--out", str(tmp_path / "o"), "--home", str(tmp_path / "h")]
    )
    assert result.exit_code == 2
    assert str(bad) in result.output and "tools.2.spec.name" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "x",\n  "name": }')
    result = CliRunner().invoke(
        app, ["env", "emit", str(broken), "--out", str(tmp_path / "o"), "--home", str(tmp_path / "h")]
    )
    assert result.exit_code == 2 and f"{broken}:2:" in result.output


def test_serve_by_registry_name_over_stdio(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["env", "emit", "sample:inventory", "--out", str(tmp_path / "env"), "--home", str(home)]
        ).exit_code
        == 0
    )
    env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG") if k in os.environ} | {"ASTRA_HOME": str(home)}
    astra = [sys.executable, "-c", "from astra.cli import main; main()"]
    params = StdioServerParameters(
        command=astra[0],
        args=[*astra[1:], "env", "serve", "inventory"],
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
    )

    async def drive() -> None:
        with anyio.fail_after(60):
            async with Client(params) as client:
                result = await client.call_tool("list_items", {"category": "fasteners"})
                assert result.structured_content["count"] == 1

    anyio.run(drive)
    missing = runner.invoke(app, ["env", "serve", "no-such-env", "--home", str(home)])
    assert missing.exit_code == 2 and "no environment 'no-such-env'" in missing.output
