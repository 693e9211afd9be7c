"""Rollout throughput and CPU per episode: ASTRA vs a hand-written raw loop, same run (issue 19).

Setup (all on 127.0.0.1, started by this script): a fake OpenAI-compatible endpoint
(``tests/client/fake_openai.py``, its own process) answering every request after a fixed
latency L; a one-tool (``add``) stdio MCP server built on the official SDK; episodes of 5
tool steps + a final answer (6 model requests each). Per point (L, C): N episodes with C at
a time, ``--reps`` repetitions, interleaved, medians reported.

- ``raw``: the openai SDK (``AsyncOpenAI.chat.completions.create``) + ``mcp.client.Client``
  over stdio, one client each, shared by all episodes: a careful hand-written loop;
- ``astra``: ``run_episode`` with ``openai:`` + ``Connections`` (stdio server), one process;
  a second line says where its time went (model requests over L, tool-call latency, GC pauses);
- ``runner x1``: the runner's one-process path (``run_shard``, what ``run_rollouts(workers=1)``
  runs: trajectories appended + fsynced to JSONL), servers launched before the clock: the
  one-process baseline of the worker rows;
- ``astra xW``: the rollout runner's warm worker processes (``RolloutWorkers``, W of them,
  C/W episodes each, trajectories appended + fsynced to JSONL), started and warmed before
  the clock starts (their start-up is printed separately).

``--server inproc``: every process serves its own in-process copy of the MCP server (a
module-level factory crosses to the workers), so the server's CPU is the harness process's:
the case where one process is CPU-bound and more processes must mean more speed.

Printed: episodes/s, ratio to the raw loop, ratio to the ideal rate (every wait
overlapped: N / (waves x 6 L)), CPU ms per episode (the harness processes only: this one,
or the workers + this one; not the MCP servers nor the endpoint), and the per-call wall
time vs raw at C=1.

``--boost`` (root) raises the scheduling priority of the autogroups of this process and of
all its descendants (endpoint, servers, workers), as ``sandbox_bench.py --boost`` does: on a
shared, loaded machine this approximates a dedicated one; the header says which was measured.

Run:  python benchmarks/client_rollouts.py [--boost]            # the issue's table
      python benchmarks/client_rollouts.py --boost --points 100:256 --server inproc --only runner --only workers
      python benchmarks/client_rollouts.py --points 100:64 --reps 1 --profile /tmp/astra.prof
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from _boost import BOOST, boost, descendants  # benchmarks/ is on sys.path when a benchmark runs as a script

HERE = Path(__file__).resolve().parent
FAKE = HERE.parent / "tests" / "client" / "fake_openai.py"
STEPS = 5  # tool steps; + 1 final answer = 6 model requests


def bench_server() -> Any:
    """The one-tool MCP server (module level: a worker process builds its own in-process copy)."""
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("bench", log_level="WARNING")  # its default, INFO on the root logger, logs every request

    @app.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return app


def serve_mcp() -> None:
    """The one-tool stdio MCP server (``--serve-mcp``)."""
    bench_server().run()


def mcp_launch() -> Any:
    from astra.records import StdioLaunch

    return StdioLaunch(command=sys.executable, args=[str(Path(__file__).resolve()), "--serve-mcp"],
                       env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})


SERVER = {"kind": "stdio"}  # --server


def mcp_target() -> Any:
    """What the astra harnesses open: the stdio launch, or (``--server inproc``) the factory."""
    return ("bench", mcp_launch() if SERVER["kind"] == "stdio" else bench_server)


class Endpoint:
    """The fake endpoint in its own process (its CPU is not the harness's)."""

    def __init__(self, latency_s: float) -> None:
        self.proc = subprocess.Popen([sys.executable, str(FAKE), "0", str(latency_s), str(STEPS)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        boost()
        if not line.startswith("ready"):
            raise RuntimeError(f"fake endpoint did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


Result = tuple[float, float, float, float]  # wall s, harness CPU s, MCP server CPU s, endpoint CPU s


def other_cpu_s() -> tuple[float, float]:
    """CPU seconds used so far by this benchmark's live one-tool stdio MCP servers (``--serve-mcp``)
    and fake endpoint, from /proc: they share the machine's cores with the harness."""
    totals = {b"--serve-mcp": 0, FAKE.name.encode(): 0}
    for entry in map(str, descendants(os.getpid())):  # ours only: other runs of this script may be live
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            key = next((k for k in totals if k in cmdline), None)
            if key is None:
                continue
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            totals[key] += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            continue
    server, endpoint = totals.values()
    return server / os.sysconf("SC_CLK_TCK"), endpoint / os.sysconf("SC_CLK_TCK")


async def _concurrently(n: int, c: int, one: Any) -> None:
    limiter = anyio.CapacityLimiter(c)

    async def run(i: int) -> None:
        async with limiter:
            await one(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(run, i)


async def raw_loop(base_url: str, n: int, c: int, reps: int) -> list[Result]:
    import httpx2
    import openai
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters

    launch = mcp_launch()
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0,
                             http_client=openai.DefaultAsyncHttpxClient(  # a pool as large as C, like astra's
                                 limits=httpx2.Limits(max_connections=None, max_keepalive_connections=None)))
    params = StdioServerParameters(command=launch.command, args=launch.args, env=launch.env)
    out: list[Result] = []
    async with Client(params if SERVER["kind"] == "stdio" else bench_server()) as mcp:
        boost()
        listed = await mcp.list_tools()
        tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                   "parameters": t.input_schema}} for t in listed.tools]

        async def episode(i: int) -> None:
            messages: list[dict[str, Any]] = [{"role": "user", "content": f"episode {i}"}]
            while True:
                resp = await sdk.chat.completions.create(model="fake", messages=messages, tools=tools)
                msg = resp.choices[0].message
                calls = msg.tool_calls or []
                messages.append({"role": "assistant", "content": msg.content, "tool_calls": [
                    {"id": t.id, "type": "function", "function": {"name": t.function.name,
                                                                  "arguments": t.function.arguments}}
                    for t in calls] or None})
                if not calls:
                    assert msg.content
                    return
                for t in calls:
                    result = await mcp.call_tool(t.function.name, json.loads(t.function.arguments))
                    text = "\n".join(b.text for b in result.content if getattr(b, "type", "") == "text")
                    messages.append({"role": "tool", "tool_call_id": t.id, "content": text})

        await _concurrently(min(n, 4), c, episode)  # warm-up
        for _ in range(reps):
            out.append(await _timed(lambda: _concurrently(n, c, episode)))
    await sdk.close()
    return out


GC_PAUSE = {"s": 0.0, "start": 0.0, "g0": 0.0, "g1": 0.0, "g2": 0.0, "n0": 0, "n1": 0, "n2": 0}


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        GC_PAUSE["start"] = time.perf_counter()
    else:
        pause = time.perf_counter() - GC_PAUSE["start"]
        GC_PAUSE["s"] += pause
        GC_PAUSE[f"g{info['generation']}"] += pause
        GC_PAUSE[f"n{info['generation']}"] += 1


def _gc_reset() -> None:
    GC_PAUSE.update(s=0.0, g0=0.0, g1=0.0, g2=0.0, n0=0, n1=0, n2=0)


gc.callbacks.append(_gc_timer)


async def _timed(body: Any) -> Result:
    start, cpu, (server, endpoint) = time.perf_counter(), time.process_time(), other_cpu_s()
    await body()
    server_now, endpoint_now = other_cpu_s()
    return time.perf_counter() - start, time.process_time() - cpu, server_now - server, endpoint_now - endpoint


def detail(trajs: list[Any], latency_ms: int, pauses: dict[str, Any]) -> str:
    """Where an episode's time went (one-process rows): the model requests' time over L, the
    tool calls' latency, and this process's GC pauses."""
    if not trajs:
        return ""
    trajs = [t if isinstance(t, dict) else t.model_dump(mode="json") for t in trajs]
    over = sorted(t["timings"]["model_s"] / t["meta"]["model_requests"] * 1000 - latency_ms for t in trajs)
    tools = sorted(s["latency_s"] * 1000 for t in trajs for s in t["steps"])
    q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
    return (f"model request over L p50 {q(over, .5):.1f} / p95 {q(over, .95):.1f} ms; tool call p50 "
            f"{q(tools, .5):.1f} / p95 {q(tools, .95):.1f} ms; GC pauses {pauses['s'] * 1000:.0f} ms per run ("
            + ", ".join(f"gen{g} {pauses[f'n{g}']}x {pauses[f'g{g}'] * 1000:.0f} ms" for g in range(3)) + ")")


async def astra_loop(base_url: str, n: int, c: int, reps: int, profile: Any = None,
                     trajs: list[Any] | None = None) -> list[Result]:
    """``run_episode`` in this process (no JSONL); the last rep's trajectories go to ``trajs``."""
    from astra.client import Connections, OpenAIModel, run_episode

    model = OpenAIModel("fake", base_url=base_url)
    out: list[Result] = []
    async with Connections([mcp_target()]) as conns:
        boost()

        async def episode(i: int) -> None:
            traj = await run_episode(model, conns, [f"episode {i}"], sample=i)
            assert traj.termination == "final_answer" and len(traj.steps) == STEPS, (traj.termination, traj.error)
            if trajs is not None:
                trajs.append(traj)

        await _concurrently(min(n, 4), c, episode)
        if profile is not None:
            profile.enable()
        for _ in range(reps):
            if trajs is not None:
                trajs.clear()
            _gc_reset()
            out.append(await _timed(lambda: _concurrently(n, c, episode)))
        if profile is not None:
            profile.disable()
    await model.aclose()
    return out


class RunnerX1:
    """The runner's one-process path (``run_shard``: what ``run_rollouts(workers=1)`` runs),
    trajectories appended + fsynced to JSONL like the workers do: the baseline for ``xW``.
    Its servers are launched once, before the clock (as warm as the workers)."""

    def __init__(self, base_url: str, tmp: str, replicas: int) -> None:
        self.base_url, self.tmp, self.replicas, self.runs = base_url, tmp, replicas, 0
        self.stack = AsyncExitStack()
        self.copies: list[Any] = []
        self.trajs: list[Any] = []  # the last run's records
        self.gc: dict[str, Any] = dict(GC_PAUSE)  # the last run's GC pauses

    async def __aenter__(self) -> RunnerX1:
        from astra.client import OpenAIModel
        from astra.client._runner import _Replicas

        self.model = OpenAIModel("fake", base_url=self.base_url)
        await self.stack.__aenter__()
        self.copies = (await _Replicas.open(self.stack, [mcp_target()], self._config(1))).copies
        boost()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stack.__aexit__(*exc)

    def _config(self, c: int) -> Any:
        from astra.client._runner import EpisodeConfig

        return EpisodeConfig(model_spec="openai:fake", model_options={"base_url": self.base_url},
                             max_requests=STEPS + 1, concurrency=c, server_replicas=self.replicas)

    async def run(self, n: int, c: int) -> Result:
        from astra.client._runner import run_shard, trajectory_id
        from astra.records import Task

        self.runs += 1
        config = self._config(c)
        tasks = [Task(id=f"{self.base_url}-r{self.runs}-{i}", user_turns=[f"episode {i}"]) for i in range(n)]
        items = [(trajectory_id(t.id, config.model_spec, 0), t, 0) for t in tasks]
        out_path = f"{self.tmp}/runner-{self.base_url.rsplit(':', 1)[1].split('/')[0]}-{self.runs}.jsonl"

        async def shard() -> None:
            written, errors = await run_shard(items, config, [], out_path, model=self.model, conns=self.copies)
            assert written == n and not errors, errors[:3]

        _gc_reset()
        result = await _timed(shard)
        self.gc = dict(GC_PAUSE)
        self.trajs = [json.loads(line) for line in Path(out_path).read_bytes().splitlines()]
        return result


class WorkersXW:
    """The rollout runner's warm worker processes (``RolloutWorkers``), started before the clock."""

    def __init__(self, base_url: str, tmp: str, workers: int, max_c: int, replicas: int) -> None:
        from astra.client._runner import EpisodeConfig

        self.base_url, self.tmp, self.workers, self.runs = base_url, tmp, workers, 0
        self.config = EpisodeConfig(model_spec="openai:fake", model_options={"base_url": base_url},
                                    max_requests=STEPS + 1, concurrency=max(1, max_c // workers),
                                    server_replicas=replicas)

    async def __aenter__(self) -> WorkersXW:
        from astra.client._runner import RolloutWorkers

        t0 = time.perf_counter()
        self.pool = await RolloutWorkers(self.workers, self.config, [mcp_target()]).__aenter__()
        boost()
        print(f"    {self.workers} warm workers started (servers launched, imports done) in "
              f"{time.perf_counter() - t0:.2f} s", flush=True)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.pool.__aexit__(*exc)

    async def run(self, n: int, c: int) -> Result:
        from astra.client._runner import trajectory_id
        from astra.records import Task

        self.runs += 1
        tasks = [Task(id=f"{self.base_url}-w{self.runs}-{i}", user_turns=[f"episode {i}"]) for i in range(n)]
        items = [(trajectory_id(t.id, self.config.model_spec, 0), t, 0) for t in tasks]
        out_path = f"{self.tmp}/{self.base_url.rsplit(':', 1)[1].split('/')[0]}-w{self.runs}.jsonl"
        cpu0, (server0, endpoint0) = time.process_time(), other_cpu_s()
        start = time.perf_counter()
        # C below the worker count: C workers, one episode each (C=1 measures the per-call overhead)
        result = await self.pool.run(items, out_path, concurrency=max(1, c // self.workers),
                                     workers=min(self.workers, c))
        wall = time.perf_counter() - start
        server_now, endpoint_now = other_cpu_s()
        assert result.written == n and not result.errors, result.errors[:3]
        assert result.by_termination == {"final_answer": n}, result.by_termination
        return (wall, time.process_time() - cpu0 + result.worker_cpu_s, server_now - server0,
                endpoint_now - endpoint0)


async def paired(n: int, c: int, reps: int, one: RunnerX1 | None,
                 many: WorkersXW | None) -> tuple[list[Result], list[Result]]:
    """Reps of the one-process runner and of the workers, alternating (each pair under the same
    machine load); a warm-up of each first."""
    ones: list[Result] = []
    manys: list[Result] = []
    for rep in range(reps + 1):
        if one is not None:
            result = await one.run(n, c)
            if rep:
                ones.append(result)
        if many is not None:
            result = await many.run(n, c)
            if rep:
                manys.append(result)
    return ones, manys


def _line(name: str, runs: list[Result], n: int, ideal_rate: float, raw_rate: float | None) -> tuple[float, float]:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    server = statistics.median(r[2] for r in runs)
    endpoint = statistics.median(r[3] for r in runs)
    rate = n / wall
    vs_raw = f"{rate / raw_rate:5.2f}" if raw_rate else " 1.00"
    print(f"    {name:<10} {rate:7.2f} eps/s  vs raw {vs_raw}  of ideal {rate / ideal_rate:5.3f}  "
          f"CPU {cpu / n * 1000:5.1f} ms/ep (MCP server {server / n * 1000:4.1f}, "
          f"endpoint {endpoint / n * 1000:4.1f})  "
          f"[walls {', '.join(f'{r[0]:.2f}' for r in runs)}]", flush=True)
    return rate, cpu / n


async def point(a: Any, base_url: str, latency_ms: int, n: int, c: int, one: RunnerX1 | None,
                many: WorkersXW | None) -> list[str]:
    """One (L, C) point: every harness asked for; returns its summary rows."""
    only = set(a.only or ["raw", "astra", "runner", "workers"])
    summary: list[str] = []
    waves = -(-n // c)
    ideal = n / (waves * (STEPS + 1) * latency_ms / 1000)
    print(f"L={latency_ms} ms, C={c}, {n} episodes (ideal {ideal:.2f} eps/s)", flush=True)
    raw_rate = raw_cpu = None
    if "raw" in only:
        raw_runs = await raw_loop(base_url, n, c, a.reps)
        raw_rate, raw_cpu = _line("raw loop", raw_runs, n, ideal, None)
    if "astra" in only:
        prof = None
        if a.profile:  # CPU time, not wall time: a busy machine preempts syscalls
            import cProfile

            prof = cProfile.Profile(time.process_time)
        trajs: list[Any] = []
        runs = await astra_loop(base_url, n, c, a.reps, prof, trajs)
        if prof is not None:
            prof.dump_stats(a.profile)
        rate, cpu = _line("astra", runs, n, ideal, raw_rate)
        print(f"               ({detail(trajs, latency_ms, GC_PAUSE)})", flush=True)
        vs = rate / raw_rate if raw_rate else float("nan")
        row = (f"L={latency_ms:<5} C={c:<4} astra x1: {vs:.2f} x raw, {rate / ideal:.3f} of ideal, "
               f"CPU {cpu * 1000:.1f} ms/ep")
        if raw_cpu:
            row += f" (raw {raw_cpu * 1000:.1f}: {cpu / raw_cpu:.2f}x)"
        if c == 1 and raw_rate:
            row += f"; per-call wall vs raw {raw_rate / rate:.3f}"
        summary.append(row)
    ones, manys = await paired(n, c, a.reps, one, many)
    if ones:
        rate, cpu = _line("runner x1", ones, n, ideal, raw_rate)
        assert one is not None
        print(f"               ({detail(one.trajs, latency_ms, one.gc)})", flush=True)
        summary.append(f"L={latency_ms:<5} C={c:<4} runner x1: "
                       f"{rate / raw_rate if raw_rate else float('nan'):.2f} x raw, "
                       f"{rate / ideal:.3f} of ideal, CPU {cpu * 1000:.1f} ms/ep")
    if manys:
        rate, cpu = _line(f"astra x{a.workers}", manys, n, ideal, raw_rate)
        vs = rate / raw_rate if raw_rate else float("nan")
        row = (f"L={latency_ms:<5} C={c:<4} astra x{a.workers}: {vs:.2f} x raw, "
               f"{rate / ideal:.3f} of ideal, CPU {cpu * 1000:.1f} ms/ep")
        if ones:  # the median of the paired ratios: each pair ran back to back, under the same load
            ratios = sorted(o[0] / m[0] for o, m in zip(ones, manys, strict=True))
            row += (f"; {statistics.median(ratios):.2f} x runner x1 (pairs {', '.join(f'{r:.2f}' for r in ratios)})")
            print(f"               (x{a.workers} / runner x1, paired reps: {', '.join(f'{r:.2f}' for r in ratios)})")
        summary.append(row)
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="100:1,100:64,1000:64,1000:256",
                        help="comma-separated L_ms:C (model latency in ms : concurrent episodes)")
    parser.add_argument("--episodes", type=int, default=128,
                        help="episodes per run (at least 2 C: two waves; C=1 uses --c1-episodes)")
    parser.add_argument("--c1-episodes", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the runner rows (0: skip)")
    parser.add_argument("--only", choices=["raw", "astra", "runner", "workers"], action="append",
                        help="run only these harnesses (repeatable)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="server_replicas of the runner rows (copies of the connections per process)")
    parser.add_argument("--server", choices=["stdio", "inproc"], default="stdio",
                        help="the MCP server: a stdio subprocess (one per process), or in-process (--server inproc: "
                             "each process serves its own copy, its CPU counted as the harness's)")
    parser.add_argument("--profile", help="cProfile the astra one-process runs into this file")
    parser.add_argument("--uvloop", action="store_true", help="run this process's loop on uvloop")
    parser.add_argument("--boost", action="store_true",
                        help="(root) nice -20 for the autogroups of every process of the benchmark")
    a = parser.parse_args()
    BOOST["on"] = a.boost
    SERVER["kind"] = a.server
    boost()
    only = set(a.only or ["raw", "astra", "runner", "workers"])
    points = [(int(p.split(":")[0]), int(p.split(":")[1])) for p in a.points.split(",")]
    print(f"episodes of {STEPS} tool steps + a final answer; fake endpoint and a one-tool "
          f"{'stdio' if a.server == 'stdio' else 'in-process'} MCP server on "
          f"127.0.0.1; {a.reps} reps, medians; CPU = harness processes only; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; {'boosted (autogroup nice -20)' if a.boost else 'not boosted'}")
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency_ms in sorted({p[0] for p in points}):
            endpoint = Endpoint(latency_ms / 1000)
            try:
                at_l = [(max(a.episodes, 2 * c) if c > 1 else a.c1_episodes, c) for lm, c in points if lm == latency_ms]
                async with AsyncExitStack() as stack:
                    one = many = None
                    if "workers" in only and a.workers > 1:
                        many = await stack.enter_async_context(
                            WorkersXW(endpoint.base_url, tmp, a.workers, max(c for _, c in at_l), a.replicas))
                    if "runner" in only:
                        one = await stack.enter_async_context(RunnerX1(endpoint.base_url, tmp, a.replicas))
                    for n, c in at_l:
                        summary += await point(a, endpoint.base_url, latency_ms, n, c, one, many)
            finally:
                endpoint.close()
    print(f"\nsummary (load average now {os.getloadavg()[0]:.1f})")
    for row in summary:
        print("  " + row)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-mcp"]:
        serve_mcp()
    elif "--uvloop" in sys.argv:
        anyio.run(main, backend_options={"use_uvloop": True})
    else:
        anyio.run(main)
