"""Stage 2: chain sampling on the tool graph (networkx), plus tool sets without a chain."""

from __future__ import annotations

import random
from collections.abc import Sequence

import networkx as nx
from pydantic import BaseModel

from astra.records import ChainCall, ToolChain, ToolGraph, stable_id
from astra.registry import to_networkx


class Coverage(BaseModel):
    tools: int
    tools_covered: int
    edges: int
    edges_covered: int

    @property
    def tool_share(self) -> float:
        return self.tools_covered / self.tools if self.tools else 0.0

    @property
    def edge_share(self) -> float:
        return self.edges_covered / self.edges if self.edges else 0.0

    def summary(self) -> dict[str, float | int]:
        return {**self.model_dump(), "tool_share": round(self.tool_share, 4), "edge_share": round(self.edge_share, 4)}


def _chain_from_path(path: Sequence[str], g: nx.DiGraph[str], graph: ToolGraph) -> ToolChain:
    calls = [ChainCall(tool=path[0])]
    for i in range(1, len(path)):
        bindings = g.edges[path[i - 1], path[i]].get("bindings") or {}
        calls.append(ChainCall(tool=path[i], bindings={p: f"{i - 1}.{f}" for p, f in bindings.items()}))
    return ToolChain(id=stable_id("chain", list(path), prefix="ch-"), calls=calls, kind="chain",
                     graph=graph.name, graph_version=graph.version)


def sample_walks(
    graph: ToolGraph,
    *,
    num_chains: int,
    min_length: int = 2,
    max_length: int = 5,
    seed: int = 0,
    uncovered_weight: float = 4.0,
    max_attempts: int | None = None,
) -> tuple[list[tuple[str, ToolChain | None, str | None]], set[str], set[tuple[str, str]]]:
    """Acyclic, seeded random walks weighted towards tools not yet covered.

    Returns one (attempt id, chain or None, drop reason) per attempt, plus the covered
    tools and edges. Deterministic for a given graph and seed.
    """
    rng = random.Random(seed)
    g = to_networkx(graph)
    starts = sorted(n for n in g.nodes if g.out_degree(n) > 0)
    attempts: list[tuple[str, ToolChain | None, str | None]] = []
    covered: set[str] = set()
    covered_edges: set[tuple[str, str]] = set()
    seen: set[tuple[str, ...]] = set()
    if not starts or num_chains <= 0:
        return attempts, covered, covered_edges
    max_attempts = max_attempts or num_chains * 5
    kept = 0
    for attempt in range(max_attempts):
        if kept >= num_chains:
            break
        target = rng.randint(min_length, max_length)
        weights = [uncovered_weight if n not in covered else 1.0 for n in starts]
        path = [rng.choices(starts, weights=weights)[0]]
        while len(path) < target:
            succ = sorted(s for s in g.successors(path[-1]) if s not in path)  # acyclic: never revisit
            if not succ:
                break
            w = [
                max(g.edges[path[-1], s]["score"], 1e-3) * (uncovered_weight if s not in covered else 1.0) for s in succ
            ]
            path.append(rng.choices(succ, weights=w)[0])
        attempt_id = f"walk-{seed}-{attempt}"
        key = tuple(path)
        if len(path) < min_length:
            attempts.append((attempt_id, None, f"too_short: dead end after {len(path)} tool(s)"))
        elif key in seen:
            attempts.append((attempt_id, None, "duplicate"))
        else:
            seen.add(key)
            kept += 1
            covered.update(path)
            covered_edges.update(zip(path, path[1:], strict=False))
            attempts.append((attempt_id, _chain_from_path(path, g, graph), None))
    return attempts, covered, covered_edges


def sample_toolsets(
    graph: ToolGraph, *, count: int, max_size: int = 3, seed: int = 0, covered: set[str] | None = None
) -> list[ToolChain]:
    """Single- and multi-tool sets (1..max_size tools of one server) without a chain; uncovered tools first."""
    rng = random.Random(seed + 7919)
    by_server: dict[str, list[str]] = {}
    for n in sorted(graph.nodes):
        by_server.setdefault(n.split("/", 1)[0], []).append(n)
    covered = set(covered or ())
    out: list[ToolChain] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(count * 5):
        if len(out) >= count or not graph.nodes:
            break
        uncovered = sorted(set(graph.nodes) - covered)
        first = rng.choice(uncovered or sorted(graph.nodes))
        pool = [t for t in by_server[first.split("/", 1)[0]] if t != first]
        size = rng.randint(1, max_size)
        picked = [first, *rng.sample(pool, min(size - 1, len(pool)))]
        key = tuple(sorted(picked))
        if key in seen:
            continue
        seen.add(key)
        covered.update(picked)
        out.append(
            ToolChain(
                id=stable_id("toolset", list(key), prefix="ts-"),
                calls=[ChainCall(tool=t) for t in picked],
                kind="toolset",
                graph=graph.name,
                graph_version=graph.version,
            )
        )
    return out


def coverage(graph: ToolGraph, chains: Sequence[ToolChain]) -> Coverage:
    tools = {c.tool for ch in chains for c in ch.calls}
    edges = {
        (a.tool, b.tool) for ch in chains if ch.kind == "chain" for a, b in zip(ch.calls, ch.calls[1:], strict=False)
    }
    graph_edges = {(e.src, e.dst) for e in graph.edges}
    return Coverage(tools=len(graph.nodes), tools_covered=len(tools & set(graph.nodes)),
                    edges=len(graph_edges), edges_covered=len(edges & graph_edges))
