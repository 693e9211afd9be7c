"""Stage 3: chain verification as a filter — LLM vote and back-translation (chain -> query -> chain)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from astra.client import Model
from astra.records import ToolChain, ToolSpec
from astra.synthesis._llm import LLMOutputError, ask_json
from astra.synthesis._stage import Outcome
from astra.synthesis.trajectories._config import VerifyOptions

VOTE_VERSION = "chain-vote-v1"
QUERY_VERSION = "chain-query-v1"
RECOVER_VERSION = "chain-recover-v1"


class Vote(BaseModel):
    valid: bool
    reason: str = ""


class BackQuery(BaseModel):
    query: str = Field(min_length=8)


class Recovered(BaseModel):
    tools: list[str]


def describe_tools(names: Sequence[str], tools: dict[str, ToolSpec], *, schema: bool = True) -> str:
    lines = []
    for n in names:
        t = tools[n]
        entry: dict[str, Any] = {"name": n, "description": (t.description or "")[:300]}
        if schema:
            entry["parameters"] = (t.input_schema or {}).get("properties", {})
        lines.append(json.dumps(entry, ensure_ascii=False)[:1200])
    return "\n".join(lines)


def order_similarity(expected: Sequence[str], got: Sequence[str]) -> float:
    """Longest common subsequence over the longer length: 1.0 only for the same tools in the same order."""
    if not expected and not got:
        return 1.0
    m, n = len(expected), len(got)
    table = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m):
        for j in range(n):
            table[i + 1][j + 1] = table[i][j] + 1 if expected[i] == got[j] else max(table[i][j + 1], table[i + 1][j])
    return table[m][n] / max(m, n)


async def verify_chain(
    chain: ToolChain, tools: dict[str, ToolSpec], model: Model, opts: VerifyOptions, *, seed: int = 0
) -> Outcome:
    """Keep the chain (with its verification record) or drop it with the reason."""
    if chain.kind == "toolset" or not opts.enabled:
        return Outcome.keep(
            chain.model_copy(update={"verification": {"skipped": chain.kind if opts.enabled else "disabled"}})
        )
    names = [c.tool for c in chain.calls]
    audit: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    steps = "\n".join(f"{i + 1}. {c.tool} bindings={c.bindings}" for i, c in enumerate(chain.calls))
    try:
        votes = []
        for _ in range(opts.votes):
            vote, a = await ask_json(
                model,
                f"Tools:\n{describe_tools(names, tools)}\n\nProposed workflow (in order):\n{steps}\n\n"
                "Is this a coherent workflow a real user would run, where each step can use what earlier steps "
                'returned? Reply as {"valid": true or false, "reason": "..."}',
                Vote, prompt_version=VOTE_VERSION,
            )
            audit += a
            votes.append(vote)
        record["votes"] = [v.model_dump() for v in votes]
        if sum(v.valid for v in votes) * 2 <= len(votes):
            return Outcome.drop(f"vote_rejected: {votes[0].reason[:120]}", audit=audit)
        if opts.back_translation:
            query, a = await ask_json(
                model,
                f"Tools:\n{describe_tools(names, tools)}\n\nWrite one realistic user request that needs exactly "
                f"these tools in this order: {' -> '.join(names)}. Do not name the tools. "
                'Reply as {"query": "..."}',
                BackQuery, prompt_version=QUERY_VERSION,
            )
            audit += a
            offered = _offer(names, tools, opts.distractors, seed=seed, chain_id=chain.id)
            recovered, a = await ask_json(
                model,
                f"Tools:\n{describe_tools(offered, tools, schema=False)}\n\nUser request: {query.query}\n\n"
                'Which tools, in which order, solve it? Reply as {"tools": ["server/tool", ...]} using exact names.',
                Recovered, prompt_version=RECOVER_VERSION,
            )
            audit += a
            similarity = order_similarity(names, recovered.tools)
            record["back_translation"] = {"query": query.query, "offered": offered, "recovered": recovered.tools,
                                          "similarity": round(similarity, 4)}
            if similarity < opts.min_back_translation:
                return Outcome.drop(f"back_translation_mismatch: similarity {similarity:.2f}", audit=audit)
    except LLMOutputError as exc:
        return Outcome.drop(f"judge_failed: {exc.reason[:160]}", failed=True, audit=audit + exc.audit)
    return Outcome.keep(chain.model_copy(update={"verification": record}), audit=audit)


def _offer(names: Sequence[str], tools: dict[str, ToolSpec], k: int, *, seed: int, chain_id: str) -> list[str]:
    """The chain's tools plus ``k`` distractors from the same servers, shuffled (seeded per chain)."""
    rng = random.Random(f"{seed}:{chain_id}")
    servers = {n.split("/", 1)[0] for n in names}
    pool = sorted(n for n in tools if n.split("/", 1)[0] in servers and n not in names)
    offered = list(names) + rng.sample(pool, min(k, len(pool)))
    rng.shuffle(offered)
    return offered
