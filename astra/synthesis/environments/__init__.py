"""astra.synthesis.environments — QA -> verified tool environments as MCP servers -> RLVR data.

Stages (each resumable, each a verb of ``astra envs``): qa, decompose, necessity, verify,
synthesize, merge, emit, export. :func:`run_environment_pipeline` runs them all and returns a
:class:`PipelineResult` (funnel, emitted server dirs, ``mcpServers`` block, export paths).
The process reward ships in :mod:`astra.synthesis.environments.reward` (verl's
``compute_score`` signature and a typed :func:`score_trajectory`).
"""

from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._models import STAGES, EnvironmentPipelineConfig, PipelineResult
from astra.synthesis.environments._pipeline import (
    demo_config,
    funnel_problems,
    run_environment_pipeline,
    run_stage,
    sample_qa_path,
)

__all__ = [
    "STAGES",
    "EnvironmentPipelineConfig",
    "PipelineContext",
    "PipelineResult",
    "demo_config",
    "funnel_problems",
    "run_environment_pipeline",
    "run_stage",
    "sample_qa_path",
]
