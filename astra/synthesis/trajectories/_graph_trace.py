"""Execution-grounded tool-graph edges (opt-in): call read-only tools of live servers and link
a real output value to the parameters of other tools that it fits.

Only tools whose annotations say read-only (``readOnlyHint``), or that the caller names in
``allow``, are ever called: a server without annotations is not called at all. Start the
servers on a scratch world (their launches' working directory and arguments), never on data
that matters. Calls start from ``seeds`` (argument values by parameter name or semantic type)
and go on, for a few rounds, with values earlier calls returned. An edge ``A -> B`` is
proposed when a value from A's output

- was passed to B's parameter in a call that succeeded (B is read-only too): score 0.95; or
- has the parameter's JSON type and passes the check of its semantic type (an existing path,
  a commit hash, an IANA time zone, a URL, an ISO time, a name another call accepted ...):
  score 0.75, for tools that cannot be called.

Every edge has provenance ``trace`` and its rationale quotes the value and where it came from.
"""

from __future__ import annotations

import contextlib
import json
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jsonschema import Draft202012Validator
from mcp.client import Client

from astra.records import GraphEdge, HttpLaunch, ServerSpec, StdioLaunch, ToolSpec
from astra.registry import client_target, failure_reason
from astra.synthesis.trajectories._graph import SemType, ToolProfile, TypedField, profile_servers, walk_schema

__all__ = ["trace_edges", "read_only", "extract_values", "Observed"]

_SHA = re.compile(r"\b[0-9a-f]{7,40}\b")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>)\]]+", re.I)
_ABS_PATH = re.compile(r"(?<![\w/:])/(?:[\w.@+-]+/)*[\w.@+-]+")
_LISTED = re.compile(r"^\s*(?:\[(?:FILE|DIR)\]|[*+-]|\d+[.)])\s+(\S.*?)\s*$")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][\w -]{0,30}):\s+'?(\S[^']*?)'?\s*$")
_HHMM = re.compile(r"^\d{1,2}:\d{2}$")
_NAMEISH = re.compile(r"^[\w][\w./@+-]{0,120}$")
_FAILED = re.compile(r"\b(error|failed|denied|not found|no such|invalid)\b", re.I)  # an error told as text
_TIMEZONES = frozenset(zoneinfo.available_timezones())
# semantic types a value can be checked for without calling anyone
_CHECKED = (SemType.REVISION, SemType.PATH, SemType.URL, SemType.TIMEZONE, SemType.TIME)


def read_only(tool: ToolSpec) -> bool:
    """True only when the tool's annotations say so (absent annotations are not read-only)."""
    ann = tool.annotations or {}
    return ann.get("readOnlyHint", ann.get("read_only_hint")) is True


@dataclass(slots=True)
class Observed:
    """A value a tool returned (or a seed), with the semantic types it passed checks for."""

    value: Any
    src: str | None  # qualified tool name; None for a seed
    path: str  # where in the output: "structured:entities[].name", "text:line", ...
    types: set[SemType] = field(default_factory=set)
    nameish: bool = False  # a bare word from a listing or a "name" field: checked by a successful call only
    accepted_by: set[SemType] = field(default_factory=set)  # types of parameters that accepted it in a call


def _classify(value: Any, roots: Sequence[Path] = ()) -> set[SemType]:
    if not isinstance(value, str) or not value or len(value) > 4096:
        return set()
    types: set[SemType] = set()
    v = value.strip()
    if _SHA.fullmatch(v):
        types.add(SemType.REVISION)
    if v in _TIMEZONES:
        types.add(SemType.TIMEZONE)
    if _HHMM.match(v):
        types.add(SemType.TIME)
    else:
        with contextlib.suppress(ValueError):
            datetime.fromisoformat(v)
            types.add(SemType.TIME)
    if "://" in v:
        parsed = urlparse(v)
        if parsed.scheme and (parsed.netloc or parsed.path):
            types.add(SemType.URL)
    if v.startswith("/") and "\n" not in v and len(v) < 1024:
        p = Path(v)
        # only inside the scratch world: "/dev/null" in a diff or "/root" in an error is no file to work on
        if any(p == r or r in p.parents for r in roots) and p.exists():
            types.add(SemType.PATH)
    return types  # free text (content, queries) fits anything: it is never evidence


def extract_values(result: Any, src: str, args: dict[str, Any], roots: Sequence[Path] = ()) -> list[Observed]:
    """Values in one call result: structured leaves (with their JSON path), then text: JSON
    leaves, listed entries (joined to the directory argument when relative), hashes, URLs,
    absolute paths and ``Key: value`` lines; the whole text as content."""
    found: list[Observed] = []
    seen: set[tuple[str, str]] = set()
    # a value the call was given and merely echoes back is not something this tool produces
    given = {str(v) for v in args.values() if not isinstance(v, (list, dict))}
    given |= {str(x) for v in args.values() if isinstance(v, list) for x in v}

    def add(value: Any, path: str, nameish: bool = False) -> None:
        if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
            return
        if str(value).strip() in given:
            return
        key = (repr(value), path)
        if key in seen or len(found) >= 400:
            return
        seen.add(key)
        found.append(Observed(value=value, src=src, path=path, types=_classify(value, roots), nameish=nameish))
        if isinstance(value, str) and "T" in value and SemType.TIME in found[-1].types:
            # the same instant as a clock time: parameters that take "HH:MM" accept this view of it
            with contextlib.suppress(ValueError):
                add(datetime.fromisoformat(value.strip()).strftime("%H:%M"), f"{path}|HH:MM")

    def walk(node: Any, path: str, leaf: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k, k)
        elif isinstance(node, list):
            for item in node[:50]:
                walk(item, f"{path}[]", leaf)
        else:
            add(node, f"structured:{path}", nameish=isinstance(node, str) and bool(_NAMEISH.match(node))
                and leaf.lower().endswith(("name", "names", "from", "to", "id")))

    structured = getattr(result, "structured_content", None)
    if isinstance(structured, dict):
        walk(structured, "")
    base = next((v for v in args.values() if isinstance(v, str) and v.startswith("/") and Path(v).is_dir()), None)
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        if not isinstance(text, str) or not text.strip():
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, (dict, list)):
            walk(doc, "")
            continue
        add(text, "text", nameish=False)
        for line in text.splitlines()[:400]:
            m = _LISTED.match(line)
            if m:
                entry = m.group(1)
                add(entry, "text:listed", nameish=bool(_NAMEISH.match(entry)))
                if base and not entry.startswith("/"):
                    add(str(Path(base) / entry), "text:listed")
            kv = _KEY_VALUE.match(line)
            if kv:
                add(kv.group(2), f"text:{kv.group(1).strip().lower()}")
            for sha in _SHA.findall(line):
                add(sha, "text:hash")
            for url in _URL.findall(line):
                add(url.rstrip(".,;"), "text:url")
            for p in _ABS_PATH.findall(line):
                add(p, "text:path")
            stripped = line.strip()
            if stripped and _NAMEISH.match(stripped) and not m:
                add(stripped, "text:line", nameish=True)
    return found


def _param_schema(tool: ToolSpec, path: str) -> Any:
    for p, _leaf, _parent, _desc, sub, _req in walk_schema(tool.input_schema):
        if p == path:
            return sub
    return None


def _fits_json(schema: Any, value: Any) -> bool:
    if not isinstance(schema, dict):
        return True
    try:
        return Draft202012Validator(schema).is_valid(value)
    except Exception:  # noqa: BLE001 - a schema the validator cannot read decides nothing
        return False


def _fits(obs: Observed, param: TypedField, schema: Any) -> bool:
    """The value has the parameter's semantic type (checked) and JSON type."""
    if param.sem in obs.types or param.sem in obs.accepted_by:
        pass
    elif param.sem is SemType.REVISION and SemType.BRANCH in obs.accepted_by:
        pass
    else:
        return False
    value = obs.value
    if isinstance(schema, dict) and schema.get("type") == "array":
        value = [value]
    return _fits_json(schema, value)


def _callable_with(obs: Observed, param: TypedField, schema: Any) -> bool:
    """Worth trying in a call: checked to fit, or a name-like word for a name-like parameter."""
    if _fits(obs, param, schema):
        return True
    if not obs.nameish:
        return False
    if param.sem not in (SemType.BRANCH, SemType.REVISION, SemType.ENTITY, SemType.NAME, SemType.ID):
        return False
    value = [obs.value] if isinstance(schema, dict) and schema.get("type") == "array" else obs.value
    return _fits_json(schema, value)


def _top_level(param: TypedField) -> bool:
    return "." not in param.path and "[" not in param.path


@dataclass(slots=True)
class _Plan:
    args: dict[str, Any]
    fed: list[tuple[Observed, TypedField]]  # which observed values went into which parameters


def _plans(prof: ToolProfile, pool: list[Observed], seeds: dict[str, Any], limit: int) -> list[_Plan]:
    """Argument sets for one tool: seeds for what they name, then one observed value at a time."""
    tool = prof.tool
    props = tool.input_schema.get("properties") or {}
    required = list(tool.input_schema.get("required") or [])
    typed: dict[str, list[TypedField]] = defaultdict(list)
    for p in prof.params:
        if _top_level(p):
            typed[p.path].append(p)
    base: dict[str, Any] = {}
    for name, sub in props.items():
        by_type = [seeds[p.sem.value] for p in typed.get(name, ()) if p.sem.value in seeds]
        if name in seeds:
            base[name] = seeds[name]
        elif by_type:
            base[name] = by_type[0]
        elif name in required and isinstance(sub, dict) and sub.get("enum"):
            base[name] = sub["enum"][0]
        elif name in required and isinstance(sub, dict) and "default" in sub:
            base[name] = sub["default"]
    plans: list[_Plan] = []
    if all(r in base for r in required):
        plans.append(_Plan(dict(base), []))
    # one observed value into one typed parameter, the rest from seeds
    for name, param in ((n, p) for n, ps in typed.items() for p in ps):
        schema = props.get(name)
        for obs in pool:
            if obs.src is None or obs.src == tool.qualified_name or not _callable_with(obs, param, schema):
                continue
            args = dict(base)
            args[name] = [obs.value] if isinstance(schema, dict) and schema.get("type") == "array" else obs.value
            if all(r in args for r in required):
                plans.append(_Plan(args, [(obs, param)]))
    uniq: dict[str, _Plan] = {}
    for plan in plans:  # the same arguments reached from a seed and from an output: one call, all evidence
        key = json.dumps(plan.args, sort_keys=True, default=str)
        if key in uniq:
            uniq[key].fed.extend(plan.fed)
        else:
            uniq[key] = _Plan(plan.args, list(plan.fed))
    return list(uniq.values())[:limit]


CONTROL_VALUE = "astra-trace-control-no-such-value"


def _result_text(result: Any) -> str:
    parts = [json.dumps(getattr(result, "structured_content", None), sort_keys=True, default=str)]
    parts += [getattr(b, "text", "") or "" for b in getattr(result, "content", None) or []]
    return "\n".join(parts)


async def _control(client: Client, tool: ToolSpec, args: dict[str, Any], param: str, timeout_s: float) -> str | None:
    """The answer to the same call with a nonsense value in ``param`` (None when that fails)."""
    args = dict(args)
    args[param] = [CONTROL_VALUE] if isinstance(args.get(param), list) else CONTROL_VALUE
    try:
        result = await client.call_tool(tool.name, args, read_timeout_seconds=timeout_s)
    except Exception:  # noqa: BLE001 - failing on nonsense is what a checking parameter does
        return None
    return None if result.is_error else _result_text(result)


async def trace_edges(
    servers: Sequence[ServerSpec],
    *,
    seeds: dict[str, Any] | None = None,
    allow: Iterable[str] = (),
    calls_per_tool: int = 3,
    rounds: int = 3,
    timeout_s: float = 20.0,
) -> tuple[list[GraphEdge], dict[str, Any]]:
    """Edges grounded in real calls (see the module docstring). Returns (edges, stats)."""
    seeds = dict(seeds or {})
    allowed = set(allow)
    profiles = profile_servers(servers)
    by_server: dict[str, list[ToolProfile]] = defaultdict(list)
    for prof in profiles:
        by_server[prof.tool.server].append(prof)
    stats: dict[str, Any] = {"servers": 0, "callable_tools": 0, "refused_tools": 0, "calls": 0, "failed_calls": 0,
                             "values": 0, "unreachable": {}}
    pool: list[Observed] = []
    proven: dict[tuple[str, str], tuple[float, dict[str, str], str]] = {}
    roots = [Path(v) for v in seeds.values() if isinstance(v, str) and v.startswith("/") and Path(v).is_dir()]
    roots += [Path(s.launch.cwd) for s in servers if isinstance(s.launch, StdioLaunch) and s.launch.cwd]
    controls: dict[tuple[str, str], str | None] = {}  # (tool, param) -> what a nonsense value gives (None: error)
    calls_made: dict[str, int] = defaultdict(int)
    answers: dict[tuple[str, str], Any] = {}  # (tool, arguments) -> result, or None when the call failed

    def propose(obs: Observed, dst: ToolProfile, param: TypedField, score: float, how: str) -> None:
        assert obs.src is not None
        key = (obs.src, dst.tool.qualified_name)
        shown = obs.value
        if isinstance(shown, str) and len(shown) > 80:
            shown = shown[:80] + "..."
        why = f"{how}: {json.dumps(shown, ensure_ascii=False)} from {obs.path} -> {param.path} ({param.sem.value})"
        cur = proven.get(key)
        if cur is None or score > cur[0]:
            bindings = dict(cur[1]) if cur else {}
            bindings[param.path] = obs.path.split(":", 1)[-1] or "result"
            proven[key] = (score, bindings, why)

    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        for server in servers:
            if not isinstance(server.launch, (StdioLaunch, HttpLaunch)):
                continue
            callable_tools = [p for p in by_server[server.name]
                              if read_only(p.tool) or p.tool.qualified_name in allowed]
            stats["refused_tools"] += len(by_server[server.name]) - len(callable_tools)
            if not callable_tools:
                continue
            try:
                # timeouts through the client (a cancel scope must not wrap a context left open)
                client = Client(client_target(server.launch), read_timeout_seconds=timeout_s)
                clients[server.name] = await stack.enter_async_context(client)
            except Exception as exc:  # noqa: BLE001 - one unreachable server must not stop the others
                stats["unreachable"][server.name] = failure_reason(exc)[:200]
                continue
            stats["servers"] += 1
            stats["callable_tools"] += len(callable_tools)
        callable_profiles = [p for p in profiles if p.tool.server in clients
                             and (read_only(p.tool) or p.tool.qualified_name in allowed)]
        for _round in range(rounds):
            new_values: list[Observed] = []
            for prof in callable_profiles:
                name = prof.tool.qualified_name
                for plan in _plans(prof, pool, seeds, calls_per_tool * 4):
                    sig = (name, json.dumps(plan.args, sort_keys=True, default=str))
                    fresh = sig not in answers
                    if fresh:
                        if calls_made[name] >= calls_per_tool * rounds:
                            break
                        calls_made[name] += 1
                        stats["calls"] += 1
                        try:
                            result = await clients[prof.tool.server].call_tool(prof.tool.name, plan.args,
                                                                               read_timeout_seconds=timeout_s)
                        except Exception:  # noqa: BLE001 - a failed call is evidence of nothing
                            result = None
                        if result is None or result.is_error:
                            stats["failed_calls"] += 1
                            result = None
                        answers[sig] = result
                    result = answers[sig]
                    if result is None:
                        continue
                    for obs, param in plan.fed:
                        # evidence only if the value mattered: a nonsense value fails or gives another answer
                        ckey = (name, param.path)
                        if ckey not in controls:
                            controls[ckey] = await _control(clients[prof.tool.server], prof.tool, plan.args,
                                                            param.path, timeout_s)
                            stats["calls"] += 1
                        answer = _result_text(result)
                        if (controls[ckey] is not None and controls[ckey] == answer) or _FAILED.search(answer[:300]):
                            continue
                        obs.accepted_by.add(param.sem)
                        propose(obs, prof, param, 0.95, "call succeeded with")
                    if fresh:
                        new_values.extend(extract_values(result, name, plan.args, roots))
            pool.extend(new_values)
            stats["values"] += len(new_values)
            if not new_values:
                break
        # values that fit tools which cannot be called
        for dst in profiles:
            if dst.tool.server in clients and (read_only(dst.tool) or dst.tool.qualified_name in allowed):
                continue
            for param in dst.params:
                if param.new:
                    continue
                schema = _param_schema(dst.tool, param.path)
                for obs in pool:
                    target = dst.tool.qualified_name
                    if obs.src is None or obs.src == target or (obs.src, target) in proven:
                        continue
                    checked = param.sem in obs.types and param.sem in _CHECKED
                    if (checked or param.sem in obs.accepted_by) and _fits(obs, param, schema):
                        propose(obs, dst, param, 0.75, "fits")
    edges = [GraphEdge(src=s, dst=d, kind="data", bindings=b, score=score, provenance="trace", rationale=why[:500])
             for (s, d), (score, b, why) in sorted(proven.items())]
    stats["edges"] = len(edges)
    return edges, stats
