"""Tool-graph quality on real MCP servers: recall and precision of each method against the
hand-labelled true dependencies of mcp-server-time, mcp-server-git and the npm servers
everything, memory and filesystem (50 tools; docs captured in tests/synthesis_traj/real_servers/),
and, for candidates, of a second set: npm server-github + server-google-maps (33 tools, docs only;
labelled blind, then the rules were improved on its errors) and a blind set: npm server-slack (8 tools,
labelled blind, measured once, rules unchanged after).

Methods:
- random: the precision of choosing pairs at random (the floor);
- candidates: typed candidates from the docs, at several score thresholds (no LLM);
- trace (``--live``): execution-grounded edges from read-only calls on the live servers in a
  scratch directory (needs the servers installed: scripts/setup.sh);
- server_chains (``--model SPEC``): the original ASTRA's per-server LLM chain detection;
- verified (``--model SPEC``): candidates kept by the LLM verifier;
- union: candidates + whatever else ran, merged.

    python benchmarks/graph_quality.py [--live] [--model SPEC] [--threshold 0.45]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "synthesis_traj"))
import real_servers  # noqa: E402

from astra.records import GraphEdge, ToolSpec  # noqa: E402
from astra.synthesis._llm import LLMOutputError, ask_json  # noqa: E402
from astra.synthesis.trajectories import _graph  # noqa: E402
from astra.synthesis.trajectories._graph import (  # noqa: E402
    EdgeMetrics,
    batch_candidates,
    generate_candidates,
    measure_edges,
    merge_edges,
)


def _truth() -> dict[tuple[str, str], str]:
    doc = json.loads(real_servers.LABELS.read_text("utf-8"))
    return {(e["src"], e["dst"]): e["kind"] for e in doc["edges"]}


async def _llm_edges(spec: str, servers: list, candidates: list, batch_size: int, verify: bool
                     ) -> tuple[list, list, int, int]:
    from astra.client import resolve_model

    model = resolve_model(spec)
    tools: dict[str, ToolSpec] = {t.qualified_name: t for s in servers for t in s.tools}
    chains: list[GraphEdge] = []
    verified: list[GraphEdge] = []
    failed = calls = 0
    try:
        for server in servers:
            calls += 1
            try:
                detected, _audit = await ask_json(model, _graph.chain_prompt(server), _graph.ChainDetections,
                                                  prompt_version=_graph.CHAIN_PROMPT_VERSION)
            except LLMOutputError as exc:
                failed += 1
                print(f"  server_chains: {server.name} failed: {exc.reason[:160]}", flush=True)
                continue
            found, outcome = _graph.chains_to_edges(server, detected)
            chains += found
            print(f"  server_chains: {server.name}: {outcome.yes} yes, {outcome.no} no, {outcome.not_sure} not sure, "
                  f"{len(found)} edges, unknown names {outcome.unknown_tools[:5]}", flush=True)
        for _id, batch in batch_candidates(candidates, batch_size) if verify else ():
            calls += 1
            try:
                verdicts, _audit = await ask_json(model, _graph.edge_prompt(batch, tools), _graph.EdgeVerdicts,
                                                  system=_graph.EDGE_SYSTEM, prompt_version=_graph.EDGE_PROMPT_VERSION)
            except LLMOutputError:
                failed += 1  # a failed judge keeps nothing: never a score
                continue
            verified += _graph.verdicts_to_edges(batch, verdicts, tools, 0.5)[0]
    finally:
        await model.aclose()
    return chains, verified, calls, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.45, help="candidate min_score (the default of the pipeline)")
    ap.add_argument("--live", action="store_true", help="also trace the live servers (read-only calls)")
    ap.add_argument("--model", help="model spec for the LLM methods (e.g. local, openai:gpt-4o-mini)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-verify", action="store_true", help="with --model: server chains only (slow local models)")
    args = ap.parse_args()

    servers = real_servers.load_fixtures()
    truth = _truth()
    n = sum(len(s.tools) for s in servers)
    print(f"{len(servers)} servers, {n} tools, {n * (n - 1)} ordered pairs, {len(truth)} labelled dependencies")
    print(f"random: precision {len(truth) / (n * (n - 1)):.3f} at any recall")
    rows: list[EdgeMetrics] = []
    t0 = time.perf_counter()
    cands, stats = generate_candidates(servers, min_score=args.threshold)
    gen_ms = (time.perf_counter() - t0) * 1000
    main_row = measure_edges(f"candidates (min_score {args.threshold})", ((c.src, c.dst, c.kind) for c in cands), truth)
    rows.append(main_row)
    for th in (0.35, 0.55, 0.65, 0.75):
        more, _ = generate_candidates(servers, min_score=th)
        rows.append(measure_edges(f"candidates (min_score {th})", ((c.src, c.dst, c.kind) for c in more), truth))
    same = [c for c in cands if c.src.split("/")[0] == c.dst.split("/")[0]]
    rows.append(measure_edges("candidates, within servers only", ((c.src, c.dst, c.kind) for c in same),
                              {k: v for k, v in truth.items() if k[0].split("/")[0] == k[1].split("/")[0]}))
    cross = [c for c in cands if c.src.split("/")[0] != c.dst.split("/")[0]]
    rows.append(measure_edges("candidates, across servers only", ((c.src, c.dst, c.kind) for c in cross),
                              {k: v for k, v in truth.items() if k[0].split("/")[0] != k[1].split("/")[0]}))
    second = {(e["src"], e["dst"]): e["kind"] for e in
              json.loads(real_servers.HELDOUT_LABELS.read_text("utf-8"))["edges"]}
    more, _ = generate_candidates(real_servers.load_heldout(), min_score=args.threshold)
    rows.append(measure_edges(f"second set (github + google-maps, {len(second)} true), min_score {args.threshold}",
                              ((c.src, c.dst, c.kind) for c in more), second))
    blind = {(e["src"], e["dst"]): e["kind"] for e in json.loads(real_servers.BLIND_LABELS.read_text("utf-8"))["edges"]}
    more, _ = generate_candidates(real_servers.load_blind(), min_score=args.threshold)
    rows.append(measure_edges(f"blind set (slack, {len(blind)} true, random precision 0.286), min_score "
                              f"{args.threshold}", ((c.src, c.dst, c.kind) for c in more), blind))
    union: list[GraphEdge] = [GraphEdge(src=c.src, dst=c.dst, kind=c.kind, bindings=c.bindings, score=c.score,
                                        provenance="schema", rationale=c.rationale or None) for c in cands]
    extra = []
    if args.live:
        names = [s.name for s in servers if real_servers.available(s.name)]
        with tempfile.TemporaryDirectory() as tmp:
            scratch = real_servers.make_scratch(Path(tmp))
            live = [s.model_copy(update={"launch": real_servers.launch(s.name, scratch)}) for s in servers
                    if s.name in names]
            seeds = real_servers.seeds(scratch)
            t0 = time.perf_counter()
            traced, tstats = anyio.run(lambda: _graph_trace_edges(live, seeds))
            trace_s = time.perf_counter() - t0
        rows.append(measure_edges(f"trace ({', '.join(names)})", ((e.src, e.dst, None) for e in traced), truth))
        extra.append(f"trace: {tstats['calls']} calls ({tstats['failed_calls']} failed), "
                     f"{tstats['refused_tools']} tools refused (not read-only), {trace_s:.1f} s")
        union += traced
    if args.model:
        chains, verified, calls, failed = anyio.run(
            lambda: _llm_edges(args.model, servers, cands, args.batch, not args.no_verify))
        rows.append(measure_edges(f"server_chains ({args.model})", ((e.src, e.dst, e.kind) for e in chains), truth))
        if not args.no_verify:
            rows.append(measure_edges(f"candidates verified by {args.model}",
                                      ((e.src, e.dst, e.kind) for e in verified), truth))
        extra.append(f"LLM: {calls} calls, {failed} failed replies")
        union += chains
    if len(union) > len(cands):
        merged = merge_edges(union)
        rows.append(measure_edges("union (merged)", ((e.src, e.dst, e.kind) for e in merged), truth))
    for row in rows:
        print(row.summary())
    for line in extra:
        print(line)
    print(f"candidate generation: {gen_ms:.0f} ms; {stats['candidates']} candidates "
          f"({stats['cross_server_candidates']} across servers, {stats['order_candidates']} order)")
    goal = main_row.recall >= 0.8 and main_row.precision >= 0.25
    print(f"goal (candidates: recall >= 0.8 at precision >= 0.25): {'MET' if goal else 'MISSED'}")
    return 0 if goal else 1


async def _graph_trace_edges(servers: list, seeds: dict) -> tuple[list[GraphEdge], dict]:
    from astra.synthesis.trajectories._graph_trace import trace_edges

    return await trace_edges(servers, seeds=seeds)


if __name__ == "__main__":
    raise SystemExit(main())
