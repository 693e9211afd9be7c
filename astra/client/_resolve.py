"""Model specs -> models: ``openai:<model>``, ``anthropic:<model>``, ``local:<gguf|smollm2>``,
``scripted:<name>`` (a registry of named scripts, see :func:`register_script`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from astra.client._model import Model, ModelError, ModelResponse, ModelSettings, ScriptedModel
from astra.records import ChatMessage

ScriptFactory = Callable[..., "Model | Sequence[Any]"]
_SCRIPTS: dict[str, ScriptFactory] = {}


def register_script(name: str, factory: ScriptFactory) -> None:
    """Register ``scripted:<name>``: ``factory(**options)`` returns a Model (usually a
    ScriptedModel) or a list of replies (wrapped in a per-conversation ScriptedModel)."""
    _SCRIPTS[name] = factory


def registered_scripts() -> list[str]:
    return sorted(_SCRIPTS)


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


def resolve_model(spec: str, **options: Any) -> Model:
    """Build the model a spec names. Options go to the provider's constructor:

    - ``openai:<model>``: ``base_url`` (default ``$OPENAI_BASE_URL``), ``api_key``, ``settings``,
      ``retry`` (:class:`RetryPolicy`), ``http_client``;
    - ``anthropic:<model>``: the same (``$ANTHROPIC_BASE_URL``);
    - ``local:<gguf path | smollm2>``: ``n_ctx``, ``settings``, ``constrained``;
    - ``scripted:<name>``: passed to the registered factory.

    Every spec also takes ``cache_dir``: wrap the model in a :class:`CachedModel`.
    """
    cache_dir = options.pop("cache_dir", None)
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"model spec {spec!r}: expected '<provider>:<model>' (openai:, anthropic:, local:, scripted:)")
    if isinstance(options.get("settings"), dict):
        options["settings"] = ModelSettings(**options["settings"])
    model: Model
    if kind == "openai":
        from astra.client._providers import OpenAIModel

        model = OpenAIModel(rest, **options)
    elif kind == "anthropic":
        from astra.client._providers import AnthropicModel

        model = AnthropicModel(rest, **options)
    elif kind == "local":
        from astra.client._local import LocalModel

        model = LocalModel(rest, **options)
    elif kind == "scripted":
        factory = _SCRIPTS.get(rest)
        if factory is None:
            raise ModelError(
                f"no script registered as 'scripted:{rest}' (registered: {', '.join(registered_scripts()) or 'none'}); "
                "call astra.client.register_script(name, factory) first"
            )
        made = factory(**options)
        model = made if isinstance(made, Model) else ScriptedModel(list(made), name=rest, per_conversation=True)
    else:
        raise ValueError(f"model spec {spec!r}: unknown provider {kind!r} (openai, anthropic, local, scripted)")
    if cache_dir:
        from astra.client._cache import CachedModel

        model = CachedModel(model, cache_dir)
    return model


def model_endpoint(model: Model) -> str:
    """What per-endpoint concurrency limits are keyed by."""
    inner = getattr(model, "model", None)
    if isinstance(inner, Model):
        return model_endpoint(inner)
    return str(getattr(model, "endpoint", None) or model.name)
