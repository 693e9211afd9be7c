"""Benchmark: a sandboxed tool call vs the same tool in-process (added latency, p50/p95).

Run by hand: ``.venv/bin/python benchmarks/servers_sandbox_latency.py [--calls 2000]``.
Both sides go through ``EnvironmentRuntime.call`` (schema validation, episode state,
result checks) on the inventory sample's stateful ``get_item`` tool; the only difference is
where the tool code runs: a warm sandbox worker process or this process. Also prints the
raw ``Sandbox.call`` round trip against a direct function call. Target: <= 2 ms added at p50.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

from astra.servers import Sandbox, build_server, load_sample


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(n: int, call) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


async def main(calls: int) -> None:
    spec = load_sample("inventory")
    sandboxed = build_server(spec, sandboxed=True).runtime
    inproc = build_server(spec, sandboxed=False).runtime
    args = {"sku": "WID-1"}
    for runtime in (sandboxed, inproc):  # warm up: worker start, compile caches
        for _ in range(50):
            assert (await runtime.call("get_item", args)).ok
    # interleave the two in blocks so that machine noise hits both alike
    sb_s: list[float] = []
    ip_s: list[float] = []
    for _ in range(10):
        sb_s += await timed(calls // 10, lambda: sandboxed.call("get_item", args))
        ip_s += await timed(calls // 10, lambda: inproc.call("get_item", args))
    await sandboxed.aclose()

    source = spec.tools[1].source
    namespace: dict = {}
    exec(source, namespace)
    fn = namespace["get_item"]
    state = spec.initial_state
    async with Sandbox() as sandbox:
        for _ in range(50):
            await sandbox.call(source, "get_item", args, state=state)
        raw_sb = await timed(calls, lambda: sandbox.call(source, "get_item", args, state=state))

    async def direct() -> None:
        fn(state, **args)

    raw_ip = await timed(calls, direct)

    def row(name: str, a: list[float], b: list[float]) -> None:
        print(f"{name:34s} p50 {pct(a, .5) * 1e3:7.3f} ms  p95 {pct(a, .95) * 1e3:7.3f} ms | in-process p50 {pct(b, .5) * 1e3:7.3f} ms  p95 {pct(b, .95) * 1e3:7.3f} ms"
              f" | added p50 {(pct(a, .5) - pct(b, .5)) * 1e3:6.3f} ms  p95 {(pct(a, .95) - pct(b, .95)) * 1e3:6.3f} ms  ({pct(a, .5) / pct(b, .5):.1f}x)")

    print(f"{calls} calls each, get_item on the inventory sample (state: {len(str(state))} chars)")
    row("runtime.call sandboxed vs in-proc", sb_s, ip_s)
    row("Sandbox.call vs direct function", raw_sb, raw_ip)
    added = pct(sb_s, .5) - pct(ip_s, .5)
    print(f"target <= 2 ms added at p50: {'met' if added <= 0.002 else 'NOT met'} ({added * 1e3:.3f} ms); mean sandboxed {statistics.mean(sb_s) * 1e3:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    anyio.run(main, parser.parse_args().calls)
