"""`astra demo`'s first step against a real MCP server (the pipelines have their own tests)."""

import json

from typer.testing import CliRunner

from astra.cli import app


def test_demo_registry_step_discovers_a_real_server(tmp_path):
    result = CliRunner().invoke(
        app,
        ["demo", "--skip-trajectories", "--skip-environments", "--out", str(tmp_path / "out"),
         "--home", str(tmp_path / "home"), "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    registry = summary["registry"]
    assert registry["rejected"] == 0 and registry["imported"] >= 5
    assert registry["discovered"] == {"server": "time", "tools": ["get_current_time", "convert_time"]}
    assert summary["failures"] == []
