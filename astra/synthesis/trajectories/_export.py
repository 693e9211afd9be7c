"""Stage 7: SFT export, one profile per consumer (see :class:`ExportFormat`).

- ``openai``: the OpenAI wire format (arguments as JSON strings, ``null`` content beside calls): the OpenAI
  fine-tuning API. Chat templates double-encode string arguments, so do not feed it to ``apply_chat_template``.
- ``hf``: TRL / transformers ``apply_chat_template(messages, tools=...)``: arguments as objects, ``""`` content on
  tool-only assistant turns, tools as a list, and no key a message does not use (no ``null`` padding).
- ``sharegpt``: LLaMA-Factory's ShareGPT (``dataset_info.json`` beside it). Its converter requires strict
  alternation (human/observation, then gpt/function_call), so each tool result is its own observation after its own
  function_call turn (parallel calls become consecutive pairs); text beside a call stays in the function_call value
  before ``<tool_call>[...]</tool_call>``, which LLaMA-Factory's FunctionFormatter renders in front of the calls.
- ``parquet``: the ``hf`` rows in Parquet. ``messages`` and ``tools`` are lists of Arrow JSON values, so HF
  ``datasets`` gives every message back with its own keys and the tools as a list of dicts.

With a target chat template (``export_template``), the hf / parquet / sharegpt profiles are first adapted to it
(:meth:`ChatTemplate.adapt`: Mistral call ids, ...) and only samples whose rendering reads back the same calls are
written; ``template_report.json`` counts the rest by cause.
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false
# (pyarrow ships no type information)
import json
import os
from collections import Counter
from collections.abc import Sequence
from enum import StrEnum
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from astra.jsonutil import is_object
from astra.records import Reward, Task, Trajectory
from astra.synthesis._stage import Outcome
from astra.synthesis.trajectories._config import RewardOptions
from astra.synthesis.trajectories._reward import DIMENSIONS
from astra.synthesis.trajectories._templates import ChatTemplate, RenderIssue, expected_calls, text_call_block
from astra.synthesis.trajectories._tokens import token_samples
from astra.tools import tool_definitions


class ExportFormat(StrEnum):
    OPENAI = "openai"
    HF = "hf"
    SHAREGPT = "sharegpt"
    PARQUET = "parquet"
    TOKENS = "tokens"  # token-faithful: input_ids + assistant_masks + RL split, for one template and tokenizer


class ExportSkip(ValueError):
    """A sample a profile cannot express (counted by cause, never silently mangled)."""

    def __init__(self, issue: RenderIssue, detail: str) -> None:
        super().__init__(f"{issue}: {detail}")
        self.issue = issue
        self.detail = detail


class SFTSample(BaseModel):
    """One exported training sample: the conversation in OpenAI format plus its provenance and reward."""

    id: str = Field(description="the trajectory id")
    task_id: str
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    reward: float
    dimensions: dict[str, float]
    rules: dict[str, float] = Field(default_factory=dict)
    simulated: bool = False
    chain_id: str | None = None
    judge: str | None = Field(default=None, description="who scored it: 'rules' (the rule-only judge; never "
                              "LLM-judged) or the judge model")


def answer_missing(traj: Trajectory) -> str | None:
    """Why a trajectory does not end with an assistant answer to the user (None when it does)."""
    termination = str(getattr(traj.termination, "value", traj.termination))
    if termination != "final_answer":
        return f"no_final_answer: ended by {termination}"
    last = traj.messages[-1] if traj.messages else None
    if last is None or last.role != "assistant" or last.tool_calls or not (last.content or "").strip():
        return "no_final_answer: the last message is not an assistant answer"
    return None


def select(reward: Reward, traj: Trajectory, task: Task, opts: RewardOptions) -> Outcome:
    """Keep a sample only when it ends with an answer, the judge succeeded and every threshold holds."""
    missing = answer_missing(traj)
    if missing:
        return Outcome.drop(missing)
    if reward.status != "ok" or reward.overall is None:
        return Outcome.drop(f"judge_failed: {(reward.error or '')[:120]}", failed=True)
    if opts.require_schema_valid and reward.rules.get("schema_valid", 0.0) < 1.0:
        return Outcome.drop("schema_invalid_arguments")
    checks = {"reward_threshold": (reward.overall, opts.threshold)}
    checks.update({f"dimension_minimum[{d}]": (v, opts.min_dimension) for d, v in reward.dimensions.items()})
    return Outcome.gated(checks, SFTSample(
        id=traj.id, task_id=task.id, model=traj.model, messages=[m.to_openai() for m in traj.messages],
        tools=traj.tools, reward=reward.overall, dimensions=reward.dimensions, rules=reward.rules,
        simulated=any(s.simulated for s in traj.steps), chain_id=task.chain_id,
        judge="rules" if reward.mode == "rules" else reward.judge_model,
    ))


# ----------------------------------------------------------------------------- profiles


def hf_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools with a string description and an object schema (templates concatenate both)."""
    return [d.chat_template() for d in tool_definitions(tools)]


def hf_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-format messages as chat templates expect them; raises :class:`ExportSkip` for unusable arguments."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        item: dict[str, Any] = {"role": role, "content": m.get("content") or ""}
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                raw = c["function"].get("arguments")
                try:
                    arguments = json.loads(raw or "{}") if isinstance(raw, str) else raw
                except json.JSONDecodeError as exc:
                    raise ExportSkip(RenderIssue.ARGUMENTS_NOT_JSON, f"{c['function']['name']}: {exc.msg}") from exc
                if not is_object(arguments):
                    raise ExportSkip(RenderIssue.ARGUMENTS_NOT_JSON, f"{c['function']['name']}: not an object")
                calls.append({"id": c.get("id") or "", "type": "function",
                              "function": {"name": c["function"]["name"], "arguments": arguments}})
            item["tool_calls"] = calls
        if role == "assistant" and m.get("reasoning_content"):
            item["reasoning_content"] = m["reasoning_content"]
        if role == "tool":
            item["tool_call_id"] = m.get("tool_call_id") or ""
            if m.get("name"):
                item["name"] = m["name"]
        out.append(item)
    return out


def hf_conversation(sample: SFTSample, template: ChatTemplate | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``hf`` profile of a sample (messages, tools), adapted to ``template`` when given."""
    messages, tools = hf_messages(sample.messages), hf_tools(sample.tools)
    if template is not None:
        messages, adapted_tools, _ = template.adapt(messages, tools)
        tools = adapted_tools or []
    return messages, tools


def to_sharegpt(sample: SFTSample, template: ChatTemplate | None = None) -> dict[str, Any]:
    """LLaMA-Factory's ShareGPT shape: human / function_call / observation / gpt turns, tools as a JSON string.

    One function_call turn per call, each followed by its own observation; text the assistant wrote beside its
    calls goes in front of ``<tool_call>[...]</tool_call>`` in the first function_call value."""
    messages, tools = hf_conversation(sample, template)
    system = ""
    conv: list[dict[str, str]] = []
    results = {m.get("tool_call_id"): m for m in messages if m["role"] == "tool" and m.get("tool_call_id")}
    for m in messages:
        role = m["role"]
        if role == "system":
            system = m["content"]
        elif role == "user":
            conv.append({"from": "human", "value": m["content"]})
        elif role == "tool" and not m.get("tool_call_id"):  # a result of a call written as text (no tool support)
            conv.append({"from": "observation", "value": m["content"]})
        elif role == "assistant" and m.get("tool_calls"):
            for k, call in enumerate(m["tool_calls"]):
                text = m["content"] if k == 0 and m["content"] else ""
                value = (text + "\n" if text else "") + text_call_block([call])
                conv.append({"from": "function_call", "value": value})
                result = results.get(call.get("id"))
                conv.append({"from": "observation", "value": result["content"] if result else ""})
        elif role == "assistant":
            conv.append({"from": "gpt", "value": m["content"]})
    functions = [d.function() for d in tool_definitions(tools)]
    tools_text = json.dumps(functions, ensure_ascii=False)  # LLaMA-Factory's tools column is a JSON string
    return {"conversations": conv, "system": system, "tools": tools_text, "id": sample.id}


SHAREGPT_DATASET_INFO: dict[str, Any] = {"file_name": "sharegpt.json", "formatting": "sharegpt",
                         "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}


# ----------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")


def _json_list_column(rows: Sequence[Sequence[Any]]) -> pa.Array:
    """A list<arrow.json> column: every item keeps its own keys (HF datasets reads it as List(Json()))."""
    flat = pa.array([json.dumps(v, ensure_ascii=False) for r in rows for v in r], pa.string())
    offsets = pa.array([0, *accumulate(len(r) for r in rows)], pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.ExtensionArray.from_storage(pa.json_(), flat))


def _parquet_table(samples: Sequence[SFTSample], conversations: Sequence[tuple[list[Any], list[Any]]]) -> pa.Table:
    dims = pa.struct([(d, pa.float64()) for d in DIMENSIONS])  # a struct, not a map: HF datasets has no map type
    return pa.table({
        "id": pa.array([s.id for s in samples], pa.string()),
        "task_id": pa.array([s.task_id for s in samples], pa.string()),
        "model": pa.array([s.model for s in samples], pa.string()),
        "chain_id": pa.array([s.chain_id for s in samples], pa.string()),
        "messages": _json_list_column([c[0] for c in conversations]),
        "tools": _json_list_column([c[1] for c in conversations]),
        "reward": pa.array([s.reward for s in samples], pa.float64()),
        "dimensions": pa.array([{d: s.dimensions.get(d) for d in DIMENSIONS} for s in samples], dims),
        "rules": pa.ExtensionArray.from_storage(pa.json_(), pa.array([json.dumps(s.rules) for s in samples],
                                                                    pa.string())),
        "simulated": pa.array([s.simulated for s in samples], pa.bool_()),
        "judge": pa.array([s.judge for s in samples], pa.string()),
    })


REPORT_FILE = "template_report.json"
TOKENS_REPORT_FILE = "tokens_report.json"


class ExportReport(BaseModel):
    """What a target-template export kept, changed and left out (``template_report.json``)."""

    template: str | None = None
    samples: int = 0
    exported: int = 0
    skipped: dict[str, int] = Field(default_factory=dict, description="cause -> samples left out")
    adapted: dict[str, int] = Field(default_factory=dict, description="adaptation -> samples changed")
    examples: dict[str, str] = Field(default_factory=dict, description="cause -> one detail")


def conversations_for(samples: Sequence[SFTSample], template: ChatTemplate | None
                      ) -> tuple[list[SFTSample], list[tuple[list[Any], list[Any]]], ExportReport]:
    """The samples the hf profile (adapted to ``template``) can express and, with a template, that render cleanly."""
    report = ExportReport(template=template.name if template else None, samples=len(samples))
    kept: list[SFTSample] = []
    convs: list[tuple[list[Any], list[Any]]] = []
    skipped: Counter[str] = Counter()
    adapted: Counter[str] = Counter()
    for s in samples:
        try:
            messages, tools = hf_messages(s.messages), hf_tools(s.tools)
        except ExportSkip as exc:
            skipped[exc.issue] += 1
            report.examples.setdefault(exc.issue, exc.detail)
            continue
        if template is not None:
            calls = expected_calls(messages)
            messages, adapted_tools, changes = template.adapt(messages, tools)
            adapted.update(str(c) for c in changes)
            check = template.check(messages, adapted_tools, calls)
            if not check.clean:
                assert check.issue is not None
                skipped[check.issue] += 1
                report.examples.setdefault(check.issue, check.detail)
                continue
            tools = adapted_tools or []
        kept.append(s)
        convs.append((messages, tools))
    report.exported, report.skipped, report.adapted = len(kept), dict(skipped), dict(adapted)
    return kept, convs, report


def write_exports(samples: Sequence[SFTSample], out_dir: Path, formats: Sequence[str],
                  template: ChatTemplate | None = None, tokenizer: Any = None) -> dict[str, str]:
    """Write every requested profile (rewritten whole, atomically); returns format -> path.

    ``template``: adapt hf / sharegpt / parquet to this chat template and write only what renders cleanly
    (the ``openai`` profile is the wire format and stays as it is). ``tokens`` needs the template and a
    tokenizer (:func:`gguf_tokenizer` or any transformers tokenizer carrying that template)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = sorted(samples, key=lambda s: s.id)
    wanted = [ExportFormat(f) for f in formats]
    paths: dict[str, str] = {}
    if ExportFormat.OPENAI in wanted:
        path = out_dir / "openai.jsonl"
        _atomic_write(path, _jsonl([{"messages": s.messages, "tools": s.tools} for s in samples]))
        paths[ExportFormat.OPENAI] = str(path)
    if ExportFormat.TOKENS in wanted and (template is None or tokenizer is None):
        raise ValueError("the tokens export needs a chat template and a tokenizer")
    if not {ExportFormat.HF, ExportFormat.SHAREGPT, ExportFormat.PARQUET, ExportFormat.TOKENS} & set(wanted):
        return paths
    kept, convs, report = conversations_for(samples, template)
    _atomic_write(out_dir / REPORT_FILE, report.model_dump_json(indent=2).encode("utf-8"))
    if ExportFormat.HF in wanted:
        path = out_dir / "hf.jsonl"
        rows = [{"id": s.id, "messages": m, "tools": t} for s, (m, t) in zip(kept, convs, strict=True)]
        _atomic_write(path, _jsonl(rows))
        paths[ExportFormat.HF] = str(path)
    if ExportFormat.SHAREGPT in wanted:
        path = out_dir / SHAREGPT_DATASET_INFO["file_name"]
        rows = [_sharegpt_row(s, m, t) for s, (m, t) in zip(kept, convs, strict=True)]
        _atomic_write(path, json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8"))
        info = {"astra_traj": SHAREGPT_DATASET_INFO}
        _atomic_write(out_dir / "dataset_info.json", json.dumps(info, indent=2).encode("utf-8"))
        paths[ExportFormat.SHAREGPT] = str(path)
    if ExportFormat.PARQUET in wanted:
        path = out_dir / "train.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(_parquet_table(kept, convs), tmp)
        os.replace(tmp, path)
        paths[ExportFormat.PARQUET] = str(path)
    if ExportFormat.TOKENS in wanted:
        assert template is not None
        path = out_dir / "tokens.jsonl"
        records, token_report = token_samples(template, tokenizer, [
            (s.id, m, t) for s, (m, t) in zip(kept, convs, strict=True)])
        _atomic_write(path, _jsonl([r.model_dump() for r in records]))
        _atomic_write(out_dir / TOKENS_REPORT_FILE, token_report.model_dump_json(indent=2).encode("utf-8"))
        paths[ExportFormat.TOKENS] = str(path)
    return paths


def report_lines(out_dir: Path) -> list[str]:
    """One line per target-template report in an export directory: kept of total, and the causes left out."""
    lines = []
    for name in (REPORT_FILE, TOKENS_REPORT_FILE):
        path = out_dir / name
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            causes = {**data.get("skipped", {}), **data.get("mismatches", {})}
            if data.get("template"):
                lines.append(f"{name}: {data['exported']} of {data['samples']} for {data['template']}"
                             + (f" (left out: {causes})" if causes else ""))
    return lines


def _sharegpt_row(sample: SFTSample, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    adapted = sample.model_copy(update={"messages": messages, "tools": tools})
    return to_sharegpt(adapted)
