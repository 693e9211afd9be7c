"""The red-team suite: every attack of ``redteam_attacks`` is contained, through the sandbox API and
through an emitted ``server.py`` driven over stdio by the official mcp client, with the worker's
audit hook switched OFF (containment must not rest on it). After each attack: no host canary was
touched, a probe call finds nothing the attack changed, the episode's state is unchanged when the
call failed, and a healthy call succeeds with the right value (no reply reached another call).

One sandbox and one server process serve the whole module (attacks are parametrized over them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import sys
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

sys.path.insert(0, str(Path(__file__).parent))
from redteam_attacks import ATTACKS, BUMP, HEALTHY, MUST_FAIL, PERSISTENCE, PROBE  # noqa: E402

LIMITS = SandboxLimits(cpu_s=1, wall_s=3, memory_mb=256, max_procs=16, scratch_mb=32, file_size_mb=16,
                       max_output_bytes=4096, max_result_bytes=100_000)


class Canaries:
    """Host things the attacks aim at; ``breached()`` lists any that was reached."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = "astra-canary-" + secrets.token_hex(8)
        self.secret_path = root / f"{self.token}.txt"
        self.secret_path.write_text(f"TOPSECRET {self.token}\n")
        self.target = root / "pwned.txt"
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.tcp.setblocking(False)
        self.tcp6: socket.socket | None = None
        try:
            self.tcp6 = socket.socket(socket.AF_INET6)
            self.tcp6.bind(("::1", self.tcp.getsockname()[1]))
            self.tcp6.listen()
            self.tcp6.setblocking(False)
        except OSError:
            self.tcp6 = None
        self.unix_path = str(root / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.unix.setblocking(False)
        self.abstract = self.token
        self.unix_abstract = socket.socket(socket.AF_UNIX)
        self.unix_abstract.bind("\0" + self.abstract)
        self.unix_abstract.listen()
        self.unix_abstract.setblocking(False)
        self.stdlib_mtime = Path(os.__file__).stat().st_mtime_ns

    def ctx(self) -> dict[str, Any]:
        return {"secret_path": str(self.secret_path), "target": str(self.target), "port": self.tcp.getsockname()[1],
                "unix_path": self.unix_path, "abstract": self.abstract}

    def breached(self) -> list[str]:
        found = []
        for name, listener in (("tcp", self.tcp), ("tcp6", self.tcp6), ("unix", self.unix),
                               ("abstract", self.unix_abstract)):
            if listener is None:
                continue
            try:
                listener.accept()[0].close()
                found.append(f"{name} listener was reached")
            except BlockingIOError:
                pass
        if self.target.exists():
            found.append("host file written")
        if Path("/pwned").exists() or Path("/usr/pwned").exists():
            found.append("host root written")
        if Path(os.__file__).stat().st_mtime_ns != self.stdlib_mtime:
            found.append("standard library modified")
        return found

    def close(self) -> None:
        for listener in (self.tcp, self.tcp6, self.unix, self.unix_abstract):
            if listener is not None:
                listener.close()


def _leaked(text: str, canaries: Canaries) -> bool:
    return "ESCAPED" in text or "TOPSECRET" in text or "root:x:0:0" in text


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canaries]:
    # a short path: AF_UNIX paths are limited to 108 bytes
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"astra-rt-{secrets.token_hex(4)}"
    root.mkdir()
    c = Canaries(root)
    yield c
    c.close()
    for path in root.iterdir():
        path.unlink()
    root.rmdir()


# --------------------------------------------------------------------------- the sandbox API


class _Episode:
    """An episode key for the Sandbox API."""


@pytest.fixture(scope="module", params=list(ProcessScope))
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    box = Sandbox(limits=dataclasses.replace(LIMITS, process_scope=request.param), audit_hook=False)
    anyio.run(box.start)
    assert box.isolation["bubblewrap"] and box.isolation["seccomp"] and not box.isolation["audit_hook"]
    yield box
    anyio.run(box.aclose)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_through_the_sandbox_api(name: str, sandbox: Sandbox, canaries: Canaries) -> None:
    """ProcessScope.CALL: the probe runs in the attack's own episode (nothing crosses calls).
    EPISODE: what an attack leaves may last its episode (a real server's semantics), so the probe
    runs in another episode, and in the attack's episode once it was renewed (a restore)."""
    per_call = sandbox.limits.process_scope is ProcessScope.CALL

    async def run() -> None:
        episode = _Episode()
        state = {"n": 1}
        result = await sandbox.call(ATTACKS[name], "attack", {"ctx": canaries.ctx()}, state=state, episode=episode)
        seen = json.dumps([result.value, result.error, result.stdout, result.state], default=str)
        assert not _leaked(seen, canaries), (name, result)
        if name in MUST_FAIL:
            assert not result.ok and result.error, (name, result)
        if not result.ok:
            assert result.error_kind is not None and result.state is None, result
        assert state == {"n": 1}  # the caller's state object is never touched
        for where in ([episode] if per_call else [_Episode(), episode]):
            probe = await sandbox.call(PROBE, "probe", {"ctx": canaries.ctx()}, state={"n": 0}, episode=where)
            assert probe.ok and probe.value == "CLEAN", (name, probe)
            sandbox.renew(episode)
        healthy = await sandbox.call(HEALTHY, "healthy", {}, state={"x": 4}, episode=episode)
        assert healthy.ok and healthy.value == {"double": 8}, (name, healthy)

    anyio.run(run)
    assert canaries.breached() == [], name


# --------------------------------------------------------------------------- an emitted server over stdio


def _tool(name: str, source: str, entrypoint: str) -> ToolImplementation:
    schema = {"type": "object", "properties": {"ctx": {"type": "object"}}}
    return ToolImplementation(spec=ToolSpec(server="redteam", name=name, description=name, input_schema=schema),
                              source=source, entrypoint=entrypoint, stateful=True)


class Served:
    def __init__(self, portal: anyio.from_thread.BlockingPortal, client: Client, scope: ProcessScope) -> None:
        self.portal, self.client, self.scope = portal, client, scope
        self.control = EnvironmentControl(client)

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return self.portal.call(lambda: self.client.call_tool(tool, arguments))

    def reset(self) -> Any:
        return self.portal.call(self.control.reset)


@pytest.fixture(scope="module", params=list(ProcessScope))
def served(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Served]:
    tools = [_tool(f"attack_{name}", source, "attack") for name, source in ATTACKS.items()]
    tools += [_tool("probe", PROBE, "probe"), _tool("bump", BUMP, "bump"), _tool("healthy", HEALTHY, "healthy")]
    spec = EnvironmentSpec(id="env-redteam", name="redteam", tools=tools, initial_state={"n": 0, "x": 21})
    directory = emit(spec, tmp_path_factory.mktemp("redteam") / "server")
    params = stdio_parameters(directory)
    limits = {**LIMITS.__dict__, "process_scope": request.param}
    params.env = {**(params.env or {}), AUDIT_HOOK_ENV: "0", LIMITS_ENV: json.dumps(limits),
                  "ASTRA_CANARY_SECRET": "CANARY-hunter2"}
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(Client(params)) as client:
            yield Served(portal, client, ProcessScope(request.param))


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content) + json.dumps(result.structured_content)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_through_an_emitted_server(name: str, served: Served, canaries: Canaries) -> None:
    before = served.call("bump", {})
    assert not before.is_error, _text(before)
    n = before.structured_content["result"]
    result = served.call(f"attack_{name}", {"ctx": canaries.ctx()})
    assert not _leaked(_text(result), canaries), (name, _text(result))
    if name in MUST_FAIL:
        assert result.is_error, (name, _text(result))
    after = served.call("bump", {})
    # a failed call leaves the episode's state unchanged; a call that returned keeps its +100 (a frame
    # forged with its own call's nonce is just that call's own result: state n = 10**6)
    expected = 10**6 + 1 if name == "forged_own_nonce" else n + (1 if result.is_error else 101)
    assert after.structured_content["result"] == expected, (name, _text(result))
    if served.scope is ProcessScope.CALL:  # nothing crosses calls; with EPISODE, only episodes (reset below)
        probe = served.call("probe", {"ctx": canaries.ctx()})
        assert _text(probe).startswith("CLEAN"), (name, _text(probe))
    if name in PERSISTENCE or served.scope is ProcessScope.EPISODE:
        state = served.reset()
        assert state["n"] == 0
        probe = served.call("probe", {"ctx": canaries.ctx()})
        assert _text(probe).startswith("CLEAN"), (name, _text(probe))
    healthy = served.call("healthy", {})
    assert healthy.structured_content == {"double": 42}, (name, _text(healthy))
    assert canaries.breached() == [], name


def test_the_suite_is_large_enough() -> None:
    assert len(ATTACKS) >= 40
