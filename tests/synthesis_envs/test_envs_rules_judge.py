"""Necessity and verification by rules (``judge: rules``, the embedded model's setting): no model call
for either, every record says who judged, and the sandbox and certification still decide what is kept."""

from __future__ import annotations

import anyio

from astra.runs import JsonlLog
from astra.synthesis.environments import run_environment_pipeline, sample_qa_path
from astra.synthesis.trajectories._config import JudgeMode

from .envs_gold import oracle_model


def test_rules_judge_is_labelled_and_still_certifies(tmp_path, config):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(next(line for line in sample_qa_path().read_text().splitlines() if "Alice ran" in line) + "\n")
    cfg = config.model_copy(update={"qa_path": qa, "judge": JudgeMode.RULES})
    result = anyio.run(lambda: run_environment_pipeline(cfg, model=oracle_model({}), progress=False))

    for stage in ("necessity", "verify"):
        entries = JsonlLog(cfg.run_dir / f"{stage}.jsonl").read_dicts()
        assert entries and all(not e["audit"] for e in entries), f"{stage} asked the model"
    decompositions = [o for e in JsonlLog(cfg.run_dir / "verify.jsonl").read_dicts() for o in e["outputs"]]
    assert decompositions and all(d["judge"] == "rules" for d in decompositions)
    # the 5- and 3-mile conversions and their sum are not stated in the question: each needs a tool
    assert all(s["needs_tool"] and s["reason"].startswith("rules:") for d in decompositions for s in d["steps"])
    assert all(d["scores"]["score"] >= cfg.verify_threshold for d in decompositions)
    assert len(result.server_dirs) == 1
