"""Structured LLM calls for pipeline stages: JSON replies validated by pydantic, with retries.

Every call is audited (model, prompt version, raw reply) so a stage can record it. A reply
that never validates raises :class:`LLMOutputError` carrying the raw replies: the stage
records the item as failed; it is never turned into a default value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from astra.client import Model, ModelError, ModelSettings
from astra.errors import AstraError, validation_problem
from astra.jsonutil import JSONExtractionError, extract_json
from astra.records import ChatMessage

T = TypeVar("T", bound=BaseModel)


class LLMOutputError(AstraError):
    """The model's reply could not be parsed/validated after all retries, or the model failed."""

    def __init__(self, reason: str, audit: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.audit = audit


def _messages(prompt: str | Sequence[ChatMessage], system: str | None) -> list[ChatMessage]:
    if isinstance(prompt, str):
        msgs = [ChatMessage(role="user", content=prompt)]
    else:
        msgs = list(prompt)
    if system:
        msgs.insert(0, ChatMessage(role="system", content=system))
    return msgs


async def ask_json(
    model: Model,
    prompt: str | Sequence[ChatMessage],
    output: type[T],
    *,
    system: str | None = None,
    prompt_version: str = "v1",
    settings: ModelSettings | None = None,
    retries: int = 2,
) -> tuple[T, list[dict[str, Any]]]:
    """Ask for a JSON reply that validates as ``output``; returns (value, audit).

    On a bad reply the model is told what was wrong (parse error or validation error) and
    asked again, up to ``retries`` more times.
    """
    settings = settings or ModelSettings(json_output=True, temperature=0.0)
    if settings.json_output and settings.json_schema is None:
        # a schema lets constrained decoders (llama.cpp grammars) emit only valid shapes
        settings = settings.model_copy(update={"json_schema": output.model_json_schema()})
    messages = _messages(prompt, system)
    audit: list[dict[str, Any]] = []
    reason = "no attempt"
    for attempt in range(retries + 1):
        try:
            response = await model.request(messages, (), settings)
        except ModelError as exc:
            audit.append({"model": model.name, "prompt_version": prompt_version, "attempt": attempt, "error": str(exc)})
            raise LLMOutputError(f"model_error: {exc}", audit) from exc
        raw = response.message.content or ""
        audit.append({"model": model.name, "prompt_version": prompt_version, "attempt": attempt, "raw": raw})
        try:
            value = extract_json(raw)
            if isinstance(value, list) and "items" in output.model_fields:
                value = {"items": value}
            return output.model_validate(value), audit
        except JSONExtractionError as exc:
            reason = f"bad_json: {exc}"
        except ValidationError as exc:
            reason = validation_problem("invalid_reply", exc)
        messages = [
            *messages,
            ChatMessage(role="assistant", content=raw),
            ChatMessage(
                role="user",
                content=f"Your reply was not valid ({reason}). Reply with only a JSON value matching: "
                + json.dumps(output.model_json_schema())[:2000],
            ),
        ]
    raise LLMOutputError(reason, audit)
