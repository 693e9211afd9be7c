"""Hardening certificate: an environment is exported for RL only when it cannot be gamed.

Checks, each through the live server (one episode over the pooled connection) and the one
process reward (:mod:`astra.servers._rewards`):

- ``oracle``: replaying the reference calls in order scores 1.0;
- ``noop``: an episode without calls scores 0;
- ``answer_without_tools``: a reply that states the final answer and every sub-answer but calls
  nothing scores 0;
- ``surface``: the tool surface is the environment's tools and nothing else: ``tools/list``
  names exactly the spec's tools (no verifier, reward or control method is callable), the
  server lists no resources or prompts, and no tool name, description or input schema states
  the final answer;
- ``task_leak``: the task text does not state the final answer;
- ``output_leak``: no tool output other than the terminal call's (the call that answers the
  last hop) holds the final answer.

A statement of the answer in text is a whole-token match of its normalised form (``354.0`` is
found in ``worth 354.0 in total``, ``1`` is not found in ``10``); answers shorter than two
characters are only checked in tool outputs (by the leaf rule), where tokens are exact.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

from pydantic import BaseModel, Field

from astra.servers import answer_in_result, answers_match, compute_score, score_calls
from astra.servers._rewards import normalize_text
from astra.trainers._pool import EpisodePool, Rollout
from astra.trainers.export import ExportEnvironment, ground_truth

__all__ = ["HardeningCertificate", "HardeningCheck", "harden", "states_answer"]


class HardeningCheck(enum.StrEnum):
    ORACLE = "oracle"
    NOOP = "noop"
    ANSWER_WITHOUT_TOOLS = "answer_without_tools"
    SURFACE = "surface"
    TASK_LEAK = "task_leak"
    OUTPUT_LEAK = "output_leak"


class HardeningCertificate(BaseModel):
    environment_id: str
    passed: list[HardeningCheck] = Field(default_factory=list)
    failures: dict[HardeningCheck, str] = Field(default_factory=dict)
    oracle_reward: float | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and len(self.passed) == len(HardeningCheck)

    def reason(self) -> str:
        """One line for the funnel (grouped by its head, ``not_hardened_<check>``): the first failed check and why."""
        if self.ok:
            return ""
        check, why = next(iter(self.failures.items())) if self.failures else (None, "not checked")
        return f"not_hardened_{check.value if check else 'unchecked'}: {why}"[:400]


def states_answer(text: str, answer: Any) -> bool:
    """Whether ``text`` states ``answer`` as a whole token (normalised; see the module docstring)."""
    if answer is None or isinstance(answer, dict | list):
        return False
    wanted = normalize_text(str(answer))
    if len(wanted) < 2:
        return False
    haystack = normalize_text(text)
    if re.search(rf"(?<![\w.]){re.escape(wanted)}(?![\w]|\.\d)", haystack):
        return True
    # a number written another way (354 vs 354.0): compare every number token
    if answers_match(wanted, wanted) and re.fullmatch(r"[-+]?\d[\d,]*(?:\.\d+)?", wanted):
        return any(
            answers_match(tok, wanted)
            for tok in re.findall(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?![\w]|\.\d)", haystack)
        )
    return False


async def harden(env: ExportEnvironment, pool: EpisodePool) -> HardeningCertificate:
    """Run every check (see the module docstring) against the environment's live server in ``pool``."""
    cert = HardeningCertificate(environment_id=env.spec.id)
    names = {(env.name, v.tool): v.tool for v in env.spec.verifiers if v.tool}  # the server's own names
    truth = ground_truth(env, names)
    final = env.answer

    def verdict(check: HardeningCheck, failure: str | None) -> None:
        if failure:
            cert.failures[check] = failure
        else:
            cert.passed.append(check)

    # oracle replay, and the outputs it produced
    rollout: Rollout = pool.rollout(truth)
    outputs: list[tuple[str, Any]] = []
    try:
        for v in env.spec.verifiers:
            if not v.tool:
                continue
            outcome = await rollout.call(env.name, v.tool, dict(v.arguments))
            outputs.append((v.id, outcome.result if not outcome.is_error else None))
        score = rollout.reward()
    finally:
        await rollout.close()
    cert.oracle_reward = score.reward if score else None
    verdict(
        HardeningCheck.ORACLE,
        None
        if score and score.reward == 1.0
        else f"the reference calls score {score.reward if score else None} "
        f"(solved {score.solved_ids if score else []})",
    )

    noop = score_calls([], truth).reward if truth else None
    verdict(HardeningCheck.NOOP, None if noop == 0.0 else f"an episode without calls scores {noop}")

    spoken = " ".join(str(t["sub_answer"]) for t in truth) + f" The answer is {final}."
    try:
        without = compute_score("astra_env", spoken, json.dumps(truth))
    except ValueError as exc:
        without = None
        verdict(HardeningCheck.ANSWER_WITHOUT_TOOLS, f"no reward can be computed: {exc}")
    else:
        verdict(
            HardeningCheck.ANSWER_WITHOUT_TOOLS, None if without == 0.0 else f"answering without tools scores {without}"
        )

    verdict(HardeningCheck.SURFACE, await _surface_problem(env, pool, final))
    verdict(
        HardeningCheck.TASK_LEAK,
        f"the task text states the final answer {final!r}"
        if final is not None and states_answer(env.question, final)
        else None,
    )

    terminal = {
        v.id for v in env.spec.verifiers if v.tool and final is not None and answers_match(v.expected_answer, final)
    }
    if not terminal and outputs:
        terminal = {outputs[-1][0]}
    leaks = [
        vid
        for vid, value in outputs
        if vid not in terminal and value is not None and final is not None and answer_in_result(value, final)
    ]
    verdict(
        HardeningCheck.OUTPUT_LEAK,
        f"non-terminal outputs of {', '.join(leaks)} hold the final answer" if leaks else None,
    )
    return cert


async def _surface_problem(env: ExportEnvironment, pool: EpisodePool, final: Any) -> str | None:
    async def inspect_surface() -> str | None:
        conns = pool.connections
        listed = {b.tool.name: b.tool for b in conns.tools if b.server == env.name}
        spec_tools = {t.spec.name for t in env.spec.tools}
        if set(listed) != spec_tools:
            extra, missing = sorted(set(listed) - spec_tools), sorted(spec_tools - set(listed))
            return f"tools/list differs from the spec (extra {extra}, missing {missing})"
        client = conns._servers[env.name].client
        for what, lister in (("resources", "list_resources"), ("prompts", "list_prompts")):
            try:
                page = await getattr(client, lister)()
            except Exception:  # noqa: BLE001 - a server without the capability lists nothing
                continue
            items = getattr(page, what, None) or []
            if items:
                return f"the server lists {what} ({len(items)}): only tools may be reachable"
        for name, tool in listed.items():
            text = " ".join([name, tool.description or "", json.dumps(tool.input_schema)])
            if final is not None and states_answer(text, final):
                return f"tool {name!r} states the final answer in its name, description or schema"
        return None

    return await pool.arun(inspect_surface())
