"""call_info remote endpoints: stored with ${VAR} secret references, called live over streamable
HTTP (a real MCP server on 127.0.0.1 that demands a bearer secret) with --live-remote when
reachable, simulated otherwise; every step records which."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from astra.cli import app
from astra.client import ScriptedModel, register_script
from astra.records import HttpLaunch, SimulatedLaunch
from astra.registry import MissingSecretError, Registry, import_file
from astra.registry._discovery import resolve_http_launch
from astra.registry._import import secret_env_name

from .conftest import SECRET, task_line, write_jsonl

runner = CliRunner()
VAR = secret_env_name("calc", "Authorization")

register_script("compat-add", lambda **_: ScriptedModel.from_plan([("add", {"a": 1, "b": 2})], "It is 3.",
                                                                  name="compat-add"))
register_script("compat-sim", lambda **_: ScriptedModel(['{"result": 99}'], name="compat-sim", per_conversation=True))


def _tasks_file(tmp_path: Path, url: str) -> Path:
    call_info = {"url": url, "headers": {"Authorization": f"Bearer {SECRET}", "Accept": "application/json"}}
    return write_jsonl(tmp_path / "tasks.jsonl", [task_line("What is 1 plus 2?", ["add"], call_info=call_info)])


def _rollout(tmp_path: Path, tasks: Path, out: str, *extra: str):
    return runner.invoke(app, ["rollout", "--tasks", str(tasks), "--model", "scripted:compat-add",
                               "--simulator-model", "scripted:compat-sim", "--out", str(tmp_path / out),
                               "--home", str(tmp_path / "home"), "--concurrency", "1", "--json", *extra])


def _steps(run_dir: Path) -> list[dict]:
    trajs = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines() if line.strip()]
    assert len(trajs) == 1
    return trajs[0]["steps"]


def test_secret_is_stored_as_a_reference_and_resolved_at_launch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = _tasks_file(tmp_path, "http://127.0.0.1:9/mcp?api_key=abc123&region=eu")
    with Registry(tmp_path / "astra.db") as registry:
        report = import_file(registry, tasks)  # a tasks.jsonl line is an mcp_info-wrapped server record too
        assert report.ok and report.imported == 1, report.errors
        spec = registry.get_server("calc")
        raw = registry.get_server_raw("calc")
    assert isinstance(spec.launch, SimulatedLaunch)
    remote = spec.launch.remote
    key_var = secret_env_name("calc", "api_key")
    assert remote == HttpLaunch(url=f"http://127.0.0.1:9/mcp?api_key=${{{key_var}}}&region=eu",
                                headers={"Authorization": f"${{{VAR}}}", "Accept": "application/json"})
    assert report.notices == [
        f"{tasks}:1: call_info.headers.Authorization: secret not stored; set ${VAR} when the server is called live",
        f"{tasks}:1: call_info.url?api_key: secret not stored; set ${key_var} when the server is called live",
    ]
    db = b"".join(f.read_bytes() for f in tmp_path.glob("astra.db*"))
    assert SECRET.encode() not in db and b"abc123" not in db and SECRET not in json.dumps(raw)

    with pytest.raises(MissingSecretError, match=VAR):
        resolve_http_launch(remote, {key_var: "k"})
    resolved = resolve_http_launch(remote, {VAR: f"Bearer {SECRET}", key_var: "k"})
    assert resolved.headers["Authorization"] == f"Bearer {SECRET}" and "api_key=k&" in resolved.url

    smithery = {"python_sdk_url": "https://server.smithery.ai/@x/y/mcp?api_key={smithery_api_key}&config={config_b64}",
                "python_sdk_config": json.dumps({"apiKey": "sk-live", "units": "metric"})}
    with Registry(tmp_path / "astra.db") as registry:
        path = write_jsonl(tmp_path / "smithery.jsonl", [{"mcp_info": {"base_info": {"group_info": {
            "server_title": "Weather"}, "tool_list": []}, "call_info": smithery}}])
        assert import_file(registry, path).imported == 1
        launch = registry.get_server("Weather").launch  # no server_name: named by its title, as the original does
    assert "sk-live" not in launch.model_dump_json()
    monkeypatch.setenv("SMITHERY_API_KEY", "sa")
    monkeypatch.setenv(secret_env_name("Weather", "config_apiKey"), "sk-live")
    url = resolve_http_launch(launch.remote).url
    assert url.startswith("https://server.smithery.ai/@x/y/mcp?api_key=sa&config=")
    import base64
    assert json.loads(base64.b64decode(url.split("config=")[1])) == {"apiKey": "sk-live", "units": "metric"}


def test_live_remote_calls_the_real_server_with_the_env_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret_http_server) -> None:
    url, gate = secret_http_server
    tasks = _tasks_file(tmp_path, url)

    # 1. live: the secret comes from the environment, the server answers, the step says live
    monkeypatch.setenv(VAR, f"Bearer {SECRET}")
    result = _rollout(tmp_path, tasks, "live", "--live-remote")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "live" / "servers_plan.json").read_text())
    assert plan["calc"]["execution"] == "live" and "reachable" in plan["calc"]["why"]
    (step,) = _steps(tmp_path / "live")
    assert (step["server"], step["is_error"], step["simulated"]) == ("calc", False, False)
    assert step["result"] == {"result": 3}
    assert f"Bearer {SECRET}" in gate.seen
    for f in (tmp_path / "live").iterdir():  # the secret is used, never written down
        assert SECRET not in f.read_text(errors="replace"), f

    # 2. the secret is not set: not reachable, simulated, and the plan says why
    monkeypatch.delenv(VAR)
    result = _rollout(tmp_path, tasks, "nosecret", "--live-remote")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "nosecret" / "servers_plan.json").read_text())
    assert plan["calc"]["execution"] == "simulated" and VAR in plan["calc"]["why"]
    (step,) = _steps(tmp_path / "nosecret")
    assert step["simulated"] is True and str(step["result"]) == "99"

    # 3. a wrong secret: the endpoint refuses (401), simulated
    monkeypatch.setenv(VAR, "Bearer wrong")
    result = _rollout(tmp_path, tasks, "wrong", "--live-remote")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "wrong" / "servers_plan.json").read_text())["calc"]["execution"] == "simulated"
    assert "Bearer wrong" in gate.seen

    # 4. without --live-remote the endpoint is never called
    monkeypatch.setenv(VAR, f"Bearer {SECRET}")
    calls = len(gate.seen)
    result = _rollout(tmp_path, tasks, "offline")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "offline" / "servers_plan.json").read_text())
    assert plan["calc"] == {"name": "calc", "execution": "simulated",
                            "why": "remote endpoint not called (give --live-remote to call it)"}
    assert _steps(tmp_path / "offline")[0]["simulated"] is True
    assert len(gate.seen) == calls
