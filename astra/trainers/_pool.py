"""One pooled MCP connection per worker process, episodes on handles: what every trainer adapter holds.

Trainers call tools from their own threads and event loops (verl's agent-loop worker loop, TRL's
daemon loop for async tools and its main thread for ``reset``, OpenEnv's server). The pool owns
one :class:`~astra.client.Connections` (one client per environment server, never one per call)
on one event loop, its *home*, and every adapter submits to it: ``*_sync`` methods from plain
threads, the async ones from any asyncio loop. The home is a private loop in a daemon thread
(:attr:`PoolLoop.THREAD`), or with :attr:`PoolLoop.CALLER` the loop of the first async caller
(the trainer's own long-lived loop): its calls then run without a thread hop (two wake-ups per
call, which cost most on a loaded machine), calls from other threads and loops still hop to it,
and when that loop is closed the next caller starts the pool again (open episodes are gone).

An :class:`Episode` is one trajectory's state on one environment server: a handle the server
minted (``Connections.open_episode``), the calls made so far and the ground truth, so the
process reward (:func:`astra.servers.score_calls`) and the per-step rewards are at hand after
every call. Episodes never share state; a trajectory's calls all carry its handle.
"""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (Rollout and EpisodePool are one unit: a rollout drives its pool's loop-side methods)
import asyncio
import atexit
import concurrent.futures
import enum
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from astra.errors import AstraError
from astra.records import HttpLaunch, StdioLaunch
from astra.servers import ProcessReward, SubQuestion, ToolCallRecord, sub_questions
from astra.servers._rewards import RewardTracker
from astra.tools import ToolRef

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_OPEN_EPISODES = 1000  # under a server's default capacity (1024, implicit episodes included)


def stdio_launch(server_dir: str | Path, python: str | None = None) -> StdioLaunch:
    """How a worker launches an emitted environment directory over stdio (the MCP SDK's default
    environment: HOME, PATH, ...; nothing of the exporting machine's is baked in)."""
    import sys

    return StdioLaunch(command=python or sys.executable, args=[str(Path(server_dir).resolve() / "server.py")])


def launch_from_config(config: dict[str, Any]) -> StdioLaunch | HttpLaunch:
    """A launch record from a generated adapter config (``{"kind": "stdio", ...}`` or ``"http"``)."""
    if config.get("kind") == "http":
        return HttpLaunch.model_validate(config)
    if "server_dir" in config and "command" not in config:
        return stdio_launch(config["server_dir"], config.get("python"))
    return StdioLaunch.model_validate(config)


class PoolLoop(enum.Enum):
    """Where an :class:`EpisodePool` keeps its connections (see the module docstring)."""

    THREAD = "thread"  # a private loop in a daemon thread: any caller, always one thread hop
    CALLER = "caller"  # the first async caller's loop: no hop for that loop's calls


@dataclass
class StepOutcome:
    """One call through the pool: what the model sees, and the reward bookkeeping."""

    text: str
    is_error: bool
    result: Any
    step_reward: float
    latency_s: float


@dataclass
class Episode:
    """One environment server's state for one trajectory: the handle the server minted."""

    server: str
    handle: str
    closed: bool = False
    lost: bool = False  # its connection went away with the loop that held it (never reopened silently)


class EpisodeEvicted(AstraError, RuntimeError):
    """A live trajectory's episode is gone: closed to stay within ``max_open_episodes``, or lost with
    the event loop that held the pool.

    The trajectory cannot go on: its environment state is gone, and continuing in a fresh
    episode would mix two worlds in one trajectory and its reward. An infrastructure failure,
    never a score: raise ``max_open_episodes`` or release finished trajectories."""


class Rollout:
    """One trajectory: its episodes (one per environment server it calls, opened on first use),
    every call in order, and the ground truth, so the process reward and the per-step rewards
    are known after each call (:func:`astra.servers.score_calls`, the one definition)."""

    def __init__(self, pool: EpisodePool, truth: Any = None) -> None:
        self.pool = pool
        self.truth: list[SubQuestion] | None = None if truth is None else sub_questions(truth)
        self.tracker: RewardTracker | None = None if self.truth is None else RewardTracker(self.truth)
        self.calls: list[ToolCallRecord] = []
        self._recorded: list[dict[str, Any]] = []  # self.calls as JSON, kept in step (adapters read it per call)
        self.episodes: dict[str, Episode] = {}
        self.closed = False

    async def _acall(self, server: str, tool: str, arguments: dict[str, Any], name: str | None = None) -> StepOutcome:
        if self.closed:
            raise RuntimeError("this rollout is closed: start a new one")
        episode = self.episodes.get(server)
        if episode is not None and episode.closed:
            why = (
                "was lost with the event loop that held the pool" if episode.lost
                else f"was closed: more than {self.pool.max_open_episodes} trajectories were open in this worker "
                "(max_open_episodes)"
            )
            raise EpisodeEvicted(
                f"the episode of this trajectory on {server!r} {why}; the trajectory cannot go on in a fresh one"
            )
        if episode is None:
            episode = self.episodes[server] = await self.pool._aopen(server)
        result = await self.pool._acall(episode, tool, arguments)
        value = result.structured_content if result.structured_content is not None else result.text
        call = ToolCallRecord.model_construct(
            name=name or tool, arguments=arguments, result=None if result.is_error else value, is_error=result.is_error,
            ref=ToolRef(server=server, tool=tool, exposed=name or tool),
        )
        self.calls.append(call)
        self._recorded.append(call.model_dump(mode="json"))
        step = self.tracker.add(call) if self.tracker is not None else 0.0
        return StepOutcome(
            text=result.text, is_error=result.is_error, result=value, step_reward=step, latency_s=result.latency_s
        )

    async def _aclose(self) -> None:
        self.closed = True
        for episode in list(self.episodes.values()):
            await self.pool._aclose(episode)

    def set_truth(self, truth: Any) -> None:
        """Attach the ground truth late (the calls so far are scored again)."""
        self.truth = sub_questions(truth)
        self.tracker = RewardTracker(self.truth)
        for call in self.calls:
            self.tracker.add(call)

    def reward(self) -> ProcessReward | None:
        """The process reward of the calls so far (None without a ground truth)."""
        return None if self.tracker is None else self.tracker.score()

    def recorded_calls(self) -> list[dict[str, Any]]:
        """The calls as JSON (what verl hands the reward function as ``extra_info["astra_calls"]``)."""
        return list(self._recorded)  # dumped once per call: verl reads this after every call

    async def call(self, server: str, tool: str, arguments: dict[str, Any], name: str | None = None) -> StepOutcome:
        """Call ``tool`` on ``server`` in this trajectory's episode; ``name``: what the model called it
        (the exported name the ground truth uses), recorded for the reward."""
        return await self.pool.arun(self._acall(server, tool, arguments, name))

    def call_sync(self, server: str, tool: str, arguments: dict[str, Any], name: str | None = None) -> StepOutcome:
        return self.pool.run(self._acall(server, tool, arguments, name))

    async def close(self) -> None:
        await self.pool.arun(self._aclose())

    def close_sync(self) -> None:
        if not self.closed:
            self.pool.run(self._aclose())

    def close_soon(self) -> None:
        """Close from anywhere without waiting (finalizers, other loops)."""
        if not self.closed and self.pool._loop is not None and not self.pool._loop.is_closed():
            self.pool._submit(self._aclose())


class EpisodePool:
    """Episodes over one pooled connection per environment server (see the module docstring).

    ``targets``: what :class:`~astra.client.Connections` opens (``(name, StdioLaunch)``,
    ``(name, HttpLaunch)``, ``(name, MCPServer factory)``); the connection opens on first use.
    At most ``max_open_episodes`` stay open: opening one more closes the least recently used
    (a trainer that never says when a trajectory ends cannot leak episodes); that trajectory's
    next call raises :class:`EpisodeEvicted`, never continues in a fresh episode."""

    _shared: dict[str, EpisodePool] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        targets: Sequence[Any],
        *,
        call_timeout_s: float = 60.0,
        max_open_episodes: int = DEFAULT_MAX_OPEN_EPISODES,
        loop: PoolLoop = PoolLoop.THREAD,
    ) -> None:
        self.targets = list(targets)
        self.call_timeout_s = call_timeout_s
        self.max_open_episodes = max_open_episodes
        self.loop_mode = loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._home: asyncio.Task[None] | None = None  # PoolLoop.CALLER: the task holding the connections
        self._home_ready: asyncio.Event | None = None
        self._conns: Any = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Episode] = OrderedDict()
        self._names: dict[tuple[str, str], str] = {}

    # ----------------------------------------------------------------- sharing

    @classmethod
    def shared(cls, key: str, make: Callable[[], EpisodePool]) -> EpisodePool:
        """The process-wide pool for ``key`` (one per worker), built by ``make`` on first use."""
        with cls._shared_lock:
            pool = cls._shared.get(key)
            if pool is None:
                pool = cls._shared[key] = make()
            return pool

    @staticmethod
    def key_of(config: Any) -> str:
        return json.dumps(config, sort_keys=True, default=str)

    # ----------------------------------------------------------------- the private loop

    def _home_gone(self) -> bool:
        """The caller's loop that held the pool was closed or cancelled the pool's task: its
        connections went with it."""
        return self._home is not None and (self._home.done() or (self._loop is not None and self._loop.is_closed()))

    def _reset(self) -> None:
        for episode in self._open.values():
            episode.closed = episode.lost = True
        self._open.clear()
        self._names.clear()
        self._loop, self._thread, self._home, self._home_ready = None, None, None, None
        self._conns, self._stop, self._start_error = None, None, None
        self._ready = threading.Event()

    async def _start_here(self, loop: asyncio.AbstractEventLoop) -> None:
        """PoolLoop.CALLER: make ``loop`` (running this coroutine) the pool's home and wait until connected."""
        with self._lock:
            if self._home_gone():
                self._reset()
            if self._loop is None and self._thread is None:
                self._loop = loop
                self._home_ready = asyncio.Event()
                self._home = loop.create_task(self._hold(), name="astra-episode-pool")
                atexit.register(self.close)
            ready = self._home_ready
        if self._loop is loop and ready is not None:
            await ready.wait()
        if self._start_error is not None:
            raise RuntimeError(f"the episode pool could not connect: {self._start_error}") from self._start_error

    def _start(self) -> None:
        with self._lock:  # the first caller starts the loop thread; every caller waits until it is connected
            if self._home_gone():
                self._reset()
            if self._thread is None and self._home is None:
                self._thread = threading.Thread(target=self._run_loop, name="astra-episode-pool", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        self._ready.wait()
        if self._start_error is not None:
            raise RuntimeError(f"the episode pool could not connect: {self._start_error}") from self._start_error

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._hold())
        finally:
            loop.close()

    async def _hold(self) -> None:
        from astra.client import Connections

        self._stop = asyncio.Event()
        try:
            async with Connections(self.targets, call_timeout_s=self.call_timeout_s) as conns:
                self._conns = conns
                self._set_ready()
                await self._stop.wait()
                for episode in list(self._open.values()):
                    await self._aclose(episode)
        except asyncio.CancelledError:  # the home loop is shutting down: the connections closed with it
            if self._home is None:
                raise
        except BaseException as exc:  # noqa: BLE001 - reported to whoever waits for the pool
            self._start_error = exc
            self._set_ready()
        finally:
            self._conns = None

    def _set_ready(self) -> None:
        self._ready.set()
        if self._home_ready is not None:
            self._home_ready.set()

    def _on_home(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        if not self._ready.is_set() or (self._thread is None and self._home is None) or self._home_gone():
            if self._home is not None and not self._home_gone() and self._on_home():
                raise RuntimeError("the episode pool is still connecting on this loop: await its async API")
            self._start()
        elif self._start_error is not None:
            raise RuntimeError(f"the episode pool could not connect: {self._start_error}")
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the pool's loop and wait (from a thread that is not running that loop)."""
        if self._on_home():
            raise RuntimeError("EpisodePool.run() on the pool's own loop would wait forever: await the async API")
        return self._submit(coro).result()

    async def arun(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the pool's loop: directly when this is its loop, else across threads."""
        if self.loop_mode is PoolLoop.CALLER and (self._loop is None or self._home_gone()):
            await self._start_here(asyncio.get_running_loop())
        if self._home is not None and self._on_home():
            if self._home_ready is not None and not self._home_ready.is_set():
                await self._home_ready.wait()  # another caller on this loop is connecting it
            if self._start_error is not None:
                raise RuntimeError(f"the episode pool could not connect: {self._start_error}")
            return await coro  # the pool's own loop: no thread hop
        return await asyncio.wrap_future(self._submit(coro))

    def close(self) -> None:
        """Close every open episode and the connections (idempotent)."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:
            return
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        elif self._home is not None and not self._on_home() and loop.is_running():
            home = self._home

            async def closed() -> None:
                await asyncio.wait([home])

            try:
                asyncio.run_coroutine_threadsafe(closed(), loop).result(timeout=30)
            except (RuntimeError, concurrent.futures.TimeoutError):
                pass  # the loop stopped meanwhile

    async def aclose(self) -> None:
        """:meth:`close` from async code (on the pool's own loop: waits for it without blocking)."""
        if self._home is not None and self._on_home():
            if self._stop is not None:
                self._stop.set()
            await asyncio.wait([self._home])
        else:
            await asyncio.to_thread(self.close)

    # ----------------------------------------------------------------- episodes (on the pool's loop)

    @property
    def connections(self) -> Any:
        return self._conns

    async def _aopen(self, server: str) -> Episode:
        # the server mints the handle (astra/episode/open), bound to this pooled connection;
        # EpisodeUnavailable (e.g. the server's episode capacity) reaches the trainer as is
        handle = await self._conns.open_episode(server)
        episode = Episode(server=server, handle=handle)
        self._open[handle] = episode
        while len(self._open) > self.max_open_episodes:
            _, oldest = self._open.popitem(last=False)
            log.warning(
                "closed the least recently used episode %s... on %r: more than %d open (max_open_episodes); "
                "its trajectory fails on its next call", oldest.handle[:8], oldest.server, self.max_open_episodes,
            )
            await self._aclose(oldest)
        return episode

    async def _acall(self, episode: Episode, tool: str, arguments: dict[str, Any]) -> Any:
        if episode.closed:
            raise RuntimeError(f"episode {episode.handle[:8]}... on {episode.server!r} is closed")
        name = self._names.get((episode.server, tool))
        if name is None:
            name = self._names[(episode.server, tool)] = self._conns.name_for(episode.server, tool)
        if episode.handle in self._open:
            self._open.move_to_end(episode.handle)
        return await self._conns.call(name, arguments, episode=episode.handle)

    async def _aclose(self, episode: Episode) -> None:
        if episode.closed:
            return
        episode.closed = True
        self._open.pop(episode.handle, None)
        await self._conns.close_episode(episode.handle)

    # ----------------------------------------------------------------- the adapters' API

    def rollout(self, truth: Any = None) -> Rollout:
        """A new trajectory (episodes open on its first call to each server)."""
        return Rollout(self, truth)

    def tools(self, server: str) -> list[Any]:
        """The server's tools (ToolSpec records) as listed over the pooled connection."""
        if self._conns is None:
            if self._on_home():
                raise RuntimeError("the episode pool is still connecting on this loop")
            self._start()
        assert self._conns is not None  # _start opened them
        return [b.tool for b in self._conns.tools if b.server == server]

    @property
    def open_episodes(self) -> int:
        return len(self._open)
