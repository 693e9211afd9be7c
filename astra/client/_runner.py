"""The rollout runner: N tasks x M samples through the agent loop, resumable, bounded, summarised.

Output: ``<out_dir>/trajectories.jsonl`` (append-only, via :mod:`astra.runs`) and the run
manifest. Each rollout's id is ``trajectory_id(task id, model spec, sample)``; ids already in
the file are skipped, so a run killed at any point (``kill -9`` included) and rerun ends with
the same set, no duplicate, nothing lost.

Executors (docs/ARCHITECTURE.md "Performance facts": a single process is CPU-bound long before the
model is):
- ``local`` (default): one process, one event loop, ``concurrency`` episodes at a time.
  With ``workers=N > 1`` the work is split across N worker processes (spawned), each with
  its own event loop, its own model client / connection pool and its own server
  connections (each MCP server launched once per worker, not per episode); they append to
  the same JSONL file (line-atomic ``O_APPEND`` writes, disjoint ids). A live in-process
  ``MCPServer`` cannot cross processes: pass ``(name, factory)`` with a module-level
  factory and each worker builds its own in-process server.
- ``ray``: the same shards as Ray tasks (``ray_address`` to join a cluster; otherwise a
  local Ray started with every address pinned to 127.0.0.1).

``concurrency`` bounds concurrent episodes per process; ``per_endpoint_concurrency``
bounds concurrent requests to the model endpoint per process.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from astra.client._connections import Connections, ServerTarget
from astra.client._loop import run_episode, trajectory_id
from astra.client._model import Model, ModelResponse, ModelSettings
from astra.client._resolve import model_endpoint, resolve_model
from astra.records import ChatMessage, ServerSpec, Task, Trajectory
from astra.runs import JsonlLog, RunDir

log = logging.getLogger(__name__)
STAGE = "trajectories"


class RolloutSummary(BaseModel):
    out_dir: str
    model: str
    executor: str
    planned: int = Field(description="tasks x samples")
    already_done: int = Field(description="skipped because their id was already written (resume)")
    written: int
    failed: int = Field(description="episodes that crashed the harness (not written; a rerun retries them)")
    total_in_file: int
    by_termination: dict[str, int] = Field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    step_latency_p50_s: float | None = None
    step_latency_p95_s: float | None = None
    wall_s: float = 0.0
    errors: list[str] = Field(default_factory=list)


class EpisodeConfig(BaseModel):
    """Everything a worker needs besides the tasks (picklable, JSON-able for the manifest)."""

    model_spec: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    system_prompt: str | None = None
    settings: ModelSettings | None = None
    max_steps: int = 16
    max_tokens_total: int | None = None
    call_timeout_s: float = 30.0
    episode_timeout_s: float | None = None
    concurrency: int = 8
    per_endpoint_concurrency: int | None = None
    imports: list[str] = Field(default_factory=list, description="modules each worker imports first (to register scripts)")


class _LimitedModel(Model):
    """Bounds concurrent requests to one endpoint."""

    def __init__(self, model: Model, limiter: anyio.CapacityLimiter) -> None:
        self.model = model
        self.name = model.name
        self.limiter = limiter

    async def request(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = (),
                      settings: ModelSettings | None = None) -> ModelResponse:
        async with self.limiter:
            return await self.model.request(messages, tools, settings)

    async def aclose(self) -> None:
        await self.model.aclose()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def _work_items(tasks: Sequence[Task], model_spec: str, samples: int) -> list[tuple[str, Task, int]]:
    return [(trajectory_id(t.id, model_spec, s), t, s) for t in tasks for s in range(samples)]


async def run_shard(
    items: Sequence[tuple[str, Task, int]],
    config: EpisodeConfig,
    targets: Sequence[ServerTarget],
    out_path: str,
    on_done: Callable[[Trajectory | None, str | None], None] | None = None,
    model: Model | None = None,
) -> tuple[int, list[str]]:
    """Run rollouts in this process and event loop; returns (written, errors)."""
    log_file = JsonlLog(out_path)
    todo = [item for item in items if item[0] not in log_file]
    if not todo:
        return 0, []
    for module in config.imports:
        importlib.import_module(module)
    model = model or resolve_model(config.model_spec, **config.model_options)
    if config.per_endpoint_concurrency:
        model = _LimitedModel(model, _endpoint_limiter(model_endpoint(model), config.per_endpoint_concurrency))
    limiter = anyio.CapacityLimiter(max(1, config.concurrency))
    written = 0
    errors: list[str] = []

    async def one(tid: str, task: Task, sample: int, conns: Connections) -> None:
        nonlocal written
        async with limiter:
            try:
                traj = await run_episode(
                    model, conns, task,
                    system_prompt=config.system_prompt, settings=config.settings,
                    max_steps=config.max_steps, max_tokens_total=config.max_tokens_total,
                    sample=sample, call_timeout_s=config.call_timeout_s,
                    episode_timeout_s=config.episode_timeout_s, trajectory_id_=tid,
                    meta={"model_spec": config.model_spec},
                )
            except Exception as exc:  # noqa: BLE001 - one broken episode must not stop the run
                message = f"task {task.id} sample {sample}: {type(exc).__name__}: {exc}"
                log.exception("rollout failed: %s", message)
                errors.append(message)
                if on_done:
                    on_done(None, message)
                return
        if await log_file.aappend(traj):  # the fsync waits off the event loop
            written += 1
        if on_done:
            on_done(traj, None)

    try:
        async with Connections(targets, call_timeout_s=config.call_timeout_s) as conns:
            async with anyio.create_task_group() as tg:
                for tid, task, sample in todo:
                    tg.start_soon(one, tid, task, sample, conns)
    finally:
        await model.aclose()
    return written, errors


_ENDPOINT_LIMITERS: dict[tuple[str, int], anyio.CapacityLimiter] = {}


def _endpoint_limiter(endpoint: str, limit: int) -> anyio.CapacityLimiter:
    key = (endpoint, limit)
    limiter = _ENDPOINT_LIMITERS.get(key)
    if limiter is None:
        limiter = _ENDPOINT_LIMITERS[key] = anyio.CapacityLimiter(limit)
    return limiter


def _shard_main(items: list[tuple[str, Task, int]], config: EpisodeConfig, targets: list[ServerTarget],
                out_path: str) -> tuple[int, list[str]]:
    """Entry point of a worker process or a Ray task: its own event loop and connections."""
    _ENDPOINT_LIMITERS.clear()  # limiters are bound to an event loop
    return anyio.run(run_shard, items, config, targets, out_path)


def resolve_servers(servers: Sequence[str | ServerTarget], home: str | os.PathLike[str] | None = None) -> list[ServerTarget]:
    """Registry names -> ServerSpec (via astra.registry); targets pass through."""
    out: list[ServerTarget] = []
    registry = None
    for s in servers:
        if isinstance(s, str):
            if registry is None:
                from astra.registry import Registry  # the registry unit; imported only when names are used

                registry = Registry.open(home)
            spec = registry.get_server(s)
            if spec is None:
                raise KeyError(f"no server named {s!r} in the registry")
            out.append(spec)
        else:
            out.append(s)
    return out


def _summarise(out_dir: Path, ids: set[str], base: dict[str, Any]) -> RolloutSummary:
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    tin = tout = 0
    total = 0
    for rec in JsonlLog(out_dir / f"{STAGE}.jsonl").read_dicts():
        total += 1
        if rec.get("id") not in ids:
            continue
        counts[rec["termination"]] += 1
        tin += rec.get("usage", {}).get("input_tokens", 0)
        tout += rec.get("usage", {}).get("output_tokens", 0)
        latencies.extend(rec.get("meta", {}).get("step_latencies_s", []))
    return RolloutSummary(
        **base,
        total_in_file=total,
        by_termination=dict(sorted(counts.items())),
        input_tokens=tin,
        output_tokens=tout,
        step_latency_p50_s=_percentile(latencies, 0.50),
        step_latency_p95_s=_percentile(latencies, 0.95),
    )


def _progress(enabled: bool, total: int, description: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def _in_process_targets(targets: Sequence[ServerTarget]) -> list[str]:
    """Targets holding a live server object (factories and launch specs can cross processes)."""
    from mcp.server import Server
    from mcp.server.mcpserver import MCPServer

    return [t[0] for t in targets if isinstance(t, tuple) and isinstance(t[1], (MCPServer, Server))]


def _shards(items: list[Any], n: int) -> list[list[Any]]:
    return [s for s in (items[i::n] for i in range(n)) if s]


def _ray_init(ray_address: str | None, num_cpus: int | None) -> Any:
    """Join ``ray_address``, or start a local Ray with every socket on 127.0.0.1.

    ``_node_ip_address="127.0.0.1"`` alone is not enough: Ray replaces a loopback address by
    the machine's interface address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read at
    import time, and inherited by Ray's own processes). We set it, then check the result.
    """
    if not ray_address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        from ray._private import ray_constants
    except ImportError as exc:
        raise RuntimeError("--executor ray needs ray (pip install 'astra-synth[ray]')") from exc
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the env was set
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 2,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
            addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
            if addresses != {"127.0.0.1"}:
                ray.shutdown()
                raise RuntimeError(f"local Ray did not stay on 127.0.0.1 (nodes at {sorted(addresses)}); refusing to run")
    return ray


async def arun_rollouts(
    tasks: Sequence[Task],
    model_spec: str,
    out_dir: str | os.PathLike[str],
    *,
    servers: Sequence[str | ServerTarget] = (),
    samples: int = 1,
    concurrency: int = 8,
    per_endpoint_concurrency: int | None = None,
    executor: Literal["local", "ray"] = "local",
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    home: str | os.PathLike[str] | None = None,
    model_options: dict[str, Any] | None = None,
    model: Model | None = None,
    system_prompt: str | None = None,
    settings: ModelSettings | None = None,
    max_steps: int = 16,
    max_tokens_total: int | None = None,
    call_timeout_s: float = 30.0,
    episode_timeout_s: float | None = None,
    imports: Sequence[str] = (),
) -> RolloutSummary:
    """Async form of :func:`run_rollouts` (for callers already inside an event loop)."""
    started = time.perf_counter()
    out = Path(out_dir)
    targets = resolve_servers(servers, home)
    config = EpisodeConfig(
        model_spec=model_spec, model_options=model_options or {}, system_prompt=system_prompt, settings=settings,
        max_steps=max_steps, max_tokens_total=max_tokens_total, call_timeout_s=call_timeout_s,
        episode_timeout_s=episode_timeout_s, concurrency=concurrency,
        per_endpoint_concurrency=per_endpoint_concurrency, imports=list(imports),
    )
    run = RunDir(out, config={"stage": "rollout", **config.model_dump(mode="json", exclude={"model_options"}),
                              "samples": samples, "servers": [_target_name(t) for t in targets]})
    out_path = str(out / f"{STAGE}.jsonl")
    items = _work_items(tasks, model_spec, samples)
    ids = {i[0] for i in items}
    if len(ids) != len(items):
        raise ValueError("duplicate task ids in the input: each task needs a unique id")
    existing = JsonlLog(out_path)
    already = sum(1 for i in ids if i in existing)
    todo = [i for i in items if i[0] not in existing]
    if todo and (executor != "local" or workers > 1):  # user mistakes first, before anything runs
        if model is not None:
            raise ValueError("a Model object cannot cross processes: pass model_spec (workers=1 to use model=)")
        inproc = _in_process_targets(targets)
        if inproc:
            raise ValueError(f"in-process servers {inproc} cannot cross processes: pass a module-level factory "
                             "(name, make_server) instead, or use workers=1 and executor='local'")
    run.mark(STAGE, "running", planned=len(items), done=already)
    bar = _progress(progress, len(items), "rollouts")
    try:
        written, errors = await _run_with_progress(
            bar, todo, already, len(items), config, targets, out_path, executor, workers, ray_address, model)
    except BaseException:  # Ctrl-C, a cancelled caller, a crash: say so in the manifest, keep what is written
        in_file = sum(1 for i in ids if i in JsonlLog(out_path))
        run.mark(STAGE, "interrupted", planned=len(items), in_file=in_file)
        raise
    base = dict(out_dir=str(out), model=model_spec, executor=executor if executor == "ray" else f"local x{max(1, workers)}",
                planned=len(items), already_done=already, written=written, failed=len(errors),
                wall_s=time.perf_counter() - started, errors=errors[:50])
    summary = _summarise(out, ids, base)
    run.mark(STAGE, "done" if not errors and summary.total_in_file >= len(ids) else "partial",
             planned=len(items), written=written, failed=len(errors))
    return summary


async def _run_with_progress(bar: Any, todo: list[Any], already: int, planned: int, config: EpisodeConfig,
                             targets: list[ServerTarget], out_path: str, executor: str, workers: int,
                             ray_address: str | None, model: Model | None) -> tuple[int, list[str]]:
    written: int = 0
    errors: list[str] = []
    counts: Counter[str] = Counter()
    with bar:
        ptask = bar.add_task("rollouts", total=planned, completed=already, status="")

        def on_done(traj: Trajectory | None, err: str | None) -> None:
            counts[traj.termination if traj else "harness_error"] += 1
            bar.update(ptask, advance=1, status=" ".join(f"{k}={v}" for k, v in sorted(counts.items())))

        if todo and executor == "local" and workers <= 1:
            written, errors = await run_shard(todo, config, targets, out_path, on_done, model=model)
        elif todo:
            written, errors = await _run_distributed(todo, config, targets, out_path, executor, workers, ray_address,
                                                     lambda n: bar.update(ptask, completed=already + n))
    return written, errors


def _target_name(t: ServerTarget) -> str:
    return t.name if isinstance(t, ServerSpec) else str(t[0])


async def _run_distributed(todo: list[Any], config: EpisodeConfig, targets: list[ServerTarget], out_path: str,
                           executor: str, workers: int, ray_address: str | None,
                           report: Callable[[int], None]) -> tuple[int, list[str]]:
    """Run shards in worker processes or Ray tasks; poll the output file for progress."""
    results: list[tuple[int, list[str]]] = []
    baseline = len(JsonlLog(out_path))
    if executor == "ray":
        ray = _ray_init(ray_address, None)
        n = max(1, int(ray.cluster_resources().get("CPU", 1))) if workers <= 1 else workers
        remote = ray.remote(num_cpus=1)(_shard_main)
        refs = [remote.remote(shard, config, targets, out_path) for shard in _shards(todo, n)]

        def wait() -> None:
            results.extend(ray.get(refs))
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(processes=workers)
        pending = [pool.apply_async(_shard_main, (shard, config, targets, out_path)) for shard in _shards(todo, workers)]

        def wait() -> None:
            try:
                results.extend(p.get() for p in pending)
            finally:
                pool.close()
                pool.join()

    async with anyio.create_task_group() as tg:
        async def poll() -> None:
            while True:
                report(_count_lines(out_path) - baseline)
                await anyio.sleep(0.5)

        tg.start_soon(poll)
        await anyio.to_thread.run_sync(wait)
        tg.cancel_scope.cancel()
    report(_count_lines(out_path) - baseline)
    return sum(r[0] for r in results), [e for r in results for e in r[1]]


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def run_rollouts(
    tasks: Sequence[Task],
    model_spec: str,
    out_dir: str | os.PathLike[str],
    **options: Any,
) -> RolloutSummary:
    """Run ``tasks`` x ``samples`` rollouts of ``model_spec`` into ``out_dir`` (resumable).

    Options (all keyword): ``servers`` (registry names, resolved with ``home``, or targets:
    ServerSpec / ``(name, MCPServer | StdioLaunch | HttpLaunch)``), ``samples`` (1),
    ``concurrency`` (8), ``per_endpoint_concurrency`` (None), ``executor`` ("local" | "ray"),
    ``workers`` (local worker processes, 1), ``ray_address``, ``progress`` (True),
    ``model_options`` (for :func:`resolve_model`), ``model`` (a ready Model, workers=1 only),
    ``system_prompt``, ``settings``, ``max_steps`` (16), ``max_tokens_total``,
    ``call_timeout_s`` (30), ``episode_timeout_s``, ``imports`` (modules every worker imports
    before resolving the model, e.g. one that calls ``register_script``). Synchronous: it runs its own event loop
    (use :func:`arun_rollouts` from async code).
    """
    return anyio.run(lambda: arun_rollouts(tasks, model_spec, out_dir, **options))

