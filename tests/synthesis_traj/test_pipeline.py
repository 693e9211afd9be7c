"""The whole pipeline with scripted models against real servers (mcp-server-time over stdio, the
bundled inventory environment in-process, registry sample servers simulated), and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from astra.registry import Registry
from astra.synthesis import Funnel
from astra.synthesis.trajectories import PipelineError, TrajectoryConfig, TrajectoryPipeline, run_trajectory_pipeline

from .conftest import Router, router_model, time_server

INVENTORY = Path(__file__).parents[2] / "astra" / "servers" / "samples" / "inventory.json"


def assert_funnel_consistent(funnel: Funnel, samples: int) -> None:
    s = {c.stage: c for c in funnel.stages}
    for c in funnel.stages:
        if c.stage == "candidates":
            continue
        assert c.failed <= c.dropped <= c.inputs, c
        assert sum(c.drop_reasons.values()) == c.dropped, c
        assert c.outputs >= c.inputs - c.dropped, c
    chain = [
        ("chains", "verify"),
        ("verify", "tasks"),
        ("tasks", "quality"),
        ("rollout", "reward"),
        ("reward", "export"),
    ]
    for prev, nxt in chain:
        assert s[nxt].inputs == s[prev].outputs, (prev, nxt, s[prev], s[nxt])
    assert s["rollout"].inputs == s["quality"].outputs * samples


def _config(tmp_path, home, **over) -> TrajectoryConfig:
    base = dict(
        out_dir=tmp_path / "run", home=home, servers=["geo-locator", "weather-forecast", "flight-search"],
        inline_servers=[time_server()], environments=[INVENTORY], model="scripted:router", concurrency=4,
        chains={"num_chains": 6, "num_toolsets": 4}, rollout={"samples": 2},
    )
    base.update(over)
    return TrajectoryConfig.model_validate(base)


def test_full_pipeline_real_and_simulated_servers(tmp_path, home):
    router = Router()
    config = _config(tmp_path, home, export_template="Qwen2.5", export_tokenizer="smollm2",
                     export_formats=["openai", "hf", "sharegpt", "parquet", "tokens"])
    result = anyio.run(
        lambda: run_trajectory_pipeline(config, progress=False, models={"scripted:router": router_model(router)})
    )
    assert_funnel_consistent(result.funnel, samples=2)
    stages = {c.stage: c for c in result.funnel.stages}
    assert stages["export"].outputs == result.exported > 0
    assert result.coverage["tools"] == 2 + 2 + 3 + 2 + 7  # geo, weather, flight, time, inventory
    assert 0 < result.coverage["tool_share"] <= 1
    # the graph is in the registry, versioned
    with Registry.open(home) as reg:
        graph = reg.load_graph(result.graph["graph"])
    assert graph.version == result.graph["version"] and len(graph.edges) == result.graph["edges"]
    # every kind of server was really used: stdio (time), in-process environment, simulated
    pipe = TrajectoryPipeline(config, progress=False)
    trajs = pipe.stage("rollout", __import__("astra.records", fromlist=["Trajectory"]).Trajectory).outputs()
    by_server: dict[str, set[bool]] = {}
    for t in trajs:
        for st in t.steps:
            by_server.setdefault(st.server, set()).add(st.simulated)
    assert by_server["time"] == {False} and by_server["inventory"] == {False}
    assert by_server["geo-locator"] == {True}
    assert any("datetime" in json.dumps(st.result) for t in trajs for st in t.steps if st.server == "time")
    # a second run resumes: nothing is asked again, same result
    calls = dict(router.seen)
    again = anyio.run(
        lambda: run_trajectory_pipeline(config, progress=False, models={"scripted:router": router_model(router)})
    )
    assert router.seen == calls
    assert again.exported == result.exported and again.graph == result.graph
    # exports for the chosen template: what renders cleanly, and token records for what re-tokenises faithfully
    report = json.loads((tmp_path / "run" / "export" / "template_report.json").read_text())
    assert report["template"] == "Qwen2.5" and report["samples"] == result.exported
    hf_rows = Path(result.exports["hf"]).read_text().splitlines()
    assert len(hf_rows) == report["exported"] == report["samples"] - sum(report["skipped"].values())
    tokens = json.loads((tmp_path / "run" / "export" / "tokens_report.json").read_text())
    assert tokens["samples"] == report["exported"] and tokens["exported"] == len(
        Path(result.exports["tokens"]).read_text().splitlines())


def test_failed_judge_is_never_exported(tmp_path, home):
    router = Router(bad=["judge"])
    config = _config(tmp_path, home, chains={"num_chains": 2, "num_toolsets": 2}, rollout={"samples": 1})
    result = anyio.run(
        lambda: run_trajectory_pipeline(config, progress=False, models={"scripted:router": router_model(router)})
    )
    stages = {c.stage: c for c in result.funnel.stages}
    assert stages["reward"].outputs > 0
    assert result.exported == 0
    assert stages["export"].drop_reasons == {"judge_failed": stages["export"].inputs}
    assert stages["export"].failed == stages["export"].inputs
    assert Path(result.exports["openai"]).read_text() == ""
    rewards = [json.loads(line)["outputs"][0] for line in (tmp_path / "run" / "reward.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rewards} == {"judge_failed"}
    assert all(r["overall"] is None and r["dimensions"] == {} for r in rewards)


def test_quality_threshold_filters(tmp_path, home):
    router = Router(low_quality=True)  # every dimension 2/5 -> 0.25 < 0.5
    config = _config(tmp_path, home, chains={"num_chains": 2, "num_toolsets": 1})
    result = anyio.run(
        lambda: run_trajectory_pipeline(config, progress=False, models={"scripted:router": router_model(router)})
    )
    stages = {c.stage: c for c in result.funnel.stages}
    assert stages["quality"].inputs > 0 and stages["quality"].outputs == 0
    assert stages["quality"].drop_reasons == {"below_quality_threshold": stages["quality"].inputs}
    assert stages["rollout"].inputs == 0 and result.exported == 0
    assert "agent" not in router.seen


def test_stage_before_its_inputs_is_a_clear_error(tmp_path, home):
    config = _config(tmp_path, home)
    with pytest.raises(PipelineError, match="run `astra traj chains` first"):
        anyio.run(lambda: run_trajectory_pipeline(config, progress=False, stages=["verify"]))


def test_unknown_server_is_a_clear_error(tmp_path, home):
    config = _config(tmp_path, home, servers=["no-such-server"])
    with pytest.raises(PipelineError, match="'no-such-server' is not in the registry"):
        anyio.run(lambda: run_trajectory_pipeline(config, progress=False))


def test_cli_verbs_and_run(tmp_path, home):
    from astra.cli import app
    from astra.client import register_script

    register_script("traj-router", lambda **_: router_model(Router(), name="traj-router"))
    cfg = {
        "out_dir": "run", "servers": ["geo-locator", "weather-forecast"], "model": "scripted:traj-router",
        "chains": {"num_chains": 2, "num_toolsets": 1}, "tasks": {"augmentations": ["persona"], "multi_turn": True},
    }
    path = tmp_path / "traj.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["traj", "graph", str(path), "--home", str(home), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["graph"]["version"] >= 1 and [s["stage"] for s in out["funnel"]] == ["candidates", "graph"]
    res = runner.invoke(app, ["traj", "rollout", str(path), "--home", str(home), "--json"])
    assert res.exit_code == 1 and "run `astra traj tasks` first" in " ".join(res.output.split())
    for verb in ("chains", "verify", "tasks", "rollout", "reward", "export"):
        res = runner.invoke(app, ["traj", verb, str(path), "--home", str(home), "--json"])
        assert res.exit_code == 0, (verb, res.output)
    res = runner.invoke(app, ["traj", "run", str(path), "--home", str(home), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["exported"] > 0 and Path(summary["exports"]["parquet"]).exists()
    assert (tmp_path / "run" / "export" / "openai.jsonl").exists()  # out_dir is relative to the config file
    res = runner.invoke(app, ["traj", "funnel", str(path), "--home", str(home), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["exported"] == summary["exported"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("out_dir: x\nservers: [a]\nchains: {max_length: 1}\n")
    res = runner.invoke(app, ["traj", "run", str(bad)])
    assert res.exit_code == 2 and "bad.yaml: chains.max_length: " in " ".join(res.output.split())


def test_demo_config_runs_on_bundled_servers(tmp_path):
    from astra.synthesis.trajectories import demo_config

    config = demo_config(tmp_path / "run", model_spec="scripted:router", home=tmp_path / "home")
    assert [s.name for s in config.inline_servers] == ["time", "inventory"]  # the emitted sample, over stdio
    router = Router()
    result = anyio.run(
        lambda: run_trajectory_pipeline(config, progress=False, models={"scripted:router": router_model(router)})
    )
    assert_funnel_consistent(result.funnel, samples=1)
    assert result.exported > 0 and Path(result.exports["parquet"]).exists()
    servers = json.loads((tmp_path / "run" / "servers.json").read_text())
    assert {s["name"]: s["launch"]["kind"] for s in servers} == {
        "geo-locator": "simulated", "weather-forecast": "simulated", "time": "stdio", "inventory": "stdio"}
