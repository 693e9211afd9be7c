"""Benchmark: resetting an episode vs relaunching the environment's server process.

Run by hand: ``.venv/bin/python benchmarks/servers_reset.py [--relaunches 5] [--resets 200]``.
Baseline: a fresh ``python DIR/server.py`` over stdio (spawn, handshake, tools/list, close),
which is what "start every episode from the initial state" costs without reset. Measured:
``reset`` through the hidden control channel over the same stdio connection
(``astra/reset``), and ``runtime.reset`` in-process. Prints the ratios (target >= 50x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import anyio
from mcp.client import Client

from astra.servers import EnvironmentControl, build_server, emit, load_sample, stdio_parameters


async def main(relaunches: int, resets: int) -> None:
    spec = load_sample("inventory")
    directory = emit(spec, tempfile.mkdtemp(prefix="astra-bench-") + "/inventory")
    params = stdio_parameters(directory)

    relaunch_s = []
    for _ in range(relaunches):
        start = time.perf_counter()
        async with Client(params) as client:
            await client.list_tools()
            await client.call_tool("get_item", {"sku": "WID-1"})
        relaunch_s.append(time.perf_counter() - start)

    wire_s = []
    async with Client(params) as client:
        control = EnvironmentControl(client)
        await client.call_tool("get_item", {"sku": "WID-1"})
        for _ in range(resets):
            await client.call_tool("add_stock", {"sku": "WID-1", "quantity": 1})
            start = time.perf_counter()
            state = await control.reset()
            wire_s.append(time.perf_counter() - start)
        assert state == spec.initial_state

    runtime = build_server(spec).runtime
    local_s = []
    for _ in range(resets):
        await runtime.call("add_stock", {"sku": "WID-1", "quantity": 1})
        start = time.perf_counter()
        runtime.reset()
        local_s.append(time.perf_counter() - start)
    await runtime.aclose()

    relaunch = statistics.median(relaunch_s)
    wire = statistics.median(wire_s)
    local = statistics.median(local_s)
    print(f"relaunch server process (stdio, median of {relaunches}): {relaunch * 1000:9.1f} ms")
    print(
        f"reset over stdio control channel (median of {resets}):   {wire * 1000:9.3f} ms   -> {relaunch / wire:8.0f}x "
        f"faster"
    )
    print(
        f"reset in-process runtime (median of {resets}):           {local * 1000:9.3f} ms   -> "
        f"{relaunch / local:8.0f}x faster"
    )
    print(f"target >= 50x: {'met' if relaunch / wire >= 50 else 'NOT met'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--relaunches", type=int, default=5)
    parser.add_argument("--resets", type=int, default=200)
    args = parser.parse_args()
    anyio.run(main, args.relaunches, args.resets)
