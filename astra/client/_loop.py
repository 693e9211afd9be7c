"""The agent loop: model -> tool calls (run concurrently) -> results -> model ... -> Trajectory.

Vocabulary:
- a *turn* is one user message (a task has one or more; BFCL multi-turn has several);
- a *step* is one model request (with the tool calls it made, if any). ``max_steps``
  bounds the number of model requests in the whole episode;
- ``Trajectory.steps`` are the executed tool calls (records.Step), each tagged with its turn.

Errors the model makes come back to it as error tool results, never as crashes: an unknown
tool (``error_kind="unknown_tool"``), arguments that are not a JSON object
(``bad_json``), arguments that fail the tool's input schema (``bad_arguments``, checked
with jsonschema before the call), and tool-side failures (``tool_error``, ``timeout``,
``server_died``). Termination reasons (records.TerminationReason):
``final_answer`` (a non-empty reply without tool calls on the last turn), ``no_answer``
(a reply with neither tool calls nor text), ``max_steps``, ``max_tokens``
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
from collections.abc import Sequence
from typing import Any, cast

import anyio
from pydantic import BaseModel, Field

from astra.client._connections import Connections, EpisodeHandles, EpisodeUnavailable, ToolResult
from astra.client._model import Model, ModelError, ModelSettings
from astra.records import (
    ChatMessage,
    FailureClass,
    InfraFault,
    Step,
    Task,
    TerminationReason,
    Trajectory,
    Usage,
    stable_id,
)

_END_FAULTS = {
    TerminationReason.server_error: InfraFault.server_died,
    TerminationReason.timeout: InfraFault.timeout,
    TerminationReason.cancelled: InfraFault.cancelled,
}
_STEP_FAULTS = {"server_died": InfraFault.server_died, "server_unavailable": InfraFault.server_died,
                "timeout": InfraFault.tool_timeout}


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
    visible: set[str],
    turn: int,
    timeout_s: float | None,
    episode: EpisodeHandles | None = None,
) -> tuple[Step, str]:
    """Run one tool call; returns the Step and the text the model will see."""
    start = time.perf_counter()
    binding = conns.binding(call.name) if call.name in visible else None

    def error(kind: str, text: str, arguments: Any) -> tuple[Step, str]:
        step = Step(
            turn=turn, call_id=call.id, tool=call.name, arguments=arguments, result=text, is_error=True,
            error_kind=kind, latency_s=time.perf_counter() - start,
            server=binding.server if binding else None, server_tool=binding.tool.name if binding else None,
        )
        return step, f"Error: {text}"

    if binding is None:
        return error(
            "unknown_tool",
            f"unknown tool {call.name!r}; available: {', '.join(sorted(visible)) or 'none'}",
            call.arguments,
        )
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return error("bad_json", f"arguments are not valid JSON ({exc.msg} at char {exc.pos})", call.arguments)
    if not isinstance(arguments, dict):
        return error("bad_json", f"arguments must be a JSON object, got {type(arguments).__name__}", call.arguments)
    detail = conns.argument_errors(binding.name, arguments)
    if detail is not None:
        return error("bad_arguments", f"arguments do not match the schema of {call.name!r}: {detail}", arguments)
    result = await conns.call(binding.name, arguments, timeout_s=timeout_s, episode=episode)
    step = Step(
        turn=turn, call_id=call.id, tool=call.name, server=binding.server, server_tool=binding.tool.name,
        arguments=arguments, result=_result_payload(result), is_error=result.is_error,
        error_kind=result.error_kind, latency_s=result.latency_s, simulated=conns.is_simulated(binding.server),
    )
    text = result.text if result.text or result.structured_content is None else json.dumps(result.structured_content)
    return step, (f"Error: {text}" if result.is_error and not text.startswith("Error:") else text)


async def run_episode(
    model: Model,
    conns: Connections,
    task: Task | Sequence[str] | Sequence[EpisodeTurn],
    *,
    system_prompt: str | None = None,
    settings: ModelSettings | None = None,
    max_steps: int = 16,
    max_tokens_total: int | None = None,
    sample: int = 0,
    tool_names: Sequence[str] | None = None,
    call_timeout_s: float | None = None,
    episode_timeout_s: float | None = None,
    trajectory_id_: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Trajectory:
    """Run one episode and return its Trajectory (see the module docstring for the rules).

    ``task``: a :class:`Task` (its ``user_turns``), a list of user messages, or a list of
    :class:`EpisodeTurn` (turns that reveal more tools). ``tool_names``: the tools visible
    from the start (default: every tool of ``conns``); each turn's ``add_tools`` extends it.
    A Task with ``servers`` set and no ``tool_names`` sees only those servers' tools.
    """
    task_id, turns = _turns(task)
    if tool_names is None and isinstance(task, Task) and task.servers:
        tool_names = [b.name for b in conns.tools if b.server in set(task.servers)]
    visible_list = conns.resolve_names(tool_names) if tool_names is not None else [b.name for b in conns.tools]
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append(ChatMessage(role="system", content=system_prompt))
    steps: list[Step] = []
    usage = Usage()
    termination: TerminationReason | None = None
    model_fault: InfraFault | None = None
    error: str | None = None
    final_answer: str | None = None
    requests = 0
    timings = {"model_s": 0.0, "tools_s": 0.0}
    step_latencies: list[float] = []
    tools_payload = conns.openai_tools(visible_list)
    traj_id = trajectory_id_ or trajectory_id(task_id, model.name, sample)
    # a fresh environment state per run of an episode, even when one trajectory id is rerun: the
    # label names it in the record; the handles the environments mint are credentials, never recorded
    episode = f"{traj_id}:{uuid.uuid4().hex[:12]}"
    handles: dict[str, str] = {}
    started = time.perf_counter()

    async def body() -> None:
        nonlocal termination, model_fault, error, final_answer, requests, usage, tools_payload, visible_list
        try:
            # other servers see the label (a simulator keys its memory on it)
            handles.update(dict.fromkeys(conns.servers, episode))
            handles.update(await conns.open_episodes())  # ASTRA environments: handles they minted
        except EpisodeUnavailable as exc:
            termination, error = TerminationReason.server_error, f"could not open an environment episode: {exc}"
            return
        for turn_index, turn in enumerate(turns):
            if turn.add_tools:
                visible_list = list(dict.fromkeys(visible_list + conns.resolve_names(turn.add_tools)))
                tools_payload = conns.openai_tools(visible_list)
            messages.append(ChatMessage(role="user", content=turn.content))
            while True:
                if requests >= max_steps:
                    termination = TerminationReason.max_steps
                    return
                t0 = time.perf_counter()
                try:
                    response = await model.request(messages, tools_payload, settings)
                except ModelError as exc:
                    termination, error = TerminationReason.model_error, f"{type(exc).__name__}: {exc}"
                    model_fault = exc.fault
                    return
                t1 = time.perf_counter()
                timings["model_s"] += t1 - t0
                requests += 1
                usage = usage + response.usage
                message = response.message
                if message.role != "assistant":
                    message = message.model_copy(update={"role": "assistant"})
                messages.append(message)
                calls = message.tool_calls or []
                if calls:
                    visible = set(visible_list)
                    results: list[tuple[Step, str] | None] = [None] * len(calls)

                    # awaited within this iteration, so the loop variables are the current ones
                    async def run_one(i: int) -> None:
                        results[i] = await _execute(  # noqa: B023
                            conns, calls[i], visible, turn_index, call_timeout_s, handles)  # noqa: B023

                    if len(calls) == 1:  # no task group needed for a single call
                        await run_one(0)
                    else:
                        async with anyio.create_task_group() as tg:
                            for i in range(len(calls)):
                                tg.start_soon(run_one, i)
                    for call, res in zip(calls, results, strict=True):
                        assert res is not None
                        step, text = res
                        steps.append(step)
                        messages.append(ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=text))
                    timings["tools_s"] += time.perf_counter() - t1
                step_latencies.append(time.perf_counter() - t0)
                if calls and any(s.error_kind == "server_unavailable" for s in steps[-len(calls):]):
                    termination = TerminationReason.server_error
                    error = next(s.result for s in steps[-len(calls):] if s.error_kind == "server_unavailable")
                    return
                if not calls and response.finish_reason == "length":
                    termination, error = TerminationReason.max_tokens, "the reply was cut at the token limit"
                    return
                if max_tokens_total is not None and usage.input_tokens + usage.output_tokens >= max_tokens_total:
                    termination = TerminationReason.max_tokens
                    return
                if not calls:
                    final_answer = message.content
                    break  # next user turn
        termination = TerminationReason.final_answer if (final_answer or "").strip() else TerminationReason.no_answer

    try:
        if episode_timeout_s is not None:
            with anyio.move_on_after(episode_timeout_s) as scope:
                await body()
            if scope.cancelled_caught:
                termination, error = TerminationReason.timeout, f"episode exceeded {episode_timeout_s:g} s"
        else:
            await body()
    finally:
        timings["total_s"] = time.perf_counter() - started
        with anyio.CancelScope(shield=True):
            await conns.close_episodes(handles)
    assert termination is not None
    ended = cast(TerminationReason, termination)  # set through nonlocal, which pyright's narrowing does not follow
    failure_class, infra_fault = classify(termination, steps, model_fault)
    return Trajectory(
        id=traj_id,
        task_id=task_id,
        sample=sample,
        model=model.name,
        tools=tools_payload,
        messages=messages,
        steps=steps,
        final_answer=final_answer if ended == TerminationReason.final_answer else None,
        usage=usage,
        termination=termination,
        error=error,
        timings=timings,
        meta={
            "model_requests": requests,
            "turns": len(turns),
            "episode": episode,
            "step_latencies_s": [round(x, 6) for x in step_latencies],
            **(meta or {}),
        },
        failure_class=failure_class,
        infra_fault=infra_fault,
    )
