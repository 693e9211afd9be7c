"""One model layer: parsed specs, a registry of providers, one settings merge, one wrapper base."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from astra.client import (
    AnthropicModel,
    CachedModel,
    FixedSettings,
    Model,
    ModelResponse,
    ModelSettings,
    ModelSpec,
    ModelWrapper,
    OpenAIModel,
    merge_settings,
    model_endpoint,
    provider_of,
    register_provider,
    registered_providers,
    resolve_model,
)
from astra.client._resolve import EchoModel
from astra.client._runner import _LimitedModel  # pyright: ignore[reportPrivateUsage]
from astra.records import ChatMessage
from astra.synthesis.trajectories import TrajectoryConfig
from astra.synthesis.trajectories._pipeline import TimeoutModel

pytestmark = pytest.mark.anyio


class Recorder(Model):
    name = "recorder:x"

    def __init__(self) -> None:
        self.seen: list[ModelSettings | None] = []

    async def request(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = (),
                      settings: ModelSettings | None = None) -> ModelResponse:
        self.seen.append(settings)
        return ModelResponse(message=ChatMessage(role="assistant", content="ok"), model=self.name)


def test_every_spelling_parses_to_one_spec() -> None:
    assert registered_providers()[:4] == ["openai", "anthropic", "local", "scripted"]
    same = [ModelSpec.parse(s) for s in ("openai:gpt-4o", "openai/gpt-4o")]
    assert same[0] == same[1] == ModelSpec(provider="openai", model="gpt-4o") and str(same[0]) == "openai:gpt-4o"
    # a model id with slashes and colons stays whole after the provider
    assert ModelSpec.parse("openai:Qwen/Qwen2.5-7B").model == "Qwen/Qwen2.5-7B"
    assert ModelSpec.parse("openai:llama3:8b").model == "llama3:8b"
    with_url = ModelSpec.parse("openai:qwen@http://127.0.0.1:8000/v1")
    assert (with_url.model, with_url.base_url) == ("qwen", "http://127.0.0.1:8000/v1")
    assert ModelSpec.parse(str(with_url)) == with_url
    # only a provider that takes an endpoint reads @URL; a local path keeps its '@'
    assert ModelSpec.parse("local:/m/a@http://x.gguf").model == "/m/a@http://x.gguf"
    assert ModelSpec.parse("local:smollm2") == ModelSpec.parse("local/smollm2")
    for bad, why in (("gpt-4o", "expected"), ("Qwen/Qwen2.5", "expected"), ("bogus:x", "unknown provider"),
                     ("openai:", "expected"), ("openai:@http://h/v1", "expected")):
        with pytest.raises(ValueError, match=why):
            ModelSpec.parse(bad)
    assert provider_of("anthropic/claude-x") == "anthropic" and provider_of("nope") is None


def test_resolve_takes_the_spec_endpoint_and_the_registry() -> None:
    m = resolve_model("openai/qwen@http://127.0.0.1:1/v1")
    assert isinstance(m, OpenAIModel) and m.endpoint == "http://127.0.0.1:1/v1" and m.name == "openai:qwen"
    assert resolve_model("openai:qwen@http://127.0.0.1:1/v1", base_url="http://127.0.0.1:1/v1").endpoint == m.endpoint
    with pytest.raises(ValueError, match="differs"):
        resolve_model("openai:qwen@http://127.0.0.1:1/v1", base_url="http://127.0.0.1:2/v1")
    assert isinstance(resolve_model(ModelSpec(provider="anthropic", model="claude-x")), AnthropicModel)
    built: list[tuple[str, dict[str, Any]]] = []

    def build(model: str, **options: Any) -> Model:
        built.append((model, options))
        return EchoModel()

    register_provider("test-echo", build)
    try:
        assert isinstance(resolve_model("test-echo:any", settings={"temperature": 0.5}), EchoModel)
        assert built[0][0] == "any" and built[0][1]["settings"] == ModelSettings(temperature=0.5)
    finally:
        from astra.client import _resolve

        _resolve._PROVIDERS.pop("test-echo")  # pyright: ignore[reportPrivateUsage]


def test_one_settings_merge() -> None:
    defaults = ModelSettings(temperature=0.2, max_tokens=64, timeout_s=30.0)
    merged = merge_settings(ModelSettings(max_tokens=8, json_output=True), defaults)
    assert (merged.temperature, merged.max_tokens, merged.timeout_s, merged.json_output) == (0.2, 8, 30.0, True)
    assert merge_settings(None, defaults) is defaults
    assert merge_settings(ModelSettings(thinking={"type": "x"}), defaults).model_extra == {"thinking": {"type": "x"}}


async def test_wrappers_share_one_base(tmp_path: Path) -> None:
    provider = OpenAIModel("m", base_url="http://127.0.0.1:9/v1")
    stacked = TimeoutModel(CachedModel(_LimitedModel(provider, anyio.CapacityLimiter(2)), tmp_path), 5.0)
    layers = [stacked, stacked.inner, stacked.inner.inner]  # type: ignore[attr-defined]
    assert all(isinstance(w, ModelWrapper) and w.name == "openai:m" for w in layers)
    assert stacked.innermost is provider and model_endpoint(stacked) == "http://127.0.0.1:9/v1"
    cached = layers[1]
    assert isinstance(cached, CachedModel) and cached.model is cached.inner  # the older attribute name


async def test_fixed_settings_win_over_the_request_and_keep_the_rest() -> None:
    inner = Recorder()
    model = FixedSettings(inner, ModelSettings(timeout_s=7.0))
    await model.request([ChatMessage(role="user", content="hi")], (), ModelSettings(temperature=0.0, timeout_s=99))
    await model.request([ChatMessage(role="user", content="hi")])
    first, second = inner.seen
    assert first is not None and (first.timeout_s, first.temperature) == (7.0, 0.0)
    assert second is not None and (second.timeout_s, second.temperature) == (7.0, None)
    assert TimeoutModel(inner, 3.0).timeout_s == 3.0


def test_the_old_timeout_name_still_works_with_a_deprecation_message(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match="llm_timeout_s is deprecated, use model_timeout_s"):
        old = TrajectoryConfig.model_validate({"out_dir": str(tmp_path), "servers": ["s"], "llm_timeout_s": 42})
    assert old.model_timeout_s == 42 and old.llm_timeout_s == 42
    assert "llm_timeout_s" not in old.model_dump()
    with pytest.raises(ValueError, match="same option"):
        TrajectoryConfig.model_validate(
            {"out_dir": str(tmp_path), "servers": ["s"], "llm_timeout_s": 42, "model_timeout_s": 7}
        )
