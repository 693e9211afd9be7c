"""The CLI under hostile data: markup and control characters in user data, options after
``--``, a spec whose server cannot start, ASTRA errors formatted once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from astra.cli import app
from astra.records import ServerSpec, ToolSpec
from astra.registry import Registry
from astra.servers import sample_path

runner = CliRunner()
HOSTILE = "x[/]\x1b[31mred[bold]"


def test_markup_and_control_characters_in_user_data_print_verbatim(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry.open(home) as registry:
        registry.upsert_server(ServerSpec(id="h1", name=HOSTILE, title="[/]title", domain="[red]d",
                                          tools=[ToolSpec(server=HOSTILE, name="t[/]", description="\x07bell [/]")]))
        registry.upsert_server(ServerSpec(id="f1", name="fine", tools=[]))
    listed = runner.invoke(app, ["registry", "list", "--home", str(home)])
    assert listed.exit_code == 0, listed.output
    out = listed.stderr
    assert "x[/]" in out and "\\x1b" in out and "\x1b[31m" not in out and "fine" in out and "[/]title" in out
    shown = runner.invoke(app, ["registry", "show", HOSTILE, "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert "t[/]" in shown.stderr and "\\x07bell [/]" in shown.stderr and "\x07" not in shown.stderr
    missing = runner.invoke(app, ["registry", "show", "nope[/]\x1b", "--home", str(home)])
    assert missing.exit_code == 2 and "nope[/]\\x1b" in missing.stderr


def test_astra_options_after_double_dash_are_passed_on_with_a_warning(tmp_path: Path) -> None:
    result = runner.invoke(app, ["registry", "add", "srv", "--home", str(tmp_path / "h"), "--",
                                 "/nonexistent/server", "--timeout", "5", "--json"])
    assert "warning: --timeout, --json after -- are passed to the server, not to astra" in result.stderr
    assert result.exit_code != 0  # the server itself does not exist


def test_emit_checks_that_the_server_starts_and_writes_nothing_otherwise(tmp_path: Path) -> None:
    spec = json.loads(sample_path().read_text())
    spec["tools"][0]["source"] = "def list_items(state, category=None:\n    return 1\n"  # cannot compile
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    out = tmp_path / "out"
    result = runner.invoke(app, ["env", "emit", str(bad), "--out", str(out), "--home", str(tmp_path / "h")])
    assert result.exit_code == 1, result.output
    assert "tool code does not compile, nothing written: tool list_items:1:" in result.stderr
    assert not out.exists()
    listed = runner.invoke(app, ["env", "list", "--json", "--home", str(tmp_path / "h")])
    assert json.loads(listed.stdout)["environments"] == []


def test_astra_errors_are_one_line_at_the_top_level(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import astra.cli
    from astra.errors import RunWriteError

    def boom() -> None:
        raise ExceptionGroup("task group", [RunWriteError("run.jsonl: could not write a record in full [/]")])

    monkeypatch.setattr(astra.cli, "app", boom)
    with pytest.raises(SystemExit) as exc:
        astra.cli.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: run.jsonl: could not write a record in full [/]"
