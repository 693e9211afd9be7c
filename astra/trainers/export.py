"""RL data and trainer configs from certified environments: one sample per environment.

- tool names are unique across a multi-environment export (:func:`export_tool_names`): a name
  two environments share becomes ``<environment>__<tool>``; the ground truth uses the exported
  names, and every adapter maps them back to ``(server, tool)``;
- a sample offers its own tools plus, optionally, **distractors**: look-alike tools of other
  environments (most similar name and description first). They are real tools (a call
  runs on their own environment) but never solve a sub-question: the ground truth names only
  the sample's own tools, so a distractor call only costs precision;
- an optional **user-background preamble** (ASTRA-RL's ``## some information related to the
  user``) precedes the question;
- verl: parquet rows with ``agent_name``, ``extra_info.tool_selection`` (the sample's tools)
  and ``tools_kwargs`` for exactly those tools, and the tool-config YAML for
  :class:`astra.trainers.verl.AstraTool` (:func:`verl_tool_config`).
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false
# (pyarrow ships no type information)
import json
import keyword
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astra.records import EnvironmentSpec, HttpLaunch, StdioLaunch
from astra.tools import ToolRef
from astra.trainers._pool import stdio_launch

SYSTEM_PROMPT = (
    "You answer a multi-step question with the tools provided. Call one tool per step, use the "
    "results of earlier calls as inputs of later ones, and finish with the final answer."
)
PREAMBLE_HEADER = "## some information related to the user"
VERL_TOOL_CLASS = "astra.trainers.verl.AstraTool"


@dataclass
class ExportEnvironment:
    """A certified environment as the exporters see it."""

    spec: EnvironmentSpec
    question: str
    answer: str | None = None
    server_dir: str | None = None
    launch: StdioLaunch | HttpLaunch | None = None
    background: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def launch_config(self) -> dict[str, Any]:
        launch = self.launch or (stdio_launch(self.server_dir) if self.server_dir else None)
        if launch is None:
            raise ValueError(f"environment {self.name!r} has neither a server_dir nor a launch")
        return launch.model_dump(mode="json", exclude_defaults=False)


def python_identifier(
    name: str, *, prefix: str, max_len: int | None = None, reserved: frozenset[str] = frozenset()
) -> str:
    """``name`` as an ASCII Python identifier (``[A-Za-z0-9_]``: NFKC-folded letters would collide), at
    most ``max_len`` characters; ``prefix`` goes in front of an empty, digit-led, keyword or ``reserved`` one."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)[:max_len]
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident) or ident in reserved:
        ident = f"{prefix}{ident}"[:max_len]
    return ident


def unique_name(base: str, taken: set[str], make: Callable[[str], str] = str) -> str:
    """``base``, or ``make(base_2)``, ``make(base_3)``... the first not in ``taken``, which it joins."""
    name, k = base, 2
    while name in taken:
        name, k = make(f"{base}_{k}"), k + 1
    taken.add(name)
    return name


def _safe(name: str) -> str:
    """A tool name every consumer accepts: provider-safe (``[A-Za-z0-9_]``, at most 64 characters)
    and a Python identifier (TRL's environment methods are the tools)."""
    return python_identifier(name, prefix="t_", max_len=64)


def export_tool_names(envs: Sequence[ExportEnvironment]) -> dict[tuple[str, str], str]:
    """``(environment, tool) -> exported name``, unique across the export (see :func:`_safe`)."""
    counts: dict[str, int] = {}
    for env in envs:
        for t in env.spec.tools:
            counts[t.spec.name] = counts.get(t.spec.name, 0) + 1
    out: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for env in envs:
        for t in env.spec.tools:
            base = _safe(t.spec.name if counts[t.spec.name] == 1 else f"{env.name}__{t.spec.name}")
            out[(env.name, t.spec.name)] = unique_name(base, used, _safe)
    return out


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower().replace("_", " ")))


def distractors(
    env: ExportEnvironment, others: Sequence[ExportEnvironment], count: int
) -> list[tuple[ExportEnvironment, str]]:
    """Up to ``count`` tools of other environments that look most like ``env``'s tools
    (Jaccard similarity of the words in name + description), as ``(environment, tool)``."""
    if count <= 0:
        return []
    own = (
        set().union(*(_words(t.spec.name + " " + t.spec.description) for t in env.spec.tools))
        if env.spec.tools
        else set()
    )
    scored = []
    for other in others:
        if other.name == env.name:
            continue
        for t in other.spec.tools:
            words = _words(t.spec.name + " " + t.spec.description)
            similarity = len(own & words) / len(own | words) if own | words else 0.0
            scored.append((-similarity, other.name, t.spec.name, other))
    scored.sort(key=lambda s: s[:3])
    return [(other, tool) for _, _, tool, other in scored[:count]]


def _openai_tool(env: ExportEnvironment, tool: str, exported: str) -> dict[str, Any]:
    from astra.client import openai_tool

    impl = next(t for t in env.spec.tools if t.spec.name == tool)
    return openai_tool(exported, impl.spec)


def prompt_messages(env: ExportEnvironment, background: str | None = None) -> list[dict[str, str]]:
    """System prompt, then the question (after the user-background preamble when there is one)."""
    background = background if background is not None else env.background
    user = env.question
    if background:
        preamble = json.dumps({"background": background}, ensure_ascii=False, indent=1)
        user = f"{PREAMBLE_HEADER}\n{preamble}\n\n{env.question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def ground_truth(env: ExportEnvironment, names: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """The tool sub-questions, naming the exported tool names (tool-free steps are left out)."""
    return [
        {"id": v.id, "sub_question": v.sub_question, "sub_answer": v.expected_answer, "tool": names[(env.name, v.tool)]}
        for v in env.spec.verifiers
        if v.tool and v.sub_question is not None and v.expected_answer is not None
    ]


@dataclass
class Sample:
    """One RL sample: its prompt, tools (own + distractors), ground truth and where each tool runs."""

    env: ExportEnvironment
    prompt: list[dict[str, str]]
    tools: list[dict[str, Any]]
    truth: list[dict[str, Any]]
    routes: dict[str, ToolRef]  # exported tool name -> where it runs (server, tool on that server)
    distractor_names: list[str]


def samples(envs: Sequence[ExportEnvironment], *, n_distractors: int = 0) -> list[Sample]:
    names = export_tool_names(envs)
    out = []
    for env in envs:
        picked = [(env, t.spec.name) for t in env.spec.tools] + distractors(env, envs, n_distractors)
        tools = [_openai_tool(e, tool, names[(e.name, tool)]) for e, tool in picked]
        routes = {names[(e.name, tool)]: ToolRef(server=e.name, tool=tool, exposed=names[(e.name, tool)])
                  for e, tool in picked}
        out.append(
            Sample(
                env=env,
                prompt=prompt_messages(env),
                tools=tools,
                truth=ground_truth(env, names),
                routes=routes,
                distractor_names=[names[(e.name, t)] for e, t in picked[len(env.spec.tools) :]],
            )
        )
    return out


def verl_row(sample: Sample, index: int, *, data_source: str = "astra_env", split: str = "train") -> dict[str, Any]:
    """One verl parquet row (``agent_name`` tool_agent; ``tool_selection`` and ``tools_kwargs``
    name exactly the sample's tools)."""
    truth = json.dumps(sample.truth, ensure_ascii=False)
    selection = [t["function"]["name"] for t in sample.tools]
    return {
        "data_source": data_source,
        "agent_name": "tool_agent",
        "prompt": sample.prompt,
        "ability": "tool_use",
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {
            "index": index,
            "split": split,
            "environment_id": sample.env.spec.id,
            "environment_name": sample.env.name,
            "server_dir": sample.env.server_dir or "",
            "answer": sample.env.answer or "",
            "tools": json.dumps(sample.tools, ensure_ascii=False),
            "tool_selection": selection,
            "distractors": sample.distractor_names,
            "need_tools_kwargs": True,
            "tools_kwargs": {name: {"create_kwargs": {"ground_truth": truth}} for name in selection},
        },
    }


def write_verl_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write verl rows. ``extra_info.tools_kwargs`` is an ``arrow.json`` field: a plain struct
    would be one schema for the whole file (every sample padded with null entries for the other
    samples' tools), while HF datasets (what verl's RLHFDataset reads with) decodes a JSON field
    per row, so each row keeps exactly its own tools' kwargs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    plain = [{**r, "extra_info": {k: v for k, v in r["extra_info"].items() if k != "tools_kwargs"}} for r in rows]
    table = pa.Table.from_pylist(plain)
    if rows and all("tools_kwargs" in r["extra_info"] for r in rows):
        extra = table.column("extra_info").combine_chunks()
        kwargs = pa.ExtensionArray.from_storage(
            pa.json_(),
            pa.array([json.dumps(r["extra_info"]["tools_kwargs"], ensure_ascii=False) for r in rows], pa.string()),
        )
        names = [extra.type.field(i).name for i in range(extra.type.num_fields)]
        fields = [extra.field(i) for i in range(extra.type.num_fields)]
        extra = pa.StructArray.from_arrays([*fields, kwargs], names=[*names, "tools_kwargs"])
        table = table.set_column(table.schema.get_field_index("extra_info"), "extra_info", extra)
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def _verl_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool in the shape verl's ``OpenAIFunctionToolSchema`` accepts: each property
    needs a ``type`` (a list for unions; nested schemas are kept in the description)."""
    fn = tool["function"]
    params: dict[str, Any] = fn.get("parameters") or {"type": "object", "properties": {}}
    props = {}
    for name, prop in (params.get("properties") or {}).items():
        kind = prop.get("type")
        if kind is None:
            kinds = [p.get("type") for p in prop.get("anyOf", []) + prop.get("oneOf", []) if isinstance(p, dict)]
            kind = [k for k in kinds if isinstance(k, str)] or "string"
        entry: dict[str, Any] = {"type": kind}
        description = prop.get("description") or ""
        extra = {k: v for k, v in prop.items() if k in ("items", "properties", "minimum", "maximum", "format")}
        if extra:
            description = (description + " " if description else "") + f"(schema: {json.dumps(extra)})"
        if description:
            entry["description"] = description
        if "enum" in prop:
            entry["enum"] = prop["enum"]
        props[name] = entry
    return {
        "type": "function",
        "function": {
            "name": fn["name"],
            "description": fn.get("description") or fn["name"],
            "parameters": {"type": "object", "properties": props, "required": list(params.get("required") or [])},
        },
    }


def verl_tool_config(all_samples: Sequence[Sample], *, call_timeout_s: float = 60.0) -> dict[str, Any]:
    """verl's tool-config YAML (as a dict): one :class:`~astra.trainers.verl.AstraTool` per
    exported tool name, all sharing one pool of the export's servers per worker."""
    servers: dict[str, Any] = {}
    tools: dict[str, dict[str, Any]] = {}
    for sample in all_samples:
        for tool in sample.tools:
            name = tool["function"]["name"]
            ref = sample.routes[name]
            server, server_tool = ref.server, ref.tool
            env = sample.env if server == sample.env.name else None
            if server not in servers:
                source = env or next(s.env for s in all_samples if s.env.name == server)
                servers[server] = source.launch_config()
            tools.setdefault(name, {"schema": _verl_schema(tool), "server": server, "tool": server_tool})
    return {
        "tools": [
            {
                "class_name": VERL_TOOL_CLASS,
                "config": {
                    "type": "native",
                    "server": t["server"],
                    "tool": t["tool"],
                    "servers": servers,
                    "call_timeout_s": call_timeout_s,
                },
                "tool_schema": t["schema"],
            }
            for _, t in sorted(tools.items())
        ]
    }


def write_yaml(data: Any, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "utf-8")
    return path
