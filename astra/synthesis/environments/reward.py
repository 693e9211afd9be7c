"""The process reward of synthesised environments (ASTRA recipe), importable by RL frameworks.

recall r = solved sub-questions / all sub-questions, precision p = solved / tool calls,
reward = F1 = 2pr / (p + r), 0 when either is 0. A sub-question is solved when a tool call
returned its sub-answer (normalised comparison, :func:`answers_match`); each call solves at
most one sub-question (a maximum bipartite matching, so repeated answers are not double
counted).

Two entry points:
- :func:`score_trajectory` over an ASTRA :class:`~astra.records.Trajectory` (typed);
- :func:`compute_score` with verl's custom reward signature
  ``compute_score(data_source, solution_str, ground_truth, extra_info=None)``: the solution
  text holds ``<tool_call>`` / ``<tool_response>`` blocks (Hermes format, as verl's tool agent
  loop renders them). Use it with ``custom_reward_function.path=<this file>``
  ``custom_reward_function.name=compute_score``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import networkx as nx
from pydantic import BaseModel

from astra.records import Trajectory
from astra.servers import process_reward
from astra.synthesis.environments._answers import answers_match, parse_tool_value

__all__ = ["ProcessReward", "compute_score", "f1_reward", "parse_ground_truth", "score_results", "score_trajectory"]

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_TOOL_RESPONSE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)


class ProcessReward(BaseModel):
    solved: int
    total: int
    tool_calls: int
    recall: float
    precision: float
    reward: float
    solved_ids: list[str] = []


def f1_reward(solved: int, total: int, tool_calls: int) -> tuple[float, float, float]:
    """(recall, precision, F1) of ``solved`` sub-questions out of ``total`` with ``tool_calls`` calls."""
    reward = process_reward(solved, total, tool_calls)  # the one definition (astra.servers); validates counts
    recall = solved / total if total else 0.0
    precision = min(1.0, solved / tool_calls) if tool_calls else 0.0
    return recall, precision, reward


def parse_ground_truth(ground_truth: Any) -> list[dict[str, Any]]:
    """Sub-question ground truth as a list of ``{id?, sub_question, sub_answer, tool?}``.

    Accepts the list itself, a JSON string of it, or a dict with a ``sub_qa`` list (what our
    parquet stores). Anything else is a ValueError: a malformed ground truth is never scored.
    """
    value = ground_truth
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict) and "sub_qa" in value:
        value = value["sub_qa"]
    if hasattr(value, "tolist"):  # numpy arrays out of a parquet reader
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, dict) and "sub_answer" in v for v in value):
        raise ValueError("ground truth must be a list of {sub_question, sub_answer} objects")
    return value


def score_results(results: Sequence[Any], sub_qa: Sequence[dict[str, Any]], tool_calls: int | None = None) -> ProcessReward:
    """Score tool results (one per call, in call order) against the sub-question ground truth."""
    graph = nx.Graph()
    calls = [("call", i) for i in range(len(results))]
    subs = [("sub", j) for j in range(len(sub_qa))]
    graph.add_nodes_from(calls, bipartite=0)
    graph.add_nodes_from(subs, bipartite=1)
    for i, result in enumerate(results):
        value = parse_tool_value(result)
        for j, qa in enumerate(sub_qa):
            if answers_match(value, qa["sub_answer"]):
                graph.add_edge(("call", i), ("sub", j))
    matching = nx.bipartite.maximum_matching(graph, top_nodes=calls) if graph.number_of_edges() else {}
    solved = sorted(node[1] for node in matching if node[0] == "sub")
    n_calls = len(results) if tool_calls is None else max(tool_calls, len(results))
    recall, precision, reward = f1_reward(len(solved), len(sub_qa), n_calls)
    return ProcessReward(
        solved=len(solved),
        total=len(sub_qa),
        tool_calls=n_calls,
        recall=recall,
        precision=precision,
        reward=reward,
        solved_ids=[str(sub_qa[j].get("id", j)) for j in solved],
    )


def score_trajectory(trajectory: Trajectory, sub_qa: Sequence[dict[str, Any]]) -> ProcessReward:
    """Process reward of an episode: failed calls count as calls but solve nothing."""
    results = [None if step.is_error else step.result for step in trajectory.steps]
    return score_results(results, sub_qa, tool_calls=len(trajectory.steps))


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None) -> float:
    """verl custom reward: F1 of sub-question recall and tool-call precision over the response text."""
    sub_qa = parse_ground_truth(ground_truth)
    responses = [r.strip() for r in _TOOL_RESPONSE.findall(solution_str or "")]
    n_calls = len(_TOOL_CALL.findall(solution_str or ""))
    return score_results(responses, sub_qa, tool_calls=max(n_calls, len(responses))).reward
