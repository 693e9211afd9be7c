"""Fixtures for astra.servers: the bundled inventory environment, emitted once per session."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
    def __init__(self, process: subprocess.Popen[bytes], port: int, token: str | None, log: Path) -> None:
        self.process, self.port, self.token, self.log = process, port, token, log
        self.url = f"http://127.0.0.1:{port}/mcp"

    def stderr_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def launch_http(directory: Path, *extra: str, token: str | None = "s3cret-token") -> Iterator[HttpServer]:
    """``directory/server.py --http`` on a free 127.0.0.1 port (stderr to a file: a full pipe would block it)."""
    port = free_port()
    env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG") if k in os.environ}
    log = Path(tempfile.mkstemp(prefix="astra-http-", suffix=".log")[1])
    args = [sys.executable, str(directory / "server.py"), "--http", "--port", str(port), "--host", "127.0.0.1"]
    with log.open("wb") as err:
        process = subprocess.Popen([*args, *(["--token", token] if token else []), *extra],
                                   env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:  # blocking on purpose: usable from sync fixtures and async tests alike
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"server.py did not listen on {port}: {stderr}") from None
                time.sleep(0.05)
        yield HttpServer(process, port, token, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)


@pytest.fixture
def http_server(emitted: Path) -> Iterator[HttpServer]:
    with launch_http(emitted) as server:
        yield server


@pytest.fixture
def launch() -> Callable[..., contextlib.AbstractContextManager[HttpServer]]:
    """:func:`launch_http` for tests (a fixture: test modules cannot import this conftest by name)."""
    return launch_http
