"""Model specs -> models: a parsed :class:`ModelSpec` and a registry of providers.

A spec is ``<provider>:<model>`` (``openai:gpt-4o``, ``anthropic:claude-x``,
``local:<gguf|smollm2>``, ``scripted:<name>``), also written ``<provider>/<model>`` (inspect_ai's
spelling, for a registered provider), optionally with ``@<http(s) URL>`` for the endpoint of a
provider that takes one (``openai:qwen@http://127.0.0.1:8000/v1``). Providers are registered
with :func:`register_provider`; ``scripted:`` has its own registry of named scripts
(:func:`register_script`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from astra.client._model import Model, ModelError, ModelResponse, ModelSettings, ModelWrapper, ScriptedModel
from astra.records import ChatMessage

ScriptFactory = Callable[..., "Model | Sequence[Any]"]
_SCRIPTS: dict[str, ScriptFactory] = {}
_URL = re.compile(r"@(https?://\S+)$")


def register_script(name: str, factory: ScriptFactory) -> None:
    """Register ``scripted:<name>``: ``factory(**options)`` returns a Model (usually a
    ScriptedModel) or a list of replies (wrapped in a per-conversation ScriptedModel)."""
    _SCRIPTS[name] = factory


def registered_scripts() -> list[str]:
    return sorted(_SCRIPTS)


@dataclass(frozen=True)
class Provider:
    """A registered provider: ``build(model, **options)`` makes its :class:`Model`;
    ``endpoint``: whether a spec may give it a base URL (``@http://...``)."""

    name: str
    build: Callable[..., Model]
    endpoint: bool = False


_PROVIDERS: dict[str, Provider] = {}


def register_provider(name: str, build: Callable[..., Model], *, endpoint: bool = False) -> None:
    """Register ``<name>:<model>``: ``build(model, **options)`` returns the provider's Model."""
    _PROVIDERS[name] = Provider(name, build, endpoint)


def registered_providers() -> list[str]:
    """Provider names, in registration order (the built-ins first)."""
    return list(_PROVIDERS)


class ModelSpec(BaseModel):
    """A parsed model spec (see the module docstring); ``str(spec)`` is its canonical spelling."""

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str
    base_url: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse a spec; ValueError naming the spec when it is malformed or its provider unknown."""
        known = ", ".join(registered_providers())
        colon, slash = text.find(":"), text.find("/")
        if 0 < slash and (colon < 0 or slash < colon) and text[:slash] in _PROVIDERS:
            provider, rest = text[:slash], text[slash + 1 :]
        else:
            provider, sep, rest = text.partition(":")
            if not sep:
                rest = ""
        base_url = None
        found = _URL.search(rest)
        if found and provider in _PROVIDERS and _PROVIDERS[provider].endpoint:
            rest, base_url = rest[: found.start()], found.group(1)
        if not provider or not rest:
            raise ValueError(f"model spec {text!r}: expected '<provider>:<model>' ({known})")
        if provider not in _PROVIDERS:
            raise ValueError(f"model spec {text!r}: unknown provider {provider!r} ({known})")
        return cls(provider=provider, model=rest, base_url=base_url)

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


def provider_of(spec: str) -> str | None:
    """The provider a spec names (None: not a valid spec)."""
    try:
        return ModelSpec.parse(spec).provider
    except ValueError:
        return None


def resolve_model(spec: str | ModelSpec, **options: Any) -> Model:
    """Build the model a spec names. Options go to the provider's constructor:

    - ``openai:<model>``: ``base_url`` (default: the spec's ``@URL``, else ``$OPENAI_BASE_URL``),
      ``api_key``, ``settings``, ``retry`` (:class:`RetryPolicy`), ``http_client``;
    - ``anthropic:<model>``: the same (``$ANTHROPIC_BASE_URL``);
    - ``local:<gguf path | smollm2>``: ``n_ctx``, ``settings``, ``constrained``;
    - ``scripted:<name>``: passed to the registered factory.

    ``settings`` may be a dict (a :class:`ModelSettings`). Every spec also takes ``cache_dir``:
    wrap the model in a :class:`CachedModel`.
    """
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    cache_dir = options.pop("cache_dir", None)
    if parsed.base_url:
        given = options.get("base_url")
        if given and given != parsed.base_url:
            raise ValueError(f"model spec {str(parsed)!r}: base_url {given!r} differs from the spec's")
        options["base_url"] = parsed.base_url
    if isinstance(options.get("settings"), dict):
        options["settings"] = ModelSettings(**options["settings"])
    model = _PROVIDERS[parsed.provider].build(parsed.model, **options)
    if cache_dir:
        from astra.client._cache import CachedModel

        model = CachedModel(model, cache_dir)
    return model


def model_endpoint(model: Model) -> str:
    """What per-endpoint concurrency limits are keyed by (the provider's, under any wrapper)."""
    if isinstance(model, ModelWrapper):
        model = model.innermost
    return str(getattr(model, "endpoint", None) or model.name)


# --------------------------------------------------------------------------- the built-in providers


def _openai(model: str, **options: Any) -> Model:
    from astra.client._providers import OpenAIModel

    return OpenAIModel(model, **options)


def _anthropic(model: str, **options: Any) -> Model:
    from astra.client._providers import AnthropicModel

    return AnthropicModel(model, **options)


def _local(model: str, **options: Any) -> Model:
    from astra.client._local import LocalModel

    return LocalModel(model, **options)


def _scripted(name: str, **options: Any) -> Model:
    factory = _SCRIPTS.get(name)
    if factory is None:
        raise ModelError(
            f"no script registered as 'scripted:{name}' (registered: {', '.join(registered_scripts()) or 'none'}); "
            "call astra.client.register_script(name, factory) first"
        )
    made = factory(**options)
    return made if isinstance(made, Model) else ScriptedModel(list(made), name=name, per_conversation=True)


register_provider("openai", _openai, endpoint=True)  # any OpenAI-compatible endpoint
register_provider("anthropic", _anthropic, endpoint=True)
register_provider("local", _local)  # llama-cpp-python in-process (the embedded SmolLM2 by default)
register_provider("scripted", _scripted)  # deterministic test and demo models


class EchoModel(Model):
    """``scripted:echo``: stateless, answers each user turn with its own text (smoke tests, demos)."""

    name = "scripted:echo"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        last = next((m for m in reversed(messages) if m.role == "user"), None)
        text = f"echo: {last.content if last else ''}"
        return ModelResponse(message=ChatMessage(role="assistant", content=text), model=self.name)


register_script("echo", EchoModel)
