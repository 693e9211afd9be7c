"""Remote model providers: ``openai:`` (Chat Completions, any compatible endpoint) and ``anthropic:``.

One SDK client (and so one connection pool) per endpoint per process and event loop,
reused by every model addressing that endpoint. SDK retries are off; :mod:`._retry` retries
uniformly on 429 / 5xx / timeouts / connection errors and honours ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import weakref
from collections.abc import Sequence
from typing import Any

import anyio

from astra.client._model import Model, ModelError, ModelResponse, ModelSettings
from astra.client._retry import RetryableError, RetryPolicy, parse_retry_after, retryable_status, with_retries
from astra.client._schema import openai_to_anthropic_tool
from astra.records import ChatMessage, ToolCall, Usage

# loop -> {endpoint key -> SDK client}: httpx pools are bound to the loop that opened them.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _shared_client(key: tuple[Any, ...], factory: Any) -> Any:
    loop = asyncio.get_running_loop()
    per_loop = _CLIENTS.setdefault(loop, {})
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = factory()
    return client


def _settings(settings: ModelSettings | None, defaults: ModelSettings) -> ModelSettings:
    if settings is None:
        return defaults
    merged = defaults.model_dump(exclude_unset=True) | settings.model_dump(exclude_unset=True)
    return ModelSettings(**merged)


def _status_error(exc: Exception, what: str) -> Exception:
    """Map an SDK exception to RetryableError (retry) or ModelError (final)."""
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is not None:
        if retryable_status(status):
            retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
            return RetryableError(f"HTTP {status}: {exc}", status=status, retry_after_s=retry_after)
        return ModelError(f"{what}: HTTP {status}: {exc}", status=status)
    return RetryableError(f"{type(exc).__name__}: {exc}")


class _SdkModel(Model):
    """What the OpenAI and Anthropic providers share: endpoint, key, settings, retries, one
    shared SDK client per endpoint, and the retrying call that maps SDK errors."""

    provider = ""
    base_url_env = ""
    api_key_env = ""
    default_endpoint = ""
    sdk_client = ""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        settings: ModelSettings | None = None,
        retry: RetryPolicy | None = None,
        http_client: Any = None,
    ) -> None:
        self.model = model
        self.name = f"{self.provider}:{model}"
        self.base_url = base_url or os.environ.get(self.base_url_env) or None
        self.api_key = api_key or os.environ.get(self.api_key_env) or "no-key"  # local servers need none
        self.defaults = settings or ModelSettings()
        self.retry = retry or RetryPolicy()
        self._http_client = http_client

    @property
    def endpoint(self) -> str:
        return self.base_url or self.default_endpoint

    def _sdk(self) -> Any:
        raise NotImplementedError

    def _new_client(self) -> Any:
        return getattr(self._sdk(), self.sdk_client)(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, http_client=self._http_client
        )

    def _client(self) -> Any:
        if self._http_client is not None:  # a caller-provided transport is not shared
            return self._new_client()
        return _shared_client((self.provider, self.base_url, self.api_key), self._new_client)

    async def _create(self, create: Any, kwargs: dict[str, Any], s: ModelSettings) -> tuple[Any, int]:
        sdk = self._sdk()

        async def attempt() -> Any:
            try:
                with anyio.fail_after(s.timeout_s):
                    return await create(**kwargs, timeout=s.timeout_s)
            except TimeoutError as exc:
                raise RetryableError(f"timed out after {s.timeout_s:g} s") from exc
            except sdk.APIStatusError as exc:
                raise _status_error(exc, self.name) from exc
            except (sdk.APITimeoutError, sdk.APIConnectionError) as exc:
                raise RetryableError(f"{type(exc).__name__}: {exc}") from exc

        return await with_retries(attempt, self.retry, self.name)


class OpenAIModel(_SdkModel):
    """``openai:<model>``: Chat Completions with tools on OpenAI or any compatible server.

    ``base_url`` (or ``$OPENAI_BASE_URL``) selects the endpoint; ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (or a placeholder for local servers that need none).
    ``reasoning_content`` (DeepSeek, vLLM reasoning parsers) is kept on the message.
    """

    provider, base_url_env, api_key_env = "openai", "OPENAI_BASE_URL", "OPENAI_API_KEY"
    default_endpoint, sdk_client = "https://api.openai.com/v1", "AsyncOpenAI"

    def _sdk(self) -> Any:
        import openai

        return openai

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        s = _settings(settings, self.defaults)
        client = self._client()
        kwargs: dict[str, Any] = {"model": self.model, "messages": [m.to_openai() for m in messages]}
        if tools:
            kwargs["tools"] = list(tools)
            if s.tool_choice:
                kwargs["tool_choice"] = s.tool_choice
        elif s.json_output:
            kwargs["response_format"] = {"type": "json_object"}
        for field, arg in (("temperature", "temperature"), ("max_tokens", "max_tokens"), ("seed", "seed")):
            value = getattr(s, field)
            if value is not None:
                kwargs[arg] = value

        start = time.perf_counter()
        resp, attempts = await self._create(client.chat.completions.create, kwargs, s)
        if not resp.choices:
            raise ModelError(f"{self.name}: response without choices")
        msg = resp.choices[0].message
        extra = msg.model_extra or {}
        reasoning = getattr(msg, "reasoning_content", None) or extra.get("reasoning_content") or extra.get("reasoning")
        calls = [
            ToolCall(id=c.id or f"call_{i}", name=c.function.name, arguments=c.function.arguments or "{}")
            for i, c in enumerate(msg.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        usage = Usage(
            input_tokens=getattr(resp.usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(resp.usage, "completion_tokens", 0) or 0,
        )
        return ModelResponse(
            message=ChatMessage(
                role="assistant",
                content=msg.content,
                tool_calls=calls or None,
                reasoning_content=reasoning if isinstance(reasoning, str) else None,
            ),
            usage=usage,
            model=resp.model or self.model,
            latency_s=time.perf_counter() - start,
            raw={"response": resp.model_dump(mode="json"), "attempts": attempts},
        )


def to_anthropic_messages(messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI-format chat -> (system, Anthropic messages): tool calls become ``tool_use``
    blocks, tool messages ``tool_result`` blocks in a user turn; same-role turns are merged."""
    system_parts: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        if m.role == "system":
            if m.content:
                system_parts.append(m.content)
        elif m.role == "user":
            add("user", [{"type": "text", "text": m.content or ""}])
        elif m.role == "assistant":
            # thinking blocks go back first and verbatim (signatures included): the API
            # rejects a tool-use continuation whose thinking was dropped or altered
            blocks: list[dict[str, Any]] = [dict(b) for b in m.thinking_blocks or []]
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for c in m.tool_calls or []:
                try:
                    args = json.loads(c.arguments or "{}")
                except json.JSONDecodeError:
                    args = {"_raw_arguments": c.arguments}
                if not isinstance(args, dict):
                    args = {"value": args}
                blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": args})
            add("assistant", blocks or [{"type": "text", "text": ""}])
        elif m.role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content or ""}
            if getattr(m, "is_error", None) or (m.model_extra or {}).get("is_error"):
                block["is_error"] = True
            add("user", [block])
    return ("\n\n".join(system_parts) or None), out


class AnthropicModel(_SdkModel):
    """``anthropic:<model>``: the Messages API with ``tool_use`` / ``tool_result`` blocks."""

    provider, base_url_env, api_key_env = "anthropic", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"
    default_endpoint, sdk_client = "https://api.anthropic.com", "AsyncAnthropic"

    def __init__(self, model: str, *, default_max_tokens: int = 1024, **options: Any) -> None:
        super().__init__(model, **options)
        self.default_max_tokens = default_max_tokens

    def _sdk(self) -> Any:
        import anthropic

        return anthropic

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        s = _settings(settings, self.defaults)
        client = self._client()
        system, wire = to_anthropic_messages(messages)
        if s.json_output and not tools:
            system = ((system or "") + "\n\nReply with one JSON object and nothing else.").strip()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": wire,
            "max_tokens": s.max_tokens or self.default_max_tokens,
        }
        if system:
            kwargs["system"] = system
        if tools:
            kwargs["tools"] = [openai_to_anthropic_tool(t) for t in tools]
            if s.tool_choice in ("auto", "any", "none"):
                kwargs["tool_choice"] = {"type": s.tool_choice}
            elif s.tool_choice == "required":
                kwargs["tool_choice"] = {"type": "any"}
        if s.temperature is not None:
            kwargs["temperature"] = s.temperature
        thinking_option = (s.model_extra or {}).get("thinking")
        if thinking_option:  # e.g. ModelSettings(thinking={"type": "enabled", "budget_tokens": 2048})
            kwargs["thinking"] = thinking_option

        start = time.perf_counter()
        resp, attempts = await self._create(client.messages.create, kwargs, s)
        texts, thinking, calls = [], [], []
        thinking_blocks: list[dict[str, Any]] = []
        for block in resp.content:
            kind = getattr(block, "type", None)
            if kind == "text":
                texts.append(block.text)
            elif kind in ("thinking", "redacted_thinking"):
                thinking_blocks.append(block.model_dump(mode="json", exclude_none=True))
                if kind == "thinking":
                    thinking.append(getattr(block, "thinking", ""))
            elif kind == "tool_use":
                calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
        usage = Usage(
            input_tokens=getattr(resp.usage, "input_tokens", 0) or 0,
            output_tokens=getattr(resp.usage, "output_tokens", 0) or 0,
        )
        return ModelResponse(
            message=ChatMessage(
                role="assistant",
                content="".join(texts) or None,
                tool_calls=calls or None,
                reasoning_content="\n".join(thinking) or None,
                thinking_blocks=thinking_blocks or None,
            ),
            usage=usage,
            model=resp.model or self.model,
            latency_s=time.perf_counter() - start,
            raw={"response": resp.model_dump(mode="json"), "attempts": attempts, "stop_reason": resp.stop_reason},
        )
