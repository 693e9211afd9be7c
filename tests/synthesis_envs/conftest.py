from __future__ import annotations

from pathlib import Path

import pytest

from astra.synthesis.environments import EnvironmentPipelineConfig, sample_qa_path


@pytest.fixture
def config(tmp_path: Path) -> EnvironmentPipelineConfig:
    return EnvironmentPipelineConfig(
        run_dir=tmp_path / "run",
        qa_path=sample_qa_path(),
        model="scripted:envs-oracle",
        home=tmp_path / "home",
        concurrency=2,
        sandbox_timeout_s=3.0,
    )
