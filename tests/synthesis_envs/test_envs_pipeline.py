"""The whole pipeline with the scripted oracle: emitted, certified servers, loadable RLVR data,
resume after kill -9 without duplicates, and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pyarrow.parquet as pq
import pytest
from mcp.client import Client

from astra.client import ScriptedModel
from astra.runs import JsonlLog
from astra.synthesis.environments import STAGES, funnel_problems, run_environment_pipeline, sample_qa_path
from astra.synthesis.environments._models import EmittedEnvironment
from astra.synthesis.environments.reward import compute_score

from .envs_gold import oracle_model

KEYS = ["Alice ran", "A car drives", "Take the capital"]


def _qa_subset(tmp_path: Path, keys: list[str]) -> Path:
    lines = [line for line in sample_qa_path().read_text().splitlines() if any(k in line for k in keys)]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stage_ids(run_dir: Path) -> dict[str, list[str]]:
    return {
        s: [d["id"] for d in JsonlLog(run_dir / f"{s}.jsonl").read_dicts()]
        for s in STAGES
        if (run_dir / f"{s}.jsonl").exists()
    }


def _counts(result) -> dict[str, tuple[int, int, int, int]]:
    return {s.stage: (s.inputs, s.outputs, s.dropped, s.failed) for s in result.funnel.stages}


def test_full_scripted_run_emits_certified_servers_and_rlvr_data(tmp_path, config):
    # the capital step's tool never verifies: that environment is dropped, the others certify
    wrong = json.dumps({"name": "reverse_upper", "description": "Reverse a string.", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "arguments": {"text": "Tokyo"}, "code": "def reverse_upper(text):\n    return text.upper()\n"})
    model = oracle_model({("synthesize", "reversed in upper case"): wrong})
    cfg = config.model_copy(update={"qa_path": _qa_subset(tmp_path, KEYS)})
    result = anyio.run(lambda: run_environment_pipeline(cfg, model=model, progress=False))

    assert funnel_problems(result.funnel) == []
    assert _counts(result) == {
        "qa": (3, 3, 0, 0), "decompose": (3, 3, 0, 0), "necessity": (3, 3, 0, 0), "verify": (3, 3, 0, 0),
        "synthesize": (8, 7, 1, 1),
        "merge": (4, 4, 0, 0),  # miles_to_km x2, travel_time x2, add_numbers + sum_numbers, capital_of
        "emit": (3, 2, 1, 0), "export": (2, 2, 0, 0),
    }
    assert {s.stage: s.drop_reasons for s in result.funnel.stages}["emit"] == {"missing_tool": 1}

    # the servers: real directories, in the mcpServers block, certified over stdio, in the registry
    assert len(result.server_dirs) == 2 and all((d / "server.py").is_file() for d in result.server_dirs)
    assert sorted(result.mcp_servers["mcpServers"]) == sorted(d.name for d in result.server_dirs)
    envs = [
        EmittedEnvironment.model_validate(o)
        for e in JsonlLog(cfg.run_dir / "emit.jsonl").read_dicts()
        for o in e["outputs"]
    ]
    assert all(e.certificate.ok and e.certificate.calls == 3 and e.registry for e in envs)
    alice = next(e for e in envs if "Alice" in e.question)
    # the merged adder serves the Alice sum and the car trip's sum: one implementation in both envs
    car = next(e for e in envs if "car" in e.question)
    assert {t.spec.name for t in alice.spec.tools} == {"miles_to_km", "add_numbers"}
    assert {t.spec.name for t in car.spec.tools} == {"travel_time_hours", "add_numbers"}
    from astra.registry import Registry

    with Registry.open(cfg.home) as registry:
        stored = {spec.id: location for spec, location in registry.list_environments()}
    assert stored == {e.spec.id: e.server_dir for e in envs}

    # the servers' own validator agrees with the certificate (interop with `astra env validate`)
    from astra.servers import validate_emitted

    report = anyio.run(lambda: validate_emitted(alice.server_dir))
    assert report.ok, report.failed

    # RLVR data: parquet loadable (pyarrow, and HF datasets where installed), rewards computable
    parquet = result.exports["verl_parquet"]
    assert {"verl_tool_config", "trl_env", "trl_dataset", "verifiers_env", "mcp_json", "vscode_mcp_json"} <= set(
        result.exports
    )
    rows = pq.read_table(parquet).to_pylist()
    assert len(rows) == 2 and {r["data_source"] for r in rows} == {"astra_env"}
    row = next(r for r in rows if r["extra_info"]["environment_id"] == alice.id)
    assert row["prompt"][-1] == {"role": "user", "content": alice.question}
    assert row["reward_model"]["style"] == "rule"
    truth = json.loads(row["reward_model"]["ground_truth"])
    assert [t["sub_answer"] for t in truth] == ["8.04672", "4.828032", "12.874752"]
    tools = json.loads(row["extra_info"]["tools"])
    # tool names are unique across the export: add_numbers exists in both environments
    exported = {t["id"]: t["tool"] for t in truth}
    assert {t["function"]["name"] for t in tools} == set(exported.values())
    assert set(exported.values()) == {"miles_to_km", alice.spec.name.replace("-", "_") + "__add_numbers"}
    assert row["extra_info"]["tool_selection"] == [t["function"]["name"] for t in tools]
    tools_kwargs = json.loads(row["extra_info"]["tools_kwargs"])  # an arrow.json field: its own tools only
    assert set(tools_kwargs) == set(row["extra_info"]["tool_selection"])
    assert tools_kwargs["miles_to_km"] == {"create_kwargs": {"ground_truth": row["reward_model"]["ground_truth"]}}
    samples = list(JsonlLog(result.exports["rl_samples"]).read_dicts())
    assert len(samples) == 2 and all(s["sub_qa"] for s in samples)
    mcp_json = json.loads(Path(result.exports["mcp_servers"]).read_text())
    assert set(mcp_json["mcpServers"]) == {alice.spec.name, car.spec.name}

    # replay the gold calls through the emitted server and score the transcript with verl's signature
    async def transcript() -> str:
        from astra.servers import stdio_parameters

        out = []
        async with Client(stdio_parameters(alice.server_dir)) as client:
            for v in alice.spec.verifiers:
                res = await client.call_tool(v.tool, v.arguments)
                text = "".join(c.text for c in res.content if c.type == "text")
                out.append(f"<tool_call>{json.dumps({'name': exported[v.id], 'arguments': v.arguments})}</tool_call>"
                           f"<tool_response>{text}</tool_response>")
        return "".join(out) + "The answer is 12.874752"

    solution = anyio.run(transcript)
    assert compute_score(row["data_source"], solution, row["reward_model"]["ground_truth"]) == 1.0
    # the same text in a training row's rollout without the adapter's record of calls: the policy wrote it
    assert compute_score(row["data_source"], solution, row["reward_model"]["ground_truth"], row["extra_info"]) == 0.0

    # a rerun does nothing new: no model call (an empty script fails loudly), same funnel, no duplicates
    again = anyio.run(lambda: run_environment_pipeline(cfg, model=ScriptedModel([]), progress=False))
    assert _counts(again) == _counts(result)
    for stage, ids in _stage_ids(cfg.run_dir).items():
        assert len(ids) == len(set(ids)), stage


def test_parquet_loads_with_hf_datasets(tmp_path, config):
    datasets = pytest.importorskip("datasets")
    cfg = config.model_copy(update={"qa_path": _qa_subset(tmp_path, ["A recipe"]), "save_to_registry": False})
    result = anyio.run(lambda: run_environment_pipeline(cfg, model=oracle_model(), progress=False))
    ds = datasets.load_dataset("parquet", data_files=str(result.exports["verl_parquet"]), split="train")
    assert ds.num_rows == 1
    assert ds[0]["reward_model"]["style"] == "rule" and ds[0]["extra_info"]["need_tools_kwargs"] is True


def test_a_gameable_environment_is_not_exported_and_the_funnel_says_why(tmp_path, config):
    # the car question states its own answer (4.5 hours): certified (solvable), but not hardened
    path = _qa_subset(tmp_path, ["A car drives"])
    path.write_text(path.read_text().replace("How many hours", "It takes 4.5 hours. How many hours"))
    cfg = config.model_copy(update={"qa_path": path, "save_to_registry": False})
    result = anyio.run(lambda: run_environment_pipeline(cfg, model=oracle_model(), progress=False))
    export = {s.stage: s for s in result.funnel.stages}["export"]
    assert (export.inputs, export.outputs, export.drop_reasons) == (1, 0, {"not_hardened_task_leak": 1})
    assert "verl_parquet" not in result.exports


def test_kill_9_mid_run_resumes_without_duplicates(tmp_path):
    qa = _qa_subset(tmp_path, KEYS)
    run_dir, home = tmp_path / "run", tmp_path / "home"
    script = Path(__file__).with_name("killable_run.py")
    # 3 decompositions + 3 necessity + 3 verdicts = 9 calls; block inside tool synthesis (8 calls)
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(qa), str(home), "12"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # the child blocks (never exits) once it prints this
        assert line.startswith("BLOCKED 12"), line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = _stage_ids(run_dir)
    assert len(before["verify"]) == 3 and 0 < len(before["synthesize"]) < 8 and "merge" not in before

    from astra.synthesis.environments import EnvironmentPipelineConfig

    config = EnvironmentPipelineConfig(run_dir=run_dir, qa_path=qa, home=home, concurrency=2)
    model = oracle_model()
    result = anyio.run(lambda: run_environment_pipeline(config, model=model, progress=False))
    assert model.calls == 8 - len(before["synthesize"])  # only the unfinished items asked the model again
    after = _stage_ids(run_dir)
    for stage, ids in after.items():
        assert len(ids) == len(set(ids)), (stage, Counter(ids).most_common(2))
        assert ids[: len(before.get(stage, []))] == before.get(stage, [])  # nothing lost or rewritten
    assert funnel_problems(result.funnel) == []
    assert [(s.stage, s.outputs) for s in result.funnel.stages][-2:] == [("emit", 3), ("export", 3)]


def test_cli_run_and_stage_verbs(tmp_path, config):
    from typer.testing import CliRunner

    from astra.cli import app
    from astra.client import register_script

    register_script("envs-oracle", lambda **_: oracle_model())
    cfg_path = tmp_path / "envs.json"
    cfg_path.write_text(json.dumps({"run_dir": "run", "qa_path": str(_qa_subset(tmp_path, ["A recipe"])),
                                    "model": "scripted:envs-oracle", "save_to_registry": False}))
    runner = CliRunner()
    qa = runner.invoke(app, ["envs", "qa", str(cfg_path), "--json", "-q"])
    assert qa.exit_code == 0, qa.output
    assert json.loads(qa.stdout)["counts"]["outputs"] == 1
    out = runner.invoke(app, ["envs", "run", str(cfg_path), "--json"])  # progress bars go to stderr
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["funnel_problems"] == [] and len(summary["server_dirs"]) == 1
    assert summary["run_dir"] == str(tmp_path / "run")  # relative paths resolve against the config
    assert Path(summary["exports"]["verl_parquet"]).is_file()
    assert list(summary["mcp_servers"]["mcpServers"]) == [Path(summary["server_dirs"][0]).name]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"run_dir": "run", "verify_threshold": 3}))
    res = runner.invoke(app, ["envs", "run", str(bad), "--json"])
    assert res.exit_code == 2 and "verify_threshold: Input should be less than or equal to 1" in res.output
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"run_dir": "run2", "qa_path": "nope.jsonl"}))
    res = runner.invoke(app, ["envs", "qa", str(missing)])
    assert res.exit_code == 2 and f"qa_path: {tmp_path / 'nope.jsonl'}: no such file" in " ".join(res.output.split())


def test_config_files_resolve_paths_against_their_folder(tmp_path):
    from astra.synthesis.environments import EnvironmentPipelineConfig

    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"run_dir": "runs/one", "qa_path": "qa.jsonl", "model": "scripted:x"}))
    cfg = EnvironmentPipelineConfig.load(folder / "a.json")
    assert cfg.run_dir == folder / "runs" / "one" and cfg.qa_path == folder / "qa.jsonl"
    assert cfg.servers_dir == folder / "runs" / "one" / "servers"
    pytest.importorskip("yaml")
    (folder / "b.yaml").write_text("run_dir: r\nqa_path: /abs/qa.jsonl\nverify_threshold: 0.5\n")
    cfg = EnvironmentPipelineConfig.load(folder / "b.yaml")
    assert cfg.run_dir == folder / "r" and cfg.qa_path == Path("/abs/qa.jsonl") and cfg.verify_threshold == 0.5
    (folder / "c.json").write_text(json.dumps({"run_dir": "r", "unknown_option": 1}))
    with pytest.raises(ValueError, match="unknown_option"):
        EnvironmentPipelineConfig.load(folder / "c.json")


def test_cli_init_writes_a_runnable_config(tmp_path):
    from typer.testing import CliRunner

    from astra.cli import app
    from astra.synthesis.environments import EnvironmentPipelineConfig

    path = tmp_path / "envs.json"
    res = CliRunner().invoke(app, ["envs", "init", str(path), "--json"])
    assert res.exit_code == 0, res.output
    cfg = EnvironmentPipelineConfig.load(path)
    assert cfg.qa_path == sample_qa_path() and cfg.run_dir == tmp_path / "envs-run" and cfg.model == "local:smollm2"
    again = CliRunner().invoke(app, ["envs", "init", str(path)])
    assert again.exit_code == 2 and "exists" in again.output
