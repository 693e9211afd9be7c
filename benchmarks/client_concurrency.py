"""Concurrency: 64 concurrent 5-step episodes, a scripted model taking 100 ms per reply,
against an in-process MCP server. Ideal: every episode overlaps perfectly, so the batch
takes 5 x 100 ms and throughput is 64 steps per 100 ms. Target: >= 0.8 of ideal.

Three schedules run in the same process, interleaved, after one untimed warm-up of each
(first-call costs: lazy imports, pydantic and jsonschema compilation):
- ``sleeps``: the model's sleeps only (no tools, no harness): what the event loop achieves;
- ``raw-sdk``: the same 64 x 5 schedule calling the tool with the official
  ``mcp.client.Client.call_tool`` directly (no harness): what the SDK itself achieves on
  this server in one process;
- ``harness``: ``astra.client.run_episode`` with a ``ScriptedModel`` through ``Connections``;
- ``runner``: the rollout runner's shard loop (``run_shard``: 64 Task records, concurrency
  64, every trajectory appended and fsynced to a JSONL file), i.e. ``astra rollout``
  without the process start.

``--workers N`` (N > 1) also runs the ``runner`` schedule split over N worker processes, as
``astra rollout --workers N --concurrency 64/N`` does: each process is started and warmed
first, then all start together (a barrier); the wall time is from the first start to the
last finish, so it measures throughput, not process start-up (reported separately).
``--batches B`` gives the runner schedules 64 x B tasks at 64 at a time: the steady state of a
long run, where a new episode starts whenever one ends.

Each is repeated (``--repeats``) and the median is reported; a shared machine's neighbours
move single runs by +-20 %. ``--server`` picks the in-process server: ``sync`` (the test
server: plain ``def`` tools, which ``MCPServer`` runs in a worker thread per call) or
``async`` (``async def`` tools, no thread hop), or ``env`` (an ASTRA environment built by
``astra.servers.build_server`` from the bundled ``inventory`` sample, in-process runtime,
unsandboxed).

Run: python benchmarks/client_concurrency.py [--episodes 64] [--steps 5] [--delay 0.1]
     [--repeats 7] [--server sync|async|env] [--workers N] [--batches B]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "client"))
from mcp_test_server import make_server  # noqa: E402

from astra.client import Connections, ScriptedModel, register_script, run_episode  # noqa: E402
from astra.client._runner import EpisodeConfig, run_shard, trajectory_id  # noqa: E402
from astra.records import Task  # noqa: E402


def make_async_server() -> Any:
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("async")

    @app.tool()
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return app


def make_env_server() -> Any:
    from astra.servers import build_server, load_sample

    return build_server(load_sample("inventory"), sandboxed=False)


SERVERS: dict[str, tuple[Callable[[], Any], str, Callable[[int], dict[str, Any]]]] = {
    # kind: (server factory, tool called at every step, its arguments at step i)
    "sync": (make_server, "add", lambda i: {"a": i, "b": 1}),
    "async": (make_async_server, "add", lambda i: {"a": i, "b": 1}),
    "env": (make_env_server, "get_item", lambda i: {"sku": "WID-1"}),
}


def server_and_call(kind: str) -> tuple[Any, str, Callable[[int], dict[str, Any]]]:
    factory, tool, args = SERVERS[kind]
    return factory(), tool, args


Result = tuple[float, float]  # wall seconds, CPU seconds


async def _timed(body: Callable[[], Awaitable[None]]) -> Result:
    start, cpu0 = time.perf_counter(), time.process_time()
    await body()
    return time.perf_counter() - start, time.process_time() - cpu0


async def sleeps(episodes: int, steps: int, delay: float, _: Any) -> Result:
    async def one() -> None:
        for _ in range(steps):
            await anyio.sleep(delay)

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(episodes):
                tg.start_soon(one)

    return await _timed(body)


async def raw_sdk(episodes: int, steps: int, delay: float, kind: str) -> Result:
    from mcp.client import Client

    server, tool, args = server_and_call(kind)
    async with Client(server) as client:
        async def one(i: int) -> None:
            for s in range(steps - 1):
                await anyio.sleep(delay)  # the model's reply
                result = await client.call_tool(tool, args(s))
                assert not result.is_error, result
            await anyio.sleep(delay)  # the final answer

        async def body() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(episodes):
                    tg.start_soon(one, i)

        return await _timed(body)


async def harness(episodes: int, steps: int, delay: float, kind: str) -> Result:
    # steps - 1 tool-calling replies (one call each), then the final answer: `steps` model requests
    server, tool, args = server_and_call(kind)
    model = ScriptedModel.from_plan([(tool, args(s)) for s in range(steps - 1)], "done", delay_s=delay)
    async with Connections([("s", server)]) as conns:
        async def one(i: int) -> None:
            traj = await run_episode(model, conns, [f"episode {i}"], max_requests=steps)
            assert traj.termination == "final_answer" and len(traj.steps) == steps - 1, traj.termination
            assert not any(s.is_error for s in traj.steps), traj.steps

        async def body() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(episodes):
                    tg.start_soon(one, i)

        return await _timed(body)


def _plan(kind: str, steps: int) -> list[tuple[str, dict[str, Any]]]:
    _, tool, args = SERVERS[kind]
    return [(tool, args(s)) for s in range(steps - 1)]


def _register(kind: str, steps: int, delay: float) -> str:
    """A named script for the runner (worker processes resolve the model by its spec)."""
    name = f"bench-{kind}-{steps}-{int(delay * 1000)}"
    register_script(name, lambda **_: ScriptedModel.from_plan(_plan(kind, steps), "done", name=name, delay_s=delay))
    return f"scripted:{name}"


def _server_target(kind: str) -> tuple[str, Any]:
    return ("s", SERVERS[kind][0])


async def _run_shard(episodes: int, steps: int, delay: float, kind: str, batches: int = 1, offset: int = 0) -> Result:
    """``episodes`` at a time, ``episodes x batches`` in all (the runner starts the next task
    as soon as one ends)."""
    spec = _register(kind, steps, delay)
    total = episodes * batches
    tasks = [Task(id=f"bench-{offset + i}", user_turns=[f"episode {offset + i}"]) for i in range(total)]
    config = EpisodeConfig(model_spec=spec, max_requests=steps, concurrency=episodes)
    items = [(trajectory_id(t.id, spec, 0), t, 0) for t in tasks]
    with tempfile.TemporaryDirectory() as tmp:
        async def body() -> None:
            written, errors = await run_shard(items, config, [_server_target(kind)], f"{tmp}/t.jsonl")
            assert written == total and not errors, errors

        return await _timed(body)


def _worker(index: int, share: int, steps: int, delay: float, kind: str, batches: int, repeats: int,
            barrier: Any, out: Any) -> None:
    anyio.run(_run_shard, share, steps, delay, kind, 1, 10_000 * (index + 1))  # warm-up
    for _ in range(repeats):
        barrier.wait()
        start = time.time()
        _, cpu = anyio.run(_run_shard, share, steps, delay, kind, batches, 10_000 * (index + 1))
        out.put((index, start, time.time(), cpu))


def multi_process(workers: int, episodes: int, steps: int, delay: float, kind: str, batches: int,
                  repeats: int) -> list[Result]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(workers + 1), ctx.Queue()
    t0 = time.perf_counter()
    procs = [
        ctx.Process(target=_worker, args=(i, episodes // workers, steps, delay, kind, batches, repeats, barrier, out))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    runs: list[Result] = []
    for r in range(repeats):
        barrier.wait()
        if r == 0:
            print(f"{workers} worker processes started and warmed in {time.perf_counter() - t0:.2f} s")
        got = [out.get(timeout=120) for _ in range(workers)]
        runs.append((max(g[2] for g in got) - min(g[1] for g in got), sum(g[3] for g in got)))
    for p in procs:
        p.join(timeout=60)
    return runs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=64, help="concurrent episodes")
    parser.add_argument("--steps", type=int, default=5, help="model requests per episode")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per model reply")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--server", default="sync", choices=["sync", "async", "env"])
    parser.add_argument("--workers", type=int, default=1, help="also run the runner over N processes")
    parser.add_argument("--batches", type=int, default=1,
                        help="runner schedules: episodes x batches tasks, episodes at a time (steady state)")
    a = parser.parse_args()
    episode_s = a.steps * a.delay
    schedules: dict[str, tuple[Callable[..., Awaitable[Result]], int]] = {
        "sleeps": (sleeps, 1), "raw-sdk": (raw_sdk, 1), "harness": (harness, 1),
        "runner": (lambda *args: _run_shard(*args, batches=a.batches), a.batches),
    }
    results: dict[str, tuple[list[Result], int]] = {name: ([], b) for name, (_, b) in schedules.items()}
    for fn, _ in schedules.values():  # warm-up, untimed
        await fn(a.episodes, a.steps, a.delay, a.server)
    for _ in range(a.repeats):
        for name, (fn, _) in schedules.items():
            results[name][0].append(await fn(a.episodes, a.steps, a.delay, a.server))
    if a.workers > 1:
        results[f"runner x{a.workers} proc"] = (
            multi_process(a.workers, a.episodes, a.steps, a.delay, a.server, a.batches, a.repeats), a.batches)
    print(f"{a.episodes} concurrent episodes x {a.steps} steps, model {a.delay * 1000:.0f} ms/reply, "
          f"server {a.server!r} in-process, {a.repeats} repeats (median; best in brackets)")
    print(f"ideal: {a.episodes / a.delay:.0f} steps/s ({episode_s:.3f} s per batch of {a.episodes} episodes)")
    medians = {}
    for name, (runs, batches) in results.items():
        ideal, steps_total = episode_s * batches, a.episodes * a.steps * batches
        wall = statistics.median(r[0] for r in runs)
        best = min(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        medians[name] = wall
        label = f"{name} ({a.episodes * batches} ep)" if batches > 1 else name
        print(f"{label:<24} {wall:6.3f} s  {steps_total / wall:4.0f} steps/s  ratio to ideal {ideal / wall:.3f} "
              f"[{ideal / best:.3f}]  CPU {cpu / steps_total * 1000:.2f} ms/step")
    if a.workers > 1:
        print("(multi-process CPU: summed over the workers; their start-up is not timed)")
    print(f"harness vs raw SDK (same server, same schedule): throughput ratio "
          f"{medians['raw-sdk'] / medians['harness']:.3f}")


if __name__ == "__main__":
    anyio.run(main)
