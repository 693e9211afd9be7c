"""The sandbox: attacks with the audit hook on, fail-closed start-up, the unsafe opt-in, fresh state
per episode (and per call with ProcessScope.CALL), limits, cancellation. The red-team suite (hook off,
API and emitted server) is test_sandbox_redteam.py."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from astra.records import EnvironmentSpec, ToolImplementation, ToolSpec
from astra.servers import ProcessScope, Sandbox, SandboxLimits, SandboxUnavailable, build_server, emit
from astra.servers._sandbox import BWRAP_ENV, UNSAFE_ENV

pytestmark = pytest.mark.anyio

# wall time to spare for a loaded machine (memory attacks zero 256 MiB of pages; sleep_forever waits it out)
LIMITS = SandboxLimits(cpu_s=1, memory_mb=256, wall_s=8, max_output_bytes=4096, max_result_bytes=10_000)


@pytest.fixture
def listener():  # type: ignore[no-untyped-def]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield server
    server.close()


# name -> (source, arguments, accepted error kinds). Host paths do not exist inside the sandbox, so
# writing one fails there ("exception") unless the audit hook refuses it first ("forbidden").
ATTACKS: dict[str, tuple[str, dict, set[str]]] = {
    "infinite_loop": ("def attack():\n    while True:\n        pass\n", {}, {"cpu", "timeout"}),
    "sleep_forever": ("import time\ndef attack():\n    time.sleep(60)\n", {}, {"timeout"}),
    "memory_bomb": ("def attack():\n    blob = bytearray(4 * 1024**3)\n    return len(blob)\n", {}, {"memory"}),
    "memory_creep": (
        "def attack():\n    chunks = []\n    while True:\n        chunks.append(bytearray(16 * 1024**2))\n",
        {},
        {"memory"},
    ),
    "fork_bomb": ("import os\ndef attack():\n    while True:\n        os.fork()\n", {}, {"forbidden"}),
    "subprocess": (
        "def attack():\n    import subprocess\n"
        "    return subprocess.run(['id'], capture_output=True).stdout.decode()\n",
        {},
        {"forbidden"},
    ),
    "os_system": (
        "import os\ndef attack():\n    return os.system('touch /tmp/astra-sandbox-pwned')\n",
        {},
        {"forbidden"},
    ),
    "write_outside": (
        "def attack(path):\n    with open(path, 'w') as fh:\n        fh.write('pwned')\n    return 'written'\n",
        {},
        {"forbidden", "exception"},
    ),
    "os_open_outside": (
        "import os\ndef attack(path):\n    fd = os.open(path, os.O_WRONLY | os.O_CREAT)\n    os.write(fd, b'x')\n"
        "    return 'written'\n",
        {},
        {"forbidden", "exception"},
    ),
    "parent_environ": (
        "import os\ndef attack():\n    return open(f'/proc/{os.getppid()}/environ').read()\n",
        {},
        {"forbidden"},
    ),
    "read_host_file": ("def attack():\n    return open('/etc/passwd').read()\n", {}, {"forbidden"}),
    "unserialisable": ("def attack():\n    return {'handle': object()}\n", {}, {"not_json"}),
    "nan": ("def attack():\n    return float('nan')\n", {}, {"not_json"}),
    "raises": ("def attack():\n    raise ValueError('the tool is broken')\n", {}, {"exception"}),
    "exit": ("import sys\ndef attack():\n    sys.exit(3)\n", {}, {"exception"}),
    "hard_exit": ("import os\ndef attack():\n    os._exit(9)\n", {}, {"crash"}),
    "raise_limits": (
        "def attack():\n    import resource\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
        {},
        {"forbidden"},
    ),
    "ctypes": ("def attack():\n    import ctypes\n    return ctypes.CDLL(None).getpid()\n", {}, {"forbidden"}),
    # Tool code can walk its frames and patch modules; the guard has no switch to find.
    "frame_walk": (
        "import sys\ndef attack(path):\n    frame = sys._getframe(0)\n    while frame is not None:\n"
        "        for space in (frame.f_locals, frame.f_globals):\n            for obj in list(space.values()):\n"
        "                try:\n                    obj.active = False\n                except Exception:\n"
        "                    pass\n        frame = frame.f_back\n    open(path, 'w').write('x')\n",
        {},
        {"forbidden", "exception"},
    ),
    "monkeypatch": (
        "import os, posixpath\ndef attack(path):\n    os.path.realpath = posixpath.realpath = lambda p, **k: '/tmp'\n"
        "    os.getcwd = lambda: '/tmp'\n    open(path, 'w').write('x')\n",
        {},
        {"forbidden", "exception"},
    ),
    "gc_walk": ("import gc\ndef attack():\n    return len(gc.get_objects())\n", {}, {"forbidden"}),
    "finalizer": (
        "class Bomb:\n    def __del__(self):\n        open('/tmp/astra-sandbox-pwned', 'w').write('x')\ndef attack():\n"
        "    a, b = Bomb(), Bomb()\n    a.other, b.other = b, a\n    del a, b\n    import sys\n"
        "    sys.modules.get('gc') and sys.modules['gc'].collect()\n"
        "    raise RuntimeError('finalizers ran under the guard')\n",
        {},
        {"exception", "forbidden"},
    ),
    "recursion": ("def attack(n=0):\n    return attack(n + 1)\n", {}, {"exception"}),
}

HEALTHY = "def healthy(x):\n    return {'double': 2 * x}\n"


@pytest.fixture(scope="module")
def hooked_sandbox() -> Iterator[Sandbox]:
    """One sandbox with the audit hook on for every attack below (a sandbox serves any event loop)."""
    box = Sandbox(limits=LIMITS, audit_hook=True)
    anyio.run(box.start)
    yield box
    anyio.run(box.aclose)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_contained_and_the_worker_keeps_serving(name: str, tmp_path: Path, hooked_sandbox: Sandbox) -> None:
    source, arguments, kinds = ATTACKS[name]
    target = tmp_path / "outside" / "pwned.txt"
    target.parent.mkdir()
    if "path" in source.split("\n")[0] or "def attack(path)" in source:
        arguments = {"path": str(target)}

    async def run() -> None:
        before = await hooked_sandbox.call(HEALTHY, "healthy", {"x": 2})
        assert before.ok and before.value == {"double": 4}
        result = await hooked_sandbox.call(source, "attack", arguments)
        assert not result.ok, result
        assert result.error_kind in kinds, result
        assert result.error  # a message the model can read
        after = await hooked_sandbox.call(HEALTHY, "healthy", {"x": 21})
        assert after.ok and after.value == {"double": 42}

    anyio.run(run)
    assert not target.exists()
    assert not Path("/tmp/astra-sandbox-pwned").exists()


async def test_socket_to_loopback_is_refused(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    direct = (
        "def attack(port):\n    import socket\n    s = socket.create_connection(('127.0.0.1', port), timeout=1)\n"
        "    s.sendall(b'leak')\n    return 'sent'\n"
    )
    sneaky = (
        "def attack(port):\n    import _socket\n    s = _socket.socket()\n    s.connect(('127.0.0.1', port))\n"
        "    return 'sent'\n"
    )
    for hook in (True, False):
        async with Sandbox(limits=LIMITS, audit_hook=hook) as sandbox:
            for source in (direct, sneaky):
                result = await sandbox.call(source, "attack", {"port": port})
                assert not result.ok and result.error_kind in {"forbidden", "exception"}, result
                assert hook or "Permission denied" in (result.error or ""), result  # the seccomp filter's EACCES
            assert (await sandbox.call(HEALTHY, "healthy", {"x": 1})).ok
    with pytest.raises(socket.timeout):
        listener.accept()


async def test_isolation_is_reported_and_real() -> None:
    source = ("import os\ndef look():\n    return {'uid': os.getuid(), 'gid': os.getgid(), "
              "'root': sorted(os.listdir('/')), 'proc': os.path.exists('/proc/self')}\n")
    async with Sandbox(limits=LIMITS, audit_hook=False) as sandbox:
        assert sandbox.isolation["bubblewrap"] and sandbox.isolation["seccomp"] and sandbox.isolation["tool_seccomp"]
        result = await sandbox.call(source, "look", {})
    assert result.ok, result
    assert result.value["uid"] == 65534 and result.value["gid"] == 65534
    assert not result.value["proc"]
    # run: the small tmpfs of each process's request and reply FIFOs (unlinked: empty)
    expected_root = {"astra", "bin", "dev", "lib", "lib32", "lib64", "root", "run", "tmp", "usr"}
    assert set(result.value["root"]) <= expected_root, result.value


async def test_host_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_TEST_SECRET", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-tools")
    async with Sandbox(limits=LIMITS) as sandbox:
        result = await sandbox.call("import os\ndef env():\n    return dict(os.environ)\n", "env", {})
        assert result.ok
        assert "ASTRA_TEST_SECRET" not in result.value and "OPENAI_API_KEY" not in result.value
        assert "hunter2" not in repr(result.value)


async def test_printing_100_mb_is_bounded_and_the_call_succeeds() -> None:
    async with Sandbox(limits=LIMITS) as sandbox:
        result = await sandbox.call("def loud():\n    print('x' * 100_000_000)\n    return 'done'\n", "loud", {})
        assert result.ok and result.value == "done"
        assert len(result.stdout) < LIMITS.max_output_bytes + 200
        assert "output truncated" in result.stdout


async def test_huge_result_is_truncated_with_a_marker() -> None:
    async with Sandbox(limits=LIMITS) as sandbox:
        result = await sandbox.call("def big():\n    return ['row'] * 1_000_000\n", "big", {})
        assert result.ok and result.truncated
        assert isinstance(result.value, str) and "[truncated: result was" in result.value
        assert len(result.value) < LIMITS.max_result_bytes + 200


NOTE = ("import os\ndef note(state, text):\n    listed = sorted(os.listdir('.'))\n"
        "    with open('notes.txt', 'a') as fh:\n        fh.write(text)\n"
        "    state.setdefault('notes', []).append(text)\n    return [listed, open('notes.txt').read()]\n")


async def test_scratch_is_writable_within_a_call_and_empty_in_the_next() -> None:
    limits = dataclasses.replace(LIMITS, process_scope=ProcessScope.CALL)
    async with Sandbox(limits=limits) as sandbox:
        first = await sandbox.call(NOTE, "note", {"text": "a"}, state={})
        second = await sandbox.call(NOTE, "note", {"text": "b"}, state=first.state)
    assert first.ok and first.value == [[], "a"]
    assert second.ok and second.value == [[], "b"] and second.state == {"notes": ["a", "b"]}


async def test_scratch_lasts_the_episode_and_goes_with_it_or_a_restore() -> None:
    async with Sandbox(limits=LIMITS) as sandbox:  # ProcessScope.EPISODE, the default
        episode = _Episode()
        first = await sandbox.call(NOTE, "note", {"text": "a"}, state={}, episode=episode)
        second = await sandbox.call(NOTE, "note", {"text": "b"}, state=first.state, episode=episode)
        other = await sandbox.call(NOTE, "note", {"text": "c"}, state={}, episode=_Episode())
        sandbox.renew(episode)  # what a restore does
        renewed = await sandbox.call(NOTE, "note", {"text": "d"}, state={}, episode=episode)
    assert first.ok and first.value == [[], "a"]
    assert second.ok and second.value == [["notes.txt"], "ab"] and second.state == {"notes": ["a", "b"]}
    assert other.ok and other.value == [[], "c"]  # another episode never sees it
    assert renewed.ok and renewed.value == [[], "d"]


PLANT = ("import builtins, json, os\nCOUNTER = []\ndef plant():\n    builtins.PLANTED = 1\n    COUNTER.append(1)\n"
         "    json.dumps = lambda *a, **k: 'patched'\n    os.getcwd = lambda: '/pwned'\n    return len(COUNTER)\n")
LOOK = "import builtins, json, os\ndef look():\n    return [hasattr(builtins, 'PLANTED'), json.dumps(1), os.getcwd()]\n"


async def test_no_interpreter_state_crosses_calls() -> None:
    limits = dataclasses.replace(LIMITS, process_scope=ProcessScope.CALL)
    async with Sandbox(limits=limits, audit_hook=False) as sandbox:
        assert (await sandbox.call(PLANT, "plant", {})).value == 1
        assert (await sandbox.call(PLANT, "plant", {})).value == 1  # module globals start afresh too
        assert (await sandbox.call(LOOK, "look", {})).value == [False, "1", "/tmp"]


async def test_interpreter_state_lasts_the_episode_only() -> None:
    async with Sandbox(limits=LIMITS, audit_hook=False) as sandbox:
        episode = _Episode()
        assert (await sandbox.call(PLANT, "plant", {}, episode=episode)).value == 1
        assert (await sandbox.call(PLANT, "plant", {}, episode=episode)).value == 1  # the module runs afresh
        assert (await sandbox.call(LOOK, "look", {}, episode=episode)).value == [True, "patched", "/pwned"]
        assert (await sandbox.call(LOOK, "look", {}, episode=_Episode())).value == [False, "1", "/tmp"]
        sandbox.end_episode(episode)  # what a reset does
        assert (await sandbox.call(LOOK, "look", {}, episode=episode)).value == [False, "1", "/tmp"]
        again = _Episode()
        await sandbox.call(PLANT, "plant", {}, episode=again)
        sandbox.renew(again)  # what a restore does
        assert (await sandbox.call(LOOK, "look", {}, episode=again)).value == [False, "1", "/tmp"]


async def test_cpu_limit_is_a_clean_error_and_the_next_call_succeeds() -> None:
    limits = SandboxLimits(cpu_s=1, wall_s=60)  # wall time to spare on a loaded machine: the CPU limit must hit first
    spin = ("import signal\ndef spin():\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
            "    while True:\n        pass\n")
    async with Sandbox(limits=limits, audit_hook=False) as sandbox:
        result = await sandbox.call(spin, "spin", {})
        assert not result.ok and result.error_kind == "cpu", result  # ignoring SIGXCPU only delays SIGKILL
        assert (await sandbox.call(HEALTHY, "healthy", {"x": 3})).value == {"double": 6}
        assert sandbox.restarts == 0


async def test_bad_reply_fails_only_its_call() -> None:
    forge = ("import os, struct\ndef forge():\n    frame = b'{\"id\": \"x\", \"ok\": true, \"value\": \"FORGED\"}'\n"
             "    for fd in range(64):\n        try:\n            os.write(fd, struct.pack('>I', len(frame)) + frame)\n"
             "        except OSError:\n            pass\n    return 'benign'\n")
    async with Sandbox(limits=LIMITS, audit_hook=False) as sandbox:
        result = await sandbox.call(forge, "forge", {})
        assert not result.ok and result.error_kind == "bad_reply", result
        for x in range(3):
            assert (await sandbox.call(HEALTHY, "healthy", {"x": x})).value == {"double": 2 * x}


def test_missing_bubblewrap_fails_closed_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BWRAP_ENV, "/nonexistent/bwrap")
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as info:
        anyio.run(Sandbox(limits=LIMITS).start)
    assert UNSAFE_ENV in str(info.value)


def test_refused_user_namespaces_fail_closed_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel "
                    "does not allow non-privileged user namespaces.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv(BWRAP_ENV, str(fake))
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match="unprivileged_userns_clone") as info:
        anyio.run(Sandbox(limits=LIMITS).start)
    assert "No permissions to creating new namespace" in str(info.value)


async def test_unsafe_opt_in_is_loud_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BWRAP_ENV, "/nonexistent/bwrap")
    monkeypatch.setenv(UNSAFE_ENV, "1")
    with pytest.warns(RuntimeWarning, match="SANDBOX DISABLED"):
        sandbox = Sandbox(limits=LIMITS)
        await sandbox.start()
    try:
        assert not sandbox.isolation["bubblewrap"]
        assert (await sandbox.call(HEALTHY, "healthy", {"x": 2})).value == {"double": 4}
    finally:
        await sandbox.aclose()


def test_emitted_server_refuses_to_start_without_bubblewrap(tmp_path: Path, inventory: EnvironmentSpec) -> None:
    directory = emit(inventory, tmp_path / "env")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), BWRAP_ENV: "/nonexistent/bwrap"}
    done = subprocess.run([sys.executable, str(directory / "server.py")], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "bubblewrap" in done.stderr and "apt-get install bubblewrap" in done.stderr
    assert json.loads((directory / "astra_env_runtime" / f"seccomp-{os.uname().machine}.json").read_text())["tool"]


def _attack_environment() -> EnvironmentSpec:
    def tool(name: str, source: str, schema: dict | None = None) -> ToolImplementation:
        return ToolImplementation(
            spec=ToolSpec(
                server="attacks",
                name=name,
                description=name,
                input_schema=schema or {"type": "object", "properties": {}},
            ),
            source=source,
            stateful=True,
        )

    return EnvironmentSpec(
        id="env-attacks",
        name="attacks",
        tools=[
            tool("bump", "def bump(state):\n    state['n'] += 1\n    return state['n']\n"),
            tool(
                "bump_then_loop", "def bump_then_loop(state):\n    state['n'] += 100\n    while True:\n        pass\n"
            ),
            tool(
                "bump_then_bomb",
                "def bump_then_bomb(state):\n    state['n'] += 100\n    return bytearray(4 * 1024**3)\n",
            ),
            tool("bump_then_crash", "import os\ndef bump_then_crash(state):\n    state['n'] += 100\n    os._exit(1)\n"),
            tool(
                "bump_then_raise",
                "def bump_then_raise(state):\n    state['n'] += 100\n    raise RuntimeError('nope')\n",
            ),
            tool(
                "bump_then_object",
                "def bump_then_object(state):\n    state['n'] += 100\n    state['bad'] = object()\n    return 1\n",
            ),
        ],
        initial_state={"n": 0},
    )


async def test_failed_calls_leave_episode_state_unchanged_through_the_server() -> None:
    server = build_server(_attack_environment(), limits=LIMITS)
    try:
        timeouts = 0
        async with Client(server) as client:
            assert (await client.call_tool("bump", {})).structured_content == {"result": 1}
            for attack in (
                "bump_then_loop",
                "bump_then_bomb",
                "bump_then_crash",
                "bump_then_raise",
                "bump_then_object",
            ):
                result = await client.call_tool(attack, {})
                assert result.is_error, attack
                assert result.content[0].text.startswith("Error: "), attack
                timeouts += "wall-clock limit" in result.content[0].text  # the loop, when CPU is scarce
                assert (await client.call_tool("bump", {})).structured_content["result"] == 2 + [
                    "bump_then_loop",
                    "bump_then_bomb",
                    "bump_then_crash",
                    "bump_then_raise",
                    "bump_then_object",
                ].index(attack), attack
        # a fresh process per call: nothing to restart but a sandbox whose call ran out of wall time
        assert server.runtime._sandbox is not None and server.runtime._sandbox.restarts == timeouts
    finally:
        await server.runtime.aclose()


async def test_cancelled_call_does_not_desynchronise_the_worker() -> None:
    async with Sandbox(limits=LIMITS) as sandbox:
        with anyio.move_on_after(0.3):
            await sandbox.call("import time\ndef slow():\n    time.sleep(2)\n    return 'late'\n", "slow", {})
        result = await sandbox.call(HEALTHY, "healthy", {"x": 5})
        assert result.ok and result.value == {"double": 10}


async def test_load_errors_stay_errors() -> None:
    async with Sandbox(limits=LIMITS) as sandbox:
        broken = "def broken(:\n    pass\n"
        for _ in range(2):
            result = await sandbox.call(broken, "broken", {})
            assert result.error_kind == "exception" and "SyntaxError" in (result.error or "")
        missing = await sandbox.call(HEALTHY, "nope", {})
        assert missing.error_kind == "exception" and "no function named 'nope'" in (missing.error or "")


def test_one_runtime_serves_several_event_loops(inventory: EnvironmentSpec) -> None:
    runtime = build_server(inventory).runtime

    async def call() -> int:
        outcome = await runtime.call("add_stock", {"sku": "WID-1", "quantity": 1})
        assert outcome.ok, outcome
        return outcome.value["quantity"]

    assert anyio.run(call) == 41
    assert anyio.run(call) == 42  # same warm worker, another loop, state kept
    anyio.run(runtime.aclose)


def test_without_libseccomp_bindings_the_sandbox_fails_closed_or_uses_shipped_filters(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inventory: EnvironmentSpec) -> None:
    import importlib.util

    from astra.servers import _sandbox

    built = _sandbox.seccomp_programs()
    directory = emit(inventory, tmp_path / "env")  # ships the filters built here
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # `import pyseccomp` now raises ImportError
    monkeypatch.setattr(_sandbox, "_PROGRAMS", {})
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match="pip install pyseccomp"):
        _sandbox.seccomp_programs()
    # an emitted environment falls back on the filters it ships
    spec = importlib.util.spec_from_file_location("vendored_sandbox", directory / "astra_env_runtime" / "_sandbox.py")
    vendored = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vendored_sandbox", vendored)
    spec.loader.exec_module(vendored)
    assert vendored.seccomp_programs() == built


# --------------------------------------------------------------------------- a sandbox per episode

# A covert channel between episodes needs a counter both can see: the scratch tmpfs's inode numbers
# and free inodes/blocks, the pid namespace's next pid (the call's own, its threads'). The sender
# moves every one of them by `secret`; the receiver reads them.
COVERT = """
import os, threading

def send(state, secret):
    for i in range(secret):
        open(f'/tmp/f{i}', 'w').write('x' * 5000)
        os.mkdir(f'/tmp/d{i}')
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
    return secret

def recv(state):
    for path in ('/tmp/probe', '/tmp/probe-dir'):  # again within an episode whose process lasts
        if os.path.isdir(path):
            os.rmdir(path)
        elif os.path.exists(path):
            os.remove(path)
    open('/tmp/probe', 'w').close()
    os.mkdir('/tmp/probe-dir')
    ids = []
    thread = threading.Thread(target=lambda: ids.append(threading.get_native_id()))
    thread.start()
    thread.join()
    fs = os.statvfs('/tmp')
    return {'file_ino': os.stat('/tmp/probe').st_ino, 'dir_ino': os.stat('/tmp/probe-dir').st_ino,
            'pid': os.getpid(), 'ppid': os.getppid(), 'thread': ids[0], 'free_inodes': fs.f_ffree,
            'free_blocks': fs.f_bfree, 'scratch_links': os.stat('/tmp').st_nlink}
"""


class _Episode:
    """An episode key for the Sandbox API (any object; this one takes weak references)."""


async def _covert(sandbox: Sandbox, name: str, episode: object, **arguments: int) -> dict:
    result = await sandbox.call(COVERT, name, arguments, state={}, episode=episode)
    assert result.ok, result
    return result.value


async def test_no_counter_crosses_episodes_or_a_reset_through_the_api() -> None:
    async with Sandbox(limits=LIMITS, audit_hook=False) as sandbox:
        seen = []
        for secret in (0, 37, 5, 37):
            receiver, sender = _Episode(), _Episode()
            first = await _covert(sandbox, "recv", receiver)  # a fresh episode
            if secret:
                assert await _covert(sandbox, "send", sender, secret=secret) == secret
            seen.append((first, await _covert(sandbox, "recv", receiver)))  # an episode under way
        assert all(view == seen[0] for view in seen), seen  # nothing learned of the secret
        # control: within one episode the counters do move with what an earlier call did
        episode = _Episode()
        before = await _covert(sandbox, "recv", episode)
        await _covert(sandbox, "send", episode, secret=37)
        after = await _covert(sandbox, "recv", episode)
        assert after["file_ino"] > before["file_ino"] + 37 and after["thread"] > before["thread"] + 37
        # ending an episode (what a reset does) gives it a fresh sandbox: as if nothing had run
        sandbox.end_episode(episode)
        assert await _covert(sandbox, "recv", episode) == seen[0][0]


def _covert_environment() -> EnvironmentSpec:
    schema = {"type": "object", "properties": {"secret": {"type": "integer"}}}
    tools = [ToolImplementation(spec=ToolSpec(server="covert", name=name, description=name, input_schema=schema),
                                source=COVERT, stateful=True) for name in ("send", "recv")]
    return EnvironmentSpec(id="env-covert", name="covert", tools=tools, initial_state={})


async def test_no_counter_crosses_episodes_or_a_reset_through_an_emitted_server(tmp_path: Path) -> None:
    from astra.servers import EnvironmentControl, stdio_parameters
    from astra.servers._sandbox import AUDIT_HOOK_ENV

    params = stdio_parameters(emit(_covert_environment(), tmp_path / "covert"))
    params.env = {**(params.env or {}), AUDIT_HOOK_ENV: "0"}

    async def recv(control: EnvironmentControl) -> dict:
        result = await control.call_tool("recv", {})
        assert not result.is_error, result
        return result.structured_content

    async with Client(params) as client:
        seen = []
        for secret in (0, 37, 5):
            receiver, sender = EnvironmentControl(client), EnvironmentControl(client)
            await receiver.open()
            await sender.open()
            first = await recv(receiver)
            if secret:
                assert not (await sender.call_tool("send", {"secret": secret})).is_error
            seen.append((first, await recv(receiver)))
            await receiver.close()
            await sender.close()
        assert all(view == seen[0] for view in seen), seen
        # a reset: the episode's next call sees a fresh sandbox, whatever ran before it
        episode = EnvironmentControl(client)
        await episode.open()
        before = await recv(episode)
        assert not (await episode.call_tool("send", {"secret": 37})).is_error
        assert (await recv(episode))["file_ino"] > before["file_ino"] + 37  # control: the counter moved
        await episode.reset()
        assert await recv(episode) == seen[0][0]


async def test_at_capacity_idle_episodes_lose_their_sandbox_and_none_is_ever_shared() -> None:
    limits = SandboxLimits(cpu_s=1, wall_s=4, max_sandboxes=2, spare_sandboxes=1)
    slow = "import time\ndef slow(state):\n    time.sleep(0.3)\n    return 'done'\n"
    async with Sandbox(limits=limits, audit_hook=False) as sandbox:
        episodes = [_Episode() for _ in range(4)]
        fresh = await _covert(sandbox, "recv", episodes[0])
        for episode in episodes[1:]:  # more episodes than sandboxes: each starts in a fresh one
            assert await _covert(sandbox, "recv", episode) == fresh
            assert sandbox.open_sandboxes <= 2
        assert sandbox.evictions >= 2
        # the evicted episode goes on in a fresh sandbox (its state is the host's, not the sandbox's)
        assert await _covert(sandbox, "recv", episodes[0]) == fresh

        # every sandbox busy: a new episode's call waits for one to be free, then gets a fresh one
        results: list[Any] = []

        async def run_slow(episode: object) -> None:
            results.append(await sandbox.call(slow, "slow", {}, state={}, episode=episode))

        async with anyio.create_task_group() as tg:
            for episode in episodes[:3]:
                tg.start_soon(run_slow, episode)
        assert [r.value for r in results] == ["done"] * 3, results
        assert sandbox.open_sandboxes <= 2
        assert await _covert(sandbox, "recv", _Episode()) == fresh


@pytest.mark.parametrize("scope", list(ProcessScope))
async def test_inode_flood_costs_its_own_sandbox_not_the_next_call(scope: ProcessScope) -> None:
    """R3-03: the parent empties the scratch after a call (ProcessScope.CALL) or after the episode's
    process is renewed (EPISODE: a restore), outside the next call's wall clock; past its budget the
    sandbox is replaced and the next call (which has not run) runs in a fresh one."""
    flood = ("import os, time\ndef flood(state):\n    end = time.monotonic() + 2.0\n    n = 0\n"
             "    while time.monotonic() < end:\n        os.mkdir(f'/tmp/{n}')\n        n += 1\n    return n\n")
    # emptying what 2 s made takes about the 2 s budget
    limits = SandboxLimits(cpu_s=3, wall_s=3, memory_mb=256, process_scope=scope)
    async with Sandbox(limits=limits, audit_hook=False) as sandbox:
        episode = _Episode()
        made = await sandbox.call(flood, "flood", {}, state={}, episode=episode)
        if scope is ProcessScope.CALL:
            assert made.ok and made.value > 1000, made
        else:  # an episode's scratch lasts across its calls: the parent stops a process past its inode budget
            assert made.ok or made.error_kind == "file_size", made
        sandbox.renew(episode)  # no-op for CALL: every call has a fresh process
        after = await sandbox.call(COVERT, "recv", {}, state={}, episode=episode)
        assert after.ok, after  # neither "could not be emptied" nor a timeout
        assert after.value["free_inodes"] >= (await _covert(sandbox, "recv", _Episode()))["free_inodes"] - 2


def test_the_old_max_workers_argument_is_ignored_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match="max_sandboxes"):
        sandbox = Sandbox(limits=LIMITS, max_workers=2)
    assert sandbox.open_sandboxes == 0  # nothing launched before start()


# --------------------------------------------------------------------------- ProcessScope.EPISODE specifics

PLANT_TOOL = ("import builtins\ndef plant(state):\n    builtins.PLANTED = state.get('n', 0)\n    state['n'] = 1\n"
              "    open('/tmp/planted', 'w').write('x')\n    return 'planted'\n")
LOOK_TOOL = ("import builtins, os\ndef look(state):\n"
             "    return [getattr(builtins, 'PLANTED', None), os.path.exists('/tmp/planted')]\n")


def _scope_environment() -> EnvironmentSpec:
    schema = {"type": "object", "properties": {}}
    tools = [ToolImplementation(spec=ToolSpec(server="scope", name=name, description=name, input_schema=schema),
                                source=source, stateful=True)
             for name, source in (("plant", PLANT_TOOL), ("look", LOOK_TOOL))]
    return EnvironmentSpec(id="env-scope", name="scope", tools=tools, initial_state={"n": 0})


async def test_a_restore_gives_the_episode_a_fresh_process() -> None:
    """What the episode's process held belongs to the state left behind: a restore (to a snapshot or a
    state) renews it, as a reset gives a fresh sandbox."""
    runtime = build_server(_scope_environment(), limits=LIMITS).runtime
    try:
        episode = runtime.new_episode()
        snapshot = runtime.snapshot(episode)
        assert (await runtime.call("plant", {}, episode_id=episode)).ok
        assert (await runtime.call("look", {}, episode_id=episode)).value == [0, True]  # the episode's own
        runtime.restore(episode, snapshot_id=snapshot.id)
        assert (await runtime.call("look", {}, episode_id=episode)).value == [None, False]
        assert (await runtime.call("plant", {}, episode_id=episode)).ok
        runtime.restore(episode, state={"n": 5})
        assert (await runtime.call("look", {}, episode_id=episode)).value == [None, False]
        other = runtime.new_episode()
        assert (await runtime.call("look", {}, episode_id=other)).value == [None, False]
    finally:
        await runtime.aclose()


async def test_a_long_episode_never_fails_a_call_on_its_lifetime_cpu_limit() -> None:
    """An episode's process has a lifetime CPU limit (the kernel's hard limit, which tool code cannot
    raise); the host renews the process before it runs short, so calls that each stay under the per-call
    limit all succeed however many there are."""
    burn = "import time\ndef burn(state):\n    end = time.process_time() + 0.6\n" \
           "    while time.process_time() < end:\n        pass\n" \
           "    state['n'] = state.get('n', 0) + 1\n    return state['n']\n"
    limits = SandboxLimits(cpu_s=1, wall_s=30, process_cpu_s=3)  # 0.6 s a call: the limit is met on call 5
    async with Sandbox(limits=limits, audit_hook=False) as sandbox:
        episode, state = _Episode(), {}
        for n in range(1, 9):
            result = await sandbox.call(burn, "burn", {}, state=state, episode=episode)
            assert result.ok and result.value == n, (n, result)
            state = result.state
        assert sandbox.restarts == 0


async def test_a_call_over_its_cpu_limit_is_stopped_even_when_it_ignores_sigxcpu_and_uses_threads() -> None:
    """The soft RLIMIT_CPU is per call but tool code can ignore SIGXCPU, and the episode's process has
    a lifetime budget far above one call's: the warm parent watches the process's CPU clock during the
    call and stops it at the call's limit (here 1 s, with 4 threads spinning: 3 s of wall clock would
    allow 12 s of CPU)."""
    spin = ("import signal, threading\ndef spin(state):\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
            "    def loop():\n        while True:\n            pass\n"
            "    for _ in range(3):\n        threading.Thread(target=loop, daemon=True).start()\n    loop()\n")
    limits = SandboxLimits(cpu_s=1, wall_s=20, process_cpu_s=60)
    async with Sandbox(limits=limits, audit_hook=False) as sandbox:
        episode = _Episode()
        result = await sandbox.call(spin, "spin", {}, state={}, episode=episode)
        assert not result.ok and result.error_kind == "cpu", result
        assert result.latency_s < 10, result  # stopped near 1 s of CPU, not at the lifetime limit or the wall
        healthy = await sandbox.call(HEALTHY, "healthy", {"x": 3}, episode=episode)
        assert healthy.ok and healthy.value == {"double": 6}
        assert sandbox.restarts == 0  # the process went, not the sandbox


async def test_tool_code_cannot_change_the_hosts_device_nodes_or_flush_its_disks() -> None:
    """/dev/null, /dev/zero and /dev/urandom are the host's inodes bound writable, and when the host runs as
    root the sandbox's user owns them: a chmod there would be the host's (a tool could make the host's
    /dev/null unusable). Mode and time changes are no-ops for tool code, owner changes refused; sync is a
    no-op (scratch is a tmpfs)."""
    source = ("import os\ndef touch():\n    os.chmod('/dev/zero', 0o600)\n    os.utime('/dev/zero', (1, 1))\n"
              "    os.sync()\n    try:\n        os.chown('/dev/zero', 0, 0)\n        chown = 'allowed'\n"
              "    except OSError:\n        chown = 'refused'\n    return chown\n")
    before = os.stat("/dev/zero")
    try:
        async with Sandbox(limits=LIMITS, audit_hook=False) as sandbox:
            result = await sandbox.call(source, "touch", {})
        after = os.stat("/dev/zero")
        assert result.ok and result.value == "refused", result
        assert (after.st_mode, after.st_mtime_ns, after.st_uid) == (before.st_mode, before.st_mtime_ns, before.st_uid)
    finally:
        if os.stat("/dev/zero").st_mode != before.st_mode:  # the protection failed: put the host right
            os.chmod("/dev/zero", before.st_mode & 0o7777)


async def test_a_host_with_over_a_thousand_descriptors_open_still_runs_sandboxes() -> None:
    """The sandbox's control socket keeps its number from the host; a host process with many files open
    (a long test run, a trainer) hands it a number >= 1024, which select() refuses: the warm parent polls.
    And launching a sandbox leaves no descriptor behind in the host (one leaked per launch before)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the host's descriptor limit is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with Sandbox(limits=dataclasses.replace(LIMITS, spare_sandboxes=1)) as sandbox:
            before = len(os.listdir("/proc/self/fd"))
            for x in range(3):
                result = await sandbox.call(HEALTHY, "healthy", {"x": x})  # a sandbox launched for each
                assert result.ok and result.value == {"double": 2 * x}, result
            await anyio.sleep(0.5)
            assert len(os.listdir("/proc/self/fd")) <= before  # the live spare's channel, no more
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
