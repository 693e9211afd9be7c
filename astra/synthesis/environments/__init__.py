"""astra.synthesis.environments — QA -> verified tool environments as MCP servers -> RLVR data.

Stages (each resumable, each a verb of ``astra envs``): qa, decompose, necessity, verify,
synthesize, merge, emit, export. :func:`run_environment_pipeline` runs them all and returns a
:class:`PipelineResult` (funnel, emitted server dirs, ``mcpServers`` block, export paths).
The process reward ships in :mod:`astra.synthesis.environments.reward` (verl's
``compute_score`` signature and a typed :func:`score_trajectory`).
"""

from astra.synthesis.environments._answers import answers_match, normalize_text, parse_tool_value
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._decompose import hop_levels, structural_problems
from astra.synthesis.environments._emit import build_environment, certify, mcp_servers_block
from astra.synthesis.environments._merge import cluster_tools, intent_similarity
from astra.synthesis.environments._models import (
    STAGES,
    Certificate,
    EmittedEnvironment,
    EnvironmentPipelineConfig,
    MergedTool,
    PipelineResult,
    ReferenceCall,
    SynthAttempt,
    SynthesizedTool,
)
from astra.synthesis.environments._necessity import necessity_violations
from astra.synthesis.environments._pipeline import (
    demo_config,
    funnel_problems,
    run_environment_pipeline,
    run_stage,
    sample_qa_path,
)
from astra.synthesis.environments._qa import read_qa_jsonl
from astra.synthesis.environments._synthesize import static_problems
from astra.synthesis.environments._verify import rule_scores
from astra.synthesis.environments.reward import ProcessReward, compute_score, f1_reward, score_trajectory

__all__ = [
    "STAGES",
    "Certificate",
    "EmittedEnvironment",
    "EnvironmentPipelineConfig",
    "MergedTool",
    "PipelineContext",
    "PipelineResult",
    "ProcessReward",
    "ReferenceCall",
    "SynthAttempt",
    "SynthesizedTool",
    "answers_match",
    "build_environment",
    "certify",
    "cluster_tools",
    "compute_score",
    "demo_config",
    "f1_reward",
    "funnel_problems",
    "hop_levels",
    "intent_similarity",
    "mcp_servers_block",
    "necessity_violations",
    "normalize_text",
    "parse_tool_value",
    "read_qa_jsonl",
    "rule_scores",
    "run_environment_pipeline",
    "run_stage",
    "sample_qa_path",
    "score_trajectory",
    "static_problems",
    "structural_problems",
]
