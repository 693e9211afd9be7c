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
from astra.client._model import merge_settings as _settings
from astra.client._retry import RetryableError, RetryPolicy, parse_retry_after, retryable_status, with_retries
from astra.client._schema import openai_to_anthropic_tool
from astra.records import ChatMessage, InfraFault, ToolCall, Usage

# loop -> {endpoint key -> SDK client}: connection pools are bound to the loop that opened them.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


async def _close_at_loop_end(clients: dict[tuple[Any, ...], Any]) -> Any:
    """An async generator left suspended: asyncio closes it when the loop shuts down
    (``shutdown_asyncgens``), which closes the loop's shared clients and their pools."""
    try:
        yield
    finally:
        for client in list(clients.values()):
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - closing at exit: nothing left to report to
                pass
        clients.clear()


async def _start(agen: Any) -> None:
    await agen.__anext__()


def _shared_client(key: tuple[Any, ...], factory: Any) -> Any:
    loop = asyncio.get_running_loop()
    per_loop = _CLIENTS.get(loop)
    if per_loop is None:
        per_loop = _CLIENTS[loop] = {}
        closer = _CLOSERS[loop] = _close_at_loop_end(per_loop)
        loop.create_task(_start(closer))
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = factory()
    return client


def _status_error(exc: Exception, what: str) -> Exception:
    """Map an SDK exception to RetryableError (retry) or ModelError (final)."""
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is not None:
        if retryable_status(status):
            retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
            return RetryableError(f"HTTP {status}: {exc}", status=status, retry_after_s=retry_after)
        return ModelError(f"{what}: HTTP {status}: {exc}", status=status)
    return RetryableError(f"{type(exc).__name__}: {exc}", fault=InfraFault.transport_error)


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
                raise RetryableError(f"timed out after {s.timeout_s:g} s", fault=InfraFault.transport_error) from exc
            except sdk.APIStatusError as exc:
                raise _status_error(exc, self.name) from exc
            except (sdk.APITimeoutError, sdk.APIConnectionError) as exc:
                raise RetryableError(f"{type(exc).__name__}: {exc}", fault=InfraFault.transport_error) from exc

        return await with_retries(attempt, self.retry, self.name)


def _json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON; text with lone surrogates (no UTF-8 form) goes out \\u-escaped."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


class BadResponse(RetryableError):
    """The endpoint answered 200 with garbage or a wrongly shaped body (retried; then a ModelError)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, fault=InfraFault.bad_response)


def _text_content(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        strings = [t for t in texts if isinstance(t, str)]
        if len(strings) == len(texts):
            return "".join(strings)
    raise BadResponse(f"message content is {type(content).__name__}, not text")


def parse_chat_completion(body: bytes, model: str) -> tuple[ChatMessage, Usage, str, str | None, dict[str, Any]]:
    """A Chat Completions body -> (assistant message, usage, model, finish_reason, the JSON).

    Checks the shape it relies on (a 200 with anything else is :class:`BadResponse`) without
    building the SDK's typed objects, which cost more CPU than the rest of a step."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadResponse(f"200 with a body that is not JSON ({exc}): {body[:120]!r}") from None
    if not isinstance(data, dict):
        raise BadResponse(f"200 with a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadResponse("response without choices" if not choices else "choices is not a list")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadResponse("choices[0] has no message object")
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise BadResponse("finish_reason is not a string")
    calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls")
    if raw_calls is not None:
        if not isinstance(raw_calls, list):
            raise BadResponse("tool_calls is not a list")
        for i, c in enumerate(raw_calls):
            if not isinstance(c, dict):
                raise BadResponse(f"tool_calls[{i}] is not an object")
            function = c.get("function")
            if function is None:
                continue  # not a function call (the SDK's typed path skipped these too)
            name, arguments, cid = (
                (function.get("name"), function.get("arguments"), c.get("id")) if isinstance(function, dict) else
                (None, None, None))
            if not isinstance(name, str) or not name:
                raise BadResponse(f"tool_calls[{i}] has no function name")
            if isinstance(arguments, (dict, list)):
                arguments = json.dumps(arguments)
            elif arguments is not None and not isinstance(arguments, str):
                raise BadResponse(f"tool_calls[{i}].function.arguments is {type(arguments).__name__}")
            if cid is not None and not isinstance(cid, str):
                raise BadResponse(f"tool_calls[{i}].id is not a string")
            calls.append(ToolCall.model_construct(id=cid or f"call_{i}", name=name, arguments=arguments or "{}"))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    usage_raw = data.get("usage") or {}
    if not isinstance(usage_raw, dict):
        raise BadResponse("usage is not an object")
    tokens_in, tokens_out = usage_raw.get("prompt_tokens") or 0, usage_raw.get("completion_tokens") or 0
    if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
        raise BadResponse("usage token counts are not integers")
    served_by = data.get("model")
    msg = ChatMessage.model_construct(  # every field checked above: no second validation on the hot path
        role="assistant",
        content=_text_content(message.get("content")),
        tool_calls=calls or None,
        tool_call_id=None,
        name=None,
        reasoning_content=reasoning if isinstance(reasoning, str) else None,
        thinking_blocks=None,
    )
    usage = Usage.model_construct(input_tokens=tokens_in, output_tokens=tokens_out)
    return msg, usage, served_by if isinstance(served_by, str) and served_by else model, finish_reason, data


class OpenAIModel(_SdkModel):
    """``openai:<model>``: Chat Completions with tools on OpenAI or any compatible server.

    ``base_url`` (or ``$OPENAI_BASE_URL``) selects the endpoint; ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (or a placeholder for local servers that need none).
    ``reasoning_content`` (DeepSeek, vLLM reasoning parsers) is kept on the message.

    Requests go through the official SDK client's public low-level path
    (``client.post("/chat/completions", content=..., cast_to=bytes)``: its auth, headers,
    connection pool and error mapping) with the body already encoded: the messages are in
    wire format already, and the SDK's typed request transform and response models cost
    most of an episode's CPU and grow quadratically with its length (docs/ARCHITECTURE.md "Performance facts"). Each
    message's JSON is encoded once and reused on the next steps of its episode; tool schemas
    are encoded once per tool list.
    """

    provider, base_url_env, api_key_env = "openai", "OPENAI_BASE_URL", "OPENAI_API_KEY"
    default_endpoint, sdk_client = "https://api.openai.com/v1", "AsyncOpenAI"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self._model_json = _json_bytes(model)
        # id(tools list entries) -> (the entries, kept alive so ids stay unique, their JSON)
        self._tools_json: dict[tuple[int, ...], tuple[Sequence[dict[str, Any]], bytes]] = {}
        # id(message) -> (message, its JSON): messages are immutable once sent; weak keys are
        # not possible on pydantic models, so the cache is bounded and evicts oldest first
        self._message_json: dict[int, tuple[ChatMessage, bytes]] = {}

    def _sdk(self) -> Any:
        import openai

        return openai

    def _new_client(self) -> Any:
        """The SDK client over its aiohttp transport (``openai[aiohttp]``) when installed:
        the SDK's own choice "for improved concurrency", and a fraction of the default
        transport's CPU per request (whose pool checks every connection on every request)."""
        openai = self._sdk()
        http_client = self._http_client
        if http_client is None:
            try:
                http_client = openai.DefaultAioHttpClient()
            except RuntimeError:  # aiohttp is not installed: the SDK's default transport
                http_client = None
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, http_client=http_client)

    def _encoded_tools(self, tools: Sequence[dict[str, Any]]) -> bytes:
        key = tuple(map(id, tools))
        hit = self._tools_json.get(key)
        if hit is None:
            if len(self._tools_json) >= 256:
                self._tools_json.pop(next(iter(self._tools_json)))
            hit = self._tools_json[key] = (list(tools), _json_bytes(list(tools)))
        return hit[1]

    def _encoded_message(self, message: ChatMessage) -> bytes:
        hit = self._message_json.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        encoded = _json_bytes(message.to_openai())
        if len(self._message_json) >= 8192:
            for key in list(self._message_json)[:2048]:
                del self._message_json[key]
        self._message_json[id(message)] = (message, encoded)
        return encoded

    def request_body(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]], s: ModelSettings) -> bytes:
        """The Chat Completions request body (JSON bytes) for these messages, tools and settings."""
        parts = [b'{"model":', self._model_json, b',"messages":[',
                 b",".join([self._encoded_message(m) for m in messages]), b"]"]
        extra: dict[str, Any] = {}
        if tools:
            parts += [b',"tools":', self._encoded_tools(tools)]
            if s.tool_choice:
                extra["tool_choice"] = s.tool_choice
        elif s.json_output:
            extra["response_format"] = {"type": "json_object"}
        for field in ("temperature", "max_tokens", "seed"):
            value = getattr(s, field)
            if value is not None:
                extra[field] = value
        if extra:
            parts += [b",", _json_bytes(extra)[1:-1]]
        parts.append(b"}")
        return b"".join(parts)

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        s = _settings(settings, self.defaults)
        client = self._client()
        body = self.request_body(messages, tools, s)
        options = {"timeout": s.timeout_s}

        async def post(**_: Any) -> Any:
            raw = await client.post("/chat/completions", content=body, cast_to=bytes, options=options)
            return parse_chat_completion(raw, self.model)

        start = time.perf_counter()
        (message, usage, served_by, finish_reason, data), attempts = await self._create(post, {}, s)
        return ModelResponse.model_construct(
            message=message,
            usage=usage,
            model=served_by,
            latency_s=time.perf_counter() - start,
            finish_reason=finish_reason,
            raw={"response": data, "attempts": attempts},
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
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content or "",
            }
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

        async def create(**kw: Any) -> tuple[Any, ModelResponse]:
            resp = await client.messages.create(**kw)
            try:
                return resp, self._response(resp)
            except (AttributeError, TypeError, ValueError) as exc:  # a 200 the SDK could not type
                raise BadResponse(f"wrongly shaped Messages response: {type(exc).__name__}: {exc}") from None

        start = time.perf_counter()
        (resp, response), attempts = await self._create(create, kwargs, s)
        response.latency_s = time.perf_counter() - start
        response.raw = {"response": resp.model_dump(mode="json"), "attempts": attempts, "stop_reason": resp.stop_reason}
        return response

    def _response(self, resp: Any) -> ModelResponse:
        texts, thinking, calls = [], [], []
        thinking_blocks: list[dict[str, Any]] = []
        if not isinstance(resp.content, list):
            raise TypeError(f"content is {type(resp.content).__name__}, not a list of blocks")
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
            finish_reason=_ANTHROPIC_STOP.get(resp.stop_reason, resp.stop_reason),
        )


_ANTHROPIC_STOP = {"max_tokens": "length", "end_turn": "stop", "tool_use": "tool_calls", "stop_sequence": "stop"}
