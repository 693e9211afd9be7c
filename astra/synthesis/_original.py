"""The original ASTRA's files (github.com/LianjiaTech/astra) in, its shapes out, its remote servers live.

Readers take the original's exact JSONL shapes and return our records, with one
``FILE:LINE: field: reason`` per broken line (never a traceback) and the rest kept:

- ``tasks.jsonl`` (task construction output, interaction input): ``{"query_info":
  {"generated_question", "target_tools", "augmented_query_info": {"mode", "augmented_question"}?,
  "query_score_info": {"quality_scores": {...}, "quality_reasoning": {...}}?, "server_analysis"?},
  "mcp_info": {"base_info", "call_info"?, "features"?}, "graph"?, "chain_info": {"sub_chain"}?}``.
  Each line is one task; an augmented line (the original writes one line per variation) is a
  task of its own whose provenance names its base question and augmentation mode. Our own
  :class:`~astra.records.Task` lines are read too.
- graph detect output (``1_gen_and_parse.py``): ``{"mcp_info", "graph": {"graph_detect":
  [{"tool_graph_detect": "yes", "tool_graph_detect_chain": [...], "tool_graph_detect_task"}],
  "num_chains", "raw_response"}}`` -> order edges (provenance ``llm``) of a :class:`ToolGraph`.
- sub-chains (``2_get_sub_chains.py``): ``graph.sub_chains: [[tool, ...], ...]`` -> chains.
- verified chains (``run_operators.py``, one line per sub-chain): ``chain_info: {"sub_chain",
  "operator_results": {"vote_verify_chain1": {"vote_result": {"is_valid"}}, "back_translation":
  {"vote_valid"}}}`` -> chains that passed every operator (the others are dropped with the reason).
- environment pipeline inputs: ``questions.jsonl`` ``{"question", "domain"}`` (no answer: see
  :mod:`astra.synthesis.environments._qa`) and the knowledge corpus ``{"domain", "knowledge_corpus"}``.
- environment results (``step_01`` .. ``step_04`` outputs): ``{"uuid", "main_question",
  "final_answer", "decomposition_trace": [{"_uuid", "hop_level", "sub_question", "is_parallel",
  "dependency", "sub_answer", "tool_necessity"?, "reason"?}], "tool_necessity_legitimacy"?,
  "verify_result": {"score", "extra_info"}?, "env_result": {"<_uuid>": {"question", "answer",
  "env_synthesis_result": {"data": {"tool_document", "tool_call_statement", "code", "tool_call_ans"}}}
  | null}?}`` -> QA items, decompositions and (when present) verified tool implementations.

Writers give the original's shapes beside ours: the interaction output (``query_info``,
``mcp_info``, ``trajectory``), the reward pipeline's input (``{"tools", "messages"}``) and its
output (``tool_concise``, ``final_answer``, ``tool_call``, ``tool_plan``, ``tool_understand``,
``query_understand``, ``query_plan`` as ``{"score", "extra_info"}``, and ``overall_score``).
A reward whose judge failed is never written (the original would write a "safe score").

Remote servers: :func:`plan_servers` decides per server whether a rollout calls the remote
endpoint of a ``call_info`` live (``live_remote`` and reachable) or simulates it, and says why.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from astra.errors import validation_problem
from astra.jsonutil import is_array, is_object
from astra.records import (
    ChainCall,
    Decomposition,
    DecompositionStep,
    GraphEdge,
    HttpLaunch,
    QAItem,
    Reward,
    ServerSpec,
    SimulatedLaunch,
    StdioLaunch,
    Task,
    ToolChain,
    ToolGraph,
    ToolSpec,
    Trajectory,
    stable_id,
)
from astra.registry import (
    RecordError,
    iter_json_lines,
    parse_astra_record,
    read_input_file,
    unwrap_mcp_info,
)
from astra.tools import function_object

__all__ = [
    "FORMAT",
    "QUALITY_KEYS",
    "Execution",
    "OriginalFile",
    "OriginalKind",
    "ServerPlan",
    "detect_kind",
    "original_question",
    "plan_servers",
    "read_env_results",
    "read_graph_detect",
    "read_knowledge_corpus",
    "read_sub_chains",
    "read_tasks",
    "read_verified_chains",
    "task_from_original",
    "to_original_reward",
    "to_original_trajectory",
]

FORMAT = "astra-original"

QUALITY_KEYS: dict[str, str] = {
    "tool_selection_difficulty": "tool_selection_difficulty",
    "tool_selection_uniqueness": "uniqueness",
    "question_quality": "question_quality",
    "scenario_realism": "realism",
}
"""The original's ``query_score_info.quality_scores`` (1-5) -> our task quality dimension ([0, 1])."""


class OriginalKind(StrEnum):
    """Which of the original's files a record comes from (detected from its shape)."""

    SERVERS = "mcp_servers"
    GRAPH_DETECT = "graph_detect"
    SUB_CHAINS = "sub_chains"
    VERIFIED_CHAINS = "verified_chains"
    TASKS = "tasks"
    ENV_RESULTS = "env_results"
    QUESTIONS = "questions"
    KNOWLEDGE = "knowledge_corpus"


class Execution(StrEnum):
    LIVE = "live"
    SIMULATED = "simulated"


@dataclass
class OriginalFile:
    """What a reader found: records, the servers named by ``mcp_info``, errors and notices."""

    path: str
    items: list[Any] = field(default_factory=list)
    servers: dict[str, ServerSpec] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list, metadata={"doc": "FILE:LINE: field: reason"})
    notices: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list, metadata={"doc": "(item id, reason) filtered out"})
    lines: int = 0


def _lines(path: str | os.PathLike[str], out: OriginalFile) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line, "FILE:LINE", object) for each good line; file and line errors go to ``out.errors``."""
    try:
        data = read_input_file(path)
    except RecordError as exc:
        out.errors.append(f"{path}:0: {exc.field}: {exc.reason}")
        return
    for lineno, doc in iter_json_lines(path, data):
        if doc is None:
            continue
        out.lines += 1
        where = f"{path}:{lineno}"
        if isinstance(doc, RecordError):
            out.errors.append(f"{where}: {doc.field}: {doc.reason}")
        elif not is_object(doc):
            out.errors.append(f"{where}: record: expected a JSON object, got {type(doc).__name__}")
        else:
            yield lineno, where, doc


def _fail(out: OriginalFile, where: str, exc: Exception) -> None:
    if isinstance(exc, RecordError):
        out.errors.append(f"{where}: {exc.field}: {exc.reason}")
    elif isinstance(exc, ValidationError):
        out.errors.append(validation_problem(where, exc))
    else:
        out.errors.append(f"{where}: record: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _server(doc: dict[str, Any], where: str, out: OriginalFile) -> ServerSpec | None:
    """The server of an ``mcp_info``-wrapped record (each distinct server reported once)."""
    if "mcp_info" not in doc:
        return None
    rejected: list[RecordError] = []
    notices: list[str] = []
    spec = parse_astra_record(unwrap_mcp_info(doc), source=where, rejected_tools=rejected, notices=notices)
    known = out.servers.get(spec.name)
    if known is None:
        out.servers[spec.name] = spec
        out.errors += [f"{where}: mcp_info.{e.field}: {e.reason} (tool left out; the rest of {spec.name!r} is kept)"
                       for e in rejected]
        out.notices += [f"{where}: mcp_info.{n}" for n in notices]
    elif known.model_dump(exclude={"source"}) != spec.model_dump(exclude={"source"}):
        out.notices.append(f"{where}: mcp_info: server {spec.name!r} differs from its first record "
                           f"({known.source}); the first is used")
    return out.servers[spec.name]


def _str(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RecordError(where, "missing" if value is None else "empty")
        return None
    if not isinstance(value, str):
        raise RecordError(where, f"expected str, got {type(value).__name__}")
    return value.strip()


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not is_object(value):
        raise RecordError(where, f"expected an object, got {type(value).__name__}")
    return value


def _names(value: Any, where: str) -> list[str]:
    """A tool-name list (the original also writes a comma-separated string)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not is_array(value):
        raise RecordError(where, f"expected a list of tool names, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise RecordError(f"{where}[{i}]", f"expected a tool name, got {type(v).__name__}")
    return [v.strip() for v in value]


def detect_kind(doc: dict[str, Any]) -> OriginalKind | None:
    """Which original file a record belongs to, from its shape (None: not an original record)."""
    if "query_info" in doc:
        return OriginalKind.TASKS
    if "decomposition_trace" in doc or "main_question" in doc:
        return OriginalKind.ENV_RESULTS
    if "knowledge_corpus" in doc:
        return OriginalKind.KNOWLEDGE
    if "question" in doc and "answer" not in doc and set(doc) <= {"question", "domain", "id", "uuid"}:
        return OriginalKind.QUESTIONS
    graph: dict[str, Any] = found if is_object(found := doc.get("graph")) else {}
    chain_info: dict[str, Any] = found if is_object(found := doc.get("chain_info")) else {}
    if "operator_results" in chain_info or "sub_chain" in chain_info:
        return OriginalKind.VERIFIED_CHAINS
    if "sub_chains" in graph:
        return OriginalKind.SUB_CHAINS
    if "graph_detect" in graph or "graph_detect" in doc:
        return OriginalKind.GRAPH_DETECT
    if "base_info" in doc or "mcp_info" in doc:
        return OriginalKind.SERVERS
    return None


# --------------------------------------------------------------------------- tasks


_WRAPPING_TAG = re.compile(r"^<(\w+)>(.*)</\1>$", re.DOTALL)


def original_question(query_info: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """(the question a rollout asks, the augmentation it comes from or None) — the original's
    ``extract_query``: the augmented question when there is one, else the generated one, with a
    wrapping ``<tag>...</tag>`` removed."""
    augmented = _obj(query_info.get("augmented_query_info"), "query_info.augmented_query_info")
    aug_q = _str(augmented, "augmented_question", "query_info.augmented_query_info.augmented_question",
                 required=False) if augmented else None
    question = aug_q or _str(query_info, "generated_question", "query_info.generated_question")
    assert question is not None
    match = _WRAPPING_TAG.match(question)
    if match:
        question = match.group(2).strip()
    if not question:
        raise RecordError("query_info.generated_question", "empty")
    return question, (augmented if aug_q else None)


def _quality(query_info: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    info = _obj(query_info.get("query_score_info"), "query_info.query_score_info")
    scores = _obj(info.get("quality_scores"), "query_info.query_score_info.quality_scores")
    quality: dict[str, float] = {}
    for theirs, ours in QUALITY_KEYS.items():
        if theirs not in scores:
            continue
        value = scores[theirs]
        where = f"query_info.query_score_info.quality_scores.{theirs}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(where, f"expected a number, got {type(value).__name__}")
        if not 1 <= value <= 5:
            raise RecordError(where, f"{value} is outside the original's 1-5 scale")
        quality[ours] = round((value - 1) / 4, 4)
    if quality:
        quality["overall"] = round(sum(quality.values()) / len(quality), 4)
    return quality, info


def task_from_original(doc: dict[str, Any], where: str, server: ServerSpec | None) -> Task:
    """One original ``tasks.jsonl`` line as a Task (raises :class:`RecordError`)."""
    query_info = _obj(doc.get("query_info"), "query_info")
    question, augmented = original_question(query_info)
    base_question = _str(query_info, "generated_question", "query_info.generated_question", required=augmented is None)
    tools = _names(query_info.get("target_tools"), "query_info.target_tools")
    chain_info = _obj(doc.get("chain_info"), "chain_info")
    sub_chain = _names(chain_info.get("sub_chain"), "chain_info.sub_chain")
    quality, score_info = _quality(query_info)
    server_name = server.name if server is not None else None
    if server is not None:
        known = {t.name for t in server.tools}
        unknown = [t for t in tools + sub_chain if t not in known]
        if unknown:
            raise RecordError("query_info.target_tools",
                              f"{sorted(set(unknown))} not among the tools of {server_name!r}")
    qualify = (lambda t: f"{server_name}/{t}") if server_name else (lambda t: t)
    mode = augmented.get("mode") if augmented else None
    base_id = stable_id(FORMAT, server_name, base_question, None, prefix="t-")
    task_id = stable_id(FORMAT, server_name, question, mode, prefix="t-") if augmented else base_id
    chain_id = stable_id(FORMAT, server_name, sub_chain, prefix="ch-") if sub_chain else None
    provenance: dict[str, Any] = {
        "format": FORMAT, "source": where,
        "variant": f"augmented:{mode}" if augmented else "base",
        "max_tool_use": query_info.get("max_tool_use"), "mode": query_info.get("mode"),
        "have_plan": query_info.get("have_plan"),
    }
    if augmented:
        provenance.update(base_task=base_id, base_question=base_question, augmentation_mode=mode)
    if sub_chain:
        provenance["sub_chain"] = sub_chain
    if query_info.get("server_analysis"):
        provenance["server_analysis"] = query_info["server_analysis"]
    if score_info:
        provenance["query_score_info"] = score_info
    return Task(
        id=task_id, user_turns=[question], target_tools=[qualify(t) for t in tools], chain_id=chain_id,
        difficulty="hard" if mode == "complicate" else None, quality=quality,
        servers=[server_name] if server_name else [], provenance={k: v for k, v in provenance.items() if v is not None},
    )


def read_tasks(path: str | os.PathLike[str]) -> OriginalFile:
    """Tasks from a JSONL file of the original's ``tasks.jsonl`` lines and/or our Task records.

    ``items``: unique tasks (a repeated question of the same server is reported once as a
    notice: the original samples each prompt many times); ``servers``: the servers of their
    ``mcp_info``; ``errors``: ``FILE:LINE: field: reason``.
    """
    out = OriginalFile(path=str(path))
    seen: dict[str, str] = {}
    for _, where, doc in _lines(path, out):
        try:
            if "query_info" in doc:
                task = task_from_original(doc, where, _server(doc, where, out))
            else:
                task = Task.model_validate(doc)
        except (RecordError, ValidationError, ValueError) as exc:
            _fail(out, where, exc)
            continue
        if task.id in seen:
            out.notices.append(f"{where}: query_info: the same task as {seen[task.id]} (kept once)")
            continue
        seen[task.id] = where
        out.items.append(task)
    return out


# --------------------------------------------------------------------------- graph, sub-chains, verified chains


def read_graph_detect(path: str | os.PathLike[str], *, name: str | None = None) -> tuple[ToolGraph, OriginalFile]:
    """The original's graph detect output as one ToolGraph: each detected chain a -> b -> c
    gives order edges a->b, b->c (provenance ``llm``, rationale: the chain's task); a chain
    naming a tool its server does not have is reported and left out."""
    out = OriginalFile(path=str(path))
    nodes: set[str] = set()
    edges: dict[tuple[str, str], GraphEdge] = {}
    for _, where, doc in _lines(path, out):
        try:
            server = _server(doc, where, out) if "mcp_info" in doc else parse_astra_record(doc, source=where,
                                                                                       rejected_tools=[])
            if server is None:
                raise RecordError("mcp_info", "missing")
            out.servers.setdefault(server.name, server)
            graph = _obj(doc.get("graph"), "graph")
            detected = graph.get("graph_detect", doc.get("graph_detect", []))
            if not is_array(detected):
                raise RecordError("graph.graph_detect", f"expected a list, got {type(detected).__name__}")
        except (RecordError, ValueError) as exc:
            _fail(out, where, exc)
            continue
        known = {t.name for t in server.tools}
        nodes.update(f"{server.name}/{t}" for t in known)
        for i, item in enumerate(detected):
            field_ = f"graph.graph_detect[{i}]"
            if not is_object(item):
                out.errors.append(f"{where}: {field_}: expected an object, got {type(item).__name__}")
                continue
            if "new_chain" in item:  # the original's loader accepts this shape too
                chain = item["new_chain"]
            elif item.get("tool_graph_detect", "yes") != "yes":
                continue
            else:
                chain = item.get("tool_graph_detect_chain")
            try:
                chain = _names(chain, f"{field_}.tool_graph_detect_chain")
            except RecordError as exc:
                _fail(out, where, exc)
                continue
            missing = [t for t in chain if t not in known]
            if missing:
                out.errors.append(f"{where}: {field_}.tool_graph_detect_chain: {missing} not among the tools of "
                                  f"{server.name!r} (chain left out)")
                continue
            task = item.get("tool_graph_detect_task")
            rationale = task if isinstance(task, str) else None
            for a, b in pairwise(chain):
                if a == b:
                    continue
                key = (f"{server.name}/{a}", f"{server.name}/{b}")
                edges.setdefault(key, GraphEdge(src=key[0], dst=key[1], kind="order", provenance="llm",
                                                rationale=rationale))
    graph = ToolGraph(name=name or f"original-{Path(path).stem}", nodes=sorted(nodes), edges=list(edges.values()),
                      meta={"format": FORMAT, "source": str(path)})
    return graph, out


def _chain(server: ServerSpec, names: list[str], verification: dict[str, Any] | None = None) -> ToolChain:
    return ToolChain(id=stable_id(FORMAT, server.name, names, prefix="ch-"),
                     calls=[ChainCall(tool=f"{server.name}/{t}") for t in names], kind="chain",
                     acyclic=len(set(names)) == len(names), verification=verification or {})


def read_sub_chains(path: str | os.PathLike[str]) -> OriginalFile:
    """``graph.sub_chains`` of each server as ToolChains (one per sub-chain, duplicates once)."""
    out = OriginalFile(path=str(path))
    seen: set[str] = set()
    for _, where, doc in _lines(path, out):
        try:
            server = _server(doc, where, out)
            if server is None:
                raise RecordError("mcp_info", "missing")
            subs = _obj(doc.get("graph"), "graph").get("sub_chains")
            if not is_array(subs):
                raise RecordError("graph.sub_chains",
                                  "missing" if subs is None else f"expected a list, got {type(subs).__name__}")
            known = {t.name for t in server.tools}
            for i, sub in enumerate(subs):
                names = _names(sub, f"graph.sub_chains[{i}]")
                missing = [t for t in names if t not in known]
                if missing:
                    out.errors.append(f"{where}: graph.sub_chains[{i}]: {missing} not among the tools of "
                                      f"{server.name!r}")
                    continue
                chain = _chain(server, names)
                if chain.id not in seen and names:
                    seen.add(chain.id)
                    out.items.append(chain)
        except (RecordError, ValueError) as exc:
            _fail(out, where, exc)
    return out


def _operator_verdict(name: str, result: Any) -> tuple[bool | None, str]:
    """(passed, why) of one operator result of ``run_operators.py``; None: the operator failed."""
    if not is_object(result):
        return None, f"{name}: expected an object"
    if result.get("status") == "failed" or "error" in result and len(result) <= 2:
        return None, f"{name}: failed ({str(result.get('error'))[:80]})"
    if "vote_result" in result:
        valid = result["vote_result"].get("is_valid") if is_object(result["vote_result"]) else None
        return (valid if isinstance(valid, bool) else None), f"{name}: vote is_valid={valid}"
    if "vote_valid" in result:
        valid = result["vote_valid"]
        return (valid if isinstance(valid, bool) else None), f"{name}: back-translation vote_valid={valid}"
    if not result:
        return None, f"{name}: empty result (preview run)"
    return None, f"{name}: unknown operator result"


def read_verified_chains(path: str | os.PathLike[str]) -> OriginalFile:
    """Verified chains: ``items`` are those every operator passed (with the operator results as
    their verification record); ``dropped`` lists the others with the reason. An operator that
    failed (not a verdict) drops the chain as failed, never passes it."""
    out = OriginalFile(path=str(path))
    seen: set[str] = set()
    for _, where, doc in _lines(path, out):
        try:
            server = _server(doc, where, out)
            if server is None:
                raise RecordError("mcp_info", "missing")
            chain_info = _obj(doc.get("chain_info"), "chain_info")
            names = _names(chain_info.get("sub_chain"), "chain_info.sub_chain")
            if not names:
                raise RecordError("chain_info.sub_chain", "missing")
            missing = [t for t in names if t not in {t.name for t in server.tools}]
            if missing:
                raise RecordError("chain_info.sub_chain", f"{missing} not among the tools of {server.name!r}")
            results = _obj(chain_info.get("operator_results"), "chain_info.operator_results")
        except (RecordError, ValueError) as exc:
            _fail(out, where, exc)
            continue
        chain = _chain(server, names, {"format": FORMAT, "source": where, "operator_results": results})
        if chain.id in seen:
            continue
        seen.add(chain.id)
        verdicts = [_operator_verdict(n, r) for n, r in results.items()]
        if not verdicts:
            out.dropped.append((chain.id, "unverified: no operator results"))
        elif any(v is None for v, _ in verdicts):
            out.dropped.append((chain.id, "operator_failed: " + "; ".join(w for v, w in verdicts if v is None)))
        elif not all(v for v, _ in verdicts):
            out.dropped.append((chain.id, "operator_rejected: " + "; ".join(w for v, w in verdicts if not v)))
        else:
            out.items.append(chain)
    return out


# --------------------------------------------------------------------------- environment pipeline


def read_knowledge_corpus(path: str | os.PathLike[str]) -> OriginalFile:
    """``{"domain", "knowledge_corpus"}`` lines as (domain, corpus text or "" for a bare domain)."""
    out = OriginalFile(path=str(path))
    for _, where, doc in _lines(path, out):
        try:
            domain = _str(doc, "domain", "domain", required=False)
            corpus = doc.get("knowledge_corpus", "")
            if corpus is None:
                corpus = ""
            if not isinstance(corpus, str):
                raise RecordError("knowledge_corpus", f"expected str, got {type(corpus).__name__}")
            if not domain and not corpus.strip():
                raise RecordError("knowledge_corpus", "empty, and no domain")
        except RecordError as exc:
            _fail(out, where, exc)
            continue
        out.items.append((domain, corpus.strip()))
    return out


@dataclass
class EnvResult:
    """One line of the original's environment pipeline output, as our records."""

    qa: QAItem
    decomposition: Decomposition
    verify_score: float | None = None
    necessity_ok: bool | None = None
    tools: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"doc": "step id -> env_result data"})


def _step_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip() == "":
        raise RecordError(where, f"expected a step id (int or str), got {type(value).__name__}")
    return str(value).strip()


def read_env_results(path: str | os.PathLike[str]) -> OriginalFile:
    """The original's environment pipeline lines (step 1 to step 5 outputs) as :class:`EnvResult`."""
    out = OriginalFile(path=str(path))
    for _, where, doc in _lines(path, out):
        try:
            question = _str(doc, "main_question", "main_question") or ""  # required: None raised
            answer = doc.get("final_answer")
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                answer = str(answer)
            if answer is not None and not isinstance(answer, str):
                raise RecordError("final_answer", f"expected str, got {type(answer).__name__}")
            trace = doc.get("decomposition_trace")
            if not is_array(trace) or not trace:
                raise RecordError("decomposition_trace", "missing" if trace is None else "expected a non-empty list")
            meta = _obj(doc.get("_metadata"), "_metadata")
            domain = meta.get("domain") if isinstance(meta.get("domain"), str) else None
            steps: list[DecompositionStep] = []
            for i, raw in enumerate(trace):
                f = f"decomposition_trace[{i}]"
                step = _obj(raw, f)
                dep = step.get("dependency")
                if dep in (None, "", "null", "None"):
                    dep = []
                elif not is_array(dep):
                    dep = [dep]
                hop = step.get("hop_level", 1)
                if isinstance(hop, bool) or not isinstance(hop, int):
                    raise RecordError(f"{f}.hop_level", f"expected int, got {type(hop).__name__}")
                sub_answer = step.get("sub_answer")
                if isinstance(sub_answer, (int, float)) and not isinstance(sub_answer, bool):
                    sub_answer = str(sub_answer)
                steps.append(DecompositionStep(
                    id=_step_id(step.get("_uuid"), f"{f}._uuid"), hop=hop,
                    sub_question=_str(step, "sub_question", f"{f}.sub_question") or "",
                    depends_on=[_step_id(d, f"{f}.dependency") for d in dep],
                    is_parallel=bool(step.get("is_parallel", False)),
                    sub_answer=_str({"v": sub_answer}, "v", f"{f}.sub_answer") or "",
                    needs_tool=step.get("tool_necessity") if isinstance(step.get("tool_necessity"), bool) else None,
                    reason=step.get("reason") if isinstance(step.get("reason"), str) else None,
                ))
            ids = [s.id for s in steps]
            if len(set(ids)) != len(ids):
                dup = sorted({i for i in ids if ids.count(i) > 1})
                raise RecordError("decomposition_trace", f"duplicate _uuid {dup}")
            unknown = sorted({d for s in steps for d in s.depends_on if d not in set(ids)})
            if unknown:
                raise RecordError("decomposition_trace", f"dependency on unknown _uuid {unknown}")
            unverified = not answer
            final = answer or steps[-1].sub_answer
            qa_id = stable_id(FORMAT, question, answer, domain, prefix="qa_")
            qa = QAItem(id=qa_id, question=question, answer=answer or "", domain=domain, source=where,
                        answer_unverified=unverified)
            verify = _obj(doc.get("verify_result"), "verify_result")
            score = verify.get("score")
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
                raise RecordError("verify_result.score", f"expected a number, got {type(score).__name__}")
            scores = {"original_verify_score": float(score)} if score is not None else {}
            decomposition = Decomposition(
                id=stable_id("decomposition", qa_id, prefix="dec_"), qa_id=qa_id, question=question, answer=final,
                steps=steps, scores=scores,
                model=meta.get("model_name") if isinstance(meta.get("model_name"), str) else None,
                answer_unverified=unverified,
            )
            env = _obj(doc.get("env_result"), "env_result")
            tools: dict[str, dict[str, Any]] = {}
            for key, value in env.items():
                if value is None:
                    continue
                data = _obj(_obj(_obj(value, f"env_result.{key}").get("env_synthesis_result"),
                                 f"env_result.{key}.env_synthesis_result").get("data"),
                            f"env_result.{key}.env_synthesis_result.data")
                if data.get("code"):
                    tools[str(key)] = data
            legit = doc.get("tool_necessity_legitimacy")
        except (RecordError, ValidationError, ValueError) as exc:
            _fail(out, where, exc)
            continue
        out.items.append(EnvResult(qa=qa, decomposition=decomposition,
                                   verify_score=float(score) if score is not None else None,
                                   necessity_ok=legit if isinstance(legit, bool) else None, tools=tools))
    return out


def parse_call_statement(statement: str, parameters: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """``tool(a, b=2)`` (the original's ``tool_call_statement``) -> (name, arguments); positional
    arguments take the names of ``parameters`` in order. Literals only (never evaluated as code)."""
    try:
        node = ast.parse(statement.strip(), mode="eval").body
    except SyntaxError as exc:
        raise RecordError("tool_call_statement", f"not a call: {exc.msg}") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
        raise RecordError("tool_call_statement", "not a call of a named function")
    name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
    if len(node.args) > len(parameters):
        raise RecordError("tool_call_statement",
                          f"{len(node.args)} positional arguments, the tool names {len(parameters)}")
    try:
        arguments = {parameters[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        for kw in node.keywords:
            if kw.arg is None:
                raise RecordError("tool_call_statement", "**kwargs are not supported")
            arguments[kw.arg] = ast.literal_eval(kw.value)
    except ValueError as exc:
        raise RecordError("tool_call_statement", f"an argument is not a literal ({exc})") from None
    return name, arguments


# --------------------------------------------------------------------------- servers: live or simulated


class ServerPlan(BaseModel):
    """How a rollout reaches one server, and why."""

    name: str
    execution: Execution
    why: str


async def plan_servers(
    specs: Sequence[ServerSpec], *, live_remote: bool, simulate: Callable[[ServerSpec], Any] | None = None,
    probe_timeout_s: float = 15.0,
) -> tuple[list[Any], dict[str, ServerPlan]]:
    """Connection targets for ``specs`` and the plan per server.

    Stdio / HTTP servers are live. A documented server (:class:`SimulatedLaunch`) is called live
    through its ``remote`` endpoint when ``live_remote`` is set and the endpoint answers
    ``tools/list`` within ``probe_timeout_s`` (its ``${VAR}`` secrets resolved from the
    environment); otherwise ``simulate(spec)`` builds the server that simulates it (an LLM
    simulator) and the plan says why.
    """
    from astra.registry import discover_tools, failure_reason

    targets: list[Any] = []
    plans: dict[str, ServerPlan] = {}
    for spec in specs:
        launch = spec.launch
        if isinstance(launch, (StdioLaunch, HttpLaunch)):
            targets.append(spec)
            plans[spec.name] = ServerPlan(name=spec.name, execution=Execution.LIVE, why=f"{launch.kind} launch")
            continue
        if not isinstance(launch, SimulatedLaunch):
            raise ValueError(f"server {spec.name!r}: a {launch.kind!r} launch is not planned here")
        why = "documentation only (no remote endpoint in call_info)"
        if launch.remote is not None:
            why = "remote endpoint not called (give --live-remote to call it)"
            if live_remote:
                try:
                    found = await discover_tools(launch.remote, name=spec.name, timeout_s=probe_timeout_s)
                except Exception as exc:  # noqa: BLE001 - any failure means: not reachable, simulate instead
                    why = f"remote endpoint unreachable: {failure_reason(exc)[:200]}"
                else:
                    targets.append((spec.name, launch.remote))
                    plans[spec.name] = ServerPlan(name=spec.name, execution=Execution.LIVE,
                                                  why=f"remote endpoint reachable ({len(found.tools)} tools)")
                    continue
        if simulate is None:
            raise ValueError(f"server {spec.name!r} must be simulated ({why}) but no simulator was given")
        targets.append((spec.name, simulate(spec)))
        plans[spec.name] = ServerPlan(name=spec.name, execution=Execution.SIMULATED, why=why)
    return targets, plans


# --------------------------------------------------------------------------- writers


def to_original_trajectory(traj: Trajectory, task: Task | None, server: ServerSpec | None) -> dict[str, Any]:
    """Our trajectory in the original interaction output shape: the task's ``query_info``,
    ``mcp_info`` and ``chain_info``, ``trajectory`` (OpenAI messages), plus ``tools`` and
    ``messages`` (the reward pipeline's input shape) and ``astra`` (our ids and step record)."""
    prov = task.provenance if task is not None else {}
    first_user = next((m.content for m in traj.messages if m.role == "user"), "")
    question = task.user_turns[0] if task is not None else first_user

    def strip(n: str) -> str:
        return n.split("/", 1)[1] if "/" in n else n

    query_info: dict[str, Any] = {
        "generated_question": prov.get("base_question", question) if prov.get("format") == FORMAT else question,
        "target_tools": [strip(t) for t in task.target_tools] if task is not None else [],
        "augmented_query_info": ({"mode": prov.get("augmentation_mode"), "augmented_question": question}
                                 if prov.get("base_question") else {}),
    }
    if prov.get("query_score_info"):
        query_info["query_score_info"] = prov["query_score_info"]
    elif task is not None and task.quality:
        query_info["query_score_info"] = {"quality_scores": {
            theirs: round(1 + 4 * task.quality[ours], 4)
            for theirs, ours in QUALITY_KEYS.items() if ours in task.quality}}
    messages = [m.to_openai() for m in traj.messages]
    out: dict[str, Any] = {"query_info": query_info}
    if server is not None:
        base_info = {"group_info": {"server_title": server.title or server.name, "server_name": server.name,
                                    "server_description": server.description, "domain": server.domain},
                     "tool_list": [{"name": t.name, "description": t.description, "parameters": t.input_schema}
                                   for t in server.tools]}
        mcp_info: dict[str, Any] = {"base_info": base_info}
        if isinstance(server.launch, SimulatedLaunch) and server.launch.call_info is not None:
            mcp_info["call_info"] = server.launch.call_info  # secrets stay ${VAR} references
        out["mcp_info"] = mcp_info
    if prov.get("sub_chain"):
        out["chain_info"] = {"sub_chain": prov["sub_chain"]}
    out.update(trajectory=messages, tools=traj.tools, messages=messages, astra={
        "trajectory_id": traj.id, "task_id": traj.task_id, "model": traj.model, "termination": traj.termination,
        "steps": [{"tool": s.tool, "server": s.server, "is_error": s.is_error,
                   "execution": (Execution.SIMULATED if s.simulated else Execution.LIVE).value} for s in traj.steps],
    })
    return out


def to_original_reward(reward: Reward) -> dict[str, Any] | None:
    """Our reward in the original ``reward_all`` shape (``{"score", "extra_info": {"items"}}`` per
    key, ``overall_score``); None for a failed judge (the original would write a "safe score")."""
    from astra.synthesis.trajectories._reward import (
        DIMENSION_OF,
        OVERALL_KEY,
        ItemKind,
        original_keys,
    )

    if reward.status != "ok" or reward.overall is None:
        return None
    items: dict[str, list[dict[str, Any]]] = {}
    for item in getattr(reward, "items", None) or []:
        try:
            items.setdefault(DIMENSION_OF[ItemKind(item.get("kind"))], []).append(item)
        except (ValueError, KeyError):
            continue
    out: dict[str, Any] = {}
    for key, score in original_keys(reward).items():
        if key == OVERALL_KEY or score is None:
            continue
        out[key] = {"score": score, "extra_info": {"items": items.get(key, []), "is_safe_score": 0}}
    out[OVERALL_KEY] = reward.overall
    out["astra"] = {"reward_id": reward.id, "trajectory_id": reward.trajectory_id, "task_id": reward.task_id,
                    "judge_model": reward.judge_model, "rules": reward.rules, "process": reward.process,
                    "rationale": reward.rationale}
    return out


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewritten whole and atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def tool_spec_of_document(document: Any, server: str) -> ToolSpec:
    """The original's ``tool_document`` (``{"name", "description", "parameters"}``, or its JSON text)."""
    from astra.registry import normalize_schema

    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError as exc:
            raise RecordError("tool_document", f"not JSON: {exc.msg}") from None
    doc = _obj(document, "tool_document")
    doc = _obj(function_object(doc), "tool_document")  # OpenAI {"type": "function", "function": {...}} or bare
    name = _str(doc, "name", "tool_document.name")
    assert name is not None
    schema = normalize_schema(doc.get("parameters"), field="tool_document.parameters")
    return ToolSpec(server=server, name=name, description=_str(doc, "description", "tool_document.description",
                                                               required=False) or "", input_schema=schema)


# --------------------------------------------------------------------------- a trajectory run from original files

_ORDER = (OriginalKind.GRAPH_DETECT, OriginalKind.SUB_CHAINS, OriginalKind.VERIFIED_CHAINS, OriginalKind.TASKS)
STAGE_OF_KIND = {OriginalKind.GRAPH_DETECT: "graph", OriginalKind.SUB_CHAINS: "chains",
                 OriginalKind.VERIFIED_CHAINS: "verify", OriginalKind.TASKS: "tasks"}


def file_kind(path: str | os.PathLike[str]) -> OriginalKind | None:
    """The kind of an original file, from its first readable record (None: none recognised)."""
    probe = OriginalFile(path=str(path))
    for _, _, doc in _lines(path, probe):
        kind = detect_kind(doc)
        if kind is not None:
            return kind
    return None


class OriginalInputs:
    """The original files a trajectory run resumes from (``resume_from``, ``tasks_path``), read once.

    ``start``: the pipeline stage of the latest artifact given; stages before it are skipped
    (or seeded from their own file), stages after it run as usual.
    """

    def __init__(self, resume_from: Sequence[str | os.PathLike[str]], tasks_path: str | os.PathLike[str] | None,
                 graph_name: str) -> None:
        self.files: dict[OriginalKind, OriginalFile] = {}
        self.graph: ToolGraph | None = None
        for path in resume_from:
            kind = file_kind(path)
            if kind is None or kind not in _ORDER[:3]:
                raise ValueError(f"{path}: not a graph detect, sub-chain or verified-chain file of the original ASTRA "
                                 f"({'unreadable or empty' if kind is None else kind.value})")
            if kind in self.files:
                raise ValueError(f"{path}: a second {kind.value} file ({self.files[kind].path} is the first)")
            if kind is OriginalKind.GRAPH_DETECT:
                self.graph, self.files[kind] = read_graph_detect(path, name=graph_name)
            elif kind is OriginalKind.SUB_CHAINS:
                self.files[kind] = read_sub_chains(path)
            else:
                self.files[kind] = read_verified_chains(path)
        if tasks_path is not None:
            self.files[OriginalKind.TASKS] = read_tasks(tasks_path)
        given = [k for k in _ORDER if k in self.files]
        self.start: str | None = STAGE_OF_KIND[given[-1]] if given else None

    def servers(self) -> list[ServerSpec]:
        out: dict[str, ServerSpec] = {}
        for f in self.files.values():
            for name, spec in f.servers.items():
                out.setdefault(name, spec)
        return list(out.values())

    def get(self, stage: str) -> OriginalFile | None:
        """The file that seeds ``stage`` (None: the stage runs, or is skipped, see :meth:`skips`)."""
        kind = next((k for k, s in STAGE_OF_KIND.items() if s == stage), None)
        return self.files.get(kind) if kind is not None else None

    def skips(self, stage: str) -> bool:
        """True for a stage before :attr:`start` with no file of its own."""
        order = [STAGE_OF_KIND[k] for k in _ORDER]
        return (self.start is not None and stage in order and order.index(stage) < order.index(self.start)
                and self.get(stage) is None)

    def outcomes(self, stage: str) -> list[tuple[str, Any]]:
        """(item id, Outcome) to seed ``stage``: kept records, filtered ones, and one failed drop per bad line."""
        from astra.synthesis._stage import Outcome

        f = self.get(stage)
        assert f is not None
        out: list[tuple[str, Any]] = [(r.id, Outcome.keep(r)) for r in f.items]
        out += [(i, Outcome.drop(why)) for i, why in f.dropped]
        out += [(stable_id("bad_input", e, prefix="bad_"), Outcome.drop(f"bad_input: {e}")) for e in f.errors]
        return out
