"""Fixtures for astra.servers: the bundled inventory environment, emitted once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from astra.records import EnvironmentSpec
from astra.servers import emit, load_sample


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def inventory() -> EnvironmentSpec:
    return load_sample("inventory")


@pytest.fixture(scope="session")
def emitted(inventory: EnvironmentSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emit(inventory, tmp_path_factory.mktemp("emitted") / "inventory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_port(port: int, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


class HttpServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, token: str | None) -> None:
        self.process, self.port, self.token = process, port, token
        self.url = f"http://127.0.0.1:{port}/mcp"


@pytest.fixture
def http_server(emitted: Path) -> Iterator[HttpServer]:
    port = free_port()
    token = "s3cret-token"
    env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG") if k in os.environ}
    process = subprocess.Popen(
        [sys.executable, str(emitted / "server.py"), "--http", "--port", str(port), "--host", "127.0.0.1", "--token", token],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        anyio.run(wait_for_port, port)
        yield HttpServer(process, port, token)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
