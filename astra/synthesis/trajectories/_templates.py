"""Real chat templates: render an exported conversation, read its tool calls back, adapt it to a target.

A :class:`ChatTemplate` is a model's own Jinja template (a ``.jinja`` file, e.g. the ones llama.cpp ships in
``models/templates/``, or the ``tokenizer.chat_template`` stored in a GGUF) rendered by transformers'
``render_jinja_template`` -- the renderer behind ``apply_chat_template`` -- without a tokenizer. Its tool-call
format is read from the template text (:class:`ToolCallFormat`); what it can render (text beside a call,
parallel calls) is learnt by rendering small probes, not from a table.

:meth:`ChatTemplate.check` renders one conversation and parses the calls back out of the rendered text in the
template family's own format; the render is clean when the calls and arguments are the same and no text was
dropped. :meth:`ChatTemplate.adapt` shapes an ``hf``-profile conversation for the template (Mistral's 9-character
call ids and system message, templates without tool support, calls a template cannot render together).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from astra.jsonutil import is_array, is_object
from astra.tools import function_object, tool_definitions

# The special tokens the templates of the conformance matrix refer to (bos_token / eos_token are template
# variables, filled from the model's tokenizer, which a .jinja file does not carry).
SPECIAL_TOKENS: dict[str, tuple[str, str]] = {
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B": ("", "<|im_end|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("<|begin_of_text|>", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
}

# The matrix: display name -> file in llama.cpp's models/templates/ ("gguf:smollm2" is the embedded model's GGUF).
MATRIX_TEMPLATES: dict[str, str] = {
    "SmolLM2": "gguf:smollm2",
    "Qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen3": "Qwen-Qwen3-0.6B.jinja",
    "Hermes-3": "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    "Llama-3.1": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "Mistral-Nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
}

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class ToolCallFormat(StrEnum):
    """How a template writes an assistant's tool calls."""

    HERMES = "hermes"  # <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> (Qwen2.5, Qwen3, Hermes-3)
    LLAMA3_JSON = "llama3_json"  # the whole assistant turn is {"name": ..., "parameters": {...}} (Llama 3.1)
    MISTRAL = "mistral"  # [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "<9 alphanumerics>"}]
    TEXT = "text"  # no tool support: calls are written into the content as <tool_call>[...]</tool_call>


class RenderIssue(StrEnum):
    """Why a conversation does not render cleanly through a template."""

    TEMPLATE_ERROR = "template_error"  # the template raised (the detail says what it requires)
    ARGUMENTS_DOUBLE_ENCODED = "arguments_double_encoded"  # string arguments rendered as a JSON string
    CALLS_NOT_RENDERED = "calls_not_rendered"  # fewer calls in the text than in the conversation
    CALLS_CHANGED = "calls_changed"  # the calls read back differ in name or arguments
    TEXT_DROPPED = "text_dropped"  # a message's text is missing from the rendering
    ARGUMENTS_NOT_JSON = "arguments_not_json"  # the model's arguments were not a JSON object


class Adaptation(StrEnum):
    """What :meth:`ChatTemplate.adapt` changed so that a conversation renders (counted in export reports)."""

    CALL_IDS_SHORTENED = "call_ids_shortened"
    SYSTEM_INTO_FIRST_USER = "system_into_first_user"
    TEXT_BESIDE_CALL_DROPPED = "text_beside_call_dropped"
    PARALLEL_CALLS_SPLIT = "parallel_calls_split"
    CALLS_AS_TEXT = "calls_as_text"


@dataclass
class RenderCheck:
    """One conversation through one template."""

    issue: RenderIssue | None
    detail: str = ""
    rendered: str | None = None

    @property
    def clean(self) -> bool:
        return self.issue is None


def mistral_call_id(original: str) -> str:
    """A 9-character alphanumeric id, deterministic from the original id (Mistral templates require the shape)."""
    number = int.from_bytes(hashlib.sha256(original.encode("utf-8")).digest()[:8], "big")
    out = []
    for _ in range(9):
        number, digit = divmod(number, len(_ALNUM))
        out.append(_ALNUM[digit])
    return "".join(out)


def _call_parts(call: dict[str, Any]) -> tuple[str, Any]:
    function = function_object(call)
    return function["name"], function.get("arguments")


def expected_calls(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The (name, arguments) of every call in the conversation, arguments decoded when stored as a string."""
    out = []
    for message in messages:
        for call in message.get("tool_calls") or ():
            name, arguments = _call_parts(call)
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments or "{}")
                except json.JSONDecodeError:
                    pass
            out.append((name, arguments))
    return out


@dataclass
class ChatTemplate:
    """A model's chat template and the special tokens it refers to."""

    name: str
    source: str
    bos_token: str = ""
    eos_token: str = ""
    origin: str = ""
    _probe_cache: dict[str, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> ChatTemplate:
        path = Path(path)
        bos, eos = SPECIAL_TOKENS.get(path.stem, ("", ""))
        return cls(name=name or path.stem, source=path.read_text(encoding="utf-8"), bos_token=bos, eos_token=eos,
                   origin=str(path))

    @classmethod
    def from_gguf(cls, path: str | Path, name: str | None = None) -> ChatTemplate:
        """The ``tokenizer.chat_template`` stored in a GGUF file, with its BOS / EOS tokens (via ``gguf``)."""
        from gguf import GGUFReader

        path = Path(path)
        reader = GGUFReader(str(path))
        fields = reader.fields
        if "tokenizer.chat_template" not in fields:
            raise ValueError(f"{path}: no tokenizer.chat_template in this GGUF")
        tokens = fields["tokenizer.ggml.tokens"]

        def token(key: str) -> str:
            if key not in fields:
                return ""
            index = int(fields[key].contents())
            return bytes(tokens.parts[tokens.data[index]]).decode("utf-8")

        return cls(name=name or path.stem, source=fields["tokenizer.chat_template"].contents(),
                   bos_token=token("tokenizer.ggml.bos_token_id"), eos_token=token("tokenizer.ggml.eos_token_id"),
                   origin=str(path))

    @cached_property
    def control_tokens(self) -> list[str]:
        """The control tokens the template writes: ``<|...|>`` and ``[UPPER_CASE]`` markers, BOS and EOS."""
        found = re.findall(r"<\|[A-Za-z0-9_]+\|>|\[/?[A-Z][A-Z_]+\]", self.source)
        return sorted({*found, *(t for t in (self.bos_token, self.eos_token) if t)})

    # ------------------------------------------------------------------ rendering

    @cached_property
    def format(self) -> ToolCallFormat:
        if "[TOOL_CALLS]" in self.source:
            return ToolCallFormat.MISTRAL
        if "<tool_call>" in self.source:
            return ToolCallFormat.HERMES
        if "tool_calls" in self.source and '"parameters": ' in self.source:
            return ToolCallFormat.LLAMA3_JSON
        return ToolCallFormat.TEXT

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = False) -> str:
        """The template's text for the conversation (transformers' renderer, as ``apply_chat_template`` uses)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], tools=[*tools] if tools else None, chat_template=self.source,
            add_generation_prompt=add_generation_prompt, bos_token=self.bos_token, eos_token=self.eos_token)
        return rendered[0]

    def _assistant_segments(self, text: str) -> list[str]:
        if "<|im_start|>" in self.source:
            return re.findall(r"<\|im_start\|>assistant(.*?)(?:<\|im_end\|>|$)", text, re.DOTALL)
        if "<|start_header_id|>" in self.source:
            return re.findall(r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?)(?:<\|eo[tm]_id\|>|$)",
                              text, re.DOTALL)
        return [text]

    def parse_calls(self, text: str) -> list[tuple[str, Any]]:
        """The tool calls in a rendered conversation, read in this template family's format."""
        calls: list[tuple[Any, Any]] = []  # the rendered names, whatever their type
        if self.format is ToolCallFormat.MISTRAL:
            decoder = json.JSONDecoder()
            for match in re.finditer(re.escape("[TOOL_CALLS]"), text):
                try:
                    items, _ = decoder.raw_decode(text, match.end())
                except json.JSONDecodeError:
                    continue
                calls += [(item.get("name"), item.get("arguments")) for item in items if is_object(item)]
            return calls
        for segment in self._assistant_segments(text):
            if self.format is ToolCallFormat.LLAMA3_JSON:
                try:
                    value = json.loads(segment.strip())
                except json.JSONDecodeError:
                    continue
                if is_object(value) and "name" in value and "parameters" in value:
                    calls.append((value["name"], value["parameters"]))
                continue
            for body in re.findall(r"<tool_call>(.*?)</tool_call>", segment, re.DOTALL):
                try:
                    value = json.loads(body)
                except json.JSONDecodeError:
                    continue
                for item in value if is_array(value) else [value]:
                    if is_object(item) and "name" in item:
                        calls.append((item["name"], item.get("arguments")))
        return calls

    def check(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
              calls: list[tuple[str, Any]] | None = None) -> RenderCheck:
        """Render the conversation and read its calls back; clean = same calls and arguments, no text lost.

        ``calls``: the calls to expect (default: the conversation's own ``tool_calls``); give the original
        conversation's calls when checking an adapted one."""
        try:
            text = self.render(messages, tools)
        except Exception as exc:  # the template's own raise_exception, or a type error inside it
            return RenderCheck(RenderIssue.TEMPLATE_ERROR, f"{type(exc).__name__}: {exc}"[:200])
        want = expected_calls(messages) if calls is None else calls
        got = self.parse_calls(text)
        if got != want:
            if len(got) < len(want):
                issue = RenderIssue.CALLS_NOT_RENDERED
            elif any(isinstance(g[1], str) and _decodes_to(g[1], w[1]) for g, w in zip(got, want, strict=False)):
                issue = RenderIssue.ARGUMENTS_DOUBLE_ENCODED
            else:
                issue = RenderIssue.CALLS_CHANGED
            return RenderCheck(issue, f"expected {len(want)} call(s), read back {got[:2]!r}"[:200], text)
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) and content.strip() and not _appears(content, text):
                return RenderCheck(RenderIssue.TEXT_DROPPED, f"{message['role']} text", text)
        return RenderCheck(None, rendered=text)

    # ------------------------------------------------------------------ probes and adaptation

    def _probe(self, key: str, messages: list[dict[str, Any]], needle: str) -> bool:
        if key not in self._probe_cache:
            try:
                self._probe_cache[key] = needle in self.render(messages, _PROBE_TOOLS)
            except Exception:
                self._probe_cache[key] = False
        return self._probe_cache[key]

    @property
    def renders_text_beside_calls(self) -> bool:
        call = _probe_call("probe_a", mistral_call_id("a"))
        return self._probe("text_beside", [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "probe-text-beside", "tool_calls": [call]},
            {"role": "tool", "content": "r", "tool_call_id": call["id"]},
            {"role": "assistant", "content": "done"}], "probe-text-beside")

    @property
    def renders_parallel_calls(self) -> bool:
        a, b = _probe_call("probe_a", mistral_call_id("a")), _probe_call("probe_b", mistral_call_id("b"))
        return self._probe("parallel", [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [a, b]},
            {"role": "tool", "content": "r1", "tool_call_id": a["id"]},
            {"role": "tool", "content": "r2", "tool_call_id": b["id"]},
            {"role": "assistant", "content": "done"}], "probe_b")

    def adapt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, set[Adaptation]]:
        """An ``hf``-profile conversation shaped for this template; returns (messages, tools, what changed)."""
        messages = copy.deepcopy(messages)
        changed: set[Adaptation] = set()
        if self.format is ToolCallFormat.TEXT:  # one call per turn, so every result follows its own call
            messages, split = _split_parallel(messages)
            changed = {Adaptation.CALLS_AS_TEXT} | ({Adaptation.PARALLEL_CALLS_SPLIT} if split else set())
            return (*_calls_as_text(messages, tools), changed)
        if not self.renders_parallel_calls:
            messages, split = _split_parallel(messages)
            if split:
                changed.add(Adaptation.PARALLEL_CALLS_SPLIT)
        if not self.renders_text_beside_calls:
            for m in messages:
                if m.get("tool_calls") and m.get("content"):
                    m["content"] = ""
                    changed.add(Adaptation.TEXT_BESIDE_CALL_DROPPED)
        if self.format is ToolCallFormat.MISTRAL:
            ids = {}
            for m in messages:
                for c in m.get("tool_calls") or ():
                    ids[c["id"]] = c["id"] = mistral_call_id(c["id"])
                if m["role"] == "tool":
                    m["tool_call_id"] = ids.get(m["tool_call_id"], mistral_call_id(m["tool_call_id"]))
            if ids:
                changed.add(Adaptation.CALL_IDS_SHORTENED)
            # the template only writes the system message into the final user turn of a prompt
            if messages and messages[0]["role"] == "system":
                system = messages.pop(0)["content"]
                first = next((m for m in messages if m["role"] == "user"), None)
                if first is not None and system:
                    first["content"] = f"{system}\n\n{first['content']}"
                    changed.add(Adaptation.SYSTEM_INTO_FIRST_USER)
        return messages, tools, changed


_PROBE_TOOLS = [{"type": "function", "function": {"name": n, "description": "probe", "parameters": {
    "type": "object", "properties": {"x": {"type": "string", "description": "x"}}}}} for n in ("probe_a", "probe_b")]


def _probe_call(name: str, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": {"x": "1"}}}


def _decodes_to(text: str, value: Any) -> bool:
    try:
        return json.loads(text) == value
    except json.JSONDecodeError:
        return False


def _appears(content: str, text: str) -> bool:
    """The content is in the rendering as is, trimmed, or JSON-escaped (templates that tojson tool results)."""
    stripped = content.strip()
    return stripped in text or json.dumps(stripped, ensure_ascii=False)[1:-1] in text


def _split_parallel(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """Parallel calls as consecutive call / result pairs (for templates that render one call per turn)."""
    out: list[dict[str, Any]] = []
    split = False
    i = 0
    while i < len(messages):
        m = messages[i]
        calls = m.get("tool_calls") or []
        if len(calls) < 2:
            out.append(m)
            i += 1
            continue
        split = True
        results = {}
        j = i + 1
        while j < len(messages) and messages[j]["role"] == "tool":
            results[messages[j].get("tool_call_id")] = messages[j]
            j += 1
        for k, call in enumerate(calls):
            out.append({**m, "content": m.get("content", "") if k == 0 else "", "tool_calls": [call]})
            if call.get("id") in results:
                out.append(results.pop(call["id"]))
        out.extend(results.values())
        i = j
    return out, split


def text_call_block(calls: list[dict[str, Any]]) -> str:
    """Calls as text for templates without tool support (SmolLM2's function-calling format)."""
    items = [{"name": n, "arguments": a} for n, a in (_call_parts(c) for c in calls)]
    return "<tool_call>" + json.dumps(items, ensure_ascii=False) + "</tool_call>"


def _calls_as_text(messages: list[dict[str, Any]], tools: list[dict[str, Any]]
                   ) -> tuple[list[dict[str, Any]], None]:
    functions = [d.function() for d in tool_definitions(tools)]
    preamble = ("You have access to the following tools:\n<tools>" + json.dumps(functions, ensure_ascii=False)
                + "</tools>\nTo call tools, answer with "
                + '<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>.')
    out = []
    for m in messages:
        if m.get("tool_calls"):
            text = m.get("content") or ""
            block = text_call_block(m["tool_calls"])
            out.append({"role": "assistant", "content": (text + "\n" if text else "") + block})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out, None


def templates_dir() -> Path:
    """Where set-up put llama.cpp's template files (ASTRA_CHAT_TEMPLATES overrides)."""
    import os

    env = os.environ.get("ASTRA_CHAT_TEMPLATES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".ci" / "chat_templates"


def load_template(spec: str, directory: str | Path | None = None) -> ChatTemplate:
    """A template by matrix name ("Qwen3"), file name in the templates directory, path to a .jinja / .gguf
    file, or ``gguf:smollm2`` (the embedded model's GGUF)."""
    name = spec
    spec = MATRIX_TEMPLATES.get(spec, spec)
    if spec == "gguf:smollm2":
        from astra.client._local import smollm2_path

        return ChatTemplate.from_gguf(smollm2_path(), name=name)
    path = Path(spec)
    if not path.exists():
        path = Path(directory or templates_dir()) / spec
    if not path.exists():
        raise FileNotFoundError(f"chat template {spec!r}: not found (looked in {path.parent}; scripts/setup.sh "
                                "extracts llama.cpp's templates there)")
    if path.suffix == ".gguf":
        return ChatTemplate.from_gguf(path, name=name)
    return ChatTemplate.from_file(path, name=name if name != str(path) else None)
