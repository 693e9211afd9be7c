"""The rollout runner: N tasks x M samples through the agent loop, resumable, bounded, summarised.

Output: ``<out_dir>/trajectories.jsonl`` (append-only, via :mod:`astra.runs`) and the run
manifest. Each rollout's id is ``trajectory_id(task id, model spec, sample)``; ids already in
the file are skipped, so a run killed at any point (``kill -9`` included) and rerun ends with
the same set, no duplicate, nothing lost.

Executors (docs/ARCHITECTURE.md "Performance facts": a single process is CPU-bound long before the
model is):
- ``local`` (default): one process, one event loop, ``concurrency`` episodes at a time.
  With ``workers=N > 1``: :class:`RolloutWorkers`, N warm worker processes (spawned once;
  each does its imports, opens its model client and launches each MCP server once), fed
  in batches as their episodes finish and streaming results back; they append to the
  same JSONL file (line-atomic ``O_APPEND`` writes, disjoint ids). A live in-process
  ``MCPServer`` cannot cross processes: pass ``(name, factory)`` with a module-level
  factory and each worker builds its own in-process server.
- ``ray``: the same shards as Ray tasks (``ray_address`` to join a cluster; otherwise a
  local Ray started with every address pinned to 127.0.0.1).

``concurrency`` bounds concurrent episodes per process; ``per_endpoint_concurrency``
bounds concurrent requests to the model endpoint per process; ``server_replicas`` launches
that many copies of the servers per process (an episode stays on one copy), for servers whose
state is per episode or none: one stdio server answers one line at a time, and at hundreds of
concurrent episodes it sets the pace.
"""

from __future__ import annotations

import gc
import importlib
import logging
import math
import multiprocessing
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field, model_validator

from astra.client._connections import Connections, ServerTarget
from astra.client._loop import run_episode, trajectory_id
from astra.client._model import Model, ModelResponse, ModelSettings, ModelWrapper
from astra.client._resolve import model_endpoint, resolve_model
from astra.config import renamed_options
from astra.records import ChatMessage, ServerSpec, Task, Trajectory
from astra.registry import failure_reason
from astra.runner import ItemRunner
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
    max_requests: int = Field(default=16, description="model requests per episode (was max_steps)")
    max_tokens_total: int | None = None
    call_timeout_s: float = 30.0
    episode_timeout_s: float | None = None
    concurrency: int = 8
    per_endpoint_concurrency: int | None = None
    server_replicas: int = Field(
        default=1, ge=1,
        description="copies of the connections per process (each launches its own stdio servers); an episode "
                    "is pinned to one copy, so servers whose state is per episode (or none) may be replicated",
    )
    imports: list[str] = Field(
        default_factory=list, description="modules each worker imports first (to register scripts)"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_options(data, {"max_steps": "max_requests"}, "rollout config")


class _LimitedModel(ModelWrapper):
    """Bounds concurrent requests to one endpoint."""

    def __init__(self, model: Model, limiter: anyio.CapacityLimiter) -> None:
        super().__init__(model)
        self.limiter = limiter

    async def request(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = (),
                      settings: ModelSettings | None = None) -> ModelResponse:
        async with self.limiter:
            return await self.inner.request(messages, tools, settings)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def _work_items(tasks: Sequence[Task], model_spec: str, samples: int) -> list[tuple[str, Task, int]]:
    return [(trajectory_id(t.id, model_spec, s), t, s) for t in tasks for s in range(samples)]


def _prepare_model(config: EpisodeConfig, model: Model | None = None) -> Model:
    for module in config.imports:
        importlib.import_module(module)
    model = model or resolve_model(config.model_spec, **config.model_options)
    if config.per_endpoint_concurrency:
        model = _LimitedModel(model, _endpoint_limiter(model_endpoint(model), config.per_endpoint_concurrency))
    return model


async def _rollout(model: Model, conns: Connections, config: EpisodeConfig, tid: str, task: Task,
                   sample: int) -> tuple[Trajectory | None, str | None]:
    """One rollout: its trajectory, or (None, why) when the harness itself broke."""
    try:
        return await run_episode(
            model, conns, task,
            system_prompt=config.system_prompt, settings=config.settings,
            max_requests=config.max_requests, max_tokens_total=config.max_tokens_total,
            sample=sample, call_timeout_s=config.call_timeout_s,
            episode_timeout_s=config.episode_timeout_s, trajectory_id_=tid,
            meta={"model_spec": config.model_spec},
        ), None
    except Exception as exc:  # noqa: BLE001 - one broken episode must not stop the run
        message = f"task {task.id} sample {sample}: {type(exc).__name__}: {exc}"
        log.exception("rollout failed: %s", message)
        return None, message


GC_YOUNG_THRESHOLD = 20_000  # net new container objects between young collections (CPython's default: 700)


_GC_RUNS: list[tuple[int, tuple[int, ...]]] = []  # one entry per live run: the state before the first


@contextmanager
def _gc_for_rollouts() -> Generator[None]:
    """The cyclic collector while a run goes on: every collection stops every episode of the
    process, so (1) what exists when the run starts (imports, clients, servers) is frozen out
    of the generations, and (2) young collections run after 20 000 new objects, not 700 (the
    episodes' own garbage is freed by reference counting; cycles wait a little longer).
    Measured at L=1000 ms / C=256, 512 episodes: GC pauses 0.78 s -> 0.07 s per run.
    Both are undone when the last of the process's concurrent runs ends (objects stay frozen
    if the process had frozen some of its own before)."""
    before = _GC_RUNS[0] if _GC_RUNS else (gc.get_freeze_count(), gc.get_threshold())
    _GC_RUNS.append(before)
    gc.freeze()  # no collect first: what is garbage now is collected after the unfreeze
    gc.set_threshold(max(before[1][0], GC_YOUNG_THRESHOLD), *before[1][1:])
    try:
        yield
    finally:
        _GC_RUNS.pop()
        if not _GC_RUNS:
            gc.set_threshold(*before[1])
            if not before[0]:
                gc.unfreeze()


class _Replicas:
    """``config.server_replicas`` copies of the connections (each launches its own stdio
    servers); each episode runs on the copy with the fewest episodes running and stays there
    (its server-side state, an ASTRA environment's episode included, lives in one server
    process). A stdio server is one process reading its calls one line at a time: at hundreds
    of concurrent episodes it, not the harness, sets the pace, and copies share that load
    (measured at L=1000 ms / C=256: tool-call p95 361 -> 167 ms with 2 copies)."""

    def __init__(self, copies: list[Connections]) -> None:
        self.copies = copies
        self.running = [0] * len(copies)

    @classmethod
    async def open(cls, stack: AsyncExitStack, targets: Sequence[ServerTarget], config: EpisodeConfig) -> _Replicas:
        return cls([await stack.enter_async_context(Connections(targets, call_timeout_s=config.call_timeout_s))
                    for _ in range(config.server_replicas)])

    async def rollout(self, model: Model, config: EpisodeConfig, tid: str, task: Task,
                      sample: int) -> tuple[Trajectory | None, str | None]:
        i = self.running.index(min(self.running))
        self.running[i] += 1
        try:
            return await _rollout(model, self.copies[i], config, tid, task, sample)
        finally:
            self.running[i] -= 1


class _GroupWriter:
    """Appends trajectories to one JSONL log with group commit: lines that arrive while a
    write + fsync is in flight go out together in the next one (one fsync for many episodes
    ending at once, instead of one each behind a lock). ``write`` returns once its line is
    on disk (or raises the write's error)."""

    def __init__(self, log_file: JsonlLog) -> None:
        self.log_file = log_file
        self._pending: list[tuple[str, bytes, anyio.Event, list[Any]]] = []
        self._flushing = False

    async def write(self, traj: Trajectory) -> bool:
        # pydantic's serializer in one pass (no dict round trip)
        slot: list[Any] = [None]  # the flush's result: True, False or the exception it raised
        entry = (traj.id, (traj.model_dump_json() + "\n").encode(), anyio.Event(), slot)
        self._pending.append(entry)
        if not self._flushing:  # this caller flushes until nothing is left, for everyone
            self._flushing = True
            try:
                with anyio.CancelScope(shield=True):
                    while self._pending:
                        batch, self._pending = self._pending, []
                        try:
                            results: list[Any] = await anyio.to_thread.run_sync(
                                self.log_file.write_lines, [(i, line) for i, line, _, _ in batch])
                        except Exception as exc:  # noqa: BLE001 - each waiter raises it below
                            results = [exc] * len(batch)
                        for (_, _, done, slot), result in zip(batch, results, strict=True):
                            slot[0] = result
                            done.set()
            finally:
                self._flushing = False
        await entry[2].wait()
        result = entry[3][0]
        if isinstance(result, BaseException):
            raise result
        return bool(result)


async def run_shard(
    items: Sequence[tuple[str, Task, int]],
    config: EpisodeConfig,
    targets: Sequence[ServerTarget],
    out_path: str,
    on_done: Callable[[Trajectory | None, str | None], None] | None = None,
    model: Model | None = None,
    conns: Connections | Sequence[Connections] | None = None,
) -> tuple[int, list[str]]:
    """Run rollouts in this process and event loop; returns (written, errors).

    ``conns``: connections already open, or copies of them (see ``server_replicas``); ``targets``
    is then unused and they stay open after."""
    log_file = JsonlLog(out_path)
    todo = [item for item in items if item[0] not in log_file]
    if not todo:
        return 0, []
    model = _prepare_model(config, model)
    limiter = anyio.CapacityLimiter(max(1, config.concurrency))
    writer = _GroupWriter(log_file)
    written = 0
    errors: list[str] = []

    async def one(tid: str, task: Task, sample: int, replicas: _Replicas) -> None:
        nonlocal written
        async with limiter:
            traj, error = await replicas.rollout(model, config, tid, task, sample)
        if traj is None:
            errors.append(error or "")
        elif await writer.write(traj):
            written += 1
        if on_done:
            on_done(traj, error)

    try:
        async with AsyncExitStack() as stack:
            if conns is None:
                replicas = await _Replicas.open(stack, targets, config)
            else:
                replicas = _Replicas([conns] if isinstance(conns, Connections) else list(conns))
            stack.enter_context(_gc_for_rollouts())
            async with anyio.create_task_group() as tg:
                for tid, task, sample in todo:
                    tg.start_soon(one, tid, task, sample, replicas)
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


# --------------------------------------------------------------------------- warm worker processes


class WorkerRunResult(BaseModel):
    """What one :meth:`RolloutWorkers.run` did."""

    written: int = 0
    errors: list[str] = Field(default_factory=list)
    by_termination: dict[str, int] = Field(default_factory=dict)
    worker_cpu_s: float = Field(default=0.0, description="CPU the workers spent on this run (all of them)")


def _worker_main(inbox: Any, outbox: Any, config: EpisodeConfig, targets: list[ServerTarget]) -> None:
    """A warm worker: imports, model client and server connections made once; then runs
    the batches it is handed until told to stop, streaming one message per finished episode."""
    started = time.perf_counter()
    try:
        anyio.run(_worker_loop, inbox, outbox, config, targets, started)
    except BaseException as exc:  # noqa: BLE001 - tell the parent why, then die
        try:
            outbox.send(("fatal", f"{type(exc).__name__}: {failure_reason(exc)}"))
        except OSError:
            pass
        raise SystemExit(1) from None


async def _worker_loop(inbox: Any, outbox: Any, config: EpisodeConfig, targets: list[ServerTarget],
                       started: float) -> None:
    _ENDPOINT_LIMITERS.clear()  # limiters are bound to an event loop
    model = _prepare_model(config)
    logs: dict[str, _GroupWriter] = {}
    limiters: dict[int, anyio.CapacityLimiter] = {}
    messages, incoming = anyio.create_memory_object_stream[Any](math.inf)
    token = anyio.lowlevel.current_token()

    def receive() -> None:  # a thread: blocking reads of the parent's pipe, handed to the loop
        while True:
            try:
                message = inbox.recv()
            except (EOFError, OSError):
                message = ("stop",)
            try:
                anyio.from_thread.run_sync(messages.send_nowait, message, token=token)
            except RuntimeError:  # the loop is gone
                return
            if message[0] == "stop":
                return

    async def one(run_id: int, out_path: str, tid: str, task: Task, sample: int) -> None:
        async with limiters[run_id]:
            traj, error = await replicas.rollout(model, config, tid, task, sample)
        written = False
        if traj is not None:
            writer = logs.get(out_path)
            if writer is None:
                writer = logs[out_path] = _GroupWriter(JsonlLog(out_path))
            written = await writer.write(traj)
        outbox.send(("done", run_id, tid, traj.termination.value if traj else None, error, written,
                     time.process_time()))

    try:
        async with AsyncExitStack() as stack:
            replicas = await _Replicas.open(stack, targets, config)
            # this process only runs episodes: what exists now (imports, clients, servers) stays,
            # so it leaves the collector's generations for good (full collections measured 0.26 s
            # -> 0.03 s per 512 episodes with this), and young collections are rarer
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            outbox.send(("ready", os.getpid(), time.perf_counter() - started, time.process_time()))
            threading.Thread(target=receive, daemon=True, name="rollout-inbox").start()
            async with anyio.create_task_group() as tg:
                async for message in incoming:
                    if message[0] == "stop":
                        break
                    _, run_id, out_path, concurrency, batch = message
                    if run_id not in limiters:
                        limiters.clear()  # one run at a time: the previous one is over
                        limiters[run_id] = anyio.CapacityLimiter(max(1, concurrency))
                    for tid, task, sample in batch:
                        tg.start_soon(one, run_id, out_path, tid, task, sample)
                tg.cancel_scope.cancel()
    finally:
        await model.aclose()


class RolloutWorkers:
    """Warm worker processes for rollouts, started once and reused run after run.

    Each worker (a spawned process) does its imports, builds its model client and opens its
    server connections once (every MCP server launched once per worker), then waits for
    work. :meth:`run` hands tasks out in batches, filling each worker's free slots (its
    concurrency) as its episodes finish, never queueing beyond them (so fast and slow workers
    even out), and streams one result per episode back; workers append the trajectories to the
    run's JSONL themselves (line-atomic appends, disjoint ids). ``concurrency`` (from the
    config, or per run) is per worker.

    ``async with RolloutWorkers(2, config, targets) as pool: await pool.run(items, path)``.
    A worker that dies fails only its own in-flight episodes (reported as errors, retried
    by a rerun); the others go on.
    """

    def __init__(self, workers: int, config: EpisodeConfig, targets: Sequence[ServerTarget], *,
                 batch_size: int | None = None, start_timeout_s: float = 300.0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.config = config
        self.targets = list(targets)
        self.batch_size = batch_size
        self.start_timeout_s = start_timeout_s
        self._procs: list[Any] = []
        self._inboxes: list[Any] = []
        self._outboxes: list[Any] = []
        self._alive: list[bool] = []
        self._cpu: list[float] = []
        self._runs = 0
        self._handler: Callable[[int, tuple[Any, ...]], None] | None = None
        self._listeners: anyio.abc.TaskGroup | None = None
        self.startup_s: list[float] = []

    async def __aenter__(self) -> RolloutWorkers:
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.workers):
            to_worker, inbox = ctx.Pipe(duplex=False)
            from_worker, outbox = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(to_worker, outbox, self.config, self.targets), daemon=True)
            proc.start()
            to_worker.close()
            outbox.close()
            self._procs.append(proc)
            self._inboxes.append(inbox)
            self._outboxes.append(from_worker)
            self._alive.append(True)
            self._cpu.append(0.0)
        try:
            await anyio.to_thread.run_sync(self._wait_ready)
        except BaseException:
            await self.aclose()
            raise
        # one task per worker pipe, on this loop (no thread hand-over per finished episode); the
        # group lives until aclose, so the pool must be closed by the task that opened it
        self._listeners = anyio.create_task_group()
        await self._listeners.__aenter__()
        for i, box in enumerate(self._outboxes):
            self._listeners.start_soon(self._listen, i, box)
        return self

    async def _listen(self, i: int, box: Any) -> None:
        """Hands each message of worker ``i`` to :meth:`_dispatch` as it arrives (all those
        already waiting at once: episodes end in bursts); a closed pipe means the worker is gone."""
        try:
            while True:
                await anyio.wait_readable(box.fileno())
                self._dispatch(i, box.recv())
                while box.poll(0):
                    self._dispatch(i, box.recv())
        except (EOFError, OSError):
            self._dispatch(i, ("dead", f"exit code {self._procs[i].exitcode if i < len(self._procs) else '?'}"))

    def _dispatch(self, i: int, message: tuple[Any, ...]) -> None:
        if message[0] == "done":
            self._cpu[i] = message[6]
        elif message[0] in ("fatal", "dead") and i < len(self._alive):
            self._alive[i] = False
        if self._handler is not None:
            self._handler(i, message)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for i, box in enumerate(self._outboxes):
            if not box.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"rollout worker {i} did not start within {self.start_timeout_s:g} s")
            message: Any
            try:
                message = box.recv()
            except EOFError:
                message = ("fatal", f"exited with code {self._procs[i].exitcode}")
            if message[0] != "ready":
                raise RuntimeError(f"rollout worker {i} failed to start: {message[1]}")
            self.startup_s.append(message[2])
            self._cpu[i] = message[3]

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for i, inbox in enumerate(self._inboxes):
            if self._alive[i]:
                try:
                    inbox.send(("stop",))
                except OSError:
                    pass

        def join() -> None:
            for proc in self._procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(join)
        listeners, self._listeners = self._listeners, None
        try:
            if listeners is not None:  # the workers are gone; its scope was entered before the one above
                listeners.cancel_scope.cancel()
                await listeners.__aexit__(None, None, None)
        finally:
            for conn in self._inboxes + self._outboxes:
                conn.close()
            self._procs, self._inboxes, self._outboxes, self._alive = [], [], [], []

    async def run(self, items: Sequence[tuple[str, Task, int]], out_path: str, *, concurrency: int | None = None,
                  workers: int | None = None,
                  on_result: Callable[[str | None, str | None], None] | None = None) -> WorkerRunResult:
        """Run ``items`` (trajectory id, task, sample) on the workers (the first ``workers`` of
        them: all by default); trajectories go to ``out_path``. ``concurrency`` is per worker.
        ``on_result(termination, error)`` is called as each episode ends."""
        if not self._procs:
            raise RuntimeError("RolloutWorkers is not started (use it as an async context manager)")
        self._runs += 1
        run_id = self._runs
        per_worker = max(1, concurrency or self.config.concurrency)
        # refill a worker once this many of its slots are free (a batch), never beyond its
        # concurrency: an item queued on a busy worker while another has a free slot would wait
        # a whole episode (measured: 288 / 224 items on two workers, a third wave at C=256).
        # (One item held beyond it, to skip the round trip through this process when a slot
        # frees, was measured too: no gain at C=1 and worse at C=64 / L=100 under load; not kept.)
        batch = self.batch_size or max(1, per_worker // 16)
        pending = list(reversed(items))  # popped from the end: handed out in order
        outstanding: list[set[str]] = [set() for _ in self._procs]
        cpu_start = list(self._cpu)
        result = WorkerRunResult()
        counts: Counter[str] = Counter()
        done = anyio.Event()
        total = len(items)
        finished = 0

        def hand_out(i: int, n: int) -> None:
            chunk = [pending.pop() for _ in range(min(n, len(pending)))]
            if not chunk:
                return
            try:
                self._inboxes[i].send(("run", run_id, out_path, per_worker, chunk))
            except OSError:
                pending.extend(reversed(chunk))
                return
            outstanding[i].update(c[0] for c in chunk)

        def settle(termination: str | None, error: str | None) -> None:
            nonlocal finished
            finished += 1
            counts[termination or "harness_error"] += 1
            if error:
                result.errors.append(error)
            if on_result:
                on_result(termination, error)
            if finished >= total:
                done.set()

        def handle(i: int, message: tuple[Any, ...]) -> None:
            kind = message[0]
            if kind == "done" and message[1] == run_id:
                _, _, tid, termination, error, written, _ = message
                outstanding[i].discard(tid)
                result.written += bool(written)
                settle(termination, error)
                free = per_worker - len(outstanding[i])
                if free >= batch or (free > 0 and len(pending) < batch):
                    hand_out(i, free)
            elif kind in ("fatal", "dead"):
                lost = outstanding[i]
                outstanding[i] = set()
                for tid in sorted(lost):
                    settle(None, f"{tid}: rollout worker {i} died ({message[1]}); a rerun retries it")
                if not any(self._alive) and pending:
                    for tid, _, _ in pending:
                        settle(None, f"{tid}: no rollout worker left")
                    pending.clear()
                for j in used:  # the others take over what it had not started
                    if self._alive[j] and len(outstanding[j]) < per_worker:
                        hand_out(j, per_worker - len(outstanding[j]))

        if total == 0:
            return result
        if self._handler is not None:
            raise RuntimeError("RolloutWorkers runs one run at a time")
        used = range(min(len(self._procs), workers or len(self._procs)))
        for i in used:
            if self._alive[i]:
                hand_out(i, per_worker)
        if not any(outstanding):
            raise RuntimeError("no rollout worker is alive")
        self._handler = handle
        try:
            await done.wait()
        finally:
            self._handler = None
        result.by_termination = dict(sorted(counts.items()))
        result.worker_cpu_s = sum(now - before for now, before in zip(self._cpu, cpu_start, strict=True))
        return result


def resolve_servers(
    servers: Sequence[str | ServerTarget], home: str | os.PathLike[str] | None = None
) -> list[ServerTarget]:
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
                raise RuntimeError(
                    f"local Ray did not stay on 127.0.0.1 (nodes at {sorted(addresses)}); refusing to run"
                )
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
    server_replicas: int = 1,
    executor: Literal["local", "ray"] = "local",
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    home: str | os.PathLike[str] | None = None,
    model_options: dict[str, Any] | None = None,
    model: Model | None = None,
    system_prompt: str | None = None,
    settings: ModelSettings | None = None,
    max_requests: int = 16,
    max_tokens_total: int | None = None,
    call_timeout_s: float = 30.0,
    episode_timeout_s: float | None = None,
    imports: Sequence[str] = (),
    max_steps: int | None = None,
) -> RolloutSummary:
    """Async form of :func:`run_rollouts` (for callers already inside an event loop)."""
    started = time.perf_counter()
    if max_steps is not None:
        warnings.warn("max_steps= is deprecated, use max_requests=", FutureWarning, stacklevel=2)
        max_requests = max_steps
    out = Path(out_dir)
    targets = resolve_servers(servers, home)
    config = EpisodeConfig(
        model_spec=model_spec, model_options=model_options or {}, system_prompt=system_prompt, settings=settings,
        max_requests=max_requests, max_tokens_total=max_tokens_total, call_timeout_s=call_timeout_s,
        episode_timeout_s=episode_timeout_s, concurrency=concurrency,
        per_endpoint_concurrency=per_endpoint_concurrency, server_replicas=server_replicas, imports=list(imports),
    )
    run = RunDir(out, config={"stage": "rollout", **config.model_dump(mode="json", exclude={"model_options"}),
                              "samples": samples, "servers": [_target_name(t) for t in targets]})
    out_path = str(out / f"{STAGE}.jsonl")
    items = _work_items(tasks, model_spec, samples)
    ids = {i[0] for i in items}
    if len(ids) != len(items):
        raise ValueError("duplicate task ids in the input: each task needs a unique id")
    # the one resumable runner's plan and manifest status; the executors below write the same stage file
    runner = ItemRunner[tuple[str, Task, int], Trajectory](run, STAGE, log_file=JsonlLog(out_path))
    planned, already = runner.plan((item[0], item) for item in items)
    todo = [item for _, item in planned]
    if todo and (executor != "local" or workers > 1):  # user mistakes first, before anything runs
        if model is not None:
            raise ValueError("a Model object cannot cross processes: pass model_spec (workers=1 to use model=)")
        inproc = _in_process_targets(targets)
        if inproc:
            raise ValueError(f"in-process servers {inproc} cannot cross processes: pass a module-level factory "
                             "(name, make_server) instead, or use workers=1 and executor='local'")
    runner.begin(len(todo), already, planned=len(items), done=already)
    bar = _progress(progress, len(items), "rollouts")
    try:
        written, errors = await _run_with_progress(
            bar, todo, already, len(items), config, targets, out_path, executor, workers, ray_address, model)
    except BaseException:  # Ctrl-C, a cancelled caller, a crash: say so in the manifest, keep what is written
        in_file = sum(1 for i in ids if i in JsonlLog(out_path))
        runner.interrupted(planned=len(items), in_file=in_file, kept=in_file)
        raise
    base = dict(
        out_dir=str(out),
        model=model_spec,
        executor=executor if executor == "ray" else f"local x{max(1, workers)}",
        planned=len(items),
        already_done=already,
        written=written,
        failed=len(errors),
        wall_s=time.perf_counter() - started,
        errors=errors[:50],
    )
    summary = _summarise(out, ids, base)
    runner.end(partial=bool(errors) or summary.total_in_file < len(ids),
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

        def on_result(termination: str | None, err: str | None) -> None:
            counts[termination or "harness_error"] += 1
            bar.update(ptask, advance=1, status=" ".join(f"{k}={v}" for k, v in sorted(counts.items())))

        if todo and executor == "local" and workers <= 1:
            written, errors = await run_shard(
                todo, config, targets, out_path, lambda traj, err: on_result(traj.termination if traj else None, err),
                model=model)
        elif todo and executor == "local":
            async with RolloutWorkers(workers, config, targets) as pool:
                result = await pool.run(todo, out_path, on_result=on_result)
            written, errors = result.written, result.errors
        elif todo:
            written, errors = await _run_distributed(todo, config, targets, out_path, executor, workers, ray_address,
                                                     lambda n: bar.update(ptask, completed=already + n))
    return written, errors


def _target_name(t: ServerTarget) -> str:
    return t.name if isinstance(t, ServerSpec) else str(t[0])


async def _run_distributed(todo: list[Any], config: EpisodeConfig, targets: list[ServerTarget], out_path: str,
                           executor: str, workers: int, ray_address: str | None,
                           report: Callable[[int], None]) -> tuple[int, list[str]]:
    """Run shards as Ray tasks; poll the output file for progress."""
    results: list[tuple[int, list[str]]] = []
    baseline = len(JsonlLog(out_path))
    ray = _ray_init(ray_address, None)
    n = max(1, int(ray.cluster_resources().get("CPU", 1))) if workers <= 1 else workers
    remote = ray.remote(num_cpus=1)(_shard_main)
    refs = [remote.remote(shard, config, targets, out_path) for shard in _shards(todo, n)]

    def wait() -> None:
        results.extend(ray.get(refs))

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
    ``concurrency`` (8), ``per_endpoint_concurrency`` (None), ``server_replicas`` (1: copies of the
    servers per process, each episode pinned to one; only for servers whose state is per episode
    or none), ``executor`` ("local" | "ray"),
    ``workers`` (local worker processes, 1), ``ray_address``, ``progress`` (True),
    ``model_options`` (for :func:`resolve_model`), ``model`` (a ready Model, workers=1 only),
    ``system_prompt``, ``settings``, ``max_requests`` (16: model requests per episode; ``max_steps``
    is its deprecated name), ``max_tokens_total``,
    ``call_timeout_s`` (30), ``episode_timeout_s``, ``imports`` (modules every worker imports
    before resolving the model, e.g. one that calls ``register_script``). Synchronous: it runs its own event loop
    (use :func:`arun_rollouts` from async code).
    """
    return anyio.run(lambda: arun_rollouts(tasks, model_spec, out_dir, **options))

