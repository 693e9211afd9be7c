"""The process reward of synthesised environments, importable by RL frameworks by file path.

The definition and its only implementation live in :mod:`astra.servers._rewards` (one
module for certification, ``astra env score``, the verl reward and every trainer adapter);
this file re-exports it so verl can load it with
``custom_reward_function.path=<this file> custom_reward_function.name=compute_score``.
"""

from astra.servers._rewards import (
    ProcessReward,
    SubQuestion,
    ToolCallRecord,
    calls_from_messages,
    calls_from_text,
    compute_score,
    f1_reward,
    parse_ground_truth,
    score_calls,
    score_trajectory,
    sub_questions,
)

__all__ = [
    "ProcessReward",
    "SubQuestion",
    "ToolCallRecord",
    "calls_from_messages",
    "calls_from_text",
    "compute_score",
    "f1_reward",
    "parse_ground_truth",
    "score_calls",
    "score_trajectory",
    "sub_questions",
]
