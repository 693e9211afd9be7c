"""The one agent loop: model -> tool calls -> results -> model ... -> Trajectory, under a policy.

Vocabulary:
- a *turn* is one user message (a task has one or more; BFCL multi-turn has several);
- a *model request* is one call to the model (with the tool calls its reply made, if any);
  ``max_requests`` bounds the model requests of the whole episode (the limit's termination
  reason keeps its recorded name, ``max_steps``), and ``meta["step_latencies_s"]`` (a recorded
  name too) holds each request's wall time, its tool calls included;
- a *step* (``Trajectory.steps``, records.Step) is one executed tool call, tagged with its turn;
- elsewhere: a decomposition *hop* (the environment pipeline), BFCL's *step* (BFCL's own word
  for a model request with tool calls, bounded per turn).

:func:`play` is the loop; its rules are a :class:`LoopPolicy`'s hooks: which user turn comes next
(and which tools it reveals), when to stop asking the model, whether a reply's calls run at all,
how one call runs (concurrently with its siblings or in order), and what a reply means for the
turn and the episode. :class:`LoopPolicy` itself holds the rollout rules below;
``astra.bfcl._episode.BfclPolicy`` holds BFCL's. :class:`EpisodeState` is what the loop and the
policy share while an episode runs.

Errors the model makes come back to it as error tool results, never as crashes: an unknown
tool (``error_kind="unknown_tool"``), arguments that are not a JSON object
(``bad_json``), arguments that fail the tool's input schema (``bad_arguments``, checked
with jsonschema before the call), and tool-side failures (``tool_error``, ``timeout``,
``server_died``). Termination reasons (records.TerminationReason):
``final_answer`` (a non-empty reply without tool calls on the last turn), ``no_answer``
(a reply with neither tool calls nor text), ``max_steps`` (``max_requests`` reached), ``max_tokens``
(``max_tokens_total`` reached, or a reply cut at the provider's token limit: never
``final_answer``), ``model_error`` (the provider failed for good, answered garbage, or a
script ran out), ``server_error`` (a server is gone for good: restarts exhausted),
``timeout`` (``episode_timeout_s`` reached). ``cancelled`` is for runners that record an
episode cancelled from outside; ``run_episode`` itself lets cancellation propagate.

Every trajectory also says whose doing its outcome is (:func:`classify`): ``failure_class``
none / policy / infrastructure, and ``infra_fault`` (records.InfraFault) for the last:
infrastructure faults are rerun, never scored as a policy's failure.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
from pydantic import BaseModel, Field

from astra.client._connections import Connections, EpisodeHandles, EpisodeUnavailable, ToolResult
from astra.client._model import Model, ModelError, ModelResponse, ModelSettings
from astra.records import (
    ChatMessage,
    FailureClass,
    InfraFault,
    Step,
    Task,
    TerminationReason,
    ToolCall,
    ToolErrorKind,
    Trajectory,
    Usage,
    stable_id,
)

_END_FAULTS = {
    TerminationReason.server_error: InfraFault.server_died,
    TerminationReason.timeout: InfraFault.timeout,
    TerminationReason.cancelled: InfraFault.cancelled,
}
_STEP_FAULTS: dict[str | None, InfraFault] = {  # keyed by value: a step read back may hold the plain string
    ToolErrorKind.server_died: InfraFault.server_died,
    ToolErrorKind.server_unavailable: InfraFault.server_died,
    ToolErrorKind.timeout: InfraFault.tool_timeout,
}


def classify(termination: TerminationReason | str, steps: Sequence[Step] = (),
             model_fault: InfraFault | None = None) -> tuple[FailureClass, InfraFault | None]:
    """Whose doing an episode's outcome is: an infrastructure fault at its end or on any tool
    call (server died, tool timed out) makes it ``infrastructure``; else a final answer is
    ``none`` and any other ending (max_steps, max_tokens, no_answer) is ``policy``."""
    termination = TerminationReason(termination)
    fault = model_fault if termination == TerminationReason.model_error else _END_FAULTS.get(termination)
    if termination == TerminationReason.model_error and fault is None:
        fault = InfraFault.provider_error
    if fault is None:
        fault = next((_STEP_FAULTS[s.error_kind] for s in steps if s.error_kind in _STEP_FAULTS), None)
    if fault is not None:
        return FailureClass.infrastructure, fault
    return (FailureClass.none if termination == TerminationReason.final_answer else FailureClass.policy), None


class EpisodeTurn(BaseModel):
    """One user turn of a multi-turn episode.

    ``add_tools`` makes more tools visible to the model from this turn on (names as in
    :meth:`Connections.resolve_names`: aggregated names, ``server/tool`` or plain tool names).
    With ``run_episode(..., tool_names=[...])`` as the initial visible subset, this is how
    BFCL's "missing function" category reveals a held-back function in a later turn.
    """

    content: str
    add_tools: list[str] = Field(default_factory=list)


def trajectory_id(task_id: str, model: str, sample: int) -> str:
    """The stable id of a rollout: hash of (task id, model spec, sample index)."""
    return stable_id(task_id, model, sample, prefix="traj_")


def _turns(task: Task | Sequence[str] | Sequence[EpisodeTurn]) -> tuple[str, list[EpisodeTurn]]:
    if isinstance(task, Task):
        return task.id, [EpisodeTurn(content=t) for t in task.user_turns]
    turns = [t if isinstance(t, EpisodeTurn) else EpisodeTurn(content=str(t)) for t in task]
    if not turns:
        raise ValueError("an episode needs at least one user turn")
    return stable_id([t.model_dump() for t in turns], prefix="adhoc_"), turns


def _result_payload(result: ToolResult) -> Any:
    if result.structured_content is not None:
        return result.structured_content
    return result.text


async def _execute(
    conns: Connections,
    call: Any,
    visible: Set[str],
    turn: int,
    timeout_s: float | None,
    episode: EpisodeHandles | None = None,
) -> tuple[Step, str]:
    """Run one tool call; returns the Step and the text the model will see."""
    start = time.perf_counter()
    binding = conns.binding(call.name) if call.name in visible else None

    def error(kind: ToolErrorKind, text: str, arguments: Any) -> tuple[Step, str]:
        step = Step(
            turn=turn, call_id=call.id, tool=call.name, arguments=arguments, result=text, is_error=True,
            error_kind=kind, latency_s=time.perf_counter() - start,
            server=binding.server if binding else None, server_tool=binding.tool.name if binding else None,
        )
        return step, f"Error: {text}"

    if binding is None:
        return error(
            ToolErrorKind.unknown_tool,
            f"unknown tool {call.name!r}; available: {', '.join(sorted(visible)) or 'none'}",
            call.arguments,
        )
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return error(ToolErrorKind.bad_json, f"arguments are not valid JSON ({exc.msg} at char {exc.pos})",
                     call.arguments)
    if not isinstance(arguments, dict):
        return error(ToolErrorKind.bad_json, f"arguments must be a JSON object, got {type(arguments).__name__}",
                     call.arguments)
    detail = conns.argument_errors(binding.name, arguments)
    if detail is not None:
        return error(ToolErrorKind.bad_arguments, f"arguments do not match the schema of {call.name!r}: {detail}",
                     arguments)
    result = await conns.call(binding.name, arguments, timeout_s=timeout_s, episode=episode)
    step = Step(
        turn=turn, call_id=call.id, tool=call.name, server=binding.server, server_tool=binding.tool.name,
        arguments=arguments, result=_result_payload(result), is_error=result.is_error,
        error_kind=result.error_kind, latency_s=result.latency_s, simulated=conns.is_simulated(binding.server),
    )
    text = result.text if result.text or result.structured_content is None else json.dumps(result.structured_content)
    return step, (f"Error: {text}" if result.is_error and not text.startswith("Error:") else text)


class AfterReply(Enum):
    """What the loop does after a model reply (its tool calls, if any, already run)."""

    ask_again = "ask_again"  # the model is asked again, within the same user turn
    next_turn = "next_turn"  # the turn is over: the next user turn, or the end of the episode


@dataclass(eq=False)
class EpisodeState:
    """Everything one episode has done so far: what the loop and its policy read and update.

    The episode has ended once :attr:`termination` is set (:meth:`end`)."""

    task_id: str
    visible: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    turn: int = -1
    requests: int = 0
    turn_requests: int = 0
    termination: TerminationReason | None = None
    error: str | None = None
    model_fault: InfraFault | None = None
    final_answer: str | None = None
    handles: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"model_s": 0.0, "tools_s": 0.0})
    request_latencies: list[float] = field(default_factory=list)
    visible_set: frozenset[str] = frozenset()

    def show(self, conns: Connections, names: Sequence[str]) -> None:
        """Make ``names`` (see :meth:`Connections.resolve_names`) visible to the model from now on."""
        self.visible = list(dict.fromkeys(self.visible + conns.resolve_names(names)))
        self.visible_set = frozenset(self.visible)
        self.tools = conns.openai_tools(self.visible)

    def end(self, reason: TerminationReason, error: str | None = None) -> None:
        self.termination, self.error = reason, error


class LoopPolicy:
    """The rules of an episode, as hooks the one loop (:func:`play`) calls; this class is the
    rollout rules (see the module docstring). BFCL's rules (``astra.bfcl._episode.BfclPolicy``)
    override some hooks: calls run one at a time, a per-turn limit, undecodable replies end the
    turn, held-back tools revealed at a turn.

    ``turns``: the user turns, in order (:meth:`next_turn` hands them out); ``max_requests``: the
    most model requests in the episode; ``max_tokens_total``: the token budget;
    ``call_timeout_s``: each tool call's limit (None: the connection's)."""

    parallel_calls = True
    """A reply's tool calls run concurrently (else one at a time, in order)."""
    opens_episodes = True
    """Environment episodes (server-minted handles) are opened around the episode."""

    def __init__(self, turns: Sequence[EpisodeTurn], *, max_requests: int = 16, max_tokens_total: int | None = None,
                 call_timeout_s: float | None = None) -> None:
        self.turns = list(turns)
        self.max_requests = max_requests
        self.max_tokens_total = max_tokens_total
        self.call_timeout_s = call_timeout_s

    def next_turn(self, state: EpisodeState) -> EpisodeTurn | None:
        """The user turn after ``state.turn`` (None: no more, the episode is over)."""
        index = state.turn + 1
        return self.turns[index] if index < len(self.turns) else None

    def before_request(self, state: EpisodeState) -> TerminationReason | None:
        """Why the episode ends instead of asking the model again (None: ask it)."""
        return TerminationReason.max_steps if state.requests >= self.max_requests else None

    def model_error_text(self, state: EpisodeState, exc: ModelError) -> str:
        return f"{type(exc).__name__}: {exc}"

    def refuse(self, state: EpisodeState, calls: Sequence[ToolCall]) -> str | None:
        """Why none of a reply's calls run (each gets this as its error result and the turn
        ends); None: they run."""
        return None

    async def execute(self, conns: Connections, state: EpisodeState, call: ToolCall) -> tuple[Step, str]:
        """Run one tool call: its Step and the text the model sees."""
        return await _execute(conns, call, state.visible_set, state.turn, self.call_timeout_s, state.handles)

    def after_reply(self, state: EpisodeState, response: ModelResponse, executed: Sequence[Step]) -> AfterReply:
        """Decide after a reply whose calls produced ``executed``; may end the episode (:meth:`EpisodeState.end`)."""
        calls = response.message.tool_calls
        unavailable = next((s for s in executed if s.error_kind == ToolErrorKind.server_unavailable), None)
        if unavailable is not None:
            state.end(TerminationReason.server_error, unavailable.result)
        elif not calls and response.finish_reason == "length":
            state.end(TerminationReason.max_tokens, "the reply was cut at the token limit")
        elif (self.max_tokens_total is not None
              and state.usage.input_tokens + state.usage.output_tokens >= self.max_tokens_total):
            state.end(TerminationReason.max_tokens)
        elif not calls:
            state.final_answer = response.message.content
            return AfterReply.next_turn
        return AfterReply.ask_again


async def play(model: Model, conns: Connections, policy: LoopPolicy, state: EpisodeState,
               settings: ModelSettings | None = None) -> None:
    """The one agent loop: user turns, model requests, tool calls, under ``policy``'s rules,
    until ``state`` ends (its termination is set when this returns)."""
    while state.termination is None and (turn := policy.next_turn(state)) is not None:
        state.turn += 1
        state.turn_requests = 0
        if turn.add_tools:
            state.show(conns, turn.add_tools)
        state.messages.append(ChatMessage(role="user", content=turn.content))
        while state.termination is None:
            limit = policy.before_request(state)
            if limit is not None:
                state.end(limit)
                return
            t0 = time.perf_counter()
            try:
                response = await model.request(state.messages, state.tools, settings)
            except ModelError as exc:
                state.end(TerminationReason.model_error, policy.model_error_text(state, exc))
                state.model_fault = exc.fault
                return
            t1 = time.perf_counter()
            state.timings["model_s"] += t1 - t0
            state.requests += 1
            state.turn_requests += 1
            state.usage = state.usage + response.usage
            message = response.message
            if message.role != "assistant":
                message = message.model_copy(update={"role": "assistant"})
            state.messages.append(message)
            calls = message.tool_calls or []
            executed: list[Step] = []
            if calls:
                refusal = policy.refuse(state, calls)
                if refusal is not None:
                    state.messages.extend(
                        ChatMessage(role="tool", tool_call_id=c.id, name=c.name, content=refusal) for c in calls)
                    break
                results = await _run_calls(conns, policy, state, calls)
                for call, (step, text) in zip(calls, results, strict=True):
                    executed.append(step)
                    state.messages.append(ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=text))
                state.steps.extend(executed)
                state.timings["tools_s"] += time.perf_counter() - t1
            state.request_latencies.append(time.perf_counter() - t0)
            if policy.after_reply(state, response, executed) is AfterReply.next_turn:
                break
    if state.termination is None:
        final = (state.final_answer or "").strip()
        state.end(TerminationReason.final_answer if final else TerminationReason.no_answer)


async def _run_calls(conns: Connections, policy: LoopPolicy, state: EpisodeState,
                     calls: Sequence[ToolCall]) -> list[tuple[Step, str]]:
    if len(calls) == 1 or not policy.parallel_calls:
        return [await policy.execute(conns, state, call) for call in calls]
    results: list[tuple[Step, str] | None] = [None] * len(calls)

    async def run_one(i: int) -> None:
        results[i] = await policy.execute(conns, state, calls[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(run_one, i)
    return [r for r in results if r is not None]


async def run_episode(
    model: Model,
    conns: Connections,
    task: Task | Sequence[str] | Sequence[EpisodeTurn],
    *,
    system_prompt: str | None = None,
    settings: ModelSettings | None = None,
    max_requests: int = 16,
    max_tokens_total: int | None = None,
    sample: int = 0,
    tool_names: Sequence[str] | None = None,
    call_timeout_s: float | None = None,
    episode_timeout_s: float | None = None,
    trajectory_id_: str | None = None,
    meta: dict[str, Any] | None = None,
    policy: LoopPolicy | None = None,
    max_steps: int | None = None,
) -> Trajectory:
    """Run one episode and return its Trajectory (see the module docstring for the rules).

    ``task``: a :class:`Task` (its ``user_turns``), a list of user messages, or a list of
    :class:`EpisodeTurn` (turns that reveal more tools). ``tool_names``: the tools visible
    from the start (default: every tool of ``conns``); each turn's ``add_tools`` extends it.
    A Task with ``servers`` set and no ``tool_names`` sees only those servers' tools.
    ``policy``: other rules than the rollout rules built from ``task``'s turns, ``max_requests``,
    ``max_tokens_total`` and ``call_timeout_s`` (the policy then owns the turns and limits).
    ``max_steps``: the old name of ``max_requests`` (deprecated).
    """
    task_id, turns = _turns(task)
    if max_steps is not None:
        warnings.warn("run_episode(max_steps=) is deprecated, use max_requests=", FutureWarning, stacklevel=2)
        max_requests = max_steps
    if policy is None:
        policy = LoopPolicy(turns, max_requests=max_requests, max_tokens_total=max_tokens_total,
                            call_timeout_s=call_timeout_s)
    if tool_names is None and isinstance(task, Task) and task.servers:
        tool_names = [b.name for b in conns.tools if b.server in set(task.servers)]
    visible = conns.resolve_names(tool_names) if tool_names is not None else [b.name for b in conns.tools]
    state = EpisodeState(task_id=task_id, visible=visible, visible_set=frozenset(visible),
                         tools=conns.openai_tools(visible))
    if system_prompt:
        state.messages.append(ChatMessage(role="system", content=system_prompt))
    traj_id = trajectory_id_ or trajectory_id(task_id, model.name, sample)
    # a fresh environment state per run of an episode, even when one trajectory id is rerun: the
    # label names it in the record; the handles the environments mint are credentials, never recorded
    episode = f"{traj_id}:{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()

    async def body() -> None:
        if policy.opens_episodes:
            try:
                # other servers see the label (a simulator keys its memory on it)
                state.handles.update(dict.fromkeys(conns.servers, episode))
                state.handles.update(await conns.open_episodes())  # ASTRA environments: handles they minted
            except EpisodeUnavailable as exc:
                state.end(TerminationReason.server_error, f"could not open an environment episode: {exc}")
                return
        await play(model, conns, policy, state, settings)

    try:
        if episode_timeout_s is not None:
            with anyio.move_on_after(episode_timeout_s) as scope:
                await body()
            if scope.cancelled_caught:
                state.end(TerminationReason.timeout, f"episode exceeded {episode_timeout_s:g} s")
        else:
            await body()
    finally:
        state.timings["total_s"] = time.perf_counter() - started
        with anyio.CancelScope(shield=True):
            await conns.close_episodes(state.handles)
    termination = state.termination
    assert termination is not None
    failure_class, infra_fault = classify(termination, state.steps, state.model_fault)
    return Trajectory(
        id=traj_id,
        task_id=task_id,
        sample=sample,
        model=model.name,
        tools=state.tools,
        messages=state.messages,
        steps=state.steps,
        final_answer=state.final_answer if termination == TerminationReason.final_answer else None,
        usage=state.usage,
        termination=termination,
        error=state.error,
        timings=state.timings,
        meta={
            "model_requests": state.requests,
            "turns": len(turns),
            "episode": episode,
            "step_latencies_s": [round(x, 6) for x in state.request_latencies],
            **(meta or {}),
        },
        failure_class=failure_class,
        infra_fault=infra_fault,
    )
