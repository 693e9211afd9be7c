"""Red team, round 5: attacks on the per-process FIFOs (host <-> child framing, ``_Spare.pending``), the
parent's CPU watchdog (during and between calls), renew/retire, and what tool code can still share across
episodes, through the sandbox API. Audit hook off everywhere: containment must not rest on it.

``test_r5_NN_...`` reproduce a finding (they FAIL on main @ a61088f and say what the safe behaviour is);
``test_holds_...`` are attacks that are contained (regressions). Notes: /work/notes/s4/redteam5.md.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from astra.servers import ProcessScope, Sandbox, SandboxLimits

LIMITS = SandboxLimits(cpu_s=1, wall_s=3, memory_mb=256, max_procs=16, scratch_mb=16, file_size_mb=8,
                       max_output_bytes=4096, max_result_bytes=100_000, max_state_bytes=1_000_000,
                       max_sandboxes=8, spare_sandboxes=2, process_scope=ProcessScope.EPISODE)
HEALTHY = "def healthy(state, x=21):\n    return {'double': 2 * x}\n"


def _run(coro_fn: Any, timeout: float = 30) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(timeout):
            return await coro_fn()

    return anyio.run(bounded)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(limits=LIMITS, audit_hook=False)
    anyio.run(box.start)
    assert box.isolation["bubblewrap"] and box.isolation["tool_seccomp"] and not box.isolation["audit_hook"]
    assert box.isolation["process_scope"] == "episode"
    yield box
    anyio.run(box.aclose)


class Episode:
    """A fresh episode object of the sandbox API."""


async def _healthy(sandbox: Sandbox, episode: object, x: int = 4) -> None:
    result = await sandbox.call(HEALTHY, "healthy", {"x": x}, state={}, episode=episode)
    assert result.ok and result.value == {"double": 2 * x}, (result.error_kind, result.error)


# =========================================================================== (a) channels between episodes

# A shared futex: a MAP_SHARED mapping of a runtime file bound read-only from the host (the same inode in every
# sandbox). A shared futex's key is (inode, offset), not the process's memory: FUTEX_WAKE in one sandbox wakes
# a FUTEX_WAIT in another, and returns how many it woke. No CPU while waiting, no timing, no file written.
FUTEX = """
import builtins, ctypes, os, platform, threading

_NR = {'x86_64': 202, 'aarch64': 98}[platform.machine()]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.syscall.restype = ctypes.c_long

class _Timespec(ctypes.Structure):
    _fields_ = [('s', ctypes.c_long), ('ns', ctypes.c_long)]

def _word(offset):
    fd = os.open(os.__file__, os.O_RDONLY)  # the runtime, bound read-only from the host
    addr = _libc.mmap(None, 4096, 1, 1, fd, 0)
    os.close(fd)
    return addr + offset

def wait(state, offset=0, secs=3.0):
    addr = _word(offset)
    value = ctypes.c_uint32.from_address(addr).value
    out = builtins.__dict__.setdefault('R5_WOKEN', [])
    def waiter():
        ts = _Timespec(int(secs), int((secs % 1) * 1e9))
        rc = _libc.syscall(_NR, ctypes.c_void_p(addr), 0, value, ctypes.byref(ts), None, 0)  # FUTEX_WAIT, shared
        out.append((rc, ctypes.get_errno()))
    threading.Thread(target=waiter, daemon=True).start()
    return 'waiting'

def wake(state, offset=0):
    addr = _word(offset)
    rc = _libc.syscall(_NR, ctypes.c_void_p(addr), 1, 1000, None, None, 0)  # FUTEX_WAKE, shared
    return {'woken': rc, 'errno': ctypes.get_errno()}

def woken(state):
    return builtins.__dict__.get('R5_WOKEN', [])
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="futex syscall number")
def test_r5_01_a_shared_futex_on_a_runtime_file_is_no_channel_between_episodes(sandbox: Sandbox) -> None:
    """R5-01. Episode A's tool code waits (a thread, no CPU) on a shared futex in a read-only MAP_SHARED mapping
    of a runtime file (os.py: the host's inode, bound into every sandbox); episode B's tool code wakes that futex
    and the kernel tells B how many it woke (and A's thread returns 0 instead of timing out). An exact,
    timing-free, two-way channel between concurrent episodes (what R3-09 closed for inotify). Safe: B wakes no
    one of another sandbox (e.g. the tool filter refuses futex ops without FUTEX_PRIVATE_FLAG -- the C library
    and CPython use private futexes -- or refuses MAP_SHARED file mappings)."""
    offset = 4 * (int(time.time() * 1000) % 1000)  # a word no one else waits on

    async def run() -> None:
        a, b = Episode(), Episode()
        waiting = await sandbox.call(FUTEX, "wait", {"offset": offset, "secs": 3.0}, state={}, episode=a)
        assert waiting.ok, (waiting.error_kind, waiting.error)
        await anyio.sleep(0.3)
        woke = await sandbox.call(FUTEX, "wake", {"offset": offset}, state={}, episode=b)
        assert woke.ok, (woke.error_kind, woke.error)
        await anyio.sleep(0.2)
        seen = await sandbox.call(FUTEX, "woken", {}, state={}, episode=a)
        assert seen.ok, (seen.error_kind, seen.error)
        sandbox.end_episode(a)
        sandbox.end_episode(b)
        assert woke.value["woken"] <= 0 and not any(rc == 0 for rc, _errno in seen.value), (
            f"episode B woke {woke.value['woken']} waiter(s) of episode A's sandbox (A's waiter saw {seen.value})")

    _run(run)


# =========================================================================== (b) the host's event loop

ZEROS = """
def zeros(state, n=0):
    state['z'] = [0] * n  # n JSON values in 2n characters: within max_state_bytes
    return len(state['z'])
"""


@pytest.mark.xfail(reason="R5-02 / R3-14, not fixed: replies are parsed on the host's event loop (a state of "
                          "millions of small values within max_state_bytes stalls it ~0.2 s)", strict=True)
def test_r5_02_a_reply_within_the_limits_never_stalls_every_episode_on_its_parse() -> None:
    """R5-02. A state within ``max_state_bytes`` (8 MB by default) made of millions of tiny values (``[0,0,...]``,
    ``[[],[],...]``: 3 characters a value as the worker encodes it) costs the host ~0.3-0.5 s of json.loads plus
    re-encodings
    (``_json_length`` in ``_from_frame``; ``json.dumps`` of the next request), all on the event loop that serves
    every episode (json holds the GIL: no other coroutine runs meanwhile), and ~10x its size in host memory
    (2.8 M lists: ~160 MB per episode's state, held between calls). Every call of such an episode freezes all
    episodes' calls (their wall clocks keep running: concurrent episodes of the same tools serialise into
    timeouts). Safe: no reply allowed by the limits blocks the event loop for more than ~0.1 s (e.g. refuse a
    frame with more than N JSON values before parsing it -- ``bytes.count`` of ``,[{:`` is cheap -- or parse off
    the loop in a process, or a lower default ``max_state_bytes``)."""
    limits = SandboxLimits(cpu_s=3, wall_s=8, memory_mb=512, max_sandboxes=4, spare_sandboxes=1,
                           process_scope=ProcessScope.EPISODE)  # default max_state_bytes (8 MB)
    box = Sandbox(limits=limits, audit_hook=False)
    gaps: list[float] = []

    async def ticker(stop: anyio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def run() -> None:
        await box.start()
        try:
            episode = Episode()
            await _healthy(box, episode)
            stop = anyio.Event()
            result = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker, stop)
                result = await box.call(ZEROS, "zeros", {"n": 2_700_000}, state={}, episode=episode)
                stop.set()
            assert result is not None and result.ok, result
        finally:
            await box.aclose()
        worst = max(gaps)
        assert worst < 0.1, f"one call's reply (2.7 M zeros, within the limits) froze the host's event loop " \
                            f"for {worst:.2f} s"

    _run(run)


# =========================================================================== (c) the FIFOs

FIFOS = """
import ctypes, fcntl, os, stat, sys

def fds(state):
    child = sys._getframe(2)  # _worker._child
    mine = {child.f_locals['request_fd'], child.f_locals['reply_fd']}
    out = {'fifos': [], 'other': [], 'run': os.listdir('/run')}
    for fd in range(0, 1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode):
            out['fifos'].append([fd in mine, st.st_ino])
        elif fd > 2:
            out['other'].append(fd)
    return out

def grow(state):
    reply_fd = sys._getframe(2).f_locals['reply_fd']
    try:
        return fcntl.fcntl(reply_fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError as exc:
        return str(exc)
"""


def test_holds_a_process_reaches_no_fifo_but_its_own_and_their_numbers_say_nothing(sandbox: Sandbox) -> None:
    """The episode's process holds its two FIFOs and nothing else (their paths are gone: /run is empty), and
    their inode numbers come from the sandbox's own /run tmpfs: the same in every new episode whatever other
    episodes did meanwhile (R4-02 stays fixed)."""

    async def run() -> None:
        first = await sandbox.call(FIFOS, "fds", {}, state={}, episode=Episode())
        assert first.ok, (first.error_kind, first.error)
        busy = Episode()
        for x in range(5):
            await _healthy(sandbox, busy, x)
        second = await sandbox.call(FIFOS, "fds", {}, state={}, episode=Episode())
        assert second.ok, (second.error_kind, second.error)
        for seen in (first.value, second.value):
            assert seen["run"] == [] and seen["other"] == [], seen
            assert len(seen["fifos"]) == 2 and all(mine for mine, _ino in seen["fifos"]), seen
        assert first.value["fifos"] == second.value["fifos"]

    _run(run)


def test_r5_03_tool_code_cannot_grow_its_fifos_to_pin_machine_wide_pipe_pages(sandbox: Sandbox) -> None:
    """R5-03 (low; I-4 of round 4 now through the host's own FIFOs). F_SETPIPE_SZ is not filtered: the episode's
    process grows its reply FIFO (and request FIFO) to 1 MiB: 256 pages each, kernel memory outside RLIMIT_AS,
    charged to the host user's pipe_bufs (every sandbox maps to it), held for the episode's life. ~32 such
    episodes pass pipe-user-pages-soft (16384): every sandbox's new FIFOs (and any unprivileged root pipe) then
    get one page and F_SETPIPE_SZ fails (a 1-bit channel between episodes). Safe: the resize is refused (tool
    filter: fcntl/fcntl64 with F_SETPIPE_SZ 1031 -> EPERM)."""

    async def run() -> None:
        episode = Episode()
        grown = await sandbox.call(FIFOS, "grow", {}, state={}, episode=episode)
        sandbox.end_episode(episode)
        assert grown.ok, (grown.error_kind, grown.error)
        assert not isinstance(grown.value, int) or grown.value <= 65536, (
            f"tool code grew its reply FIFO to {grown.value} bytes of pipe buffer")

    _run(run)


FRAMING = """
import builtins, os, struct, sys, threading, time, json

def huge(state):
    os.write(sys._getframe(2).f_locals['reply_fd'], struct.pack('>I', 0xFFFFFFF0) + b'x' * 1000)
    return 'after'

def partial(state):
    os.write(sys._getframe(2).f_locals['reply_fd'], struct.pack('>I', 100) + b'{"id"')
    return 'after'

def later(state, delay=0.3):
    # after the host took this call's reply: a forged frame (this call's nonce, and the next call's too if the
    # thread could guess it) lands on the reply FIFO while the episode waits for its next call
    runner, child = sys._getframe(1), sys._getframe(2)
    nonce, reply_fd = runner.f_locals['nonce'], child.f_locals['reply_fd']
    def forge():
        time.sleep(delay)
        frame = json.dumps({'id': nonce, 'ok': True, 'value': 'forged', 'stdout': '', 'state': {'f': 1}}).encode()
        os.write(reply_fd, struct.pack('>I', len(frame)) + frame)
    threading.Thread(target=forge, daemon=True).start()
    builtins.R5_PID = os.getpid()
    return 'honest'

def who(state):
    return {'same': getattr(builtins, 'R5_PID', None) == os.getpid()}
"""


@pytest.mark.parametrize("attack", ["huge", "partial"])
def test_holds_a_broken_reply_frame_fails_its_own_call_only(sandbox: Sandbox, attack: str) -> None:
    """A length prefix of 4 GB, or a frame cut short, ahead of the runner's own reply: the call fails (output
    limit / bad reply), the episode's next call runs healthy in a fresh process, another episode never notices."""

    async def run() -> None:
        victim, attacker = Episode(), Episode()
        await _healthy(sandbox, victim)
        broken = await sandbox.call(FRAMING, attack, {}, state={}, episode=attacker)
        assert not broken.ok, broken
        await _healthy(sandbox, attacker, 5)
        await _healthy(sandbox, victim, 6)

    _run(run)


def test_holds_bytes_left_on_the_reply_fifo_never_answer_the_next_call(sandbox: Sandbox) -> None:
    """A thread writes a frame after the host took the call's reply: the next call sees it pending, runs in a
    fresh process and gets its own answer (never 'forged')."""

    async def run() -> None:
        episode = Episode()
        first = await sandbox.call(FRAMING, "later", {"delay": 0.3}, state={}, episode=episode)
        assert first.ok and first.value == "honest", (first.error_kind, first.error)
        await anyio.sleep(0.6)
        second = await sandbox.call(FRAMING, "who", {}, state={}, episode=episode)
        assert second.ok and second.value == {"same": False}, (second.error_kind, second.error, second.value)
        await _healthy(sandbox, episode)

    _run(run)


BURSTS = """
import builtins, os, signal, threading, time

def bursts(state, burn=0.15, rest=0.3):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    def loop():
        while True:
            end = time.thread_time() + burn
            while time.thread_time() < end:
                pass
            time.sleep(rest)
    for _ in range(4):
        threading.Thread(target=loop, daemon=True).start()
    builtins.R5_PID = os.getpid()
    return 'started'

def who(state):
    return {'same': getattr(builtins, 'R5_PID', None) == os.getpid()}
"""


def test_holds_cpu_bursts_under_the_idle_budget_are_still_stopped_between_calls(sandbox: Sandbox) -> None:
    """Four threads burn 0.15 s each and sleep 0.3 s, forever, between calls (each burst under the 0.25 s idle
    budget): the idle budget is cumulative, so the process is killed and the next call runs in a fresh one."""

    async def run() -> None:
        episode = Episode()
        started = await sandbox.call(BURSTS, "bursts", {}, state={}, episode=episode)
        assert started.ok, (started.error_kind, started.error)
        await anyio.sleep(1.2)
        probe = await sandbox.call(BURSTS, "who", {}, state={}, episode=episode)
        assert probe.ok and probe.value == {"same": False}, (probe.error_kind, probe.error, probe.value)

    _run(run)


# =========================================================================== (d) kernel memory across calls

INODES = """
import os, time

def flood(state, n=0, secs=0.6):
    base = len(os.listdir('/tmp'))
    end = time.monotonic() + secs
    made = 0
    while made < n and time.monotonic() < end:
        fd = os.open('/tmp/f%d_%d' % (base, made), os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        made += 1
    return {'made': made, 'held': os.statvfs('/tmp').f_files - os.statvfs('/tmp').f_ffree}
"""


def test_r5_04_an_episodes_process_cannot_pile_up_inodes_across_its_calls(sandbox: Sandbox) -> None:
    """R5-04. The scratch tmpfs bounds data blocks (``--size``), not inodes: empty files cost ~1 KB each of
    unreclaimable kernel memory (inode + dentry), outside RLIMIT_AS and scratch_mb. R3-03's fix empties the
    scratch when a call's process exits; in EPISODE scope the process lives for ~10 calls' worth of CPU, so a
    flood now accumulates call after call (measured: 90 k empty files and +90 MB slab, 73 MB unreclaimable, per 0.5 s
    call, held; ~1.8 M inodes / ~1.8 GB over one process's life of 10 calls' CPU; 64 episodes: the machine).
    Safe: an episode's sandbox holds a bounded number of
    inodes (e.g. the parent reads ``statvfs('/tmp')`` and ``/run`` in its watch loop, during and between calls,
    and kills the process past a budget such as 50 000, like idle_cpu)."""

    async def run() -> None:
        episode = Episode()
        held = 0
        try:
            for _ in range(3):
                flooded = await sandbox.call(INODES, "flood", {"n": 40_000, "secs": 0.6}, state={}, episode=episode)
                if not flooded.ok:
                    break
                held = max(held, flooded.value["held"])
        finally:
            sandbox.end_episode(episode)  # its sandbox (and the inodes) go now
        assert held <= 50_000, f"one episode's process holds {held} inodes in its scratch across calls"

    _run(run)


# =========================================================================== (e) the host's page cache

# The runtime files are the host's inodes (bound read-only), so their page cache is shared by every sandbox and
# the host. mincore is refused (R3-10), but preadv2(RWF_NOWAIT) answers the same question (EAGAIN: the page is
# not cached) and posix_fadvise(DONTNEED) empties it again: a resettable, timing-free bit per page.
PAGE_CACHE = """
import os

def _target():
    import email
    return os.path.join(os.path.dirname(email.__file__), 'charset.py')  # a runtime file nobody else reads now

def drop(state):
    fd = os.open(_target(), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the host's page cache of the file, emptied
    os.close(fd)
    return 'dropped'

def check(state):
    fd = os.open(_target(), os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT) > 0  # True: someone read it since the drop
    except BlockingIOError:
        return False
    finally:
        os.close(fd)

def touch(state):
    fd = os.open(_target(), os.O_RDONLY)
    os.pread(fd, 4096, 0)
    os.close(fd)
    return 'read'
"""


def test_r5_05_the_host_page_cache_is_no_channel_between_episodes(sandbox: Sandbox) -> None:
    """R5-05 (bypass of R3-10's mincore fix). Episode A empties the page cache of a runtime file
    (posix_fadvise DONTNEED on its read-only descriptor: allowed for any readable file) and checks it with
    preadv2(RWF_NOWAIT): EAGAIN while nobody read it, the data once episode B's tool code read the file. An
    exact, resettable channel between concurrent episodes (one bit per page of every runtime file), and a view of
    host activity; DONTNEED also lets tool code evict the host's cached runtime (every launch then reads the
    disk). Safe: A learns nothing from B (tool filter: preadv2/pwritev2 with RWF_NOWAIT (0x8) refused, and
    fadvise64 made a no-op that succeeds, as flock is)."""

    async def run() -> None:
        a, b = Episode(), Episode()
        seen: list[Any] = []
        for touched in (False, True):
            dropped = await sandbox.call(PAGE_CACHE, "drop", {}, state={}, episode=a)
            assert dropped.ok, (dropped.error_kind, dropped.error)
            if touched:
                read = await sandbox.call(PAGE_CACHE, "touch", {}, state={}, episode=b)
                assert read.ok, (read.error_kind, read.error)
            check = await sandbox.call(PAGE_CACHE, "check", {}, state={}, episode=a)
            if not check.ok:  # the probe itself is refused (RWF_NOWAIT): contained
                assert "PermissionError" in (check.error or ""), (check.error_kind, check.error)
                seen.append("refused")
                continue
            seen.append(check.value)
        sandbox.end_episode(a)
        sandbox.end_episode(b)
        assert seen != [False, True], "episode A saw whether episode B read a runtime file (page cache bit)"

    _run(run)


# =========================================================================== (f) the host's device nodes

# /dev/null, /dev/zero and /dev/urandom are the host's own device inodes (--dev-bind), on a writable bind: any
# process that may write a file may also set its times to "now" (utimensat with NULL times), so tool code
# stamps the host's /dev/null, and every other sandbox (and the host) reads the stamp.
DEVNULL = """
import os

def stamp(state):
    os.utime('/dev/null')  # times = now, on the host's inode
    return 'stamped'

def look(state):
    return os.stat('/dev/null').st_mtime_ns
"""


def test_r5_06_tool_code_cannot_stamp_the_hosts_dev_null(sandbox: Sandbox) -> None:
    """R5-06. Episode B's tool code ``os.utime('/dev/null')``: the host's /dev/null (and /dev/zero, /dev/urandom)
    takes B's time as its mtime/atime/ctime -- a change to host state, and a channel that every concurrent
    episode reads with ``os.stat`` (quiet: the stamp never moves). Safe: tool code cannot change the times of a
    device node (it is not the sandbox's: e.g. the tool filter turns utimensat/utimes/utime/futimesat into a
    no-op that succeeds (as flock) or refuses them; bubblewrap's --remount-ro would also make the nodes unusable
    (nodev), so it is not the fix)."""

    async def run() -> None:
        a, b = Episode(), Episode()
        first = await sandbox.call(DEVNULL, "look", {}, state={}, episode=a)
        await anyio.sleep(0.05)
        quiet = await sandbox.call(DEVNULL, "look", {}, state={}, episode=a)
        stamped = await sandbox.call(DEVNULL, "stamp", {}, state={}, episode=b)
        after = await sandbox.call(DEVNULL, "look", {}, state={}, episode=a)
        sandbox.end_episode(a)
        sandbox.end_episode(b)
        assert first.ok and quiet.ok and after.ok, (first.error, quiet.error, after.error)
        assert not (stamped.ok and first.value == quiet.value and after.value != quiet.value), (
            "episode B's tool code changed the host's /dev/null times and episode A saw it")

    _run(run)


# =========================================================================== (g) dnotify

# inotify is refused (R3-09), but dnotify is fcntl(F_NOTIFY): a directory of the runtime (the host's inode) is
# watched for accesses by anyone -- another sandbox, the host -- and each one raises SIGIO in the watcher.
DNOTIFY = """
import builtins, fcntl, os, signal

def _dir():
    import email
    return os.path.dirname(email.__file__)

def watch(state):
    builtins.R5_EVENTS = []
    signal.signal(signal.SIGIO, lambda *_: builtins.R5_EVENTS.append(1))
    builtins.R5_FD = os.open(_dir(), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.fcntl(builtins.R5_FD, 1026, 0x1 | 0x80000000)  # F_NOTIFY: DN_ACCESS | DN_MULTISHOT
    return 'watching'

def count(state):
    return len(builtins.R5_EVENTS)

def touch(state):
    fd = os.open(os.path.join(_dir(), 'charset.py'), os.O_RDONLY)  # a source file: imports read the .pyc
    os.read(fd, 100)
    os.close(fd)
    return 'read'
"""


def test_r5_07_dnotify_on_a_runtime_directory_is_no_channel_between_episodes(sandbox: Sandbox) -> None:
    """R5-07 (bypass of R3-09's inotify fix). Episode A's tool code puts a dnotify watch (fcntl F_NOTIFY,
    DN_ACCESS|DN_MULTISHOT) on a runtime directory (the host's inode) with a SIGIO handler; it stays between
    calls. When episode B's tool code reads a file there, A counts a SIGIO (quiet: none). An exact channel between
    concurrent episodes, and a view of the host's own reads of the runtime. Safe: A counts nothing (tool filter:
    fcntl/fcntl64 with F_NOTIFY (1026) -> EPERM)."""

    async def run() -> None:
        a, b = Episode(), Episode()
        watching = await sandbox.call(DNOTIFY, "watch", {}, state={}, episode=a)
        if not watching.ok:  # the watch itself is refused (F_NOTIFY): contained
            assert "PermissionError" in (watching.error or ""), (watching.error_kind, watching.error)
            sandbox.end_episode(a)
            return
        quiet = await sandbox.call(DNOTIFY, "count", {}, state={}, episode=a)
        read = await sandbox.call(DNOTIFY, "touch", {}, state={}, episode=b)
        await anyio.sleep(0.05)
        after = await sandbox.call(DNOTIFY, "count", {}, state={}, episode=a)
        sandbox.end_episode(a)
        sandbox.end_episode(b)
        assert quiet.ok and read.ok and after.ok, (quiet.error, read.error, after.error)
        assert not (quiet.value == 0 and after.value > 0), (
            f"episode A's dnotify watch saw episode B read a runtime file ({after.value} SIGIO)")

    _run(run)


# =========================================================================== (h) the host's disk

SYNC = """
import os

def sync(state):
    os.sync()  # every file system of the machine, not only the sandbox's tmpfs
    return 'synced'
"""


def _dirty_kb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Dirty:"):
                return int(line.split()[1])
    return -1


@pytest.mark.skipif(not __import__("os").path.exists("/proc/meminfo"), reason="needs /proc/meminfo")
def test_r5_08_tool_code_cannot_flush_the_hosts_file_systems(sandbox: Sandbox, tmp_path: Any) -> None:
    """R5-08. ``sync()`` (and ``syncfs`` on a runtime file's descriptor) is not filtered: tool code forces the
    writeback of every dirty page of every file system on the machine -- the host's checkpoints, logs, other
    sessions' files -- in a loop if it likes (a disk-I/O DoS of the host and every episode, and a timing probe of
    host write activity). Here the host leaves 32 MB dirty (background writeback would not start for ~30 s);
    one call of episode tool code writes it to disk. Safe: it stays dirty (tool filter: sync/syncfs -> ERRNO(0),
    a no-op: the sandbox's own files live on tmpfs, where syncing does nothing anyway)."""
    path = tmp_path / "dirty.bin"
    with open(path, "wb") as fh:
        fh.write(b"\x5a" * (32 << 20))  # not fsynced: dirty pages of the host's disk
    before = _dirty_kb()

    async def run() -> None:
        episode = Episode()
        synced = await sandbox.call(SYNC, "sync", {}, state={}, episode=episode)
        sandbox.end_episode(episode)
        assert synced.ok, (synced.error_kind, synced.error)

    try:
        _run(run)
        after = _dirty_kb()
    finally:
        path.unlink()
    assert before >= 30 << 10, f"the host did not keep 32 MB dirty ({before} kB): cannot tell"
    assert after > before - (24 << 10), f"tool code flushed the host's disk: Dirty {before} kB -> {after} kB"


# =========================================================================== (i) calls without an episode

LINGER = """
import os, sys, time

def linger(state):
    child = sys._getframe(2)  # _worker._child: its globals are the worker module's
    reply_fd, g = child.f_locals['reply_fd'], child.f_globals
    real_write = g['_write']
    def write_then_stay(fd, data):
        n = real_write(fd, data)
        if fd == reply_fd:
            os.close(fd)  # the host has the whole reply (EOF) ...
            time.sleep(3600)  # ... and this process stays, using no CPU
        return n
    g['_write'] = write_then_stay
    return 'fine'
"""


def test_r5_09_a_call_without_an_episode_never_delays_the_next_callers_call() -> None:
    """R5-09. Calls without an episode (the synthesis pipeline's verifications: every candidate of a run) share
    one sandbox, a fresh process each, and each call waits for the previous call's process to be reported gone.
    A candidate's tool code replies, closes its reply FIFO and stays asleep (no CPU: no watchdog): its call is ok
    at once, and the NEXT caller's call -- another candidate's -- waits wall_s + 7 s for it (10 s at wall_s 3,
    12 s at the default 5) before its sandbox is replaced. Safe: the next call starts at once (e.g. a process not
    reported gone when the next call arrives costs its sandbox at once, and the call runs in a spare; or calls
    without an episode each take a fresh spare sandbox)."""
    box = Sandbox(limits=LIMITS, audit_hook=False)

    async def run() -> None:
        await box.start()
        try:
            lingering = await box.call(LINGER, "linger", {}, state={})
            assert lingering.ok and lingering.value == "fine", (lingering.error_kind, lingering.error)
            start = time.perf_counter()
            with anyio.move_on_after(2.5):
                nxt = await box.call(HEALTHY, "healthy", {"x": 2}, state={})
                assert nxt.ok, (nxt.error_kind, nxt.error)
            took = time.perf_counter() - start
        finally:
            await box.aclose()
        assert took < 2.0, f"another caller's call waited {took:.1f} s (stopped at 2.5 s) for a lingering process"

    _run(run)


# =========================================================================== (j) the event loop and the FIFOs

STALL = """
import os, sys, time

def deaf(state):
    g = sys._getframe(2).f_globals  # the worker module's globals
    real = g['_read_exactly']
    def header_only(fd, size):
        if size == 4:
            return real(fd, 4)
        time.sleep(3600)  # never reads the request body: the host's write of a large state finds the FIFO full
    g['_read_exactly'] = header_only
    return 'deaf'

def trickle(state):
    import struct
    reply_fd = sys._getframe(2).f_locals['reply_fd']
    os.write(reply_fd, struct.pack('>I', 50_000))
    while True:  # a reply one byte at a time, no CPU to speak of
        os.write(reply_fd, b' ')
        time.sleep(0.01)
"""


def test_holds_a_deaf_or_trickling_process_stalls_only_its_own_call(sandbox: Sandbox) -> None:
    """Two attackers at once: one whose process stops reading its request FIFO (the host writes a ~900 kB state
    into it), one whose reply trickles a byte every 10 ms. Each times out alone (its sandbox replaced); a victim
    episode's calls meanwhile answer promptly (the host's FIFO reads and writes never block its event loop)."""

    async def run() -> None:
        deaf, slow, victim = Episode(), Episode(), Episode()
        first = await sandbox.call(STALL, "deaf", {}, state={}, episode=deaf)
        assert first.ok, (first.error_kind, first.error)
        await _healthy(sandbox, victim)
        outcomes: dict[str, Any] = {}
        latencies: list[float] = []

        async def attack(name: str, episode: object, fn: str, state: dict[str, Any]) -> None:
            outcomes[name] = await sandbox.call(STALL, fn, {}, state=state, episode=episode)

        async def victim_calls() -> None:
            await anyio.sleep(0.3)
            for x in range(6):
                start = time.perf_counter()
                await _healthy(sandbox, victim, x)
                latencies.append(time.perf_counter() - start)
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(attack, "deaf", deaf, "healthy", {"big": "x" * 900_000})
            tg.start_soon(attack, "slow", slow, "trickle", dict[str, Any]())
            tg.start_soon(victim_calls)
        assert outcomes["deaf"].error_kind == "timeout" and outcomes["slow"].error_kind == "timeout", outcomes
        assert max(latencies) < 0.5, latencies
        await _healthy(sandbox, deaf)
        await _healthy(sandbox, slow)

    _run(run)


COUNTER = """
import os

def make(state, n=0):
    for i in range(n):
        with open('/tmp/f%d' % i, 'w'):
            pass
    return n

def probe(state):
    with open('/tmp/probe', 'w'):
        pass
    return {'ino': os.stat('/tmp/probe').st_ino, 'pid': os.getpid()}
"""


def test_r5_10_calls_without_an_episode_do_not_count_each_others_files_or_processes() -> None:
    """R5-10 (low). Calls without an episode get a fresh process each (R4-05) but share one sandbox: its scratch
    tmpfs numbers inodes on, and its pid namespace numbers processes on, across them. One candidate's tool code
    creates N files (emptied after its call); the next caller's tool code reads N back from the inode number of a
    new file (and the number of calls so far from its pid): a channel between synthesis candidates, and one
    candidate's behaviour depends on its predecessors'. Safe: a call without an episode sees the same numbers
    whatever calls ran before it (e.g. each takes a fresh spare sandbox)."""
    box = Sandbox(limits=LIMITS, audit_hook=False)

    async def run() -> dict[str, Any]:
        await box.start()
        try:
            first = await box.call(COUNTER, "probe", {}, state={})
            made = await box.call(COUNTER, "make", {"n": 200}, state={})
            second = await box.call(COUNTER, "probe", {}, state={})
        finally:
            await box.aclose()
        assert first.ok and made.ok and second.ok, (first.error, made.error, second.error)
        return {"first": first.value, "second": second.value}

    seen = _run(run)
    assert seen["second"]["ino"] - seen["first"]["ino"] < 200, (
        f"a later caller read an earlier caller's file count from inode numbers: {seen}")


# =========================================================================== (k) machine-wide AIO reservations

AIO = """
import builtins, ctypes, platform

_NR_IO_SETUP = {'x86_64': 206, 'aarch64': 0}[platform.machine()]

def reserve(state, events=0):
    libc = ctypes.CDLL(None, use_errno=True)
    ctx = ctypes.c_ulong(0)
    rc = libc.syscall(_NR_IO_SETUP, events, ctypes.byref(ctx))  # kept: the context lives as long as the process
    builtins.__dict__.setdefault('R5_AIO', []).append(ctx.value)
    return {'rc': rc, 'errno': ctypes.get_errno()}
"""


def _aio_nr() -> int:
    with open("/proc/sys/fs/aio-nr") as fh:
        return int(fh.read())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64") or not __import__("os").path.exists(
    "/proc/sys/fs/aio-nr"), reason="io_setup number / needs /proc/sys/fs/aio-nr")
def test_r5_11_tool_code_cannot_reserve_the_machines_aio_events(sandbox: Sandbox) -> None:
    """R5-11. io_setup (native AIO) is not filtered. Its events are reserved from ONE machine-wide pool
    (fs.aio-nr against fs.aio-max-nr, 65536 by default), whoever the caller: tool code reserves 4096 events and
    the host's aio-nr grows by 4096, held between calls in EPISODE scope. One call of io_setup(65536) (a 2 MB ring,
    well within RLIMIT_AS) takes the whole pool: io_setup then fails with EAGAIN for every process on the machine
    (databases, the host's own AIO users, every other episode) until the episode's process goes, and the exact free
    count is a channel between episodes. Here only 4096 events for a moment. Safe: the reservation is refused
    (tool filter: io_setup -> ENOSYS/EPERM, and the rest of the AIO calls with it)."""

    async def run() -> tuple[int, int, Any]:
        episode = Episode()
        before = _aio_nr()
        try:
            held = await sandbox.call(AIO, "reserve", {"events": 4096}, state={}, episode=episode)
            during = _aio_nr()
        finally:
            sandbox.end_episode(episode)
        return before, during, held

    before, during, held = _run(run)
    assert during - before < 1024, f"tool code reserved {during - before} of the machine's AIO events ({held.value})"


# =========================================================================== (l) non-finite numbers in a forged frame

INFINITE = """
import json, os, struct, sys

def forge(state):
    runner, child = sys._getframe(1), sys._getframe(2)
    nonce, reply_fd = runner.f_locals['nonce'], child.f_locals['reply_fd']
    # 1e400 is a JSON number (no NaN/Infinity literal): json.loads makes it float('inf')
    text = '{"id": "%s", "ok": true, "value": {"v": 1e400}, "truncated": false, "stdout": "", ' \\
           '"state": {"s": -1e400}, "cpu_before": 0}' % nonce
    frame = text.encode()
    os.write(reply_fd, struct.pack('>I', len(frame)) + frame)
    null = os.open('/dev/null', os.O_WRONLY)
    os.dup2(null, reply_fd)  # the runner's own frame goes nowhere
    return 'unused'
"""


def test_r5_12_a_forged_frame_cannot_put_infinity_in_a_result_or_state(sandbox: Sandbox) -> None:
    """R5-12 (low). ``_parse_reply`` refuses NaN/Infinity literals (``parse_constant``: "the worker never sends
    them"), but a number too large for a float (``1e400``) parses as ``inf`` through ``parse_float``. A forged frame
    (the call's nonce is on the stack) puts ``inf``/``-inf`` into the call's value and the episode's state: the
    runtime then serves the value unchecked (``to_call_result`` writes ``Infinity``, not JSON, to the client) and
    every later stateful call of the episode fails ``not_json`` (``json.dumps(request, allow_nan=False)``). Safe:
    the frame is refused (bad reply), e.g. ``parse_float`` that rejects non-finite results, or
    ``json.dumps(data, allow_nan=False)`` on the parsed frame."""

    async def run() -> None:
        episode = Episode()
        forged = await sandbox.call(INFINITE, "forge", {}, state={}, episode=episode)
        sandbox.end_episode(episode)
        if forged.ok:
            assert forged.value.get("v") != float("inf") and (forged.state or {}).get("s") != float("-inf"), (
                f"a forged frame put infinity in the result {forged.value} and the state {forged.state}")

    _run(run)
