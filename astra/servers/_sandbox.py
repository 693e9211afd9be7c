"""Host side of the sandbox: a warm worker process that runs untrusted tool code.

Only the standard library, ``anyio`` and (for types) nothing else: this module is
vendored into emitted environment directories, which need nothing but Python and ``mcp``.

Isolation, outermost first (probed once per process; each missing layer is warned about
loudly and reported in ``Sandbox.isolation``):
- ``unshare --user --map-root-user --net --mount --pid --fork --kill-child --mount-proc``:
  no network (a fresh network namespace: loopback down, no route anywhere); every mount
  remounted read-only except the scratch directory (kernel-enforced write confinement);
  a private ``/proc`` showing only the sandbox's processes (no host environment variables);
- a pids cgroup (cgroup v1 ``pids`` controller, when writable) with ``pids.max``;
- a cleaned environment (no host variables), the scratch directory as cwd and HOME;
- the wall-clock timeout here, and the worker's rlimits, CPU timer and audit hook (``_worker``).
Where only ``unshare --net`` works, writes are confined by the audit hook alone; where no
namespace works, the audit hook also refuses sockets.

A crash, timeout or limit hit kills and restarts the worker; the caller's state is never
touched because the worker gets a copy and the new state only comes back on success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

log = logging.getLogger("astra.servers.sandbox")

_HEADER = struct.Struct(">I")
_WORKER = Path(__file__).with_name("_worker.py")
_CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


class SandboxError(RuntimeError):
    """The sandbox itself could not start or talk to its worker (not a tool failure)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call limits for sandboxed tool code."""

    cpu_s: float = 2.0
    memory_mb: int = 256
    max_procs: int = 16
    file_size_mb: int = 16
    wall_s: float = 5.0
    max_output_bytes: int = 64 * 1024
    max_result_bytes: int = 256 * 1024
    max_state_bytes: int = 8 * 1024 * 1024


@dataclass
class SandboxResult:
    """The outcome of one sandboxed call. ``state`` is the state after a successful stateful call."""

    ok: bool
    value: Any = None
    error: str | None = None
    error_kind: str | None = None
    state: dict[str, Any] | None = None
    latency_s: float = 0.0
    stdout: str = ""
    truncated: bool = False
    restarted: bool = False


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


# Run inside fresh user, network, mount and pid namespaces (unshare --fork makes this shell
# pid 1 of the new pid namespace, and /proc shows only the sandbox's processes): join the
# pids cgroup, keep the scratch directory writable, make every other mount read-only, then
# run the worker as a child so that its death by a signal comes back as 128 + signal.
_CONFINE = r"""
scratch="$1"; cgroup="$2"; shift 2
if [ -n "$cgroup" ]; then echo 0 > "$cgroup/cgroup.procs" 2>/dev/null || true; fi
mount --bind "$scratch" "$scratch" || exit 97
for m in $(awk '{print $2}' /proc/self/mounts | sort -r -u); do
  [ "$m" = "$scratch" ] && continue
  mount -o remount,bind,ro "$m" 2>/dev/null || { [ "$m" = / ] && exit 97; }
done
"$@"
exit $?
"""


@dataclass(frozen=True)
class _Isolation:
    prefix: tuple[str, ...]
    confine: bool  # the prefix runs _CONFINE: read-only mounts, pid namespace
    network: bool


_ISOLATION: dict[str, _Isolation] = {}


def _isolation() -> _Isolation:
    """The strongest isolation this host allows (probed once per process); warns loudly when weak."""
    if "probe" in _ISOLATION:
        return _ISOLATION["probe"]
    unshare = shutil.which("unshare")
    chosen = _Isolation(prefix=(), confine=False, network=False)
    if unshare and sys.platform.startswith("linux"):
        users = [("--user", "--map-root-user")] + ([()] if os.geteuid() == 0 else [])
        full = [
            _Isolation((unshare, *u, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "sh", "-c", _CONFINE, "astra-sandbox"), True, True)
            for u in users
        ]
        net_only = [_Isolation((unshare, *u, "--net"), False, True) for u in users]
        with tempfile.TemporaryDirectory(prefix="astra-sandbox-probe-") as scratch:
            for candidate in full + net_only:
                args = [*candidate.prefix, scratch, "", "true"] if candidate.confine else [*candidate.prefix, "true"]
                try:
                    done = subprocess.run(args, capture_output=True, timeout=20)
                except (OSError, subprocess.SubprocessError):
                    continue
                if done.returncode == 0:
                    chosen = candidate
                    break
    if not chosen.confine:
        message = (
            "SANDBOX WARNING: "
            + ("mount/pid namespaces are not available here; writes outside the scratch directory are refused only by the worker's audit hook"
               if chosen.network else
               "network namespaces are not available here (unshare failed); sandboxed tool code runs WITHOUT kernel network or filesystem isolation, relying on the worker's audit hook")
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning(message)
    _ISOLATION["probe"] = chosen
    return chosen


def _namespace_prefix() -> list[str] | None:
    """A command prefix that runs a command without network access (for tests and tools), or None."""
    iso = _isolation()
    if not iso.network:
        return None
    if iso.confine:
        return [*iso.prefix, tempfile.gettempdir(), ""]
    return list(iso.prefix)


def _sweep_stale_cgroups() -> None:
    """Remove pids cgroups left by sandbox hosts that exited without closing (a server killed mid-run)."""
    for path in _CGROUP_PIDS.glob("astra-sandbox-*"):
        try:
            owner = int(path.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if owner == os.getpid():
            continue
        try:
            os.kill(owner, 0)
            continue  # its host is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            path.rmdir()  # refused while a worker still runs in it
        except OSError:
            pass


@dataclass
class _Resources:
    """What a sandbox holds outside Python: released by ``aclose`` or, failing that, by a finalizer."""

    scratch: Path | None
    log: Path
    pid: int | None = None
    cgroup: Path | None = None


def _release(res: _Resources) -> None:
    if res.pid is not None:
        try:
            os.kill(res.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        res.pid = None
    if res.scratch is not None:
        shutil.rmtree(res.scratch, ignore_errors=True)
    try:
        res.log.unlink()
    except OSError:
        pass
    if res.cgroup is not None:
        try:
            res.cgroup.rmdir()  # refused while a killed worker is still exiting; swept later
        except OSError:
            pass


class _WorkerProcess:
    """The worker with non-blocking pipes driven by anyio: not bound to an event loop, so one
    sandbox serves every loop of its process (and nothing is left to an asyncio transport)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdin is not None and popen.stdout is not None
        self.popen = popen
        self.pid = popen.pid
        self._in, self._out = popen.stdin.fileno(), popen.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        self._buffer = bytearray()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                await anyio.wait_writable(self._in)

    async def receive_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                chunk = os.read(self._out, max(65536, n - len(self._buffer)))
            except BlockingIOError:
                await anyio.wait_readable(self._out)
                continue
            if not chunk:
                raise EOFError("the worker closed its pipe")
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass

    async def wait(self, timeout: float = 10.0) -> int | None:
        with anyio.move_on_after(timeout):
            while self.popen.poll() is None:
                await anyio.sleep(0.002)
        return self.popen.poll()

    def close(self) -> None:
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class Sandbox:
    """A warm worker process for untrusted tool code.

    ``async with Sandbox(limits=SandboxLimits(...)) as sb: await sb.call(source, entrypoint, args)``.
    Calls are serialised (one worker, one call at a time); use several sandboxes for
    parallelism. Compiled tool source is cached in the worker by its hash.
    """

    def __init__(self, limits: SandboxLimits | None = None, scratch_dir: str | os.PathLike[str] | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._own_scratch = scratch_dir is None
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="astra-sandbox-"))
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._process: _WorkerProcess | None = None
        self._known: set[str] = set()
        self._lock = anyio.Lock()
        self._lock_token: object = None
        self._cgroup: Path | None = None
        self._log_path = Path(tempfile.mkstemp(prefix="astra-sandbox-", suffix=".log")[1])
        self.restarts = 0
        self.isolation: dict[str, bool] = {}
        self._res = _Resources(scratch=self.scratch_dir if self._own_scratch else None, log=self._log_path)
        self._finalizer = weakref.finalize(self, _release, self._res)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._process is None:
            await self._spawn()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._kill()
            self._res.cgroup, self._cgroup = self._cgroup, None
            self._finalizer()

    def _make_cgroup(self) -> Path | None:
        if not _CGROUP_PIDS.is_dir() or not os.access(_CGROUP_PIDS, os.W_OK):
            return None
        _sweep_stale_cgroups()
        path = _CGROUP_PIDS / f"astra-sandbox-{os.getpid()}-{id(self):x}"
        try:
            path.mkdir(exist_ok=True)
            (path / "pids.max").write_text(str(self.limits.max_procs))
        except OSError:
            return None
        return path

    async def _spawn(self) -> None:
        limits = self.limits
        config = {
            "scratch": str(self.scratch_dir),
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "max_procs": limits.max_procs,
            "file_size_mb": limits.file_size_mb,
            "max_output_bytes": limits.max_output_bytes,
            "max_result_bytes": limits.max_result_bytes,
            "max_state_bytes": limits.max_state_bytes,
        }
        iso = _isolation()
        if self._cgroup is None:
            self._cgroup = self._make_cgroup()
        worker = [sys.executable, "-I", "-S", str(_WORKER), json.dumps(config)]
        if iso.confine:
            command = [*iso.prefix, str(self.scratch_dir.resolve()), str(self._cgroup or ""), *worker]
        else:
            command = [*iso.prefix, *worker]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.scratch_dir), "TMPDIR": str(self.scratch_dir)}
        with self._log_path.open("wb") as log_file:
            try:
                popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, cwd=str(self.scratch_dir), env=env, close_fds=True)
            except OSError as exc:
                raise SandboxError(f"cannot start the sandbox worker: {exc}") from exc
        self._process = _WorkerProcess(popen)
        self._res.pid, self._res.cgroup = self._process.pid, self._cgroup
        self._known = set()
        if self._cgroup is not None and not iso.confine:
            try:
                (self._cgroup / "cgroup.procs").write_text(str(self._process.pid))
            except OSError:
                pass
        self.isolation = {
            "network_namespace": iso.network,
            "readonly_filesystem": iso.confine,
            "pid_namespace": iso.confine,
            "pids_cgroup": self._cgroup is not None,
        }

    def abandon(self) -> None:
        """Kill the worker without waiting for it (outside any event loop)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.close()
        self._res.pid = None
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self._cgroup is not None:
            try:
                self._cgroup.rmdir()  # fails while a killed worker is still exiting; harmless, pids.max stays
            except OSError:
                pass
            self._cgroup = self._res.cgroup = None

    async def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        await process.wait()
        process.close()
        self._res.pid = None

    async def _restart(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._kill()
            self.restarts += 1
            await self._spawn()

    # ------------------------------------------------------------------ calls

    async def call(
        self,
        source: str,
        entrypoint: str,
        arguments: dict[str, Any],
        *,
        state: dict[str, Any] | None = None,
    ) -> SandboxResult:
        """Run ``entrypoint(**arguments)`` (or ``entrypoint(state, **arguments)`` when a state is
        given) from ``source`` in the worker. Never raises for tool failures: see ``SandboxResult``."""
        start = time.perf_counter()
        stateful = state is not None
        digest = source_hash(source)
        async with self._current_lock():
            if self._process is None:
                await self._spawn()
            request: dict[str, Any] = {
                "hash": digest,
                "entrypoint": entrypoint,
                "arguments": arguments,
                "stateful": stateful,
                "state": state,
            }
            for attempt in range(2):
                if digest not in self._known:
                    request["source"] = source
                try:
                    payload = json.dumps(request, allow_nan=False).encode("utf-8")
                except (TypeError, ValueError) as exc:
                    return SandboxResult(ok=False, error_kind="not_json", error=f"arguments or state are not JSON: {exc}", latency_s=time.perf_counter() - start)
                result, cached = await self._exchange(payload)
                if cached:
                    self._known.add(digest)
                else:
                    self._known.discard(digest)
                if result.error_kind != "need_source" or attempt:
                    break
            result.latency_s = time.perf_counter() - start
            return result

    def _current_lock(self) -> anyio.Lock:
        """The call lock of the running event loop (a sandbox may serve several loops in turn)."""
        token = anyio.lowlevel.current_token()
        if self._lock_token != token:
            self._lock, self._lock_token = anyio.Lock(), token
        return self._lock

    async def _exchange(self, payload: bytes) -> tuple[SandboxResult, bool]:
        """Send one request; the reply and whether the worker now holds the tool's compiled code."""
        process = self._process
        assert process is not None
        completed = False
        try:
            with anyio.fail_after(self.limits.wall_s):
                try:
                    await process.send(_HEADER.pack(len(payload)) + payload)
                    (size,) = _HEADER.unpack(await process.receive_exactly(4))
                    body = await process.receive_exactly(size)
                except (EOFError, OSError):
                    return await self._died(), False
            try:
                data = json.loads(body)
            except ValueError:
                await self._restart()
                return SandboxResult(ok=False, error_kind="crash", error="the sandbox worker sent a corrupt reply; it was restarted", restarted=True), False
            completed = True
            return SandboxResult(
                ok=bool(data.get("ok")),
                value=data.get("value"),
                error=data.get("error"),
                error_kind=data.get("error_kind"),
                state=data.get("state"),
                stdout=data.get("stdout") or "",
                truncated=bool(data.get("truncated")),
            ), bool(data.get("cached"))
        except TimeoutError:
            await self._restart()
            return SandboxResult(
                ok=False,
                error_kind="timeout",
                error=f"the tool did not finish within {self.limits.wall_s:g} s (wall-clock limit); it was stopped",
                restarted=True,
            ), False
        finally:
            if not completed and self._process is process:
                # Cancelled mid-exchange: the worker's reply would desynchronise the next call.
                with anyio.CancelScope(shield=True):
                    await self._restart()

    async def _died(self) -> SandboxResult:
        process = self._process
        code = None
        if process is not None:
            with anyio.CancelScope(shield=True):
                code = await process.wait(timeout=2)
        await self._restart()
        # A signal shows as a negative code, or as 128 + signal when the confining shell reports it.
        sig = -code if code is not None and code < 0 else (code - 128 if code is not None and 128 < code < 160 else None)
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig in (signal.SIGPROF, signal.SIGXCPU):
                return SandboxResult(ok=False, error_kind="cpu", error=f"the tool used more than {self.limits.cpu_s:g} s of CPU; it was stopped", restarted=True)
            if sig == signal.SIGXFSZ:
                return SandboxResult(ok=False, error_kind="file_size", error=f"the tool wrote a file larger than {self.limits.file_size_mb} MiB; it was stopped", restarted=True)
            if sig == signal.SIGKILL:
                return SandboxResult(ok=False, error_kind="memory", error="the tool's worker was killed (out of memory or a limit); it was restarted", restarted=True)
            return SandboxResult(ok=False, error_kind="crash", error=f"the tool's worker died ({name}); it was restarted", restarted=True)
        return SandboxResult(ok=False, error_kind="crash", error=f"the tool's worker exited unexpectedly (code {code}); it was restarted", restarted=True)

