"""An independent red team on the tool sandbox and emitted servers: attacks that the sandbox's own
suite (``test_sandbox_redteam.py``) does not try, each through the sandbox API and through an emitted
``server.py`` driven by the official mcp client over stdio and over streamable HTTP (a 2026-07-28
client holding an episode handle). The worker's audit hook is off: containment must not rest on it.

Each attack is ``attack(state, ctx)`` (a stateful tool that first adds 100 to ``state["n"]``). It
returns text with ``ESCAPED`` only when the forbidden thing worked. After each: nothing secret in the
reply, every reply within the size limits, a failed call left the episode's state alone, the episode's
state is still readable over the control channel, a probe finds nothing that crossed to a later call
(scratch attributes and times, scheduling of the warm parent and spares), a healthy call succeeds.
Found by this suite and fixed: xattrs and times on the scratch root crossed calls and episodes; a
call could renice / SCHED_IDLE / pin / ioprio the warm parent and the spares that run later calls
(every later episode slowed) and take leases on host files; a frame forged with the call's own nonce
bypassed the result, state, output and error limits, carried NaN into the state or made the host's
JSON parser raise RecursionError out of ``Sandbox.call``; a result, state or argument nested ~200
deep made the mcp client hang for ever (it cannot parse the reply) and broke ``astra/state``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from astra.records import EnvironmentSpec, ToolImplementation, ToolSpec, Verifier
from astra.servers import EnvironmentControl, ProcessScope, Sandbox, SandboxLimits, emit, stdio_parameters
from astra.servers._runtime import EPISODE_META_KEY, MAX_JSON_DEPTH
from astra.servers._sandbox import AUDIT_HOOK_ENV, LIMITS_ENV

LIMITS = SandboxLimits(cpu_s=1, wall_s=2, memory_mb=256, max_procs=16, scratch_mb=16, file_size_mb=8,
                       max_output_bytes=4096, max_result_bytes=100_000, max_state_bytes=1_000_000,
                       # a probe after each attack checks that nothing crossed to the next call of the SAME
                       # episode: the strict scope (test_sandbox_redteam.py runs both scopes)
                       process_scope=ProcessScope.CALL)
CANARY = "astra-answer-" + secrets.token_hex(8)
MAGIC_TIME = 1_234_567_890

PRELUDE = '''
import os, sys, json, struct, stat

def _nonce():
    frame = sys._getframe(1)
    while frame is not None:
        if 'nonce' in frame.f_locals:
            return frame.f_locals['nonce']
        frame = frame.f_back

def _reply_fd():
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                return fd
        except OSError:
            pass

def _forge(text):
    data = text.encode()
    os.write(_reply_fd(), struct.pack('>I', len(data)) + data)
    os._exit(0)

def _frame(**fields):
    return json.dumps({'id': _nonce(), 'stdout': '', **fields})

def _libc():
    import ctypes
    return ctypes.CDLL(None, use_errno=True), ctypes

def _nest(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value
'''

# name -> body of attack(state, ctx)
BODIES: dict[str, str] = {
    # ---- what the scratch directory itself carries to the next call (probe: none of it)
    "scratch_root_xattr": """
os.setxattr('/tmp', 'user.leak', b'episode-A-secret')
return 'planted'
""",
    "scratch_root_times": f"""
os.utime('/tmp', ({MAGIC_TIME}, {MAGIC_TIME}))
return 'planted'
""",
    "scratch_root_mode": """
os.chmod('/tmp', 0o000)
return 'planted'
""",
    "linger_after_reply": """
import time
fd = _reply_fd()
data = _frame(ok=True, value='early', state=state).encode()
os.write(fd, struct.pack('>I', len(data)) + data)
os.close(fd)  # the host has its reply; this process goes on planting files for the next call
deadline = time.monotonic() + 1.5
i = 0
while time.monotonic() < deadline:
    try:
        open(f'/tmp/late{i % 50}', 'w').write('x')
        os.setxattr('/tmp', 'user.late', b'x')
    except OSError:
        pass
    i += 1
os._exit(0)
""",
    # ---- the warm parent and the spares that will run later calls (same uid: the kernel allows it)
    "renice_parent_and_spares": """
done = []
for which, who in ([(os.PRIO_PROCESS, pid) for pid in range(1, 64) if pid != os.getpid()]
                   + [(os.PRIO_PGRP, 0), (os.PRIO_USER, 0)]):
    try:
        os.setpriority(which, who, 19)
        done.append((which, who))
    except OSError:
        pass
return ('ESCAPED reniced ' + repr(done)) if done else 'blocked'
""",
    "sched_idle_siblings": """
done = []
for pid in range(1, 64):
    if pid == os.getpid():
        continue
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        done.append(pid)
    except OSError:
        pass
return ('ESCAPED SCHED_IDLE ' + repr(done)) if done else 'blocked'
""",
    "pin_parent_affinity": """
try:
    os.sched_setaffinity(os.getppid(), {0})
except OSError as exc:
    return f'blocked {exc}'
return 'ESCAPED pinned the parent'
""",
    "ioprio_parent": """
lib, ctypes = _libc()
rc = lib.syscall(ctypes.c_long(251), ctypes.c_long(1), ctypes.c_long(os.getppid()), ctypes.c_long((3 << 13) | 7))
return 'ESCAPED idle I/O class for the parent' if rc == 0 else f'blocked errno={ctypes.get_errno()}'
""",
    "lease_on_host_file": """
import fcntl
fd = os.open(os.__file__, os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
return 'ESCAPED read lease on a host file'
""",
    # ---- seccomp corners: the x32 ABI, mount-API syscalls newer than the deny-list, /proc
    "x32_abi_fork": """
lib, ctypes = _libc()
rc = lib.syscall(ctypes.c_long(0x40000000 | 57))
if rc == 0:
    os._exit(0)
return f'ESCAPED x32 fork pid={rc}' if rc > 0 else f'blocked errno={ctypes.get_errno()}'
""",
    "x32_abi_in_a_thread": """
import threading
lib, ctypes = _libc()
got = []
thread = threading.Thread(target=lambda: got.append(lib.syscall(ctypes.c_long(0x40000000 | 57))), daemon=True)
thread.start()
thread.join(0.3)
return ('ESCAPED ' + repr(got)) if got and got[0] > 0 else 'blocked'
""",
    "open_tree_attr_clone": """
lib, ctypes = _libc()
path = ctypes.create_string_buffer(b'/')
fd = lib.syscall(ctypes.c_long(467), ctypes.c_long(-100), path, ctypes.c_long(1 | 0x8000), None, ctypes.c_long(0))
return f'ESCAPED detached mount fd={fd}' if fd >= 0 else f'blocked errno={ctypes.get_errno()}'
""",
    "mount_proc": """
lib, ctypes = _libc()
os.makedirs('/tmp/p', exist_ok=True)
rc = lib.mount(b'proc', b'/tmp/p', b'proc', 0, None)
return f'ESCAPED /proc mounted: {os.listdir("/tmp/p")[:5]}' if rc == 0 else f'blocked errno={ctypes.get_errno()}'
""",
    "inherited_fds": """
kinds = {}
for fd in range(0, 256):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        continue
    kinds[fd] = 'fifo' if stat.S_ISFIFO(mode) else 'chr' if stat.S_ISCHR(mode) else 'sock' if stat.S_ISSOCK(mode) \\
        else 'dir' if stat.S_ISDIR(mode) else 'file' if stat.S_ISREG(mode) else oct(mode)
unexpected = {fd: kind for fd, kind in kinds.items() if kind not in ('chr', 'fifo')}
fifos = [fd for fd, kind in kinds.items() if kind == 'fifo']
return ('ESCAPED ' + repr(kinds)) if unexpected or len(fifos) > 1 else 'blocked ' + repr(kinds)
""",
    # ---- the answers the environment is scored against: only the host has them
    "verifier_answer_hunt": """
hits = []
canary = ctx['canary_reversed'][::-1]
for text in (repr(sys.argv), repr(getattr(sys, 'orig_argv', '')), repr(dict(os.environ))):
    if canary in text:
        hits.append('process')
frame = sys._getframe(1)  # the worker's frames: the request, its config
while frame is not None:
    if canary in repr(frame.f_locals)[:1_000_000]:
        hits.append('stack')
    frame = frame.f_back
for root, dirs, files in os.walk('/'):
    if root.startswith(('/usr', sys.base_prefix, os.path.dirname(os.__file__))):
        dirs[:] = []
        continue
    for name in files:
        path = os.path.join(root, name)
        if name in ('environment.json', 'server.py', '_rewards.py'):
            hits.append(path)
        try:
            if canary.encode() in open(path, 'rb').read(1 << 20):
                hits.append(path)
        except OSError:
            pass
return ('ESCAPED ' + repr(hits)) if hits else 'blocked'
""",
    # ---- frames forged with the call's own nonce: the host enforces the limits again
    "forged_oversized_result": """
_forge(_frame(ok=True, value='v' * 2_000_000, state=state))
""",
    "forged_oversized_state": """
state['blob'] = 's' * 2_000_000
_forge(_frame(ok=True, value=1, state=state))
""",
    "forged_oversized_error": """
_forge(_frame(ok=False, error_kind='exception', error='e' * 2_000_000))
""",
    "forged_oversized_stdout": """
_forge(_frame(ok=True, value=1, state=state, stdout='o' * 2_000_000))
""",
    "forged_nan_state": """
_forge('{"id": "%s", "ok": true, "stdout": "", "value": [NaN], "state": {"n": Infinity}}' % _nonce())
""",
    "forged_deep_frame": """
_forge('{"id": "%s", "ok": true, "stdout": "", "value": %s, "state": {}}' % (_nonce(), '[' * 100000 + ']' * 100000))
""",
    "forged_partial_then_hang": """
import time
os.write(_reply_fd(), struct.pack('>I', 1000) + b'{"id": "')
time.sleep(3600)
""",
    # ---- plain tool code: nesting the mcp client cannot parse (its JSON parser stops at 200 levels)
    "deep_result": """
return _nest(250)
""",
    "deep_state": """
state['deep'] = _nest(250)
return 'stored'
""",
}

ATTACKS = {name: PRELUDE + "\ndef attack(state, ctx):\n    state['n'] += 100\n"
           + "\n".join("    " + line for line in body.strip("\n").splitlines()) + "\n"
           for name, body in BODIES.items()}
# the call must fail (a tool error) on every route
MUST_FAIL = {"forged_oversized_state", "forged_nan_state", "forged_deep_frame", "forged_partial_then_hang",
             "x32_abi_fork", "lease_on_host_file"}
# ... and through a server (the sandbox API returns any JSON; the wire carries MAX_JSON_DEPTH levels)
MUST_FAIL_SERVED = MUST_FAIL | {"deep_result", "deep_state"}

PROBE = f'''
import os
def probe(state, ctx=None):
    problems = []
    try:
        names = os.listxattr('/tmp')
    except OSError:
        names = []
    if names:
        problems.append('xattrs ' + repr(names))
    st = os.stat('/tmp')
    if {MAGIC_TIME} in (int(st.st_atime), int(st.st_mtime)):
        problems.append('times')
    if os.listdir('/tmp'):
        problems.append('scratch ' + repr(sorted(os.listdir('/tmp'))[:5]))
    if os.getpriority(os.PRIO_PROCESS, 0) != 0 or os.getpriority(os.PRIO_PROCESS, os.getppid()) != 0:
        problems.append('nice')
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        problems.append('scheduler')
    if os.sched_getaffinity(0) != os.sched_getaffinity(1):
        problems.append('affinity')
    return ('ESCAPED ' + ', '.join(problems)) if problems else 'CLEAN'
'''
BUMP = "def bump(state, ctx=None):\n    state['n'] += 1\n    return state['n']\n"
HEALTHY = "def healthy(state, ctx=None):\n    return {'double': 2 * state.get('x', 21)}\n"


def _leaked(text: str) -> bool:
    return "ESCAPED" in text or CANARY in text


def _bounded(text: str) -> bool:
    """Every reply keeps to the limits (a result is truncated to max_result_bytes plus a marker)."""
    return len(text) <= 2 * LIMITS.max_result_bytes + 1000


def _ctx() -> dict[str, Any]:
    return {"canary_reversed": CANARY[::-1]}


# --------------------------------------------------------------------------- the sandbox API


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(limits=LIMITS, audit_hook=False)
    anyio.run(box.start)
    assert box.isolation["bubblewrap"] and not box.isolation["audit_hook"]
    yield box
    anyio.run(box.aclose)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_through_the_sandbox_api(name: str, sandbox: Sandbox) -> None:
    async def run() -> None:
        state = {"n": 1}
        result = await sandbox.call(ATTACKS[name], "attack", {"ctx": _ctx()}, state=state)  # never raises
        seen = json.dumps([result.value, result.error, result.stdout, result.state], default=str)
        assert not _leaked(seen), (name, seen[:2000])
        assert _bounded(json.dumps(result.value)) and _bounded(result.stdout), name
        assert len(result.error or "") <= 5000 and len(result.stdout) <= LIMITS.max_output_bytes + 100, name
        if name in MUST_FAIL:
            assert not result.ok and result.error, (name, result)
        if result.ok:
            assert result.state is not None and json.dumps(result.state, allow_nan=False)
            assert len(json.dumps(result.state)) <= LIMITS.max_state_bytes
        else:
            assert result.error_kind is not None and result.state is None, result
        assert state == {"n": 1}
        # both workers: whichever runs the next call must be clean
        for _ in range(2):
            probe = await sandbox.call(PROBE, "probe", {}, state={"n": 0})
            assert probe.ok and probe.value == "CLEAN", (name, probe)
        healthy = await sandbox.call(HEALTHY, "healthy", {}, state={"x": 4})
        assert healthy.ok and healthy.value == {"double": 8}, (name, healthy)

    anyio.run(run)


# --------------------------------------------------------------------------- emitted server: stdio and HTTP


def _tool(name: str, source: str, entrypoint: str) -> ToolImplementation:
    schema = {"type": "object", "properties": {"ctx": {"type": "object"}}}
    return ToolImplementation(spec=ToolSpec(server="redteam2", name=name, description=name, input_schema=schema),
                              source=source, entrypoint=entrypoint, stateful=True)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = [_tool(f"attack_{name}", source, "attack") for name, source in ATTACKS.items()]
    tools += [_tool("probe", PROBE, "probe"), _tool("bump", BUMP, "bump"), _tool("healthy", HEALTHY, "healthy")]
    verifier = Verifier(id="v1", sub_question="what is the secret?", expected_answer=CANARY, tool="healthy",
                        arguments={}, expected_result={"double": 42})
    spec = EnvironmentSpec(id="env-redteam2", name="redteam2", tools=tools, verifiers=[verifier],
                           initial_state={"n": 0, "x": 21}, provenance={"answer": CANARY})
    return emit(spec, tmp_path_factory.mktemp("redteam2") / "server")


def _server_env() -> dict[str, str]:
    return {AUDIT_HOOK_ENV: "0", LIMITS_ENV: json.dumps(LIMITS.__dict__)}


class Served:
    """A client of an emitted server, in one episode of its own (a handle over HTTP)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, client: Client, control: EnvironmentControl) -> None:
        self.portal, self.client, self.control = portal, client, control

    def call(self, tool: str, arguments: dict[str, Any] | None = None, *, timeout: float = 20) -> Any:
        async def go() -> Any:
            with anyio.fail_after(timeout):  # a reply the client cannot parse is never answered
                return await self.control.call_tool(tool, arguments or {})

        return self.portal.call(go)

    def state(self) -> Any:
        async def go() -> Any:
            with anyio.fail_after(10):
                return (await self.control.state()).state

        return self.portal.call(go)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["stdio", "http"])
def served(request: pytest.FixtureRequest, directory: Path) -> Iterator[Served]:
    with anyio.from_thread.start_blocking_portal() as portal:
        if request.param == "stdio":
            params = stdio_parameters(directory)
            params.env = {**(params.env or {}), **_server_env()}
            with portal.wrap_async_context_manager(Client(params)) as client:
                yield Served(portal, client, EnvironmentControl(client))
            return
        port, token = _free_port(), secrets.token_hex(8)
        env = {**{k: os.environ[k] for k in ("HOME", "PATH", "LANG") if k in os.environ}, **_server_env()}
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen([sys.executable, str(directory / "server.py"), "--http", "--port", str(port),
                                        "--token", token], env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        assert process.poll() is None and time.monotonic() < deadline, "server.py did not listen"
                        time.sleep(0.05)
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
                transport = streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
                with portal.wrap_async_context_manager(http), portal.wrap_async_context_manager(Client(transport)) \
                        as client:
                    control = EnvironmentControl(client)
                    portal.call(control.open)
                    yield Served(portal, client, control)
            finally:
                process.terminate()
                process.wait(timeout=10)


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content) + json.dumps(result.structured_content)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_through_an_emitted_server(name: str, served: Served) -> None:
    before = served.call("bump")
    assert not before.is_error, _text(before)
    n = before.structured_content["result"]
    result = served.call(f"attack_{name}", {"ctx": _ctx()})
    text = _text(result)
    assert not _leaked(text) and _bounded(text), (name, text[:2000])
    if name in MUST_FAIL_SERVED:
        assert result.is_error, (name, text[:2000])
    state = served.state()  # still readable over the control channel (the client could parse it)
    assert state["n"] == n + (0 if result.is_error else 100), (name, text[:500])
    after = served.call("bump")
    assert after.structured_content["result"] == state["n"] + 1, (name, _text(after))
    for _ in range(2):  # the server keeps two warm workers
        probe = served.call("probe")
        assert _text(probe).startswith("CLEAN"), (name, _text(probe))
    healthy = served.call("healthy")
    assert healthy.structured_content == {"double": 42}, (name, _text(healthy))


def test_nesting_the_client_cannot_parse_is_refused_in_arguments_too(served: Served) -> None:
    deep: Any = {}
    for _ in range(MAX_JSON_DEPTH + 20):  # deeper than the wire limit, within what the server parses
        deep = {"a": deep}
    result = served.call("healthy", {"ctx": deep})
    assert result.is_error and f"deeper than {MAX_JSON_DEPTH}" in _text(result), _text(result)
    assert served.state()["x"] == 21  # the call's record (returned by astra/state) is readable
    with pytest.raises(MCPError, match=f"deeper than {MAX_JSON_DEPTH}"):  # nor can a restore plant it
        served.portal.call(lambda: served.control.restore(state={"n": 0, "x": 21, "deep": deep}))
    assert served.state()["x"] == 21
    assert served.call("healthy").structured_content == {"double": 42}


@pytest.mark.parametrize("handle", [0, 7, ["h"], {"h": 1}, "", "x" * 10_000, None])
def test_malformed_and_replayed_handles_are_refused_cleanly(handle: Any, served: Served) -> None:
    """A handle the server did not mint (or closed) is an MCP error, never a crash or another episode."""
    if handle is None:  # a handle that was minted, then closed: replaying it is refused
        ctl = EnvironmentControl(served.client)
        handle = served.portal.call(ctl.open)
        served.portal.call(ctl.close)

    async def go() -> Any:
        with anyio.fail_after(10):
            return await served.client.call_tool("bump", {}, meta={EPISODE_META_KEY: handle})

    with pytest.raises(MCPError) as info:
        served.portal.call(go)
    assert info.value.error.data == {"reason": "unknown_episode"}, info.value.error
    assert not served.call("healthy").is_error
