"""astra.synthesis.trajectories — tool graph -> chains -> tasks -> rollouts -> rewards -> SFT data.

Entry points: :func:`run_trajectory_pipeline` (all stages, resumable, returns the funnel and
the export paths), :class:`TrajectoryPipeline` (one stage at a time, as the CLI verbs do),
:func:`demo_config` (an offline run on bundled servers); :class:`SimulatedServer` (a server's
tools simulated by a model, as an MCP server). SFT exports: :func:`write_exports` (profiles,
:class:`ExportFormat`), :func:`load_template` / :class:`ChatTemplate` (real chat templates),
:func:`gguf_tokenizer` / :func:`token_samples` (token-faithful records). Building blocks
(candidate generation, walks, rewards) live in the private modules that benchmarks and tests import.
"""

from astra.synthesis.trajectories._config import (
    ChainOptions,
    ConfigError,
    GraphOptions,
    JudgeMode,
    RewardOptions,
    RolloutOptions,
    TaskOptions,
    TrajectoryConfig,
    VerifyOptions,
)
from astra.synthesis.trajectories._export import ExportFormat, write_exports
from astra.synthesis.trajectories._pipeline import (
    STAGES,
    VERBS,
    PipelineError,
    PipelineResult,
    TrajectoryPipeline,
    demo_config,
    run_trajectory_pipeline,
)
from astra.synthesis.trajectories._simulate import SimulatedServer
from astra.synthesis.trajectories._templates import ChatTemplate, load_template
from astra.synthesis.trajectories._tokens import gguf_tokenizer, token_samples

__all__ = [
    "ChainOptions",
    "ConfigError",
    "GraphOptions",
    "JudgeMode",
    "PipelineError",
    "PipelineResult",
    "RewardOptions",
    "RolloutOptions",
    "STAGES",
    "SimulatedServer",
    "TaskOptions",
    "TrajectoryConfig",
    "TrajectoryPipeline",
    "VERBS",
    "VerifyOptions",
    "demo_config",
    "run_trajectory_pipeline",
    "write_exports",
    "ExportFormat",
    "ChatTemplate",
    "load_template",
    "gguf_tokenizer",
    "token_samples",
]
