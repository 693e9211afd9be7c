"""astra.synthesis.trajectories — tool graph -> chains -> tasks -> rollouts -> rewards -> SFT data.

Entry points: :func:`run_trajectory_pipeline` (all stages, resumable, returns the funnel and
the export paths), :class:`TrajectoryPipeline` (one stage at a time, as the CLI verbs do),
:func:`demo_config` (an offline run on bundled servers). Building blocks are public for
benchmarks and tests: :func:`generate_candidates` (schema candidates through an inverted
index), :func:`sample_walks` / :func:`sample_toolsets`, :class:`SimulatedServer`. SFT exports:
:func:`write_exports` (profiles, :class:`ExportFormat`), :func:`load_template` / :class:`ChatTemplate`
(real chat templates), :func:`gguf_tokenizer` / :func:`token_samples` (token-faithful records).
"""

from astra.synthesis.trajectories._chains import Coverage, coverage, sample_toolsets, sample_walks
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
from astra.synthesis.trajectories._export import ExportFormat, SFTSample, to_sharegpt, write_exports
from astra.synthesis.trajectories._graph import (
    Candidate,
    batch_candidates,
    generate_candidates,
    server_pair_count,
    tokens,
)
from astra.synthesis.trajectories._pipeline import (
    STAGES,
    VERBS,
    PipelineError,
    PipelineResult,
    TrajectoryPipeline,
    demo_config,
    run_trajectory_pipeline,
)
from astra.synthesis.trajectories._reward import (
    DIMENSIONS,
    OVERALL_KEY,
    original_keys,
    reward_trajectory,
    rule_scores,
)
from astra.synthesis.trajectories._simulate import SimulatedServer
from astra.synthesis.trajectories._templates import ChatTemplate, load_template
from astra.synthesis.trajectories._tokens import TokenSample, gguf_tokenizer, token_samples

__all__ = [
    "Candidate",
    "ChainOptions",
    "ConfigError",
    "Coverage",
    "DIMENSIONS",
    "GraphOptions",
    "JudgeMode",
    "OVERALL_KEY",
    "PipelineError",
    "PipelineResult",
    "RewardOptions",
    "RolloutOptions",
    "SFTSample",
    "STAGES",
    "SimulatedServer",
    "TaskOptions",
    "TrajectoryConfig",
    "TrajectoryPipeline",
    "VERBS",
    "VerifyOptions",
    "batch_candidates",
    "coverage",
    "demo_config",
    "generate_candidates",
    "original_keys",
    "reward_trajectory",
    "rule_scores",
    "run_trajectory_pipeline",
    "sample_toolsets",
    "sample_walks",
    "server_pair_count",
    "to_sharegpt",
    "tokens",
    "write_exports",
    "ExportFormat",
    "ChatTemplate",
    "load_template",
    "TokenSample",
    "gguf_tokenizer",
    "token_samples",
]
