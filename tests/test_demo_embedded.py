"""`astra demo` end to end with the embedded model (SmolLM2-135M, grammar-constrained): the whole path
runs for real and makes at least one SFT sample whose trajectory called a real MCP server, and at
least one emitted MCP server that passed certification, with its verl export."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from astra.cli import app

pytestmark = [pytest.mark.local_model, pytest.mark.slow]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_demo_with_the_embedded_model_makes_samples_and_certified_servers(tmp_path):
    pytest.importorskip("llama_cpp")
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path / "out"), "--home", str(tmp_path / "home"), "--json"])
    assert result.exit_code == 0, result.output
    start = result.stdout.rfind("\n{\n") + 1  # the --json summary is the last, indented object (0: all of stdout)
    summary = json.loads(result.stdout[start:])
    assert summary["model"] == "local:smollm2" and summary["failures"] == []

    # trajectory half: an exported sample (hf profile: it keeps the trajectory id) whose rollout reached a real server
    traj = summary["trajectories"]
    run = Path(traj["run_dir"])
    trajectories = {t["id"]: t for e in _jsonl(run / "rollout.jsonl") for t in e.get("outputs", [])}
    exported = _jsonl(Path(traj["exports"]["hf"]))
    assert traj["exported"] >= 1 and exported
    real = [s for s in exported
            if any(step.get("server") in ("time", "inventory") and not step.get("simulated")
                   and not step.get("is_error") for step in trajectories[s["id"]]["steps"])]
    assert real, f"no exported sample called a real server: {[trajectories[s['id']]['steps'] for s in exported]}"
    assert any(m["role"] == "tool" for m in real[0]["messages"])
    # the embedded model cannot judge: the rules did, and the export says so
    parquet = __import__("pyarrow.parquet", fromlist=["read_table"]).read_table(traj["exports"]["parquet"]).to_pylist()
    assert {row["judge"] for row in parquet} == {"rules"}

    # environment half: a certified emitted server and its verl export
    env = summary["environments"]
    assert env["server_dirs"], env["funnel"]
    emitted = _jsonl(Path(env["run_dir"]) / "emit.jsonl")
    certified = [o for e in emitted for o in e.get("outputs", [])
                 if o["certificate"]["calls"] > 0 and o["certificate"]["passed"] == o["certificate"]["calls"]
                 and not o["certificate"]["failures"]]
    assert certified, emitted
    assert (Path(env["server_dirs"][0]) / "server.py").is_file()
    assert Path(env["exports"]["verl_parquet"]).is_file() and Path(env["exports"]["verl_tool_config"]).is_file()
    decompositions = [o for e in _jsonl(Path(env["run_dir"]) / "verify.jsonl") for o in e.get("outputs", [])]
    assert decompositions and all(d["judge"] == "rules" for d in decompositions)
