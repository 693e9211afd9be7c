"""The host side of the sandbox: what tool code can do to the host through what it shares with it
(advisory locks on the runtime files it sees, the event loop that parses its replies, the memory an
episode holds, what the runtime view exposes), and control requests racing a call of the same episode.
The audit hook is off: containment must not rest on it."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError

from astra.records import EnvironmentSpec, ToolImplementation, ToolSpec
from astra.servers import (
    EnvironmentControl,
    EnvironmentRuntime,
    Sandbox,
    SandboxLimits,
    _sandbox,
    build_server,
    emit,
)
from astra.servers._runtime import DEFAULT_EPISODE
from astra.servers._sandbox import _WORKER

LIMITS = SandboxLimits(cpu_s=2, wall_s=4, memory_mb=256, max_output_bytes=4096, max_result_bytes=100_000)
OS_FILE = os.path.realpath(os.__file__)  # the base stdlib's os.py: the sandbox sees the host's inode
WORKER_FILE = str(_WORKER.resolve())  # bound at /astra/_worker.py


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(limits=LIMITS, audit_hook=False)
    anyio.run(box.start)
    assert box.isolation["bubblewrap"] and box.isolation["seccomp"] and not box.isolation["audit_hook"]
    yield box
    anyio.run(box.aclose)


# --------------------------------------------------------------------------- advisory locks

_OFD = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid

LOCKER = f"""
import fcntl, os, struct, time

def lock(paths, hold_s):
    done = []
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: the host holds it
        done.append('flock')
        fcntl.lockf(fd, fcntl.LOCK_SH)  # POSIX read lock, F_SETLKW
        done.append('posix')
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack({_OFD!r}, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
        done.append('ofd')
    time.sleep(hold_s)
    return done
"""


def _contend(fd: int) -> None:
    """Take and release, without waiting, every kind of exclusive advisory lock on ``fd`` (opened
    read-write) from this host process (BlockingIOError when one is held elsewhere)."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.lockf(fd, fcntl.LOCK_UN)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_OFD, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_OFD, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))


def test_tool_code_cannot_wait_on_a_lock_the_host_holds(sandbox: Sandbox) -> None:
    """The host holds exclusive locks on runtime files the sandbox sees (flock, and a POSIX write lock,
    which conflicts with POSIX and OFD read locks alike); tool code asking for locks (blocking) is not
    made to wait: its lock requests never reach the host's inodes."""
    fds = [os.open(WORKER_FILE, os.O_RDWR), os.open(OS_FILE, os.O_RDONLY)]
    try:
        fcntl.flock(fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fds[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = anyio.run(lambda: sandbox.call(LOCKER, "lock", {"paths": ["/astra/_worker.pyc", OS_FILE],
                                                                 "hold_s": 0}))
    finally:
        for fd in fds:
            os.close(fd)
    assert result.ok, result
    assert result.value == ["flock", "posix", "ofd"] * 2


def test_a_lock_taken_by_tool_code_does_not_stall_host_processes(sandbox: Sandbox) -> None:
    """Tool code locks the runtime files and holds them; a host process contending for the same
    files (flock, POSIX and OFD write locks, non-blocking) gets every lock while the call runs."""

    async def run() -> tuple[Any, list[str], int]:
        refused: list[str] = []
        attempts = 0
        finished = anyio.Event()
        result: Any = None

        async def call() -> None:
            nonlocal result
            result = await sandbox.call(LOCKER, "lock", {"paths": ["/astra/_worker.pyc", OS_FILE], "hold_s": 1.5})
            finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            while not finished.is_set():
                await anyio.sleep(0.05)
                for path, mode in ((WORKER_FILE, os.O_RDWR), (OS_FILE, os.O_RDONLY)):
                    fd = os.open(path, mode)
                    try:
                        attempts += 1
                        if mode == os.O_RDWR:
                            _contend(fd)
                        else:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            fcntl.flock(fd, fcntl.LOCK_UN)
                    except BlockingIOError as exc:
                        refused.append(f"{path}: {exc}")
                    finally:
                        os.close(fd)
        return result, refused, attempts

    result, refused, attempts = anyio.run(run)
    assert result.ok and result.value == ["flock", "posix", "ofd"] * 2, result
    assert attempts >= 10  # the host tried all along the 1.5 s the tool held its locks
    assert refused == []


def test_locks_on_scratch_files_still_work_for_tool_code(sandbox: Sandbox) -> None:
    """Legit code locking its own scratch file (fcntl.lockf for writing, flock, filelock-style
    non-blocking attempts) runs as before: the lock calls succeed."""
    source = (
        "import fcntl, os\n"
        "def scratch():\n"
        "    with open('/tmp/data.txt', 'w') as fh:\n"
        "        fcntl.lockf(fh, fcntl.LOCK_EX)\n"
        "        fh.write('x')\n"
        "        fcntl.lockf(fh, fcntl.LOCK_UN)\n"
        "    fd = os.open('/tmp/data.txt', os.O_RDONLY)\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    fcntl.flock(fd, fcntl.LOCK_UN)\n"
        "    os.close(fd)\n"
        "    return open('/tmp/data.txt').read()\n"
    )
    result = anyio.run(lambda: sandbox.call(source, "scratch", {}))
    assert result.ok and result.value == "x", result


# --------------------------------------------------------------------------- kernel objects shared beyond a call

SYSCALLS = """
import ctypes, errno, os

def probe():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def call(number, *args):
        ctypes.set_errno(0)
        result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
        return errno.errorcode.get(ctypes.get_errno(), 'OK') if result == -1 else 'OK'

    return {
        'shmget': call(29, 0, 4096, 0o1000 | 0o600),  # IPC_PRIVATE, IPC_CREAT
        'msgget': call(68, 0, 0o1000 | 0o600),
        'semget': call(64, 0, 1, 0o1000 | 0o600),
        'mq_open': call(240, ctypes.addressof(ctypes.create_string_buffer(b'q')), 0o100 | 2, 0o600, 0),
        'inotify_init1': call(294, 0),
        'statmount': call(457, 0, 0, 0, 0),
        'listmount': call(458, 0, 0, 0, 0),
        'future': call(500, 0),
        'close_range': call(436, 1000, 1001, 0),  # allowed: closes nothing here
    }
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers below 424 are x86_64's")
def test_ipc_inotify_and_new_syscalls_are_refused(sandbox: Sandbox) -> None:
    """SysV IPC and message queues (data and memory outliving the call, executable shm), inotify on the
    host's inodes, and syscalls newer than the filter (statmount lists host paths) never reach the kernel."""
    result = anyio.run(lambda: sandbox.call(SYSCALLS, "probe", {}))
    assert result.ok, result
    assert result.value == {
        "shmget": "EACCES", "msgget": "EACCES", "semget": "EACCES", "mq_open": "EACCES", "inotify_init1": "EACCES",
        "statmount": "ENOSYS", "listmount": "ENOSYS", "future": "ENOSYS", "close_range": "OK",
    }


# --------------------------------------------------------------------------- control requests racing a call

SLOW_ADD = ("import time\n\ndef slow_add(state, amount):\n    time.sleep(0.6)\n    state['n'] += amount\n"
            "    return state['n']\n")


def _spec(tools: list[tuple[str, str, bool]], initial_state: dict[str, Any]) -> EnvironmentSpec:
    impls = []
    for name, source, stateful in tools:
        schema = {"type": "object", "properties": {"amount": {"type": "integer"}, "size": {"type": "integer"}}}
        impls.append(ToolImplementation(spec=ToolSpec(server="host", name=name, description=name, input_schema=schema),
                                        source=source, stateful=stateful))
    return EnvironmentSpec(id="env-host", name="host", tools=impls, initial_state=initial_state)


async def _until_in_flight(runtime: EnvironmentRuntime, handle: str) -> None:
    with anyio.fail_after(30):
        while handle not in runtime._episodes or not runtime._episodes[handle].lock.locked():
            await anyio.sleep(0.01)


@pytest.mark.parametrize("sandboxed", [False, True], ids=["in_process", "sandboxed"])
@pytest.mark.parametrize("how", ["state", "snapshot"])
def test_restore_waits_for_the_call_in_flight(sandboxed: bool, how: str) -> None:
    """astra/restore sent while a call of the same episode runs is applied after the call commits, so
    it is not overwritten by a state computed from the pre-restore one; the call log matches."""
    server = build_server(_spec([("slow_add", SLOW_ADD, True)], {"n": 0}), sandboxed=sandboxed, limits=LIMITS)
    runtime = server.runtime

    async def run() -> tuple[Any, Any, Any, Any]:
        async with Client(server) as client:
            control = EnvironmentControl(client)
            handle = await control.open()
            snap = await control.snapshot()  # n = 0, no calls
            results: dict[str, Any] = {}

            async def call() -> None:
                results["call"] = await control.call_tool("slow_add", {"amount": 10})

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await _until_in_flight(runtime, handle)
                if how == "state":
                    results["restored"] = await control.restore(state={"n": 100})
                else:
                    results["restored"] = await control.restore(snapshot_id=snap.snapshot_id)
            final = await control.state()
            return results["call"], results["restored"], final.state, final.calls

    call, restored, state, calls = anyio.run(run)
    assert not call.is_error and call.structured_content == {"result": 10}, call
    if how == "state":
        assert restored == {"n": 100} and state == {"n": 100}
        assert [c["tool"] for c in calls] == ["slow_add"]  # the call happened, then the restore
    else:
        assert restored == {"n": 0} and state == {"n": 0}
        assert calls == []  # back to the snapshot's call log: the call came before the restore
    anyio.run(runtime.aclose)


def test_snapshot_waits_for_the_call_in_flight() -> None:
    """astra/snapshot during a call saves the state the call commits, with the call in its log."""
    server = build_server(_spec([("slow_add", SLOW_ADD, True)], {"n": 0}), sandboxed=False)
    runtime = server.runtime

    async def run() -> tuple[Any, Any, Any]:
        async with Client(server) as client:
            control = EnvironmentControl(client)
            handle = await control.open()
            snaps: list[Any] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(control.call_tool, "slow_add", {"amount": 5})
                await _until_in_flight(runtime, handle)
                snaps.append(await control.snapshot())
            await control.call_tool("slow_add", {"amount": 1})
            restored = await control.restore(snapshot_id=snaps[0].snapshot_id)
            return snaps[0].state, restored, (await control.state()).calls

    saved, restored, calls = anyio.run(run)
    assert saved == {"n": 5} and restored == {"n": 5}
    assert [c["arguments"] for c in calls] == [{"amount": 5}]


def test_in_process_restore_refuses_while_a_call_is_in_flight() -> None:
    server = build_server(_spec([("slow_add", SLOW_ADD, True)], {"n": 0}), sandboxed=False)
    runtime = server.runtime
    errors: list[str] = []

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.call, "slow_add", {"amount": 3})
            await _until_in_flight(runtime, DEFAULT_EPISODE)
            try:
                runtime.restore(state={"n": 100})
            except RuntimeError as exc:
                errors.append(str(exc))
        runtime.restore(state={"n": 100})  # fine once the call has returned

    anyio.run(run)
    assert errors and "in flight" in errors[0]
    assert runtime.state() == {"n": 100}


# --------------------------------------------------------------------------- memory per episode

BIG_RESULT = "def big(size):\n    return 'x' * size\n"
GROW = "def grow(state, size):\n    state['blob'] = 'y' * size\n    return len(state['blob'])\n"


def test_the_call_log_stays_within_the_episode_budget() -> None:
    """Many calls with large results: the oldest records lose their payloads, then go whole; what the
    episode holds stays within its budget (measured by tracemalloc), and the counts stay right."""
    budget = 200_000
    server = build_server(_spec([("big", BIG_RESULT, False)], {}), sandboxed=False, episode_memory_bytes=budget)
    runtime = server.runtime

    async def calls(n: int) -> None:
        for _ in range(n):
            outcome = await runtime.call("big", {"size": 20_000})
            assert outcome.ok and len(outcome.value) == 20_000

    anyio.run(calls, 5)
    assert [c.get("evicted") for c in runtime.calls()] == [None] * 5  # under budget: everything kept
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        anyio.run(calls, 400)  # 8 MB of results; unbounded, the log would keep them all
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 3 * budget, held
    log = runtime.calls()
    episode = runtime.episode()
    assert episode.n_calls == 405 and episode.calls_dropped + len(log) == 405
    kept = [c for c in log if not c.get("evicted")]
    assert kept and all(c["value"] == "x" * 20_000 for c in kept)  # the newest keep their payloads
    assert log[-1] is kept[-1]
    assert len(json.dumps(log)) <= budget + 1000
    evicted = [c for c in log if c.get("evicted")]
    assert all(c["arguments"] is None and c["value"] is None and c["tool"] == "big" and c["ok"] for c in evicted)


def test_records_are_dropped_whole_once_only_payloadless_ones_are_left() -> None:
    budget = 30_000
    server = build_server(_spec([("big", BIG_RESULT, False)], {}), sandboxed=False, episode_memory_bytes=budget)

    async def run() -> tuple[Any, Any]:
        async with Client(server) as client:
            control = EnvironmentControl(client)
            await control.open()
            for _ in range(300):
                assert not (await control.call_tool("big", {"size": 10})).is_error
            return await control.state(), control

    final, _control = anyio.run(run)
    assert final.calls_dropped > 0
    assert final.calls_dropped + len(final.calls) == 300
    assert len(json.dumps(final.calls)) <= budget


def test_snapshots_beyond_the_budget_are_refused_and_restore_keeps_the_counts() -> None:
    budget = 100_000
    server = build_server(_spec([("grow", GROW, True), ("big", BIG_RESULT, False)], {"blob": ""}),
                          sandboxed=False, episode_memory_bytes=budget)

    async def run() -> tuple[list[Any], Any, Any, Any, Any]:
        async with Client(server) as client:
            control = EnvironmentControl(client)
            await control.open()
            assert not (await control.call_tool("grow", {"size": 30_000})).is_error
            snaps = [await control.snapshot() for _ in range(3)]  # ~90 000 characters of snapshots
            with pytest.raises(MCPError) as refused:
                await control.snapshot()
            for _ in range(50):  # the call log gives way to the snapshots
                assert not (await control.call_tool("big", {"size": 1000})).is_error
            before = await control.state()
            restored = await control.restore(snapshot_id=snaps[0].snapshot_id)
            after = await control.state()
            await control.reset()
            again = await control.snapshot()  # a reset frees the budget
            return snaps, refused.value, (before, after), restored, again

    snaps, refused, (before, after), restored, again = anyio.run(run)
    assert len(snaps) == 3 and refused.error.data == {"reason": "snapshot_capacity"}
    assert "memory budget" in refused.error.message
    assert before.calls_dropped + len(before.calls) == 51
    assert len(json.dumps(before.calls)) + 3 * 30_000 <= budget + 1000
    assert restored == {"blob": "y" * 30_000}
    # back to the snapshot's log: the one grow call (its record possibly without its payload)
    assert after.calls_dropped + len(after.calls) == 1
    assert again.snapshot_id


# --------------------------------------------------------------------------- forged frames and the event loop

FORGE = """
import json, os, stat, struct, sys

def _send(reply):
    frame_obj = sys._getframe(1)
    nonce = None
    while frame_obj is not None and nonce is None:
        nonce = frame_obj.f_locals.get('nonce')
        frame_obj = frame_obj.f_back
    data = json.dumps({'id': nonce, **reply}).encode()
    frame = struct.pack('>I', len(data)) + data
    for fd in range(3, 64):  # the reply pipe: the one write end among the pipes
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            view = memoryview(frame)
            while view:
                view = view[os.write(fd, view):]
            os.close(fd)
            break
        except OSError:
            pass
    os._exit(0)

def forge(state, size):
    _send({'ok': True, 'value': 1, 'state': {'blob': 'v' * size}, 'stdout': 'o' * size})

def forge_surrogate(state, size=0):
    _send({'ok': True, 'value': '\\ud800', 'state': state, 'stdout': ''})

def bump(state, size=0):
    state['n'] += 1
    return state['n']
"""


class _LoadsSpy:
    """The json module as ``_sandbox`` sees it, recording the length of every text it parses."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    def loads(self, text: Any, **kwargs: Any) -> Any:
        self.sizes.append(len(text))
        return json.loads(text, **kwargs)


def test_forged_frames_beyond_what_the_worker_writes_are_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """While one episode floods the host with forged frames at the reply cap, the host refuses them
    unparsed (bad_reply) and another episode's calls keep completing, correct and in order."""
    spy = _LoadsSpy()
    monkeypatch.setattr(_sandbox, "json", spy)
    impls = [ToolImplementation(spec=ToolSpec(server="host", name=name, description=name,
                                              input_schema={"type": "object", "properties": {"size": {}}}),
                                source=FORGE, entrypoint=name, stateful=True)
             for name in ("forge", "forge_surrogate", "bump")]
    spec = EnvironmentSpec(id="env-forge", name="forge", tools=impls, initial_state={"n": 0})
    server = build_server(spec, limits=LIMITS)
    runtime = server.runtime
    most = _sandbox._frame_characters(runtime.limits)
    hostile, healthy = runtime.new_episode(), runtime.new_episode()
    done: list[str] = []
    bumps: list[Any] = []

    async def flood() -> None:
        for _ in range(3):  # ~2 x 6 MB characters: ~1.4x the most the worker writes under LIMITS, under the cap
            outcome = await runtime.call("forge", {"size": 6_000_000}, episode_id=hostile)
            assert not outcome.ok and outcome.error_kind == "bad_reply", outcome
            assert "more than" in (outcome.error or ""), outcome
        done.append("flood")

    async def serve() -> None:
        while not done:
            outcome = await runtime.call("bump", {}, episode_id=healthy)
            bumps.append(outcome.value if outcome.ok else outcome)

    async def run() -> Any:
        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            tg.start_soon(serve)
        return await runtime.call("forge_surrogate", {}, episode_id=hostile)

    surrogate = anyio.run(run)
    anyio.run(runtime.aclose)
    assert bumps and bumps == list(range(1, len(bumps) + 1)), bumps[:5]  # every call served, in order
    assert runtime.state(hostile) == {"n": 0}
    assert spy.sizes and max(spy.sizes) <= most, (max(spy.sizes), most)  # nothing bigger was parsed
    assert not surrogate.ok and surrogate.error_kind == "bad_reply" and "not valid Unicode" in (surrogate.error or "")


# --------------------------------------------------------------------------- the runtime view

VIEW = """
import os

def view(paths):
    seen = {}
    for path in paths:
        try:
            with open(path, 'rb') as fh:
                seen[path] = 'read %d bytes' % len(fh.read(64))
        except OSError as exc:
            seen[path] = type(exc).__name__
    listing = {}
    for directory in ('/usr/lib', '/usr', '/'):
        try:
            listing[directory] = sorted(os.listdir(directory))
        except OSError as exc:
            listing[directory] = type(exc).__name__
    return {'seen': seen, 'listing': listing}

def uses_the_stdlib():
    import bz2, datetime, decimal, hashlib, lzma, uuid, xml.etree.ElementTree as ET, zlib, zoneinfo
    paris = datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))
    return [paris.isoformat(), len(str(uuid.uuid4())), lzma.decompress(lzma.compress(b'x')).decode(),
            bz2.decompress(bz2.compress(b'y')).decode(), zlib.decompress(zlib.compress(b'z')).decode(),
            hashlib.sha256(b'').hexdigest()[:8], str(decimal.Decimal(1) / 4), ET.fromstring('<a>b</a>').text]
"""


def _unneeded_host_files() -> list[str]:
    """Host files the interpreter does not need: under /usr/lib (beside what it maps) and in the base
    standard library's site-packages / dist-packages."""
    bound = set(_sandbox._runtime_binds())
    found: list[str] = []
    for root, _dirs, files in os.walk("/usr/lib"):
        for name in sorted(files):
            path = os.path.join(root, name)
            if path not in bound and os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
                found.append(path)
                break
        if len(found) >= 5:
            break
    stdlib = os.path.dirname(OS_FILE)
    for name in ("site-packages", "dist-packages"):
        for root, _dirs, files in os.walk(os.path.join(stdlib, name)):
            found += [os.path.join(root, f) for f in sorted(files)[:2]]
            break
    return found


def test_the_runtime_view_holds_what_the_interpreter_needs_only(sandbox: Sandbox) -> None:
    """Files under /usr/lib that the interpreter does not map, and the base stdlib's site-packages,
    cannot be read; /usr/lib lists only what was resolved; the stdlib modules tools use still work."""
    unneeded = _unneeded_host_files()
    assert unneeded, "no host file outside the runtime to look for"
    result = anyio.run(lambda: sandbox.call(VIEW, "view", {"paths": [*unneeded, OS_FILE]}))
    assert result.ok, result
    seen, listing = result.value["seen"], result.value["listing"]
    assert seen[OS_FILE].startswith("read"), seen  # the stdlib itself is there
    assert {path: seen[path] for path in unneeded} == {path: "FileNotFoundError" for path in unneeded}
    host_lib = set(os.listdir("/usr/lib"))
    assert set(listing["/usr/lib"]) < host_lib, listing  # a strict subset of the host's /usr/lib
    assert "python3" not in listing["/usr/lib"] and "os-release" not in listing["/usr/lib"]
    works = anyio.run(lambda: sandbox.call(VIEW, "uses_the_stdlib", {}))
    assert works.ok, works
    assert works.value == ["2020-01-01T00:00:00+01:00", 36, "x", "y", "z", "e3b0c442", "0.25", "b"]


# --------------------------------------------------------------------------- a spec that turns the sandbox off


def test_server_py_says_loudly_that_the_spec_turned_the_sandbox_off(tmp_path: Path) -> None:
    """A spec's ``"sandboxed": false`` (data, not the user's choice) takes effect only with the user's opt-in,
    and is then announced on stderr before serving."""
    tool = ToolImplementation(spec=ToolSpec(server="host", name="noop", description="noop",
                                            input_schema={"type": "object", "properties": {}}),
                              source="def noop():\n    return 1\n")
    for sandboxed in (False, True):
        spec = EnvironmentSpec(id="env-trust", name="trust", tools=[tool], sandboxed=sandboxed)
        directory = emit(spec, tmp_path / f"sandboxed-{sandboxed}")
        for trust in ([], ["--unsafe-no-sandbox"]):  # the spec alone never turns the sandbox off: the user must too
            run = subprocess.run([sys.executable, str(directory / "server.py"), *trust], input="",
                                 capture_output=True, text=True, timeout=120)
            disabled = not sandboxed and bool(trust)
            assert ("SANDBOX DISABLED BY THE SPEC" in run.stderr) is disabled, run.stderr[-2000:]
