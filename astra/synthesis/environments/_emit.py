"""Stage 7: emit — each verified decomposition with all its tools becomes an EnvironmentSpec and a
real MCP server directory (through :func:`astra.servers.emit`).

Solvability certificate: the emitted server is launched over stdio with the official MCP
client, and every reference call replayed through it must reproduce its expected result and
sub-answer (:func:`astra.servers.certify_emitted`, the one certification). An
environment without a certificate is removed and never exported; a certified one is saved
in the registry.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import anyio

from astra.records import Decomposition, EnvironmentSpec, ToolImplementation, Verifier, stable_id
from astra.servers._validate import certify_emitted
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._decompose import last_step_id
from astra.synthesis.environments._merge import current_merged_tools
from astra.synthesis.environments._models import Certificate, EmittedEnvironment, MergedTool


def _slug(text: str, limit: int = 32) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)[:limit].strip("-") or "env"


def build_environment(dec: Decomposition, tool_of_step: dict[str, tuple[MergedTool, str]]) -> EnvironmentSpec:
    """The spec of one environment; ``tool_of_step`` maps a step id to (merged tool, synth id of its call)."""
    env_name = f"env-{_slug(dec.question, 24)}-{dec.id.removeprefix('dec_')[:6]}"
    names: dict[str, str] = {}  # merged tool id -> its unique name in this environment
    tools: list[ToolImplementation] = []
    for merged, _ in sorted(tool_of_step.values(), key=lambda pair: pair[0].id):
        if merged.id in names:
            continue
        base = merged.implementation.spec.name
        name, k = base, 2
        while name in names.values():
            name, k = f"{base}_{k}", k + 1
        names[merged.id] = name
        impl = merged.implementation
        tools.append(
            impl.model_copy(
                update={
                    "spec": impl.spec.model_copy(update={"server": env_name, "name": name}),
                    "entrypoint": impl.entrypoint or impl.spec.name,
                }
            )
        )
    verifiers: list[Verifier] = []
    for step in dec.steps:
        if step.id in tool_of_step:
            merged, synth_id = tool_of_step[step.id]
            call = next(c for c in merged.calls if c.synth_id == synth_id)
            verifiers.append(Verifier(id=step.id, sub_question=step.sub_question, expected_answer=step.sub_answer,
                                      tool=names[merged.id], arguments=call.arguments,
                                      expected_result=call.result if call.result is not None else call.expected))
        else:
            verifiers.append(Verifier(id=step.id, sub_question=step.sub_question, expected_answer=step.sub_answer))
    env_id = stable_id(
        "env", dec.id, sorted((m.id, m.implementation.source) for m, _ in tool_of_step.values()), prefix="env_"
    )
    return EnvironmentSpec(
        id=env_id,
        name=env_name,
        description=f"Tools to answer: {dec.question}",
        tools=tools,
        verifiers=verifiers,
        sandboxed=True,
        provenance={
            "pipeline": "astra.synthesis.environments",
            "qa_id": dec.qa_id,
            "decomposition_id": dec.id,
            "question": dec.question,
            "answer": dec.answer,
            # a proposed answer (question-only input) is verified once the final hop's tool reproduces it;
            # emission certifies every tool call, so only a final hop without a tool leaves it unverified
            "answer_unverified": dec.answer_unverified and last_step_id(dec.steps) not in tool_of_step,
            "model": dec.model,
            "scores": dec.scores,
            "flags": dec.flags,
            "steps": [s.model_dump(mode="json") for s in dec.steps],
            "merged_tools": {m.id: {"members": m.members, "merged": m.merged, "note": m.merge_note}
                             for m, _ in tool_of_step.values()},
        },
    )


async def certify(spec: EnvironmentSpec, server_dir: Path, timeout_s: float = 60.0) -> Certificate:
    """The solvability certificate: THE certification of an emitted server
    (:func:`astra.servers.certify_emitted`: one stdio replay of every reference call)."""
    return await certify_emitted(server_dir, spec, timeout_s=timeout_s)


def environment_items(ctx: PipelineContext) -> list[tuple[str, Any]]:
    """One item per verified decomposition: its spec when every tool step has a verified tool, else why not."""
    decs = ctx.unique_outputs("verify", Decomposition)
    merged = current_merged_tools(ctx)
    by_synth: dict[str, MergedTool] = {}
    for m in merged:
        for member in m.members:
            by_synth[member] = m
    items: list[tuple[str, Any]] = []
    for dec in decs:
        tool_of_step: dict[str, tuple[MergedTool, str]] = {}
        missing: list[str] = []
        for step in dec.steps:
            if not step.needs_tool:
                continue
            sid = stable_id("tool", dec.id, step.id, prefix="tool_")
            if sid in by_synth:
                tool_of_step[step.id] = (by_synth[sid], sid)
            else:
                missing.append(step.id)
        if missing:
            items.append(
                (
                    stable_id("env_missing", dec.id, prefix="envx_"),
                    f"missing_tool: no verified tool for step {', '.join(missing)}",
                )
            )
        else:
            spec = build_environment(dec, tool_of_step)
            items.append((spec.id, (dec, spec)))
    return items


def current_environments(ctx: PipelineContext) -> list[EmittedEnvironment]:
    """Certified environments of the run's current inputs (an environment re-emitted after its
    tools changed replaces the earlier one)."""
    ids = {item_id for item_id, _ in environment_items(ctx)}
    return list({e.id: e for e in ctx.outputs_of("emit", EmittedEnvironment, ids)}.values())


async def emit_one(ctx: PipelineContext, item: Any) -> Outcome:
    from astra.servers import emit

    if isinstance(item, str):
        return Outcome.drop(item)
    dec, spec = item
    target = ctx.config.servers_dir / spec.name
    if target.exists():  # a killed earlier attempt: emit afresh
        await anyio.to_thread.run_sync(shutil.rmtree, target)
    try:
        server_dir = Path(await anyio.to_thread.run_sync(emit, spec, target))
    except Exception as exc:  # emission refused (bad spec): a failed item, recorded
        return Outcome.drop(f"emit_failed: {type(exc).__name__}: {exc}", failed=True)
    certificate = await certify(spec, server_dir, ctx.config.certify_timeout_s)
    if not certificate.ok:
        await anyio.to_thread.run_sync(shutil.rmtree, server_dir)
        return Outcome.drop(f"not_certified: {'; '.join(certificate.failures)[:500]}", failed=True)
    saved = False
    if ctx.config.save_to_registry:
        from astra.registry import Registry

        def save() -> bool:
            with Registry.open(ctx.config.home) as registry:
                registry.save_environment(spec, server_dir)
            return True

        saved = await anyio.to_thread.run_sync(save)
    return Outcome.keep(EmittedEnvironment(id=spec.id, spec=spec, server_dir=str(server_dir), certificate=certificate,
                                           question=dec.question, answer=dec.answer, registry=saved))


async def run_emit(ctx: PipelineContext) -> StageCounts:
    items = environment_items(ctx)
    # each certification starts a server process: at most two at once on this machine class
    return await ctx.map_stage("emit", EmittedEnvironment, items, lambda it: emit_one(ctx, it),
                               concurrency=min(ctx.config.concurrency, 2))


def mcp_servers_block(envs: list[EmittedEnvironment]) -> dict[str, Any]:
    """``{"mcpServers": {name: {"command", "args"}}}`` for MCP hosts to launch the emitted servers."""
    from astra.servers import mcp_servers_block as one_block

    block: dict[str, Any] = {}
    for env in envs:
        block.update(one_block(env.spec, Path(env.server_dir))["mcpServers"])
    return {"mcpServers": block}
