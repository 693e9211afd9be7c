from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astra.records import HttpLaunch, StdioLaunch

HERE = Path(__file__).parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def test_stdio_launch() -> StdioLaunch:
    return StdioLaunch(command=sys.executable, args=[str(HERE / "mcp_test_server.py"), "stdio"])


@pytest.fixture
def time_launch() -> StdioLaunch:
    exe = shutil.which("mcp-server-time") or str(VENV_BIN / "mcp-server-time")
    if not Path(exe).exists():
        pytest.skip("mcp-server-time is not installed")
    return StdioLaunch(command=exe, args=["--local-timezone", "UTC"], env={"TZ": "UTC"})


def start_test_server(transport: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """``mcp_test_server.py`` over ``http`` or ``sse`` on 127.0.0.1 (a free port unless given), ready."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "mcp_test_server.py"), transport, str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
    except BaseException:
        proc.kill()
        raise
    return proc, port


@pytest.fixture(scope="module")
def http_server() -> HttpLaunch:
    proc, port = start_test_server("http")
    try:
        yield HttpLaunch(url=f"http://127.0.0.1:{port}/mcp")
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sse_server() -> HttpLaunch:
    """The test server over the legacy HTTP+SSE transport."""
    proc, port = start_test_server("sse")
    try:
        yield HttpLaunch(url=f"http://127.0.0.1:{port}/sse", transport="sse")
    finally:
        proc.kill()
        proc.wait(timeout=10)
