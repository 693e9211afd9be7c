"""Harness overhead per tool call vs the raw mcp ``Client.call_tool``, on the same server.

In-process (``Client(MCPServer)``) and stdio, measured side by side in one process, in
interleaved blocks (so load drifts hit both sides alike). Three paths per transport:
- raw:      ``client.call_tool("add", args)`` on a plain ``mcp.client.Client``;
- harness:  ``Connections.call("add", args)`` (timeout scope, result conversion);
- loop:     the agent loop's per-call path (JSON parse + jsonschema validation + call).
Target: harness/raw <= 1.15.   Run: python benchmarks/client_overhead.py [calls-per-block]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "client"))
from mcp_test_server import make_server  # noqa: E402

from astra.client import Connections  # noqa: E402
from astra.client._loop import _execute  # noqa: E402
from astra.records import StdioLaunch, ToolCall  # noqa: E402

SERVER = str(Path(__file__).resolve().parent.parent / "tests" / "client" / "mcp_test_server.py")
ARGS = {"a": 2, "b": 3}


async def block(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


async def measure(label: str, raw_target, harness_target, n: int, blocks: int) -> dict[str, float]:
    async with Client(raw_target) as raw, Connections([harness_target]) as conns:
        call = ToolCall(id="c", name="add", arguments='{"a": 2, "b": 3}')
        validators: dict = {}
        visible = {"add"}
        paths = {
            "raw": lambda: raw.call_tool("add", ARGS),
            "harness": lambda: conns.call("add", ARGS),
            "loop": lambda: _execute(conns, call, visible, 0, validators, None),
        }
        for fn in paths.values():  # warm up
            await block(fn, 20)
        samples: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(blocks):
            for key, fn in paths.items():
                samples[key].append(await block(fn, n))
    med = {k: statistics.median(v) for k, v in samples.items()}
    # ratio of adjacent blocks, then the median: robust to load drifting during the run
    ratio = {k: statistics.median(a / b for a, b in zip(samples[k], samples["raw"], strict=True)) for k in paths}
    print(f"{label:10s} raw {med['raw'] * 1e6:8.1f} us/call   harness {med['harness'] * 1e6:8.1f} us/call "
          f"(ratio {ratio['harness']:.3f})   loop path {med['loop'] * 1e6:8.1f} us/call (ratio {ratio['loop']:.3f})")
    return ratio


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    await measure("in-process", make_server(), ("s", make_server()), n, blocks=15)
    params = StdioServerParameters(command=sys.executable, args=[SERVER, "stdio"])
    await measure(
        "stdio", params, ("s", StdioLaunch(command=sys.executable, args=[SERVER, "stdio"])), n // 2, blocks=15
    )


if __name__ == "__main__":
    anyio.run(main)
