"""The model provider interface: one small class with one async method.

``Model.request(messages, tools, settings) -> ModelResponse``. Messages are
:class:`astra.records.ChatMessage` (OpenAI chat format); tools are OpenAI function-format
dicts (``{"type": "function", "function": {"name", "description", "parameters"}}``).
Providers translate to their own wire format. A provider that finally fails (after its
retries) raises :class:`ModelError`; callers record that as a failure, never a score.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import anyio
from pydantic import BaseModel, ConfigDict, Field

from astra.errors import AstraError
from astra.records import ChatMessage, InfraFault, ToolCall, Usage


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    timeout_s: float = 120.0
    tool_choice: str | None = Field(default=None, description="auto | none | required")
    json_output: bool = Field(default=False, description="ask for a JSON object reply (no tools)")
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="with json_output: the JSON Schema the reply must match (local models constrain decoding to it)",
    )


def merge_settings(settings: ModelSettings | None, defaults: ModelSettings) -> ModelSettings:
    """THE settings merge: the fields ``settings`` sets win over ``defaults`` (a provider's
    defaults under a request's settings; a request's settings under a wrapper's fixed ones)."""
    if settings is None:
        return defaults
    merged = defaults.model_dump(exclude_unset=True) | settings.model_dump(exclude_unset=True)
    return ModelSettings(**merged)


class ModelResponse(BaseModel):
    message: ChatMessage
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    latency_s: float = 0.0
    finish_reason: str | None = Field(
        default=None, description="the provider's stop reason in OpenAI terms: stop | tool_calls | length | ...")
    raw: Any = Field(default=None, description="the provider's raw response, kept for audit")


class ModelError(AstraError):
    """A provider failed for good (after retries): a recorded failure, never a default score.

    ``fault`` says which infrastructure fault it was (an HTTP error, a garbage 200, no answer)."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 fault: InfraFault = InfraFault.provider_error) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.fault = fault


class ScriptExhausted(ModelError):
    """A scripted model was asked for more replies than its script holds."""


class Model(abc.ABC):
    """A chat model that may call tools."""

    name: str = "model"

    @abc.abstractmethod
    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; providers holding a client override this."""


class ModelWrapper(Model):
    """The base of every model in front of another (a cache, a concurrency limit, fixed
    settings): the wrapped model is ``inner``; name, endpoint and closing are the inner model's.
    Providers implement :meth:`Model.request`; wrappers add one concern each around it (as
    inspect_ai's ``Model`` around its ``ModelAPI``)."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def model(self) -> Model:
        """The older name of :attr:`inner` (``CachedModel`` and the runner's limiter used it)."""
        return self.inner

    @property
    def innermost(self) -> Model:
        """The provider under every wrapper."""
        inner = self.inner
        while isinstance(inner, ModelWrapper):
            inner = inner.inner
        return inner

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        return await self.inner.request(messages, tools, settings)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FixedSettings(ModelWrapper):
    """Settings fixed over every request's own (the run's per-request timeout on stages that
    pass settings without one), through :func:`merge_settings`."""

    def __init__(self, inner: Model, fixed: ModelSettings) -> None:
        super().__init__(inner)
        self.fixed = fixed

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        return await self.inner.request(messages, tools, merge_settings(self.fixed, settings or ModelSettings()))


Reply = ChatMessage | str | Callable[[Sequence[ChatMessage], Sequence[dict[str, Any]]], ChatMessage | str]


class ScriptedModel(Model):
    """A deterministic model that replays a script of replies, in order.

    Each reply is an assistant :class:`ChatMessage`, a plain string (a text answer), or a
    callable ``(messages, tools) -> ChatMessage | str`` for replies that depend on the
    conversation. Asking beyond the script raises :class:`ScriptExhausted` (loudly).

    ``per_conversation=True`` makes the model stateless: the reply index is the number of
    assistant messages already in ``messages``, so one instance can serve many concurrent
    episodes (the rollout runner needs this). ``delay_s`` simulates model latency.
    """

    def __init__(
        self,
        replies: Sequence[Reply],
        name: str = "scripted",
        *,
        per_conversation: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.replies = list(replies)
        self.name = f"scripted:{name}" if not name.startswith("scripted:") else name
        self.calls = 0
        self.per_conversation = per_conversation
        self.delay_s = delay_s

    @classmethod
    def from_plan(
        cls,
        plan: Sequence[tuple[str, dict[str, Any]] | Sequence[tuple[str, dict[str, Any]]]],
        final_answer: str,
        name: str = "plan",
        **options: Any,
    ) -> ScriptedModel:
        """Replay a plan: each item is one tool call ``(tool, arguments)`` or a list of them
        (parallel calls in one assistant turn); then ``final_answer``. Per conversation."""
        replies: list[Reply] = []
        for index, item in enumerate(plan):
            calls = cast("list[tuple[str, dict[str, Any]]]", [item] if isinstance(item, tuple) else list(item))
            replies.append(
                ChatMessage(
                    role="assistant",
                    content=None,
                    tool_calls=[
                        ToolCall(id=f"call_{index}_{j}", name=tool, arguments=json.dumps(args))
                        for j, (tool, args) in enumerate(calls)
                    ],
                )
            )
        replies.append(final_answer)
        options.setdefault("per_conversation", True)
        return cls(replies, name=name, **options)

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        if self.per_conversation:
            index = sum(1 for m in messages if m.role == "assistant")
        else:
            index = self.calls
        self.calls += 1
        if index >= len(self.replies):
            raise ScriptExhausted(
                f"{self.name}: script exhausted after {len(self.replies)} replies "
                f"(asked for reply #{index + 1})"
            )
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        reply = self.replies[index]
        if callable(reply):
            reply = reply(messages, tools)
        if isinstance(reply, str):
            reply = ChatMessage(role="assistant", content=reply)
        return ModelResponse(message=reply, model=self.name)
