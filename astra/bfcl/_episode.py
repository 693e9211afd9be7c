"""One BFCL multi-turn entry driven through our MCP servers, the way BFCL's own FC loop drives it.

Per turn (``bfcl_eval.model_handler.base_handler.BaseHandler.inference_multi_turn_FC``):
the turn's user messages are appended (at a ``missed_function`` turn the held-out
functions are added to the tool list and the user turn is BFCL's "I have updated some more
functions..." prompt); then the model is asked again and again; each reply with tool calls
is one *step*, decoded into BFCL's python-call strings and executed in order; a reply
without tool calls, or one whose arguments do not decode, ends the turn; more than
``MAX_STEPS_PER_TURN`` steps force-quit the whole entry.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, Field

from astra.bfcl._calls import format_call
from astra.bfcl._data import ADDED_FUNCTIONS_PROMPT, MAX_STEPS_PER_TURN, BfclEntry
from astra.bfcl._servers import BfclEpisodeServers
from astra.client import Connections, Model, ModelError, ModelSettings
from astra.records import ChatMessage, Usage


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
    episode = BfclEpisode(entry_id=entry.id)
    held_out = entry.held_out()
    try:
        await _play(model, entry, episode, episode_servers, held_out, settings, system_prompt, max_steps_per_turn)
    finally:
        episode_servers.release()
    episode.latency_s = time.perf_counter() - started
    return episode, episode_servers


async def _play(
    model: Model,
    entry: BfclEntry,
    episode: BfclEpisode,
    episode_servers: BfclEpisodeServers,
    held_out: set[str],
    settings: ModelSettings | None,
    system_prompt: str | None,
    max_steps_per_turn: int,
) -> None:
    async with Connections(episode_servers.targets()) as conns:
        # BFCL's function names are unique across its backends, so aggregated names are the plain names.
        names = [binding.name for binding in conns.tools]
        visible = [name for name in names if name not in held_out]
        messages = episode.messages
        if system_prompt:
            messages.append(ChatMessage(role="system", content=system_prompt))
        for turn_index, turn_messages in enumerate(entry.turns):
            revealed = entry.revealed_at(turn_index)
            if revealed:
                visible.extend(name for name in revealed if name in names and name not in visible)
                turn_messages = [{"role": "user", "content": ADDED_FUNCTIONS_PROMPT}]
            messages.extend(
                ChatMessage.model_validate({"role": m["role"], "content": m["content"]}) for m in turn_messages
            )
            turn_decoded: list[list[str]] = []
            tools = conns.openai_tools(visible)
            step = 0
            while True:
                try:
                    response = await model.request(messages, tools, settings)
                except ModelError as exc:
                    episode.model_error = f"turn {turn_index}, step {step}: {exc}"
                    break
                episode.usage = episode.usage + response.usage
                reply = response.message
                messages.append(reply)
                if not reply.tool_calls:
                    break
                try:
                    calls = [(call, _decode_arguments(call.arguments)) for call in reply.tool_calls]
                except ValueError as exc:
                    # BFCL: a reply that does not decode ends the turn, nothing is executed.
                    for call in reply.tool_calls:
                        messages.append(
                            ChatMessage(role="tool", tool_call_id=call.id, name=call.name,
                                        content=f"Error: could not decode the arguments: {exc}")
                        )
                    break
                turn_decoded.append([format_call(call.name, args) for call, args in calls])
                for call, args in calls:
                    # In order, one at a time: BFCL executes a step's calls sequentially, and
                    # calls to held-out functions run too (BFCL only hides their docs).
                    if conns.binding(call.name) is None:
                        text, is_error = f"Error during execution: unknown function {call.name!r}", True
                    else:
                        result = await conns.call(call.name, args)
                        text, is_error = result.text, result.is_error
                    episode.tool_errors += is_error
                    messages.append(ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=text))
                step += 1
                episode.steps += 1
                if step > max_steps_per_turn:
                    episode.force_quit = True
                    break
            episode.decoded.append(turn_decoded)
            if episode.force_quit or episode.model_error:
                break


def ground_truth_as_decoded(entry: BfclEntry) -> list[list[list[str]]]:
    """The ground truth in the checker's decoded shape: one step per non-empty turn."""
    return [[list(turn)] if turn else [] for turn in entry.ground_truth]

