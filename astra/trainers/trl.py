"""TRL ``GRPOTrainer(environment_factory=...)`` over ASTRA environments.

:func:`trl_module_source` writes one Python module per export (``trl_env.py``): a class per
environment whose **public typed async methods are the tools** (TRL lists them with
``inspect.getmembers(type(env), inspect.isfunction)``, renders them with transformers'
``get_json_schema`` from their type hints and Google docstrings, and calls them by
``__name__``), ``ENVIRONMENTS`` (``{environment name: class}``, TRL's dict form: each dataset
row's ``environment`` picks its class, so a sample sees only its own tools and distractors),
and ``process_reward`` (a reward function that reads the environments).

Each instance is one rollout at a time: ``reset(**row)`` closes the previous trajectory and
starts a new one (its episodes open on first call, over the process's pooled connection); the
row's ``ground_truth`` column gives per-step and final process rewards.
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Sequence
from typing import Any, ClassVar

from astra.trainers._pool import EpisodePool, PoolLoop, Rollout, launch_from_config
from astra.trainers.export import python_identifier, unique_name

__all__ = ["AstraEnvironment", "process_reward", "trl_module_source"]


def _pool(servers: dict[str, Any], call_timeout_s: float) -> EpisodePool:
    def make() -> EpisodePool:
        return EpisodePool(
            [(name, launch_from_config(launch)) for name, launch in sorted(servers.items())],
            call_timeout_s=call_timeout_s,
            loop=PoolLoop.CALLER,  # TRL's loop for async tools: their calls skip the thread hop
        )

    return EpisodePool.shared(EpisodePool.key_of({"servers": servers, "timeout": call_timeout_s}), make)


class AstraEnvironment:
    """Base of the generated environment classes (see the module docstring)."""

    servers: ClassVar[dict[str, Any]] = {}
    routes: ClassVar[dict[str, tuple[str, str]]] = {}  # tool name -> (server, tool on that server)
    call_timeout_s: ClassVar[float] = 60.0

    def __init__(self) -> None:
        self._pool = _pool(self.servers, self.call_timeout_s)
        self._rollout: Rollout | None = None

    def reset(self, **row: Any) -> str | None:
        """Start a new trajectory (TRL calls this with the dataset row before each rollout)."""
        if self._rollout is not None:
            self._rollout.close_soon()
        self._rollout = self._pool.rollout(row.get("ground_truth"))
        return None

    async def _call(self, tool: str, arguments: dict[str, Any]) -> str:  # a dict: 'tool'/'self' are parameter names too
        if self._rollout is None:
            raise RuntimeError("reset() starts a trajectory before any tool call")
        server, server_tool = self.routes[tool]
        outcome = await self._rollout.call(
            server, server_tool, {k: v for k, v in arguments.items() if v is not None}, tool
        )
        return outcome.text

    @property
    def rollout(self) -> Rollout | None:
        """The current trajectory (calls, rewards)."""
        return self._rollout


def process_reward(environments: Sequence[AstraEnvironment] | None = None, **_: Any) -> list[float | None]:
    """TRL reward function: the process reward of each rollout's environment (None where it has no ground truth)."""
    out: list[float | None] = []
    for env in environments or []:
        score = env.rollout.reward() if env.rollout is not None else None
        out.append(score.reward if score is not None else None)
    return out


_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list", "object": "dict"}


def _python_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [_TYPES[k] for k in kind if k in _TYPES]
        return " | ".join(dict.fromkeys(kinds)) or "str"
    if kind is None:
        kinds = [_python_type(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []) if isinstance(s, dict)]
        return " | ".join(dict.fromkeys(k for k in kinds if k != "None")) or "str"
    if kind == "array" and isinstance(schema.get("items"), dict) and schema["items"].get("type") in _TYPES:
        return f"list[{_TYPES[schema['items']['type']]}]"
    return _TYPES.get(kind, "str")


_RESERVED = frozenset({"self"})


def _identifier(name: str, taken: set[str]) -> str:
    """A distinct Python identifier for a model-written name (joins ``taken``): 'self' is reserved,
    'a b'/'a-b' and 'a'/'ª' get their own (``_2``, ``_3``... suffixes)."""
    return unique_name(python_identifier(name, prefix="p_", reserved=_RESERVED), taken)


def _one_line(text: str) -> str:
    return " ".join((text or "").split()) or "no description"


def tool_method_source(tool: dict[str, Any]) -> str:
    """One typed async method per tool (the tool schema as Python type hints and a Google docstring,
    what TRL and verifiers turn back into the tool schema) returning ``await self._call(name, {parameter: value})``."""
    fn = tool["function"]
    name = fn["name"]
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"tool name {name!r} is not a Python identifier (export_tool_names makes them so)")
    params = fn.get("parameters") or {}
    required = set(params.get("required") or [])
    props = params.get("properties") or {}
    args, call, docs = [], [], []
    taken: set[str] = set()
    for pname, prop in sorted(props.items(), key=lambda kv: kv[0] not in required):
        ident = _identifier(pname, taken)
        hint = _python_type(prop)
        args.append(f"{ident}: {hint}" if pname in required else f"{ident}: {hint} | None = None")
        call.append(f"{json.dumps(pname)}: {ident}")
        docs.append(f"    {ident}: {_one_line(prop.get('description') or pname)}")
    doc = _one_line(fn.get("description") or name) + ("\n\nArgs:\n" + "\n".join(docs) if docs else "")
    signature = ", ".join(["self", *args])
    return (
        f"    async def {name}({signature}) -> str:\n"
        f"        return await self._call({json.dumps(name)}, {{{', '.join(call)}}})\n"
        f"    {name}.__doc__ = {json.dumps(doc)}\n"
    )


def trl_module_source(samples: Sequence[Any], *, call_timeout_s: float = 60.0) -> str:
    """The ``trl_env.py`` of an export (``samples``: :class:`astra.trainers.export.Sample`)."""
    servers: dict[str, Any] = {}
    by_env = {s.env.name: s.env for s in samples}
    classes: list[str] = []
    names: dict[str, str] = {}
    class_names: set[str] = set()
    for sample in samples:
        for ref in sample.routes.values():
            servers.setdefault(ref.server, by_env[ref.server].launch_config())
        if sample.env.name not in names:  # distinct environments never share a class ('a-b' and 'a b')
            names[sample.env.name] = "Env_" + _identifier(sample.env.name, class_names)
        cls = names[sample.env.name]
        routes = {name: (ref.server, ref.tool) for name, ref in sample.routes.items()}
        methods = "\n".join(tool_method_source(t) for t in sample.tools)
        classes.append(
            f"class {cls}(AstraEnvironment):\n"
            f"    {json.dumps(_one_line(sample.env.spec.description or sample.env.name))}\n\n"
            f"    servers = SERVERS\n    routes = {routes!r}\n"
            f"    call_timeout_s = {float(call_timeout_s)!r}\n\n{methods}"
        )
    registry = ",\n".join(f"    {json.dumps(env)}: {cls}" for env, cls in names.items())
    return (
        '"""TRL GRPO environments of an ASTRA export (generated by astra.trainers.trl; do not edit).\n\n'
        "    from trl_env import ENVIRONMENTS, process_reward\n"
        "    GRPOTrainer(..., environment_factory=ENVIRONMENTS, reward_funcs=[process_reward],\n"
        '                train_dataset=load_dataset("json", data_files="trl_dataset.jsonl")["train"])\n"""\n\n'
        "import json\n\nfrom astra.trainers.trl import AstraEnvironment, process_reward\n\n"
        f"SERVERS = json.loads({json.dumps(json.dumps(servers, sort_keys=True))})\n\n\n"
        + "\n\n".join(classes)
        + f'\n\nENVIRONMENTS = {{\n{registry},\n}}\n\n__all__ = ["ENVIRONMENTS", "process_reward"]\n'
    )


def trl_rows(samples: Sequence[Any]) -> list[dict[str, Any]]:
    """TRL dataset rows: ``prompt`` (messages), ``environment`` (the class to use), ``ground_truth``."""
    return [
        {"prompt": s.prompt, "environment": s.env.name, "ground_truth": json.dumps(s.truth, ensure_ascii=False)}
        for s in samples
    ]
