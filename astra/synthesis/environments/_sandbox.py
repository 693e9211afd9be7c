"""The pipeline's handle on the :mod:`astra.servers` sandbox: a small pool, limits from the config.

A sandbox runs one call at a time (one worker process), so a stage with concurrency N gets
up to ``min(N, 2)`` sandboxes (this machine class has 2 cores); a call takes a free one.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio

from astra.synthesis.environments._models import EnvironmentPipelineConfig


class SandboxRunner:
    """Async context manager over a pool of ``astra.servers.Sandbox``; ``call`` runs one tool call."""

    def __init__(self, config: EnvironmentPipelineConfig, size: int | None = None) -> None:
        self.config = config
        self.size = max(1, size if size is not None else min(config.concurrency, 2))
        self._stack: AsyncExitStack | None = None
        self._free: list[Any] = []
        self._available = anyio.Semaphore(self.size)

    async def __aenter__(self) -> SandboxRunner:
        from astra.servers import Sandbox, SandboxLimits

        limits = SandboxLimits(
            wall_s=self.config.sandbox_timeout_s,
            cpu_s=self.config.sandbox_timeout_s,
            memory_mb=self.config.sandbox_memory_mb,
        )
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        for _ in range(self.size):
            self._free.append(await self._stack.enter_async_context(Sandbox(limits=limits)))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._stack is not None:
            await self._stack.__aexit__(*exc)
            self._stack = None
            self._free.clear()

    async def call(self, source: str, entrypoint: str, arguments: dict[str, Any]) -> Any:
        """A ``SandboxResult`` (ok, value, error, error_kind, latency_s); never raises for tool failures."""
        if self._stack is None:
            raise RuntimeError("SandboxRunner used outside 'async with'")
        async with self._available:
            sandbox = self._free.pop()
            try:
                return await sandbox.call(source, entrypoint, arguments)
            finally:
                self._free.append(sandbox)
