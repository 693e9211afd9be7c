"""Renamed options (one vocabulary: a *step* is an executed tool call, a model *request* one call to the
model, a decomposition *hop* one sub-question; the model timeout is ``model_timeout_s``): the old
names are still accepted, with a deprecation message, and mean the same."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from astra.cli import app
from astra.client._runner import EpisodeConfig
from astra.synthesis.environments import EnvironmentPipelineConfig
from astra.synthesis.trajectories import TrajectoryConfig


def test_trajectory_config_old_names(tmp_path) -> None:
    with pytest.warns(FutureWarning, match="trajectory config: llm_timeout_s is deprecated, use model_timeout_s"):
        config = TrajectoryConfig.model_validate(
            {"out_dir": str(tmp_path), "servers": ["s"], "llm_timeout_s": 12, "rollout": {"max_steps": 3}})
    assert config.model_timeout_s == 12 and config.rollout.max_requests == 3
    with pytest.warns(FutureWarning, match="trajectory config: rollout: max_steps is deprecated, use max_requests"):
        TrajectoryConfig.model_validate({"out_dir": str(tmp_path), "servers": ["s"], "rollout": {"max_steps": 3}})
    with pytest.raises(ValidationError, match="same option"):
        TrajectoryConfig.model_validate(
            {"out_dir": str(tmp_path), "servers": ["s"], "llm_timeout_s": 1, "model_timeout_s": 2})


def test_environment_config_steps_are_hops(tmp_path) -> None:
    with pytest.warns(FutureWarning, match="environment config: max_steps is deprecated, use max_hops"):
        config = EnvironmentPipelineConfig.model_validate({"run_dir": str(tmp_path), "min_steps": 2, "max_steps": 3})
    assert (config.min_hops, config.max_hops) == (2, 3)


def test_episode_config_old_name() -> None:
    with pytest.warns(FutureWarning, match="rollout config: max_steps is deprecated, use max_requests"):
        assert EpisodeConfig(model_spec="scripted:x", max_steps=5).max_requests == 5  # type: ignore[call-arg]


def test_cli_old_option_names_warn_and_work() -> None:
    out = CliRunner().invoke(app, ["judge", "calibrate", "--judge", "rules", "--timeout", "5", "--json"])
    assert out.exit_code == 0, out.output
    assert "--timeout is deprecated, use --model-timeout" in out.stderr
    shown = CliRunner().invoke(app, ["rollout", "--help"]).stdout
    assert "--max-requests" in shown and "--max-steps" not in shown  # accepted, no longer advertised
