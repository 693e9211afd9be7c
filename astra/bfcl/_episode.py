"""One BFCL multi-turn entry driven through our MCP servers, the way BFCL's own FC loop drives it.

The loop is the harness's one agent loop (``astra.client.play``) under :class:`BfclPolicy`, BFCL's
rules (``bfcl_eval.model_handler.base_handler.BaseHandler.inference_multi_turn_FC``): per turn the
user message is appended (at a ``missed_function`` turn the held-out functions are added to the
tool list and the user turn is BFCL's "I have updated some more functions..." prompt); then the
model is asked again and again; each reply with tool calls (BFCL's *step*) is decoded into BFCL's
python-call strings and executed in order; a reply without tool calls, or one whose arguments do
not decode, ends the turn; more than ``MAX_STEPS_PER_TURN`` such replies in a turn force-quit the
whole entry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from astra.bfcl._calls import format_call
from astra.bfcl._data import ADDED_FUNCTIONS_PROMPT, MAX_STEPS_PER_TURN, BfclEntry
from astra.bfcl._servers import BfclEpisodeServers
from astra.client import (
    AfterReply,
    Connections,
    EpisodeState,
    EpisodeTurn,
    LoopPolicy,
    Model,
    ModelError,
    ModelResponse,
    ModelSettings,
    run_episode,
)
from astra.records import ChatMessage, Step, TerminationReason, ToolCall, ToolErrorKind, Usage


class BfclEpisode(BaseModel):
    """What the model did on one entry: BFCL-decoded calls per turn, and the transcript."""

    entry_id: str
    decoded: list[list[list[str]]] = Field(default_factory=list, description="per turn, per step: python-call strings")
    messages: list[ChatMessage] = Field(default_factory=list)
    steps: int = 0
    tool_errors: int = 0
    force_quit: bool = False
    model_error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0


def _decode_arguments(raw: str) -> dict[str, Any]:
    args = json.loads(raw or "{}")
    if not isinstance(args, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
    return args


class BfclPolicy(LoopPolicy):
    """BFCL's rules for the one agent loop (``astra.client._loop.play``).

    - turns: the entry's user turns; at a ``missed_function`` turn the held-out functions
      are revealed and the user turn is BFCL's :data:`ADDED_FUNCTIONS_PROMPT`;
    - a reply's calls are all decoded first: one that does not decode refuses them all (nothing
      runs) and ends the turn; decoded replies are kept in BFCL's python-call strings
      (:attr:`decoded`, per turn, per tool-call reply);
    - calls run one at a time, in order, held-out functions too (BFCL only hides their docs),
      without schema checks or environment episodes (each entry has fresh servers);
    - no episode-wide request limit; more than ``max_steps_per_turn`` tool-call replies in one
      turn force-quit the entry (termination ``max_steps``); a reply without tool calls ends
      the turn, whatever its stop reason.
    """

    parallel_calls = False
    opens_episodes = False

    def __init__(self, entry: BfclEntry, tool_names: Sequence[str], max_steps_per_turn: int = MAX_STEPS_PER_TURN):
        turns: list[EpisodeTurn] = []
        for index, messages in enumerate(entry.turns):
            revealed = entry.revealed_at(index)
            if revealed:
                turns.append(EpisodeTurn(content=ADDED_FUNCTIONS_PROMPT,
                                         add_tools=[name for name in revealed if name in tool_names]))
            elif len(messages) == 1 and messages[0]["role"] == "user":
                turns.append(EpisodeTurn(content=messages[0]["content"]))
            else:
                raise ValueError(f"{entry.id}: turn {index}: expected one user message, got {len(messages)} messages")
        super().__init__(turns)
        self.max_steps_per_turn = max_steps_per_turn
        self.decoded: list[list[list[str]]] = []

    def next_turn(self, state: EpisodeState) -> EpisodeTurn | None:
        turn = super().next_turn(state)
        if turn is not None:
            self.decoded.append([])
        return turn

    def before_request(self, state: EpisodeState) -> TerminationReason | None:
        return None

    def model_error_text(self, state: EpisodeState, exc: ModelError) -> str:
        return f"turn {state.turn}, step {state.turn_requests}: {exc}"

    def refuse(self, state: EpisodeState, calls: Sequence[ToolCall]) -> str | None:
        try:
            decoded = [format_call(call.name, _decode_arguments(call.arguments)) for call in calls]
        except ValueError as exc:  # json.JSONDecodeError included
            return f"Error: could not decode the arguments: {exc}"
        self.decoded[-1].append(decoded)
        return None

    async def execute(self, conns: Connections, state: EpisodeState, call: ToolCall) -> tuple[Step, str]:
        arguments = _decode_arguments(call.arguments)
        binding = conns.binding(call.name)
        if binding is None:
            text = f"Error during execution: unknown function {call.name!r}"
            step = Step(turn=state.turn, call_id=call.id, tool=call.name, arguments=arguments, result=text,
                        is_error=True, error_kind=ToolErrorKind.unknown_tool)
            return step, text
        result = await conns.call(call.name, arguments)
        step = Step(turn=state.turn, call_id=call.id, tool=call.name, server=binding.server,
                    server_tool=binding.tool.name, arguments=arguments, result=result.text, is_error=result.is_error,
                    error_kind=result.error_kind, latency_s=result.latency_s)
        return step, result.text

    def after_reply(self, state: EpisodeState, response: ModelResponse, executed: Sequence[Step]) -> AfterReply:
        if not response.message.tool_calls:
            return AfterReply.next_turn
        if state.turn_requests > self.max_steps_per_turn:
            state.end(TerminationReason.max_steps, f"more than {self.max_steps_per_turn} steps in turn {state.turn}")
            return AfterReply.next_turn
        return AfterReply.ask_again


async def run_entry(
    model: Model,
    entry: BfclEntry,
    *,
    settings: ModelSettings | None = None,
    system_prompt: str | None = None,
    max_steps_per_turn: int = MAX_STEPS_PER_TURN,
    servers: str = "astra",
) -> tuple[BfclEpisode, BfclEpisodeServers]:
    """Drive ``entry`` with ``model`` over fresh MCP servers; returns the episode and the servers (their final state).

    ``max_steps_per_turn`` is BFCL's limit; lower it only for smoke runs of slow models
    (scores are then not comparable with BFCL's). ``servers`` picks the MCP server
    implementation (``astra`` or ``bfcl``, see ``astra.bfcl._servers.SERVER_IMPLEMENTATIONS``).
    """
    started = time.perf_counter()
    episode_servers = BfclEpisodeServers(
        entry.involved_classes, entry.initial_config, long_context=entry.long_context, implementation=servers
    )
    try:
        async with Connections(episode_servers.targets()) as conns:
            # BFCL's function names are unique across its backends, so aggregated names are the plain names.
            names = [binding.name for binding in conns.tools]
            held_out = entry.held_out()
            policy = BfclPolicy(entry, names, max_steps_per_turn)
            trajectory = await run_episode(
                model, conns, policy.turns, policy=policy, system_prompt=system_prompt, settings=settings,
                tool_names=[name for name in names if name not in held_out], trajectory_id_=entry.id,
            )
    finally:
        episode_servers.release()
    ended = trajectory.termination
    episode = BfclEpisode(
        entry_id=entry.id,
        decoded=policy.decoded,
        messages=trajectory.messages,
        steps=sum(len(turn) for turn in policy.decoded),
        tool_errors=sum(step.is_error for step in trajectory.steps),
        force_quit=ended == TerminationReason.max_steps,
        model_error=trajectory.error if ended == TerminationReason.model_error else None,
        usage=trajectory.usage,
        latency_s=time.perf_counter() - started,
    )
    return episode, episode_servers


def ground_truth_as_decoded(entry: BfclEntry) -> list[list[list[str]]]:
    """The ground truth in the checker's decoded shape: one step per non-empty turn."""
    return [[list(turn)] if turn else [] for turn in entry.ground_truth]

