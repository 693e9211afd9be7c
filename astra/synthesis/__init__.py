"""astra.synthesis — the two pipelines as resumable stages.

- :mod:`astra.synthesis.trajectories`: tool graph -> chains -> tasks -> rollouts -> rewards -> SFT export.
- :mod:`astra.synthesis.environments`: QA -> decomposition -> tools -> MCP environments -> RLVR export.
"""

from astra.synthesis._llm import LLMOutputError, ask_json
from astra.synthesis._stage import Funnel, Outcome, Stage, StageCounts, StageEntry

__all__ = ["Funnel", "LLMOutputError", "Outcome", "Stage", "StageCounts", "StageEntry", "ask_json"]
