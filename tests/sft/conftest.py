"""The scripted 100-sample run (once per session), its SFT samples and the real chat templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from astra.records import Trajectory
from astra.synthesis.trajectories._export import SFTSample, answer_missing
from astra.synthesis.trajectories._templates import MATRIX_TEMPLATES, ChatTemplate, load_template, templates_dir

from ._run import run


@pytest.fixture(scope="session")
def trajectories(tmp_path_factory: pytest.TempPathFactory) -> list[Trajectory]:
    return run(tmp_path_factory.mktemp("sft_run"))


def as_sample(traj: Trajectory) -> SFTSample:
    return SFTSample(id=traj.id, task_id=traj.task_id, model=traj.model, tools=traj.tools, reward=1.0, dimensions={},
                     messages=[m.to_openai() for m in traj.messages])


@pytest.fixture(scope="session")
def samples(trajectories: list[Trajectory]) -> list[SFTSample]:
    """What the export stage keeps: the trajectories that end with an answer."""
    return [as_sample(t) for t in trajectories if answer_missing(t) is None]


@pytest.fixture(scope="session")
def templates() -> dict[str, ChatTemplate]:
    if not (templates_dir() / MATRIX_TEMPLATES["Qwen3"]).exists():
        pytest.fail(f"llama.cpp's chat templates are not in {templates_dir()}: run scripts/setup.sh")
    return {name: load_template(name) for name in MATRIX_TEMPLATES}


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from astra.client._local import smollm2_path

    return smollm2_path()
