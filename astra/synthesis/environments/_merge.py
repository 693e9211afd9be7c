"""Stage 6: tool merging — one implementation for tools with the same intent across items.

Tools are linked when their documents and code say they do the same thing: normalised name
tokens, parameter names and description tokens overlap (or the code is the same after
parsing); clusters are the connected components of that graph (networkx). A cluster is
served by one of its members' implementations, or else by an LLM-merged one; either way
every call the merged tool must serve is re-run in the sandbox, and a merge that breaks any
call is rejected (the members stay separate tools).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import networkx as nx
from jsonschema import Draft202012Validator

from astra.records import stable_id
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._answers import answer_in_result
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._models import MergedTool, ReferenceCall, SynthesizedTool
from astra.synthesis.environments._sandbox import SandboxRunner
from astra.synthesis.environments._synthesize import EXAMPLE, SYSTEM, ToolReply, implementation_of, static_problems

PROMPT_VERSION = "merge-v1"
_STOP = frozenset(
    "a an the of to in for from by and or with on at is are get compute calculate find return value given".split()
)
_TOKEN = re.compile(r"[a-z]+|\d+")


def _tokens(text: str) -> set[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()
    return {t for t in _TOKEN.findall(text) if t not in _STOP}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _code_key(source: str) -> str | None:
    try:
        return ast.dump(ast.parse(source), annotate_fields=False)
    except SyntaxError:
        return None


def intent_similarity(a: SynthesizedTool, b: SynthesizedTool) -> float:
    """0..1: how likely two tools do the same thing, from their names, parameters and descriptions."""
    sa, sb = a.implementation.spec, b.implementation.spec
    code_a, code_b = _code_key(a.implementation.source), _code_key(b.implementation.source)
    if code_a is not None and code_a == code_b:
        return 1.0
    params_a = set(sa.input_schema.get("properties", {}))
    params_b = set(sb.input_schema.get("properties", {}))
    param_overlap = _jaccard(params_a, params_b)
    if param_overlap < 0.5:
        return 0.0  # different inputs: one implementation could not serve both calls unchanged
    name = _jaccard(_tokens(sa.name), _tokens(sb.name))
    desc = _jaccard(_tokens(sa.description), _tokens(sb.description))
    return 0.5 * name + 0.3 * param_overlap + 0.2 * desc


def cluster_tools(tools: list[SynthesizedTool], threshold: float = 0.6) -> list[list[SynthesizedTool]]:
    graph = nx.Graph()
    graph.add_nodes_from(t.id for t in tools)
    for i, a in enumerate(tools):
        for b in tools[i + 1 :]:
            if intent_similarity(a, b) >= threshold:
                graph.add_edge(a.id, b.id)
    by_id = {t.id: t for t in tools}
    clusters = [sorted((by_id[i] for i in comp), key=lambda t: t.id) for comp in nx.connected_components(graph)]
    return sorted(clusters, key=lambda c: c[0].id)


async def serves_all(
    sandbox: SandboxRunner, name: str, source: str, schema: dict[str, Any], calls: list[ReferenceCall]
) -> tuple[str | None, list[ReferenceCall]]:
    """(None, the calls with this implementation's results) when it returns every call's expected
    answer, else (why not, [])."""
    validator = Draft202012Validator(schema)
    served: list[ReferenceCall] = []
    for call in calls:
        errors = list(validator.iter_errors(call.arguments))
        if errors:
            return f"call {call.synth_id}: arguments do not fit the merged schema: {errors[0].message}", []
        result = await sandbox.call(source, name, call.arguments)
        if not result.ok:
            return f"call {call.synth_id}: {result.error_kind or 'error'}: {result.error}", []
        if not answer_in_result(result.value, call.expected):
            return (
                f"call {call.synth_id}: returned {json.dumps(result.value, default=str)[:120]}, expected "
                f"{call.expected!r}",
                [],
            )
        served.append(call.model_copy(update={"result": result.value}))
    return None, served


def _singletons(cluster: list[SynthesizedTool], note: str | None) -> list[MergedTool]:
    return [
        MergedTool(id=stable_id("merged", t.id, prefix="mt_"), implementation=t.implementation, members=[t.id],
                   calls=[t.call], merged=False, merge_note=note)
        for t in cluster
    ]


def _merge_prompt(cluster: list[SynthesizedTool]) -> str:
    tools = [
        {"name": t.implementation.spec.name, "description": t.implementation.spec.description,
         "parameters": t.implementation.spec.input_schema, "code": t.implementation.source,
         "call": {"arguments": t.call.arguments, "must_return": t.call.expected}}
        for t in cluster
    ]
    return (
        "These tools do the same thing. Write ONE tool that serves every call below unchanged (same "
        f"argument names) and returns each expected result.\nTools: {json.dumps(tools, ensure_ascii=False)}\n"
        f'Reply as:\n{EXAMPLE}'
    )


async def merge_cluster(ctx: PipelineContext, sandbox: SandboxRunner, cluster: list[SynthesizedTool]) -> Outcome:
    if len(cluster) == 1:
        return Outcome.keep(*_singletons(cluster, None))
    calls = [t.call for t in cluster]
    cluster_id = stable_id("merged", *[t.id for t in cluster], prefix="mt_")
    failures: list[str] = []
    # prefer generalised variants and wider interfaces: more likely to serve every call
    candidates = sorted(
        cluster,
        key=lambda t: (t.variant != "scaled", -len(t.implementation.spec.input_schema.get("properties", {})), t.id),
    )
    for cand in candidates:
        impl = cand.implementation
        why, served = await serves_all(
            sandbox, impl.entrypoint or impl.spec.name, impl.source, impl.spec.input_schema, calls
        )
        if why is None:
            merged = MergedTool(id=cluster_id, implementation=impl, members=[t.id for t in cluster], calls=served,
                                merged=True, merge_note=f"member {cand.id} serves all {len(calls)} calls")
            return Outcome.keep(merged)
        failures.append(f"{impl.spec.name}: {why}")
    audit: list[dict[str, Any]] = []
    try:
        reply, audit = await ctx.ask(_merge_prompt(cluster), ToolReply, system=SYSTEM, prompt_version=PROMPT_VERSION)
        reply = reply.model_copy(update={"arguments": calls[0].arguments})
        problems = static_problems(reply, None)
        if problems:
            why, served = "; ".join(problems), []
        else:
            why, served = await serves_all(sandbox, reply.name, reply.code, reply.parameters, calls)
    except LLMOutputError as exc:
        audit, why = exc.audit, f"bad_reply: {exc.reason}"
    else:
        if why is None:
            merged = MergedTool(id=cluster_id, implementation=implementation_of(reply), members=[t.id for t in cluster],
                                calls=served, merged=True,
                                merge_note=f"LLM-merged implementation serves all {len(calls)} calls")
            return Outcome.keep(merged, audit=audit)
    failures.append(f"llm merge: {why}")
    return Outcome.keep(*_singletons(cluster, "merge_rejected: " + " | ".join(failures)[:1000]), audit=audit)


def current_clusters(ctx: PipelineContext) -> list[tuple[str, list[SynthesizedTool]]]:
    """(cluster id, members) for the synthesised tools the run holds now (deterministic)."""
    tools = ctx.unique_outputs("synthesize", SynthesizedTool)
    if ctx.config.merge_tools:
        clusters = cluster_tools(tools)
    else:
        clusters = [[t] for t in sorted(tools, key=lambda t: t.id)]
    return [(stable_id("cluster", *[t.id for t in c], prefix="cl_"), c) for c in clusters]


def current_merged_tools(ctx: PipelineContext) -> list[MergedTool]:
    """The merge stage's outputs for today's clusters (entries of an earlier tool set are ignored)."""
    return ctx.outputs_of("merge", MergedTool, {cid for cid, _ in current_clusters(ctx)})


async def run_merge(ctx: PipelineContext) -> StageCounts:
    items = current_clusters(ctx)
    async with SandboxRunner(ctx.config) as sandbox:
        return await ctx.map_stage("merge", MergedTool, items, lambda c: merge_cluster(ctx, sandbox, c))
