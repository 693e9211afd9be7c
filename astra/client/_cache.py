"""An on-disk response cache in front of any model, keyed by a hash of the request.

The key covers the model name, the messages, the tools and the settings that change the
output (temperature, max tokens, seed, tool choice, JSON mode; not the timeout). One JSON
file per response, written atomically, so concurrent episodes and processes can share it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from astra.client._model import Model, ModelResponse, ModelSettings, ModelWrapper
from astra.records import ChatMessage, canonical_json


class CachedModel(ModelWrapper):
    def __init__(self, model: Model, directory: str | os.PathLike[str]) -> None:
        super().__init__(model)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def key(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]], settings: ModelSettings | None
    ) -> str:
        s = (settings or ModelSettings()).model_dump(exclude={"timeout_s"})
        payload = {
            "model": self.inner.name,
            "messages": [m.to_openai() for m in messages],
            "tools": list(tools),
            "settings": s,
        }
        return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    async def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] = (),
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        key = self.key(messages, tools, settings)
        path = self._path(key)
        if path.exists():
            try:
                cached = ModelResponse.model_validate_json(await anyio.Path(path).read_text("utf-8"))
            except ValueError:
                cached = None  # a corrupt entry is a miss; it is overwritten below
            if cached is not None:
                self.hits += 1
                return cached.model_copy(update={"latency_s": 0.0})
        self.misses += 1
        response = await self.inner.request(messages, tools, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{id(response)}.tmp")
        await anyio.Path(tmp).write_text(response.model_dump_json(), "utf-8")
        os.replace(tmp, path)
        return response
