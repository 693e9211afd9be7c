"""One episode rendered the ways trainers see it: OpenAI messages, and response text in the
real chat templates TRL ships (Qwen2.5 / Hermes, Llama-3.1 JSON calls), Mistral's v3 control
tokens, each also as decoded with ``skip_special_tokens=True`` (what verl's reward managers do)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import trl
from transformers.utils.chat_template_utils import render_jinja_template

TEMPLATES = Path(trl.__file__).with_name("chat_templates")
# special tokens of each template (what skip_special_tokens drops); <tool_call> is a plain added token in Qwen
_SPECIAL = {
    "qwen2_5": re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>"),
    "llama3_1": re.compile(r"<\|(?:begin_of_text|start_header_id|end_header_id|eot_id|eom_id|python_tag)\|>"),
    "mistral": re.compile(r"\[(?:/?INST|TOOL_CALLS|/?TOOL_RESULTS|AVAILABLE_TOOLS|/AVAILABLE_TOOLS)\]|</s>|<s>"),
}


def _content(result: Any, is_error: bool) -> str:
    if is_error:
        return f"Error: {result}"
    return result if isinstance(result, str) else json.dumps(result)


def messages(question: str, calls: list[tuple[str, dict[str, Any], Any, bool]], answer: str) -> list[dict[str, Any]]:
    """OpenAI messages: one assistant turn per call (Llama-3.1 takes one call per turn)."""
    out: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for i, (name, args, result, error) in enumerate(calls):
        out.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": f"call{i:06d}x", "type": "function", "function": {"name": name, "arguments": args}}
                ],
            }
        )
        out.append({"role": "tool", "tool_call_id": f"call{i:06d}x", "content": _content(result, error)})
    out.append({"role": "assistant", "content": answer})
    return out


def _response(full: str, prompt: str) -> str:
    assert full.startswith(prompt)
    return full[len(prompt) :]


def render(kind: str, msgs: list[dict[str, Any]], tools: list[dict[str, Any]], *, strip: bool = False) -> str:
    """The response part (after the prompt) of ``msgs`` in template ``kind``."""
    if kind == "mistral":
        text = _mistral(msgs[1:])
    else:
        template = (TEMPLATES / f"{kind}.jinja").read_text()
        full = render_jinja_template([msgs], tools=tools, chat_template=template)[0][0]
        prompt = render_jinja_template([msgs[:1]], tools=tools, chat_template=template, add_generation_prompt=True)[0][
            0
        ]
        text = _response(full, prompt)
    return _SPECIAL[kind].sub("", text) if strip else text


def _mistral(msgs: list[dict[str, Any]]) -> str:
    """Mistral v3 (mistral-common) assistant side: [TOOL_CALLS][{...}]</s>[TOOL_RESULTS]{...}[/TOOL_RESULTS]."""
    parts = []
    for m in msgs:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                {"name": tc["function"]["name"], "arguments": tc["function"]["arguments"], "id": tc["id"][-9:]}
                for tc in m["tool_calls"]
            ]
            parts.append("[TOOL_CALLS]" + json.dumps(calls) + "</s>")
        elif m["role"] == "tool":
            parts.append(
                "[TOOL_RESULTS]"
                + json.dumps({"content": m["content"], "call_id": m["tool_call_id"][-9:]})
                + "[/TOOL_RESULTS]"
            )
        elif m["role"] == "assistant":
            parts.append(m["content"] + "</s>")
    return "".join(parts)


FORMATS = [(kind, strip) for kind in ("qwen2_5", "llama3_1", "mistral") for strip in (False, True)]
