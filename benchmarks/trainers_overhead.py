"""Per-call overhead of each trainer adapter vs a direct MCP call on an open session.

One emitted environment (the bundled inventory sample, sandboxed, over stdio); every path calls
``get_item`` in trajectories of 10 calls with the ground truth attached (so the per-step reward
is part of the cost), measured side by side in interleaved blocks, medians over blocks, once
with the tool code sandboxed (the default) and once trusted (so the adapters' own cost shows):

- direct:  ``mcp.client.Client.call_tool`` on an open stdio session (the session's one implicit episode, for every
           trajectory: no episode is ever opened, so with sandboxed tool code no per-episode sandbox either);
- direct-ep: the same session with a fresh server-minted episode per trajectory (``EnvironmentControl``: open,
           calls with its handle, close): what any trainer pays for one state per trajectory, adapter or not;
- pool:    ``Rollout.call`` on a pool with its own loop thread (``PoolLoop.THREAD``: one thread hop per call);
- home:    ``Rollout.call`` on a pool homed on the caller's loop (``PoolLoop.CALLER``: what the adapters use);
- verl:    ``AstraTool.create / execute / release`` per call, as verl's tool agent loop does
           (verl 0.9.x BaseTool, loaded without torch);
- trl:     the generated environment's async tool method (``reset`` every 10 calls);
- openenv: ``AstraOpenEnv.step_async`` in a session (``reset`` every 10 calls; openenv-core's
           Environment, loaded without its fastmcp-importing package init).

Target: adapter / direct-ep <= 1.5 (the adapters' own cost; "vs direct" adds the per-trajectory episode).
Run: python benchmarks/trainers_overhead.py [blocks] [calls-per-block] [--boost]
(``--boost``, root: nice -20 for the autogroups of the benchmark and every server and sandbox it starts, see
``benchmarks/_boost.py``; the load average is printed with the results).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp.client import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _boost import BOOST, boost  # noqa: E402 - benchmarks/ is on sys.path when a benchmark runs as a script

from astra.servers import EnvironmentControl, emit, load_sample, stdio_parameters  # noqa: E402
from astra.trainers import (  # noqa: E402
    EpisodePool,
    ExportEnvironment,
    PoolLoop,
    samples,
    stdio_launch,
    verl_row,
    verl_tool_config,
)
from astra.trainers.trl import trl_module_source, trl_rows  # noqa: E402

ARGS = {"sku": "WID-1"}


class Trajectory:
    """What verl's AgentData gives a tool: an object per trajectory with ``extra_fields``."""

    def __init__(self) -> None:
        self.extra_fields: dict[str, Any] = {}


TRAJECTORY = 10


def _verl_tool_class() -> Any:
    sys.path.insert(0, str(ROOT / "tests" / "trainers"))
    from conftest import _shell_packages  # verl's tool modules without its torch-importing package inits

    _shell_packages()
    from verl.tools.schemas import OpenAIFunctionToolSchema

    from astra.trainers.verl import AstraTool

    return AstraTool, OpenAIFunctionToolSchema


async def main(blocks: int, per_block: int) -> None:
    for sandboxed in (True, False):
        await run(blocks, per_block, sandboxed)


async def run(blocks: int, per_block: int, sandboxed: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="astra-bench-"))
    spec = load_sample("inventory").model_copy(update={"sandboxed": sandboxed})
    server_dir = emit(spec, tmp / "inventory")
    launch = stdio_launch(server_dir)
    if not sandboxed:  # a spec marked trusted runs in-process only when the user says so too
        launch.args.append("--unsafe-no-sandbox")
    env = ExportEnvironment(spec=spec, question="q", answer="354.0", server_dir=str(server_dir), launch=launch)
    sample = samples([env])[0]
    truth = json.dumps(sample.truth)
    row = verl_row(sample, 0)

    # verl
    AstraTool, Schema = _verl_tool_class()
    entry = next(t for t in verl_tool_config([sample])["tools"] if t["tool_schema"]["function"]["name"] == "get_item")
    verl_tool = AstraTool(entry["config"], Schema.model_validate(entry["tool_schema"]))
    # TRL
    (tmp / "trl_env.py").write_text(trl_module_source([sample]))
    module_spec = importlib.util.spec_from_file_location(f"bench_trl_env_{sandboxed}", tmp / "trl_env.py")
    trl_env = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(trl_env)
    trl_row = {k: v for k, v in trl_rows([sample])[0].items() if k != "environment"}
    environment = trl_env.ENVIRONMENTS[env.name]()
    # OpenEnv
    from conftest import _openenv_shells

    _openenv_shells()
    import astra.trainers.openenv as openenv

    session = openenv.openenv_factory(openenv.openenv_sample(sample))()

    pool = EpisodePool([(env.name, launch)])
    home = EpisodePool([(env.name, launch)], loop=PoolLoop.CALLER)
    timings: dict[str, list[float]] = {
        k: [] for k in ("direct", "direct-ep", "pool", "home", "verl", "trl", "openenv")
    }
    params = stdio_parameters(server_dir)
    params.args = list(launch.args)
    async with Client(params) as client:

        async def direct(n: int) -> None:  # the session's own episode: no handle, no reward bookkeeping
            for _ in range(n):
                await client.call_tool("get_item", ARGS)

        async def direct_episode(n: int) -> None:  # a fresh episode per trajectory, no reward bookkeeping
            control = EnvironmentControl(client)
            await control.open()
            for _ in range(n):
                await control.call_tool("get_item", ARGS)
            await control.close()

        async def pooled(n: int) -> None:
            rollout = pool.rollout(truth)
            for _ in range(n):
                await rollout.call(env.name, "get_item", ARGS)
            await rollout.close()

        async def homed(n: int) -> None:
            rollout = home.rollout(truth)
            for _ in range(n):
                await rollout.call(env.name, "get_item", ARGS)
            await rollout.close()

        async def verl(n: int) -> None:
            agent_data = Trajectory()
            for _ in range(n):
                instance, _ = await verl_tool.create(
                    create_kwargs=row["extra_info"]["tools_kwargs"]["get_item"]["create_kwargs"]
                )
                await verl_tool.execute(instance, ARGS, agent_data=agent_data)
                await verl_tool.release(instance)

        async def trl(n: int) -> None:
            environment.reset(**trl_row)
            for _ in range(n):
                await environment.get_item(**ARGS)

        async def openenv_session(n: int) -> None:
            await session.reset_async()
            for _ in range(n):
                await session.step_async(openenv.AstraAction(tool="get_item", arguments=ARGS))

        paths = {
            "direct": direct, "direct-ep": direct_episode, "pool": pooled, "home": homed,
            "verl": verl, "trl": trl, "openenv": openenv_session,
        }
        for fn in paths.values():  # warm-up: servers started, sandboxes warm, imports done
            await fn(TRAJECTORY)
        boost()  # every server and sandbox worker is up now
        for _ in range(blocks):
            for name, fn in paths.items():
                start = time.perf_counter()
                for _ in range(per_block // TRAJECTORY):
                    await fn(TRAJECTORY)
                timings[name].append((time.perf_counter() - start) / per_block)
    pool.close()
    await home.aclose()
    for p in list(EpisodePool._shared.values()):
        await p.aclose()
    EpisodePool._shared.clear()
    base = statistics.median(timings["direct"])
    base_ep = statistics.median(timings["direct-ep"])
    mode = "sandboxed tool code (bubblewrap)" if sandboxed else "trusted in-process tool code"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nper-call latency, median of {blocks} blocks x {per_block} calls "
        f"(trajectories of {TRAJECTORY}), stdio, {mode}; load average {load}"
        f"{', autogroups boosted to nice -20' if BOOST['on'] else ''}"
    )
    print(f"{'path':<10} {'ms/call':>9} {'vs direct':>10} {'vs direct-ep':>13}")
    for name, values in timings.items():
        m = statistics.median(values)
        print(f"{name:<10} {m * 1000:>9.3f} {m / base:>9.2f}x {m / base_ep:>12.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("blocks", nargs="?", type=int, default=5)
    parser.add_argument("per_block", nargs="?", type=int, default=100)
    parser.add_argument("--boost", action="store_true", help="(root) nice -20 for this run's autogroups")
    args = parser.parse_args()
    BOOST["on"] = args.boost
    asyncio.run(main(args.blocks, args.per_block))
