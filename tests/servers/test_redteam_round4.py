"""Red team, round 4: attacks on ``ProcessScope.EPISODE`` (one process serves an episode's calls inside the
episode's own bubblewrap sandbox), through the sandbox API and through an emitted ``server.py`` driven by the
official mcp client. Audit hook off everywhere: containment must not rest on it.

Tests named ``test_r4_NN_...`` reproduce a finding (they FAIL on the code they were written against and say
what the safe behaviour is); ``test_holds_...`` are attacks that are contained (regressions). Findings,
severities and suggested fixes: /work/notes/s4/redteam4.md.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from mcp.client import Client

from astra.records import EnvironmentSpec, ToolImplementation, ToolSpec
from astra.servers import EnvironmentControl, ProcessScope, Sandbox, SandboxLimits, emit, stdio_parameters
from astra.servers._sandbox import AUDIT_HOOK_ENV, LIMITS_ENV

LIMITS = SandboxLimits(cpu_s=1, wall_s=4, memory_mb=256, max_procs=16, scratch_mb=16, file_size_mb=8,
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


async def _healthy(sandbox: Sandbox, episode: object) -> None:
    result = await sandbox.call(HEALTHY, "healthy", {"x": 4}, state={}, episode=episode)
    assert result.ok and result.value == {"double": 8}, (result.error_kind, result.error)


# =========================================================================== (a) kernel counters across episodes

# A thread of its own, created with CLONE_PIDFD: the pidfd's inode number is the task's pidfs inode, taken from
# one machine-wide counter that every process and thread creation (any episode's, the host's) advances.
PIDFD_PROBE = """
import ctypes, os
_stacks = []

def probe(state):
    libc = ctypes.CDLL(None, use_errno=True)
    stack = ctypes.create_string_buffer(1 << 16)
    _stacks.append(stack)  # the thread runs getpid() on it and exits
    top = ctypes.c_void_p(ctypes.addressof(stack) + (1 << 16) - 256)
    pidfd = ctypes.c_int(-1)
    flags = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x1000  # VM FS FILES SIGHAND THREAD SYSVSEM PIDFD
    tid = libc.clone(ctypes.cast(libc.getpid, ctypes.c_void_p), top, flags, None, ctypes.byref(pidfd), None, None)
    if tid < 0 or pidfd.value < 0:
        return {'ino': None, 'errno': ctypes.get_errno()}
    ino = os.fstat(pidfd.value).st_ino
    os.close(pidfd.value)
    return {'ino': ino}
"""
THREADS = """
import threading
def threads(state, n=0):
    for _ in range(n):
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
    return n
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="glibc clone() wrapper layout")
def test_r4_01_pidfs_inode_counter_does_not_carry_another_episodes_thread_count(sandbox: Sandbox) -> None:
    """R4-01. Episode B's tool code creates N threads; episode A's tool code reads N back from the pidfs
    inode number of a pidfd it gets from clone(CLONE_THREAD | CLONE_PIDFD) (the tool filter allows clone with
    CLONE_THREAD, whatever else is set). A timing-free, exact counter between concurrent episodes (and across
    reset: the counter is machine-wide). Safe: CLONE_PIDFD refused to tool code (no pidfd), or nothing in
    the numbers A sees moves with B's activity."""

    async def run() -> None:
        a, b = Episode(), Episode()
        await _healthy(sandbox, b)
        seen: list[Any] = []
        for n in (0, 0, 40):
            done = await sandbox.call(THREADS, "threads", {"n": n}, state={}, episode=b)
            assert done.ok, done.error
            probe = await sandbox.call(PIDFD_PROBE, "probe", {}, state={}, episode=a)
            assert probe.ok, probe.error
            seen.append(probe.value["ino"])
        if seen[0] is None:
            return  # no pidfd for tool code: contained
        quiet, busy = seen[1] - seen[0], seen[2] - seen[1]
        assert abs(busy - quiet) < 20, (
            f"episode A read episode B's thread count: {quiet} tasks created between two quiet probes, "
            f"{busy} while B created 40 threads (pidfs inode numbers {seen})")

    _run(run)


# The call's own descriptors: the request/reply pipes the host makes for every call and the channel socket the
# warm parent makes for each process: pipefs and sockfs inode numbers come from the kernel's machine-wide
# get_next_ino() counter (per-CPU batches of 1024), which every other episode's calls advance.
FD_PROBE = """
import os, stat
def probe(state):
    out = {}
    for fd in range(3, 64):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            out[str(fd)] = st.st_ino
    return out
"""


def test_r4_02_call_pipe_inode_numbers_do_not_count_another_episodes_calls(sandbox: Sandbox) -> None:
    """R4-02. The host's per-call pipes (and the parent's channel socketpair) are pipefs/sockfs inodes numbered
    from the machine-wide get_next_ino() counter: episode A's tool code fstat()s its reply pipe and reads how
    many calls other episodes made since its last call (2 pipes each; the reason pipe/pipe2 were taken from
    tool code applies to these too). Safe: the numbers A sees do not depend on B's calls."""

    async def run() -> None:
        a, b = Episode(), Episode()
        await _healthy(sandbox, b)
        seen: list[Any] = []
        for n in (0, 0, 25):
            for _ in range(n):
                await _healthy(sandbox, b)
            probe = await sandbox.call(FD_PROBE, "probe", {}, state={}, episode=a)
            assert probe.ok, probe.error
            seen.append(probe.value)
        for fd in set(seen[0]) & set(seen[1]) & set(seen[2]):
            quiet, busy = seen[1][fd] - seen[0][fd], seen[2][fd] - seen[1][fd]
            assert abs(busy - quiet) < 20, (
                f"fd {fd}: inode number moved {quiet} between quiet probes and {busy} while another episode "
                f"made 25 calls ({[s[fd] for s in seen]})")

    _run(run)


# statx() fills stx_mnt_id for any mask: with STATX_MNT_ID_UNIQUE (Linux 6.8+) the 64-bit unique id of the
# scratch tmpfs's mount, from a machine-wide counter every mount advances (each sandbox launch makes ~20).
STATX_PROBE = """
import ctypes, struct
def probe(state):
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    if libc.statx(-100, ctypes.c_char_p(b'/tmp'), 0, 0x4000, buf) != 0:
        return None
    mask, = struct.unpack_from('<I', buf.raw, 0)
    return struct.unpack_from('<Q', buf.raw, 0x90)[0] if mask & 0x4000 else None
"""
HANG = "import time\ndef hang(state):\n    time.sleep(30)\n"


def test_r4_08_mount_ids_do_not_tell_a_later_episode_what_an_earlier_one_did() -> None:
    """R4-08. Episode B's tool code times out K times (each timeout replaces its sandbox: a new bubblewrap
    launch, ~20 mounts); a LATER episode (a new episode, as after a reset) reads K back from the unique
    mount id of its scratch tmpfs (statx STATX_MNT_ID_UNIQUE: a machine-wide mount counter; the plain
    STATX_MNT_ID is a lowest-free id that counts live mounts, i.e. concurrent sandboxes; st_dev of /tmp
    likewise). Timing-free, crosses episodes sequentially. Safe: statx refused to tool code (or the ids
    seen do not move with B's sandbox replacements)."""
    limits = SandboxLimits(cpu_s=1, wall_s=0.3, max_sandboxes=8, spare_sandboxes=1,
                           process_scope=ProcessScope.EPISODE)

    async def run() -> None:
        async with Sandbox(limits=limits, audit_hook=False) as box:
            seen: list[Any] = []
            for k in (0, 0, 3):
                b = Episode()
                for _ in range(k):
                    hung = await box.call(HANG, "hang", {}, state={}, episode=b)
                    assert hung.error_kind == "timeout", hung
                box.end_episode(b)
                a = Episode()  # a new episode after B's
                probe = await box.call(STATX_PROBE, "probe", {}, state={}, episode=a)
                assert probe.ok, probe.error
                seen.append(probe.value)
                box.end_episode(a)
            if seen[0] is None:
                return  # contained
            quiet, busy = seen[1] - seen[0], seen[2] - seen[1]
            assert abs(busy - quiet) < 30, (
                f"mount ids moved {quiet} between quiet episodes and {busy} after an episode's 3 timeouts ({seen})")

    _run(run)


# sysinfo() is not namespaced: procs (every task on the machine), sharedram (every tmpfs page: each episode's
# scratch), freeram... In EPISODE scope another episode's scratch files and threads stay between its calls.
SYSINFO_PROBE = """
import ctypes, struct
def probe(state):
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    if libc.sysinfo(buf) != 0:
        return None
    fields = struct.unpack_from('<q3Q6QH', buf.raw, 0)
    unit, = struct.unpack_from('<I', buf.raw, 104) if struct.calcsize('P') == 8 else (1,)
    return {'sharedram': fields[6] * max(unit, 1), 'procs': fields[10]}
"""
FILL = """
def fill(state, mb=0):
    for i in range(mb):  # 1 MiB files (under the file-size limit)
        with open('/tmp/fill%d' % i, 'wb') as fh:
            fh.write(b'\\xa5' * (1 << 20))
    return mb
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="struct sysinfo layout (x86_64)")
def test_r4_09_sysinfo_does_not_show_another_episodes_scratch(sandbox: Sandbox) -> None:
    """R4-09. Episode B's tool code leaves 12 MiB in its scratch (it stays between B's calls in EPISODE scope);
    episode A's tool code reads it back from sysinfo().sharedram (machine-wide shmem: every sandbox's tmpfs),
    and B's held threads from sysinfo().procs. Safe: sysinfo refused to tool code (or A's view does not move
    with B's scratch)."""

    async def run() -> None:
        a, b = Episode(), Episode()
        await _healthy(sandbox, b)
        before = await sandbox.call(SYSINFO_PROBE, "probe", {}, state={}, episode=a)
        assert before.ok, before.error
        if before.value is None:
            return  # contained
        filled = await sandbox.call(FILL, "fill", {"mb": 12}, state={}, episode=b)
        assert filled.ok, filled.error
        after = await sandbox.call(SYSINFO_PROBE, "probe", {}, state={}, episode=a)
        grew = (after.value["sharedram"] - before.value["sharedram"]) / (1 << 20)
        assert grew < 6, f"episode A saw the machine's shared memory grow {grew:.1f} MiB with B's scratch file"

    _run(run)


# Scheduling and I/O priorities are per process, and the "user" queries (PRIO_USER, IOPRIO_WHO_USER) run over
# every task of the uid -- which is the host uid behind every sandbox -- but only over tasks visible in the
# caller's pid namespace: another episode's setting does not show.
PRIORITY_PROBE = """
import ctypes, platform
NR = {'x86_64': (251, 252, 140), 'aarch64': (30, 31, 141)}[platform.machine()]
def probe(state):
    libc = ctypes.CDLL(None, use_errno=True)
    return {'ioprio_user': libc.syscall(NR[1], 3, 0), 'prio_user': libc.syscall(NR[2], 2, 0)}
def lower(state):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(NR[0], 1, 0, (2 << 13) | 0)  # best-effort class, level 0: better than the default
    return libc.syscall(NR[1], 1, 0)
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="syscall numbers")
def test_holds_another_episodes_io_priority_does_not_show_in_user_wide_queries(sandbox: Sandbox) -> None:
    """(a) ioprio_get(IOPRIO_WHO_USER) / getpriority(PRIO_USER) take the best over the uid's tasks: the kernel
    skips tasks outside the caller's pid namespace, so episode B's ioprio (kept between its calls) is not
    seen by A."""

    async def run() -> None:
        a, b = Episode(), Episode()
        before = await sandbox.call(PRIORITY_PROBE, "probe", {}, state={}, episode=a)
        assert before.ok, before.error
        lowered = await sandbox.call(PRIORITY_PROBE, "lower", {}, state={}, episode=b)
        assert lowered.ok and lowered.value == (2 << 13), lowered
        after = await sandbox.call(PRIORITY_PROBE, "probe", {}, state={}, episode=a)
        assert after.value == before.value, (before.value, after.value)

    _run(run)


# Every sandbox's processes are the host's uid behind their user namespace; pending and preallocated signals are
# counted per user up the namespace chain, so one episode's POSIX timers use up the host user's RLIMIT_SIGPENDING.
TIMERS = """
import ctypes
def timers(state, n=0):
    libc = ctypes.CDLL(None, use_errno=True)
    timer = ctypes.c_void_p()
    made = 0
    while made < n and libc.timer_create(1, None, ctypes.byref(timer)) == 0:  # CLOCK_MONOTONIC, SIGALRM
        made += 1
    return made
"""


def _host_can_make_a_timer() -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    timer = ctypes.c_void_p()
    if libc.timer_create(1, None, ctypes.byref(timer)) != 0:
        return False
    libc.timer_delete(timer)
    return True


def test_r4_10_posix_timers_of_one_episode_do_not_starve_the_host_or_other_episodes(sandbox: Sandbox) -> None:
    """R4-10. Episode B's tool code creates POSIX timers until the kernel refuses (RLIMIT_SIGPENDING, counted for
    the host user that every sandbox maps to): afterwards the HOST process cannot create a timer or queue an RT
    signal, nor can any other episode -- and in EPISODE scope the timers stay between B's calls. (Also an
    exact counter: A counts the timers it can still make.) Safe: one episode's process cannot take more than a
    small share (a low RLIMIT_SIGPENDING in the child, or timer_create refused): the host and episode A can
    still make timers while B holds all it could get."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)
    if soft == resource.RLIM_INFINITY or soft > 1_000_000:
        pytest.skip("RLIMIT_SIGPENDING unlimited or too large to exhaust quickly")

    async def run() -> None:
        a, b = Episode(), Episode()
        try:
            held = await sandbox.call(TIMERS, "timers", {"n": soft + 10}, state={}, episode=b)
            assert held.ok, held.error
            host_ok = _host_can_make_a_timer()
            other = await sandbox.call(TIMERS, "timers", {"n": 10}, state={}, episode=a)
            assert other.ok, other.error
            assert host_ok and other.value == 10, (
                f"episode B holds {held.value} POSIX timers: the host can make a timer: {host_ok}; episode A "
                f"could make {other.value} of 10")
        finally:
            sandbox.end_episode(b)  # its sandbox goes, and the timers with it

    _run(run)


# =========================================================================== (b) CPU outside the call


LINGER = """
import builtins, os, resource, signal, threading, time

def start(state, secs=2.5):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)  # the per-call soft limit's signal

    def burn():
        end = time.monotonic() + secs
        while time.monotonic() < end:
            pass

    threading.Thread(target=burn, daemon=True).start()
    builtins.R4_PID = os.getpid()
    return os.getpid()

def probe(state):
    used = resource.getrusage(resource.RUSAGE_SELF)
    return {'same': getattr(builtins, 'R4_PID', None) == os.getpid(), 'cpu': used.ru_utime + used.ru_stime}
"""


def test_r4_03_a_thread_left_running_after_its_call_is_held_to_the_calls_cpu_limit(sandbox: Sandbox) -> None:
    """R4-03. A call returns at once but leaves a thread burning CPU: the parent watches the process's CPU
    clock only between the host's "call" and "idle", and the per-call soft RLIMIT_CPU's SIGXCPU is ignored,
    so the thread runs on between calls with no wall clock and no per-call limit, up to the process's
    lifetime hard limit (process_cpu_s: ten calls' worth by default; all cores when the work releases the
    GIL). Safe: CPU an episode's process uses outside its calls is stopped (or charged) within about one
    call's limit: the next call finds a fresh process or one that used at most ~cpu_s."""

    async def run() -> None:
        episode = Episode()
        started = await sandbox.call(LINGER, "start", {"secs": 2.5}, state={}, episode=episode)
        assert started.ok, started.error
        await anyio.sleep(2.7)  # no call in flight
        probe = await sandbox.call(LINGER, "probe", {}, state={}, episode=episode)
        assert probe.ok, probe.error
        limit = LIMITS.cpu_limit_s
        assert not (probe.value["same"] and probe.value["cpu"] > limit + 0.5), (
            f"the episode's process used {probe.value['cpu']:.2f} s of CPU between calls (per-call limit "
            f"{limit} s) and still serves the episode")

    _run(run)


EARLY_REPLY = """
import builtins, json, os, resource, signal, struct, sys, time

def early(state, secs=2.5):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    runner, child = sys._getframe(1), sys._getframe(2)  # _worker._run and _worker._child
    nonce, cpu_before = runner.f_locals['nonce'], runner.f_locals['cpu_before']
    reply_fd = child.f_locals['reply_fd']
    state['early'] = True
    frame = json.dumps({'id': nonce, 'ok': True, 'value': 'early', 'truncated': False, 'stdout': '',
                        'state': state, 'cpu_before': cpu_before}).encode()
    os.write(reply_fd, struct.pack('>I', len(frame)) + frame)
    null = os.open('/dev/null', os.O_WRONLY)
    os.dup2(null, reply_fd)  # the host sees the end of the reply; the runner's own reply goes nowhere
    os.close(null)
    end = time.monotonic() + secs
    while time.monotonic() < end:  # the call goes on after the host has its reply
        pass
    builtins.R4_PID = os.getpid()
    return 'late'

def probe(state):
    used = resource.getrusage(resource.RUSAGE_SELF)
    return {'same': getattr(builtins, 'R4_PID', None) == os.getpid(), 'cpu': used.ru_utime + used.ru_stime}
"""


def test_r4_04_a_call_that_replies_early_is_still_held_to_its_cpu_limit(sandbox: Sandbox) -> None:
    """R4-04. The call writes a valid frame (its nonce is on the stack), closes the reply pipe and keeps
    running: the host takes the reply, sends "idle", the parent stops watching, and the call's own thread
    burns CPU past the per-call limit (and past its wall clock: nothing times it any more). Safe: the call's
    process is stopped when it goes on after its reply (or its CPU after the reply is still bounded by the
    call's limit)."""

    async def run() -> None:
        episode = Episode()
        early = await sandbox.call(EARLY_REPLY, "early", {"secs": 2.5}, state={}, episode=episode)
        assert early.ok and early.value == "early", (early.error_kind, early.error)
        await anyio.sleep(2.7)  # the policy thinks before its next call: nothing watches the process meanwhile
        probe = await sandbox.call(EARLY_REPLY, "probe", {}, state={}, episode=episode)
        limit = LIMITS.cpu_limit_s
        assert not (probe.ok and probe.value["same"] and probe.value["cpu"] > limit + 0.5), (
            f"the call went on after its reply and used {probe.value['cpu']:.2f} s of CPU (limit {limit} s)")

    _run(run)


BURN = """
import time
def burn(state, secs=0.0):
    end = time.process_time() + secs
    while time.process_time() < end:
        pass
    return secs
"""


def test_r4_06_a_call_under_its_cpu_limit_is_never_stopped_for_cpu(sandbox: Sandbox) -> None:
    """R4-06. The child sets each call's soft RLIMIT_CPU to round(used + cpu_s) whole seconds: after earlier
    calls used 0.45 s, a call may use only ~0.55 s of its 1 s (round(1.45) == 1) and is killed by SIGXCPU,
    reported as "cpu" although it stayed under cpu_s (false failures of healthy tools, worse the more CPU the
    episode has used: up to half a second short). Safe: a call that uses less than cpu_s CPU is never
    stopped for CPU (ceil, not round)."""

    async def run() -> None:
        episode = Episode()
        first = await sandbox.call(BURN, "burn", {"secs": 0.45}, state={}, episode=episode)
        assert first.ok, first.error
        second = await sandbox.call(BURN, "burn", {"secs": 0.75}, state={}, episode=episode)
        assert second.ok, (f"a call using 0.75 s of CPU (limit {LIMITS.cpu_s:g} s) was stopped: "
                           f"{second.error_kind}: {second.error}")

    _run(run)


AFTER_THE_CALL = """
import ctypes, errno, json, os, socket, threading, time

def attempt(what, fn):
    try:
        fn()
        return 'ALLOWED'
    except BaseException as exc:
        return type(exc).__name__ + ':' + str(getattr(exc, 'errno', ''))

def start(state):
    def later():
        time.sleep(0.2)  # the call has replied; nothing of the call is running
        libc = ctypes.CDLL(None, use_errno=True)
        out = {
            'fork': attempt('fork', lambda: os.fork() == 0 and os._exit(0)),
            'socket': attempt('socket', lambda: socket.socket(socket.AF_UNIX)),
            'pipe': attempt('pipe', os.pipe),
            'exec': attempt('exec', lambda: os.execv('/bin/sh', ['sh'])),
            'host_write': attempt('host_write', lambda: open('/usr/lib/r4-owned', 'w')),
            'kill_parent': attempt('kill_parent', lambda: os.kill(os.getppid(), 9)),
            'exec_mapping': 'ALLOWED' if libc.mmap(None, 4096, 7, 0x22, -1, 0) not in (-1, ctypes.c_void_p(-1).value)
                            else 'refused',
        }
        with open('/tmp/after.json', 'w') as fh:
            json.dump(out, fh)

    threading.Thread(target=later, daemon=True).start()
    return 'started'

def collect(state):
    with open('/tmp/after.json') as fh:
        return json.load(fh)
"""


def test_holds_a_thread_left_after_its_call_is_as_confined_as_the_call(sandbox: Sandbox) -> None:
    """(d) EPISODE scope keeps the process (and its threads) between calls: a thread that acts after its call
    replied is under the same tool filter (no fork, exec, socket, pipe, kill, executable mapping, host write)."""

    async def run() -> None:
        episode = Episode()
        started = await sandbox.call(AFTER_THE_CALL, "start", {}, state={}, episode=episode)
        assert started.ok, started.error
        await anyio.sleep(0.5)
        seen = await sandbox.call(AFTER_THE_CALL, "collect", {}, state={}, episode=episode)
        assert seen.ok, seen.error
        assert not [k for k, v in seen.value.items() if v == "ALLOWED"], seen.value
        await _healthy(sandbox, episode)

    _run(run)


FORGED_CPU = """
import json, os, struct, sys, builtins
def forge(state, cpu=None):
    runner, child = sys._getframe(1), sys._getframe(2)
    nonce, reply_fd = runner.f_locals['nonce'], child.f_locals['reply_fd']
    builtins.R4_FORGED = os.getpid()
    frame = json.dumps({'id': nonce, 'ok': True, 'value': 'forged', 'truncated': False, 'stdout': '',
                        'state': state, 'cpu_before': cpu}).encode()
    os.write(reply_fd, struct.pack('>I', len(frame)) + frame)
    null = os.open('/dev/null', os.O_WRONLY)
    os.dup2(null, reply_fd)  # the host sees the end of the reply; the runner's own reply goes nowhere
    os.close(null)
    return 'unused'

def same(state):
    return getattr(builtins, 'R4_FORGED', None) == os.getpid()
"""


@pytest.mark.parametrize("cpu", ["nan", -1e300, 1e300, "9" * 4000, [1, 2], {"a": 1}, True, None])
def test_holds_a_forged_cpu_before_never_breaks_the_host(sandbox: Sandbox, cpu: Any) -> None:
    """(b) ``cpu_before`` comes from the child's frame, which tool code can forge: whatever it says, the host
    answers, and the episode's next call is healthy (unparsable or huge values renew the process)."""

    async def run() -> None:
        episode = Episode()
        forged = await sandbox.call(FORGED_CPU, "forge", {"cpu": cpu}, state={}, episode=episode)
        assert forged.ok and forged.value == "forged", (forged.error_kind, forged.error)
        kept = await sandbox.call(FORGED_CPU, "same", {}, state={}, episode=episode)
        if not kept.ok:
            # the forger replied before its call ended and then cut the reply FIFO: the host may give the
            # episode's next call to that process before it sees the cut; that call fails cleanly (its own
            # episode only) and the process is renewed
            assert kept.error_kind == "bad_reply", kept
            kept = await sandbox.call(FORGED_CPU, "same", {}, state={}, episode=episode)
            assert kept.ok and kept.value is False, kept
        if isinstance(cpu, (list, dict)) or cpu == 1e300:
            assert kept.value is False  # renewed
        await _healthy(sandbox, episode)

    _run(run)


# =========================================================================== the synthesis pipeline's calls

PLANT = "import builtins\ndef plant(x=0):\n    builtins.helper = lambda v: v * 1000\n    return x\n"
USE = "def use(x=0):\n    return helper(x)\n"


def test_r4_05_synthesis_candidates_never_see_each_others_interpreter_state(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """R4-05. The environment pipeline verifies each model-written candidate tool with
    ``SandboxRunner.call`` -> ``Sandbox.call(source, name, arguments)`` (no episode): every call shares the
    sandbox's default episode, and with the EPISODE default one process now runs every candidate of the run
    (other questions', other attempts'). A candidate that only works because an earlier one defined a helper
    (or patched a builtin) is verified and shipped; a hostile one can skew every later verification. Safe:
    each verification call runs as its own episode (or in ProcessScope.CALL): ``use`` fails with NameError."""
    from astra.synthesis.environments._models import EnvironmentPipelineConfig
    from astra.synthesis.environments._sandbox import SandboxRunner

    monkeypatch.setenv(AUDIT_HOOK_ENV, "0")
    config = EnvironmentPipelineConfig(run_dir=tmp_path / "run", concurrency=1, sandbox_timeout_s=3)

    async def run() -> None:
        async with SandboxRunner(config, size=1) as runner:
            planted = await runner.call(PLANT, "plant", {"x": 1})
            assert planted.ok, planted.error
            used = await runner.call(USE, "use", {"x": 7})
            assert not used.ok and used.error_kind == "exception" and "NameError" in (used.error or ""), (
                f"a later candidate ran with an earlier candidate's helper: {used.ok} {used.value!r}")

    _run(run)



# =========================================================================== through an emitted server

SERVED_LIMITS = {"cpu_s": 1, "wall_s": 4, "max_sandboxes": 16, "spare_sandboxes": 2, "process_scope": "episode"}
MARK = """
import builtins, os
def mark(state, x=0):
    builtins.R4 = x
    with open('/tmp/r4', 'w') as fh:
        fh.write(str(x))
    state['n'] = state.get('n', 0) + 1
    return {'pid': os.getpid()}
"""
LOOK = """
import builtins, os
def look(state, x=0):
    try:
        with open('/tmp/r4') as fh:
            text = fh.read()
    except OSError:
        text = None
    return {'global': getattr(builtins, 'R4', None), 'file': text, 'files': sorted(os.listdir('/tmp'))}
"""
DEEP = """
import builtins
def deep(state, x=0):
    builtins.R4 = 'from a failed call'
    with open('/tmp/r4', 'w') as fh:
        fh.write('from a failed call')
    state['n'] = -1
    value = []
    for _ in range(150):
        value = [value]
    return value
"""
HOG = """
import builtins, signal, threading, time, zlib
def hog(state, x=0):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    builtins.R4 = 'hog'
    state['n'] = -1000
    blob = bytes(range(256)) * 4096

    def spin():
        while True:
            zlib.compress(blob, 9)  # releases the GIL: all cores

    for _ in range(3):
        threading.Thread(target=spin, daemon=True).start()
    spin()
"""
MEMBOMB = """
import builtins
def membomb(state, x=0):
    builtins.R4 = 'membomb'
    with open('/tmp/r4', 'w') as fh:
        fh.write('membomb')
    state['n'] = -5
    return len(bytearray(1 << 30))
"""
BADFRAME = """
import builtins, os, sys
def badframe(state, x=0):
    builtins.R4 = 'badframe'
    with open('/tmp/r4', 'w') as fh:
        fh.write('badframe')
    state['n'] = -7
    os.write(sys._getframe(2).f_locals['reply_fd'], b'\\x00\\x00\\x00\\x02{}garbage')
    return 'ok'
"""
LINGER_WRITER = """
import builtins, threading, time
def linger(state, x=0):
    builtins.R4 = 'linger'

    def write():
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            try:
                with open('/tmp/r4', 'w') as fh:
                    fh.write('linger')
                with open('/tmp/r4-%d' % int(time.monotonic() * 1000), 'w') as fh:
                    fh.write('x')
            except OSError:
                pass
            time.sleep(0.005)

    threading.Thread(target=write, daemon=True).start()
    state['n'] = state.get('n', 0) + 1
    return 'started'
"""


def _tool(name: str, source: str, output_schema: dict[str, Any] | None = None) -> ToolImplementation:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    return ToolImplementation(spec=ToolSpec(server="round4", name=name, description=name, input_schema=schema,
                                            output_schema=output_schema),
                              source=source, entrypoint=name, stateful=True)


class Served:
    """An emitted server.py over stdio (the official mcp client); ``episode()`` opens one more episode."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, client: Client) -> None:
        self.portal, self.client = portal, client

    def run(self, fn: Any) -> Any:
        async def go() -> Any:
            with anyio.fail_after(30):
                return await fn()

        return self.portal.call(go)

    def episode(self) -> EnvironmentControl:
        control = EnvironmentControl(self.client)
        self.run(control.open)
        return control

    def call(self, control: EnvironmentControl, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.run(lambda: control.call_tool(tool, arguments or {}))

    def state(self, control: EnvironmentControl) -> Any:
        async def go() -> Any:
            return (await control.state()).state

        return self.run(go)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tools = [_tool("mark", MARK), _tool("look", LOOK), _tool("deep", DEEP), _tool("hog", HOG),
             _tool("linger", LINGER_WRITER), _tool("healthy", HEALTHY), _tool("membomb", MEMBOMB),
             _tool("badframe", BADFRAME),
             _tool("pidfd", PIDFD_PROBE.replace("def probe(state):", "def pidfd(state, x=0):")),
             _tool("threads", THREADS.replace("def threads(state, n=0):", "def threads(state, x=0):\n    n = x")),
             _tool("sysinfo", SYSINFO_PROBE.replace("def probe(state):", "def sysinfo(state, x=0):")),
             _tool("fill", FILL.replace("def fill(state, mb=0):", "def fill(state, x=0):\n    mb = x"))]
    spec = EnvironmentSpec(id="env-round4", name="round4", tools=tools, initial_state={"n": 0})
    directory = emit(spec, tmp_path_factory.mktemp("round4") / "server")
    params = stdio_parameters(directory)
    params.env = {**(params.env or {}), AUDIT_HOOK_ENV: "0", LIMITS_ENV: json.dumps(SERVED_LIMITS)}
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(Client(params)) as client:
        yield Served(portal, client)


def test_holds_concurrent_episodes_share_no_interpreter_or_scratch(served: Served) -> None:
    """Two open episodes of one server: what one leaves in its process and scratch (documented to persist
    within the episode) never shows in the other."""
    a, b = served.episode(), served.episode()
    assert not served.call(a, "mark", {"x": 7}).is_error
    seen_a = served.call(a, "look").structured_content
    assert seen_a["global"] == 7 and seen_a["file"] == "7"  # persists within the episode (documented)
    seen_b = served.call(b, "look").structured_content
    assert seen_b["global"] is None and seen_b["file"] is None and seen_b["files"] == [], seen_b


def test_holds_reset_and_restore_renew_the_process_and_scratch_even_with_a_lingering_writer(served: Served) -> None:
    """A thread left writing into scratch between calls: restore (snapshot) and reset still give a process
    without the earlier calls' globals and an empty scratch (the thread goes with its process)."""
    a = served.episode()
    assert not served.call(a, "mark", {"x": 1}).is_error
    snap = served.run(a.snapshot).snapshot_id
    assert not served.call(a, "linger").is_error
    served.run(lambda: anyio.sleep(0.1))
    assert served.call(a, "look").structured_content["file"] == "linger"
    served.run(lambda: a.restore(snapshot_id=snap))
    after = served.call(a, "look").structured_content
    assert after["global"] is None and after["file"] is None and after["files"] == [], after
    served.run(lambda: anyio.sleep(0.1))  # the writer would have written again by now
    assert served.call(a, "look").structured_content["files"] == []
    assert not served.call(a, "linger").is_error
    served.run(a.reset)
    served.run(lambda: anyio.sleep(0.1))
    fresh = served.call(a, "look").structured_content
    assert fresh["global"] is None and fresh["files"] == [], fresh
    assert served.state(a) == {"n": 0}


def test_holds_a_cpu_hog_ignoring_sigxcpu_on_all_cores_is_stopped_and_leaves_nothing(served: Served) -> None:
    """Four GIL-free threads, SIGXCPU ignored: the parent's watchdog kills the process at the call's CPU
    limit; the state is unchanged, and the next call runs in a fresh process (no global of the hog)."""
    a = served.episode()
    assert not served.call(a, "mark", {"x": 3}).is_error
    hog = served.call(a, "hog")
    assert hog.is_error and "CPU" in hog.content[0].text, hog.content
    assert served.state(a) == {"n": 1}
    after = served.call(a, "look").structured_content
    assert after["global"] is None and after["file"] is None, after
    healthy = served.call(a, "healthy", {"x": 4})
    assert not healthy.is_error and healthy.structured_content == {"double": 8}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="clone() wrapper layout, struct sysinfo (x86_64)")
def test_r4_01_r4_09_through_an_emitted_server(served: Served) -> None:
    """R4-01 and R4-09 between two MCP episodes of one emitted server (and across a reset of the reader):
    B's thread count comes back through A's pidfs inode numbers, B's scratch through A's sysinfo()."""
    a, b = served.episode(), served.episode()

    def pidfs() -> Any:
        return served.call(a, "pidfd").structured_content["ino"]

    def shared() -> Any:
        value = served.call(a, "sysinfo").structured_content
        return None if value is None else value.get("sharedram")

    problems: list[str] = []
    first, second = pidfs(), pidfs()
    assert not served.call(b, "threads", {"x": 40}).is_error
    served.run(a.reset)  # the reader's episode is reset in between: a new sandbox
    third = pidfs()
    if first is not None and abs((third - second) - (second - first)) >= 20:
        problems.append(f"pidfs inode numbers {first}, {second}, {third}: B's 40 threads show")
    before = shared()
    assert not served.call(b, "fill", {"x": 12}).is_error
    after = shared()
    if before is not None and (after - before) >= 6 << 20:
        problems.append(f"sysinfo sharedram grew {(after - before) / (1 << 20):.1f} MiB with B's scratch")
    assert not problems, problems


@pytest.mark.parametrize("tool", ["membomb", "badframe"])
def test_holds_a_failed_call_leaves_nothing_in_the_episode(served: Served, tool: str) -> None:
    """(b) A call the sandbox fails (MemoryError; a forged, bad reply frame) renews the episode's process:
    the state is unchanged and the next call sees none of the failed call's globals or scratch files."""
    a = served.episode()
    assert not served.call(a, "mark", {"x": 9}).is_error
    failed = served.call(a, tool)
    assert failed.is_error, failed.content
    assert served.state(a) == {"n": 1}
    after = served.call(a, "look").structured_content
    assert after["global"] is None and after["file"] is None and after["files"] == [], after
    healthy = served.call(a, "healthy", {"x": 4})
    assert not healthy.is_error and healthy.structured_content == {"double": 8}


def test_r4_07_a_call_the_runtime_fails_leaves_nothing_in_the_episodes_process(served: Served) -> None:
    """R4-07. The sandbox renews the process after a call IT sees fail; the runtime can still fail a call the
    sandbox passed (a result nested deeper than MAX_JSON_DEPTH: bad_output; a result off its output schema).
    The state change is dropped, but what the failed call left in the interpreter and scratch stays and the
    episode's next call sees it. Safe: a failed call leaves nothing (the process is renewed, as for any
    other failed call)."""
    a = served.episode()
    assert not served.call(a, "mark", {"x": 5}).is_error
    failed = served.call(a, "deep")
    assert failed.is_error, failed.content
    assert served.state(a) == {"n": 1}  # the state change is dropped
    after = served.call(a, "look").structured_content
    assert after["global"] != "from a failed call" and after["file"] != "from a failed call", (
        f"the failed call's globals/scratch reached the next call: {after}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
