"""Stage 1: the tool dependency graph.

Candidate edges come from the schemas: an output field of tool A (``output_schema``
properties, else what A's name and description say it returns) that can feed an input
parameter of tool B (name, type and description similarity). Candidates are found through an
inverted index over normalised tokens, per domain, so the work grows with the matches, not
with tools squared. An LLM then verifies candidates in batches and proposes argument bindings
(LLM calls grow with candidates); optionally it proposes whole chains per server (the
original ASTRA method). Edges keep provenance and score.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from astra.records import GraphEdge, ServerSpec, ToolSpec, stable_id

_STOP = frozenset(
    "a an the of to for in on by with and or from is are be this that it its as at any all get set "
    "list use used using given which will can optional required value values new e g eg if not no "
    "return returns returned the specified specify".split()
)
_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# JSON types that can carry each other's values (a number can fill a string parameter, ...)
_COMPATIBLE = {
    ("integer", "number"), ("number", "integer"), ("integer", "string"), ("number", "string"),
    ("string", "integer"), ("string", "number"), ("array", "string"), ("object", "string"),
}


def _stem(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) >= 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def tokens(text: str | None) -> list[str]:
    """Normalised tokens: camelCase and snake_case split, lower-cased, stop words dropped, plurals folded."""
    if not text:
        return []
    text = _CAMEL.sub(" ", text).lower()
    return [_stem(t) for t in _SPLIT.split(text) if t and t not in _STOP and len(t) > 1]


def _type_of(schema: Any) -> str | None:
    if not isinstance(schema, dict):
        return None
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return t if isinstance(t, str) else None


def types_compatible(out_type: str | None, in_type: str | None) -> bool:
    if out_type is None or in_type is None or out_type == in_type:
        return True
    return (out_type, in_type) in _COMPATIBLE


@dataclass(slots=True)
class _Field:
    name: str
    type: str | None
    name_tokens: list[str]
    desc_tokens: list[str]


class Candidate(BaseModel):
    """A schema-derived candidate edge, before verification."""

    src: str
    dst: str
    score: float = Field(ge=0.0, le=1.0)
    bindings: dict[str, str] = Field(default_factory=dict, description="dst param -> src output field")
    domain: str | None = None


def output_fields(tool: ToolSpec) -> list[_Field]:
    """What a tool returns: its output_schema properties, else a pseudo-field from name and description."""
    props = (tool.output_schema or {}).get("properties") if isinstance(tool.output_schema, dict) else None
    fields: list[_Field] = []
    if isinstance(props, dict) and props:
        for name, sub in props.items():
            desc = sub.get("description") if isinstance(sub, dict) else None
            fields.append(_Field(name=name, type=_type_of(sub), name_tokens=tokens(name), desc_tokens=tokens(desc)))
            # one level down: {"items": [{"id": ...}]} style results feed id parameters
            inner = sub.get("items", {}).get("properties") if isinstance(sub, dict) and isinstance(sub.get("items"), dict) else None
            if isinstance(inner, dict):
                for iname, isub in inner.items():
                    idesc = isub.get("description") if isinstance(isub, dict) else None
                    fields.append(_Field(name=f"{name}[].{iname}", type=_type_of(isub),
                                         name_tokens=tokens(f"{name} {iname}"), desc_tokens=tokens(idesc)))
    else:
        # no output schema: the result is text; the tool's name says what it is about
        fields.append(_Field(name="result", type=None, name_tokens=tokens(tool.name),
                             desc_tokens=tokens(tool.description)[:40]))
    return fields


def input_params(tool: ToolSpec) -> list[tuple[_Field, bool]]:
    props = tool.input_schema.get("properties") if isinstance(tool.input_schema, dict) else None
    required = set(tool.input_schema.get("required") or []) if isinstance(tool.input_schema, dict) else set()
    out: list[tuple[_Field, bool]] = []
    if isinstance(props, dict):
        for name, sub in props.items():
            desc = sub.get("description") if isinstance(sub, dict) else None
            out.append((_Field(name=name, type=_type_of(sub), name_tokens=tokens(name), desc_tokens=tokens(desc)), name in required))
    return out


def generate_candidates(
    servers: Sequence[ServerSpec],
    *,
    cross_server: bool = True,
    min_score: float = 0.35,
    max_sources_per_tool: int = 6,
    max_df: float = 0.05,
) -> tuple[list[Candidate], dict[str, Any]]:
    """Candidate edges from schemas, within each server and across servers of one domain.

    Per matching scope (a domain, or a lone server) an inverted index maps each normalised
    token of an input parameter (name and description) to the parameters that contain it;
    each output field of each tool looks up its own tokens. Tokens found in more than
    ``max_df`` of a scope's parameters (and at least 50 of them) carry no signal and are not
    indexed, so a lookup touches only informative matches. Returns (candidates, stats).
    """
    scopes: dict[str, list[ToolSpec]] = defaultdict(list)
    domain_of: dict[str, str | None] = {}
    for server in servers:
        key = f"domain:{server.domain}" if (cross_server and server.domain) else f"server:{server.name}"
        for tool in server.tools:
            scopes[key].append(tool if tool.server == server.name else tool.model_copy(update={"server": server.name}))
        domain_of[server.name] = server.domain
    candidates: list[Candidate] = []
    stats = {"scopes": len(scopes), "tools": sum(len(v) for v in scopes.values()), "postings_visited": 0, "pairs_scored": 0}
    for tools in scopes.values():
        found, visited, pairs = _scope_candidates(tools, min_score, max_sources_per_tool, max_df)
        stats["postings_visited"] += visited
        stats["pairs_scored"] += pairs
        for cand in found:
            cand.domain = domain_of.get(cand.src.split("/", 1)[0])
        candidates.extend(found)
    stats["candidates"] = len(candidates)
    return candidates, stats


def _scope_candidates(
    tools: list[ToolSpec], min_score: float, max_sources: int, max_df: float
) -> tuple[list[Candidate], int, int]:
    # flat per-parameter arrays (plain lists: this loop is the hot path at 19k tools)
    p_tool: list[int] = []
    p_name: list[str] = []
    p_key: list[str] = []
    p_type: list[str | None] = []
    p_toks: list[frozenset[str]] = []
    index: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for ti, tool in enumerate(tools):
        for field, required in input_params(tool):
            pid = len(p_tool)
            p_tool.append(ti)
            p_name.append(field.name)
            p_key.append("=" + "_".join(field.name_tokens))
            p_type.append(field.type)
            boost = 1.0 if required else 0.8
            seen: set[str] = set()
            if field.name_tokens:  # the whole name: 'user_id' is rare even where 'id' is everywhere
                index[p_key[-1]].append((pid, boost))
            for tok in field.name_tokens:
                if tok not in seen:
                    index[tok].append((pid, boost))
                    seen.add(tok)
            for tok in field.desc_tokens[:12]:
                if tok not in seen:
                    index[tok].append((pid, 0.5 * boost))
                    seen.add(tok)
            p_toks.append(frozenset(seen))
    n_params = len(p_tool) or 1
    cap = max(50, int(max_df * n_params))
    idf = {tok: math.log(1 + n_params / len(post)) for tok, post in index.items()}
    p_norm = [sum(idf[t] for t in toks) or 1.0 for toks in p_toks]
    p_floor = [min_score * n for n in p_norm]
    p_server = [tools[ti].server for ti in p_tool]
    compatible = _COMPATIBLE

    visited = 0
    pairs = 0
    # Many tools share output fields (id, url, user_id ...): the matches of one field signature
    # are computed once and reused; per source tool only self-links and the cross-server
    # penalty remain to be applied.
    matches_of: dict[tuple[Any, ...], list[tuple[int, float]]] = {}

    def field_matches(field: _Field) -> list[tuple[int, float]]:
        nonlocal visited
        name_toks = set(field.name_tokens)
        key = "=" + "_".join(field.name_tokens) if field.name_tokens else None
        lookups = [(t, 1.0) for t in sorted(name_toks) if 0 < len(index.get(t, ())) <= cap]
        lookups += [(t, 0.5) for t in dict.fromkeys(field.desc_tokens[:8])
                    if t not in name_toks and 0 < len(index.get(t, ())) <= cap]
        use_key = key is not None and 0 < len(index.get(key, ())) <= 4 * cap  # whole names earn more lookups
        sig = (field.name, field.type, tuple(lookups), key if use_key else None)
        cached = matches_of.get(sig)
        if cached is not None:
            return cached
        acc: dict[int, float] = defaultdict(float)
        for tok, w0 in lookups:
            posting = index[tok]
            visited += len(posting)
            w = idf[tok] * w0
            for pid, boost in posting:
                acc[pid] += w * boost
        if use_key:
            posting = index[key]  # type: ignore[index]
            visited += len(posting)
            w = 2.0 * idf[key]  # type: ignore[index]
            for pid, boost in posting:
                acc[pid] += w * boost
        ftype = field.type
        from_text = field.name == "result"
        found: list[tuple[int, float]] = []
        for pid, raw in acc.items():
            exact = key is not None and (p_key[pid] == key or p_name[pid] == field.name)
            if raw < p_floor[pid] and not exact:
                continue  # below min_score before any penalty: the common case, decided cheaply
            ptype = p_type[pid]
            if ftype is not None and ptype is not None and ftype != ptype and (ftype, ptype) not in compatible:
                continue
            score = min(1.0, raw / p_norm[pid])
            if exact:
                score = max(score, 0.95)
            if from_text:  # only a description says what comes out
                score *= 0.7
            if score >= min_score:
                found.append((pid, score))
        matches_of[sig] = found
        return found

    best_per_dst: dict[int, dict[int, tuple[float, dict[str, str]]]] = defaultdict(dict)
    for si, tool in enumerate(tools):
        src_server = tool.server
        hits: dict[int, tuple[float, str]] = {}  # dst param -> (score, src field)
        for field in output_fields(tool):
            for pid, score in field_matches(field):
                if p_tool[pid] == si:
                    continue
                pairs += 1
                if p_server[pid] != src_server:
                    score *= 0.9  # a cross-server link needs more evidence than one inside a server
                    if score < min_score:
                        continue
                prev = hits.get(pid)
                if prev is None or score > prev[0]:
                    hits[pid] = (score, field.name)
        per_dst: dict[int, tuple[float, dict[str, str]]] = {}
        for pid, (score, fname) in hits.items():
            ti = p_tool[pid]
            cur = per_dst.get(ti)
            if cur is None:
                per_dst[ti] = (score, {p_name[pid]: fname})
            else:
                cur[1][p_name[pid]] = fname
                per_dst[ti] = (max(cur[0], score), cur[1])
        for ti, value in per_dst.items():
            best_per_dst[ti][si] = value
    out: list[Candidate] = []
    for ti, sources in best_per_dst.items():
        ranked = sorted(sources.items(), key=lambda kv: (-kv[1][0], kv[0]))[:max_sources]
        dst = tools[ti].qualified_name
        for si, (score, bindings) in ranked:
            out.append(Candidate.model_construct(src=tools[si].qualified_name, dst=dst, score=round(score, 4),
                                                 bindings=bindings, domain=None))
    out.sort(key=lambda c: (c.src, c.dst))
    return out, visited, pairs


def batch_candidates(candidates: Iterable[Candidate], batch_size: int) -> list[tuple[str, list[Candidate]]]:
    """Candidates grouped by domain (or server), cut into batches of ``batch_size``; stable ids."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[c.domain or c.src.split("/", 1)[0]].append(c)
    batches: list[tuple[str, list[Candidate]]] = []
    for key in sorted(groups):
        items = groups[key]
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            batches.append((stable_id("edge-batch", [(c.src, c.dst) for c in chunk], prefix="eb-"), chunk))
    return batches


def server_pair_count(servers: Sequence[ServerSpec], cross_server: bool = True) -> int:
    """The baseline: one LLM call per ordered server pair inside a scope (a server with itself included)."""
    scopes: dict[str, int] = defaultdict(int)
    for s in servers:
        scopes[f"domain:{s.domain}" if (cross_server and s.domain) else f"server:{s.name}"] += 1
    return sum(n * n for n in scopes.values())


# ----------------------------------------------------------------------------- LLM side


class EdgeVerdict(BaseModel):
    index: int
    valid: bool
    score: float = Field(default=0.5, ge=0.0, le=1.0)
    bindings: dict[str, str] = Field(default_factory=dict)
    reason: str = ""


class EdgeVerdicts(BaseModel):
    items: list[EdgeVerdict]


class ProposedChains(BaseModel):
    chains: list[list[str]]


EDGE_PROMPT_VERSION = "edges-v1"
CHAIN_PROMPT_VERSION = "server-chains-v1"
EDGE_SYSTEM = (
    "You check dependencies between API tools. A dependency A -> B holds when a value that A returns "
    "is a sensible argument of B in a real workflow. Reply with JSON only."
)


def _tool_brief(tool: ToolSpec, *, outputs: bool) -> dict[str, Any]:
    brief: dict[str, Any] = {"name": tool.qualified_name, "description": (tool.description or "")[:300]}
    props = tool.input_schema.get("properties", {}) if isinstance(tool.input_schema, dict) else {}
    brief["parameters"] = {k: (v.get("type") if isinstance(v, dict) else None) for k, v in list(props.items())[:12]}
    if outputs:
        brief["returns"] = [f.name for f in output_fields(tool)][:12]
    return brief


def edge_prompt(batch: Sequence[Candidate], tools: dict[str, ToolSpec]) -> str:
    lines = []
    for i, c in enumerate(batch):
        lines.append(json.dumps({
            "index": i,
            "from": _tool_brief(tools[c.src], outputs=True),
            "to": _tool_brief(tools[c.dst], outputs=False),
            "proposed_bindings": c.bindings,
        }, ensure_ascii=False))
    return (
        "For each candidate dependency below decide whether the output of `from` can feed the "
        "parameters of `to`. Give the argument bindings as {\"<to parameter>\": \"<from output field>\"}, "
        "and a confidence score in [0, 1].\n\n" + "\n".join(lines) + "\n\n"
        'Reply as {"items": [{"index": 0, "valid": true, "score": 0.8, "bindings": {"param": "field"}, '
        '"reason": "..."}, ...]} with one item per candidate.'
    )


def verdicts_to_edges(
    batch: Sequence[Candidate], verdicts: EdgeVerdicts, tools: dict[str, ToolSpec], min_score: float
) -> tuple[list[GraphEdge], dict[str, int]]:
    """Accepted edges with bindings restricted to real parameters; counts of why others were not."""
    edges: list[GraphEdge] = []
    why: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for v in verdicts.items:
        if not 0 <= v.index < len(batch) or v.index in seen:
            why["bad_index"] += 1
            continue
        seen.add(v.index)
        cand = batch[v.index]
        if not v.valid:
            why["rejected"] += 1
            continue
        if v.score < min_score:
            why["low_score"] += 1
            continue
        dst_props = tools[cand.dst].input_schema.get("properties", {}) or {}
        bindings = {p: str(f) for p, f in v.bindings.items() if p in dst_props} or cand.bindings
        edges.append(GraphEdge(src=cand.src, dst=cand.dst, kind="data", bindings=bindings,
                               score=round(v.score, 4), provenance="llm", rationale=v.reason[:500] or None))
    why["unanswered"] += len(batch) - len(seen)
    return edges, {k: n for k, n in why.items() if n}


def chain_prompt(server: ServerSpec) -> str:
    tools = [_tool_brief(t.model_copy(update={"server": server.name}), outputs=True) for t in server.tools[:40]]
    return (
        f"Server {server.name}: {server.description[:300]}\nTools:\n"
        + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        + "\n\nPropose realistic multi-step workflows on these tools, where each tool uses what the one before "
        'returned. Reply as {"chains": [["server/tool_a", "server/tool_b", ...], ...]} using the exact names.'
    )


def chains_to_edges(server: ServerSpec, proposed: ProposedChains) -> tuple[list[GraphEdge], int]:
    names = {f"{server.name}/{t.name}" for t in server.tools}
    short = {t.name: f"{server.name}/{t.name}" for t in server.tools}
    edges: dict[tuple[str, str], GraphEdge] = {}
    bad = 0
    for chain in proposed.chains:
        resolved = [n if n in names else short.get(n) for n in chain]
        if len(resolved) < 2 or any(r is None for r in resolved) or len(set(resolved)) != len(resolved):
            bad += 1
            continue
        for a, b in zip(resolved, resolved[1:], strict=False):
            edges[(a, b)] = GraphEdge(src=a, dst=b, kind="order", score=0.6, provenance="llm",  # type: ignore[arg-type]
                                      rationale="proposed as part of a server chain")
    return list(edges.values()), bad


def merge_edges(edges: Iterable[GraphEdge]) -> list[GraphEdge]:
    """One edge per (src, dst): a data edge beats an order edge, then the higher score wins."""
    best: dict[tuple[str, str], GraphEdge] = {}
    for e in edges:
        cur = best.get((e.src, e.dst))
        if cur is None or (e.kind == "data", e.score) > (cur.kind == "data", cur.score):
            best[(e.src, e.dst)] = e
    return [best[k] for k in sorted(best)]
