"""Red team, round 3: attacks the two earlier suites (``test_sandbox_redteam.py``,
``test_redteam_independent.py``) do not try, each kept here once it is contained: through the sandbox API
(audit hook off: containment must not rest on it) and through an emitted ``server.py`` driven by the
official mcp client over stdio. Every test says which protection it checks; it fails when that
protection is removed. Findings, reproducers and their status: /work/notes/redteam3/findings.md.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import anyio
import pytest
from mcp.client import Client

from astra.records import EnvironmentSpec, ToolImplementation, ToolSpec
from astra.servers import emit, stdio_parameters
from astra.servers._sandbox import AUDIT_HOOK_ENV

HEALTHY = "def healthy(state, x=21):\n    return {'double': 2 * x}\n"


def _tool(name: str, source: str, entrypoint: str, *, stateful: bool = True) -> ToolImplementation:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    return ToolImplementation(spec=ToolSpec(server="round3", name=name, description=name, input_schema=schema),
                              source=source, entrypoint=entrypoint, stateful=stateful)


# --------------------------------------------------------------------------- R3-04: names are data, not code


def test_environment_name_cannot_inject_code_into_server_py(tmp_path: Path) -> None:
    """R3-04. Protection: ``_emit._docstring_name`` (the name is sanitised before it is written into the
    generated module's docstring; with ``{name!r}`` the name below closed the docstring and ran ``id`` on
    the host when an MCP host launched server.py)."""
    marker = tmp_path / "PWNED"
    names = [
        f'inv"""+__import__("os").system("touch {marker}")+"""',
        f"inv'''+__import__('os').system('touch {marker}')+'''",
        f'inv\\"""+__import__("os").system("touch {marker}")#',
        f'inv\n"""\nimport os; os.system("touch {marker}")\n"""',
        'inv\\',
    ]
    for i, name in enumerate(names):
        spec = EnvironmentSpec(id=f"env-r3-{i}", name=name, tools=[_tool("healthy", HEALTHY, "healthy")])
        out = emit(spec, tmp_path / f"server{i}")
        module = ast.parse((out / "server.py").read_text(encoding="utf-8"))
        # the docstring is a plain constant, and no statement of the module calls anything but main()
        assert isinstance(module.body[0], ast.Expr) and isinstance(module.body[0].value, ast.Constant)
        calls = {ast.unparse(node.func) for node in ast.walk(module) if isinstance(node, ast.Call)}
        assert calls <= {"sys.path.insert", "str", "Path(__file__).resolve", "Path", "main"}, calls
        assert json.loads((out / "environment.json").read_text(encoding="utf-8"))["name"] == name  # kept exactly

    async def launch() -> None:  # what an MCP host does with the first one: it starts and serves
        params = stdio_parameters(tmp_path / "server0")
        params.env = {**(params.env or {}), AUDIT_HOOK_ENV: "0"}
        with anyio.fail_after(60):
            async with Client(params) as client:
                listed = await client.list_tools()
                assert [t.name for t in listed.tools] == ["healthy"]
                result = await client.call_tool("healthy", {"x": 4})
                assert not result.is_error and json.loads(result.content[0].text) == {"double": 8}  # type: ignore[union-attr]

    anyio.run(launch)
    assert not marker.exists()


# --------------------------------------------------------------------------- CLI: names and tool output are data


def test_cli_prints_hostile_names_and_tool_output_verbatim(tmp_path: Path) -> None:
    """R3-13. Protection: ``astra.cli._common.user`` on every name and server-provided text that
    ``astra env emit / list / validate`` print (a name ``x[/]`` made ``emit`` end in a Rich MarkupError
    traceback after writing and registering, and then broke ``env list`` for the whole registry; a tool
    error text did the same to ``env validate``)."""
    from typer.testing import CliRunner

    from astra.cli import app
    from astra.records import Verifier

    hostile = "x[/]\x1b[31m[bold]"
    source = "def boom(state, x=21):\n    raise ValueError('[/]\\x1b[2J [link=file:///etc]')\n"
    spec = EnvironmentSpec(
        id="env-r3-markup", name=hostile,
        tools=[_tool("healthy", HEALTHY, "healthy"), _tool("boom", source, "boom")],
        verifiers=[Verifier(id="v1", sub_question="boom?", expected_answer=1, tool="boom", arguments={})],
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json(), encoding="utf-8")
    home, out = tmp_path / "home", tmp_path / "out"
    runner = CliRunner()
    env = {AUDIT_HOOK_ENV: "0"}

    emitted = runner.invoke(app, ["env", "emit", str(spec_path), "--out", str(out), "--home", str(home)], env=env)
    assert emitted.exit_code == 0 and emitted.exception is None, (emitted.output, emitted.exception)
    assert "x[/]\\x1b[31m[bold]" in emitted.output  # verbatim, control character escaped
    listed = runner.invoke(app, ["env", "list", "--home", str(home)], env=env)
    assert listed.exit_code == 0 and listed.exception is None, (listed.output, listed.exception)
    assert "x[/]" in listed.output
    validated = runner.invoke(app, ["env", "validate", str(out)], env=env)
    assert validated.exit_code == 1 and isinstance(validated.exception, SystemExit), validated.exception
    assert "[/]" in validated.output and "\x1b" not in validated.output  # failed check shown, not interpreted


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
