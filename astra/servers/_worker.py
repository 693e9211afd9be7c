"""The sandbox worker: runs untrusted tool code, one call at a time, behind the host's limits.

Started by :class:`astra.servers.Sandbox` as ``python -I -S _worker.py CONFIG_JSON`` inside
``unshare --user --map-root-user -n`` (no network), with a cleaned environment and the
scratch directory as its working directory. Standard library only: this file is also
vendored into emitted environment directories.

Protocol on the inherited stdin/stdout (then moved to private descriptors, so that tool
code writing to fd 1 cannot corrupt it): frames of a 4-byte big-endian length plus UTF-8
JSON. Request ``{"hash", "source"?, "entrypoint", "arguments", "state"?, "stateful"}``;
response ``{"ok", "value"?, "error"?, "error_kind"?, "state"?, "stdout", "truncated"}``.

Guards applied here (defence in depth; the host adds the wall-clock timeout, the network
namespace and a pids cgroup):
- rlimits: address space, file size, processes, open files, no core dumps, and a CPU
  soft limit re-armed before each call (the worker is long-lived, CPU time accumulates);
- an audit hook, active only while tool code runs, that refuses process creation,
  sockets, ctypes, writes outside the scratch directory, reads outside the standard
  library and the scratch directory, signals and rlimit changes;
- stdout/stderr of tool code captured into a bounded buffer.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import struct
import sys
import traceback

_HEADER = struct.Struct(">I")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DENIED_IMPORTS = frozenset(
    # Sockets may be imported (email.utils does) but not used: every socket.* audit event is refused.
    {"_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing", "ctypes", "_ctypes", "pty", "asyncio", "resource", "signal", "mmap", "fcntl"}
)
_PATH_EVENTS_WRITE = {
    "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": (0, 1), "os.chmod": 0, "os.chown": 0,
    "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": 0, "os.utime": 0, "shutil.rmtree": 0,
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1), "os.chdir": 0,
    "os.setxattr": 0, "os.removexattr": 0, "os.chflags": 0, "os.lchflags": 0, "os.mkfifo": 0, "os.mknod": 0,
}
_PATH_EVENTS_READ = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.getxattr": 0, "os.listxattr": 0}
_DENIED_PREFIXES = ("socket.", "ctypes.", "subprocess.", "winreg.", "_winapi.", "pty.", "signal.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "telnetlib.", "poplib.", "imaplib.", "nntplib.")
_DENIED_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill", "os.killpg",
     "os.startfile", "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "os.putenv", "os.unsetenv",
     "os.setuid", "os.setgid", "os.chroot", "_posixsubprocess.fork_exec", "sys._current_frames", "sys.setprofile", "sys.settrace"}
)


_MAX_CACHED = 256  # compiled tool modules kept warm; the oldest is dropped beyond this


class _NeedSource(Exception):
    """The host sent a hash the worker no longer (or never) compiled: it resends the source."""


class SandboxViolation(PermissionError):
    """An operation the sandbox does not allow (raised inside tool code)."""


class _Guard:
    def __init__(self, scratch: str, read_roots: list[str]) -> None:
        self.scratch = os.path.realpath(scratch)
        self.read_roots = [os.path.realpath(p) for p in read_roots] + [self.scratch]
        self.active = False
        self.busy = False
        self.violations: list[str] = []

    def _resolve(self, path: object) -> str | None:
        if isinstance(path, int):
            return None
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path)  # type: ignore[arg-type]
        return os.path.realpath(os.path.join(self.scratch, path))

    @staticmethod
    def _within(path: str, roots: list[str]) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    def _deny(self, what: str) -> None:
        self.violations.append(what)
        raise SandboxViolation(f"sandbox: {what} is not allowed")

    def hook(self, event: str, args: tuple) -> None:
        if not self.active or self.busy:
            return
        self.busy = True
        try:
            self._check(event, args)
        finally:
            self.busy = False

    def _check(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            resolved = self._resolve(path)
            if resolved is None:
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if writing and not self._within(resolved, [self.scratch]):
                self._deny(f"writing {resolved!r} (outside the scratch directory)")
            if not writing and not self._within(resolved, self.read_roots):
                self._deny(f"reading {resolved!r}")
            return
        if event == "import":
            name = str(args[0]) if args else ""
            if name.split(".")[0] in _DENIED_IMPORTS:
                self._deny(f"importing {name!r}")
            return
        if event in _DENIED_EVENTS or event.startswith(_DENIED_PREFIXES):
            self._deny(f"{event}")
        if event in _PATH_EVENTS_WRITE:
            positions = _PATH_EVENTS_WRITE[event]
            for pos in positions if isinstance(positions, tuple) else (positions,):
                if pos < len(args) and args[pos] is not None:
                    resolved = self._resolve(args[pos])
                    if resolved is not None and not self._within(resolved, [self.scratch]):
                        self._deny(f"{event} on {resolved!r} (outside the scratch directory)")
            return
        if event in _PATH_EVENTS_READ:
            pos = _PATH_EVENTS_READ[event]
            if pos < len(args) and args[pos] is not None:
                resolved = self._resolve(args[pos])
                if resolved is not None and not self._within(resolved, self.read_roots):
                    self._deny(f"{event} on {resolved!r}")


class _BoundedText(io.TextIOBase):
    """A text sink that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self.limit - self.kept
        if room > 0:
            piece = s[:room]
            self.parts.append(piece)
            self.kept += len(piece)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def text(self) -> str:
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n...[output truncated: {self.dropped} more characters]"
        return out


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def main() -> None:
    import resource  # kept private below; tool code cannot import it

    config = json.loads(sys.argv[1])
    scratch = config["scratch"]
    os.chdir(scratch)

    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    mib = 1024 * 1024

    def limit(which: int, value: int) -> None:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_AS, int(config["memory_mb"]) * mib)
    limit(resource.RLIMIT_FSIZE, int(config["file_size_mb"]) * mib)
    limit(resource.RLIMIT_NPROC, int(config["max_procs"]))
    limit(resource.RLIMIT_NOFILE, 64)
    cpu_s = float(config["cpu_s"])
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    max_output = int(config["max_output_bytes"])
    max_result = int(config["max_result_bytes"])
    max_state = int(config["max_state_bytes"])

    import sysconfig

    read_roots = sorted(
        {p for key in ("stdlib", "platstdlib") if (p := sysconfig.get_paths().get(key))}
        | {os.path.dirname(os.__file__), os.path.dirname(json.__file__)}
        | {"/usr/share/zoneinfo", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero"}
    )
    guard = _Guard(scratch, read_roots)
    sys.addaudithook(guard.hook)
    # Import what tool code commonly needs while the guard is still off.
    import collections, datetime, decimal, fractions, functools, hashlib, itertools, random, re, statistics, string  # noqa: F401,E401
    for name in _DENIED_IMPORTS:
        sys.modules.pop(name, None)  # so that `import resource` etc. goes through the audit hook

    namespaces: dict[str, dict] = {}
    real_stdout, real_stderr = sys.stdout, sys.stderr

    while True:
        try:
            (size,) = _HEADER.unpack(_read_exact(proto_in, 4))
            request = json.loads(_read_exact(proto_in, size))
        except EOFError:
            return
        response: dict
        sink = _BoundedText(max_output)
        guard.violations.clear()
        state = request.get("state")
        try:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            used = usage.ru_utime + usage.ru_stime
            soft = int(math.ceil(used + cpu_s))
            if cpu_hard != resource.RLIM_INFINITY:
                soft = min(soft, cpu_hard)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
            sys.stdout = sys.stderr = sink
            guard.active = True
            try:
                ns = namespaces.get(request["hash"])
                if ns is None:
                    source = request.get("source")
                    if source is None:
                        raise _NeedSource
                    ns = {"__name__": "astra_tool_" + request["hash"][:12], "__builtins__": builtins}
                    exec(compile(source, "<tool " + request["entrypoint"] + ">", "exec"), ns)
                    namespaces[request["hash"]] = ns
                    while len(namespaces) > _MAX_CACHED:
                        namespaces.pop(next(iter(namespaces)))
                fn = ns.get(request["entrypoint"])
                if not callable(fn):
                    raise NameError(f"the tool source defines no function named {request['entrypoint']!r}")
                args = request.get("arguments") or {}
                value = fn(state, **args) if request.get("stateful") else fn(**args)
            finally:
                guard.active = False
                sys.stdout, sys.stderr = real_stdout, real_stderr
            if guard.violations:
                response = {"ok": False, "error_kind": "forbidden", "error": "; ".join(f"sandbox: {v} is not allowed" for v in guard.violations[:5])}
            else:
                try:
                    encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    response = {"ok": False, "error_kind": "not_json", "error": f"the tool returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}"}
                else:
                    truncated = len(encoded) > max_result
                    if truncated:
                        value = encoded[:max_result] + f"...[truncated: result was {len(encoded)} characters, limit {max_result}]"
                    response = {"ok": True, "value": value, "truncated": truncated}
                    if request.get("stateful"):
                        try:
                            state_json = json.dumps(state, allow_nan=False, ensure_ascii=False)
                        except (TypeError, ValueError) as exc:
                            response = {"ok": False, "error_kind": "not_json", "error": f"the tool left a state that is not JSON-serialisable: {exc}"}
                        else:
                            if len(state_json) > max_state:
                                response = {"ok": False, "error_kind": "state_too_large", "error": f"the tool grew the state to {len(state_json)} characters (limit {max_state})"}
                            else:
                                response["state"] = state
        except _NeedSource:
            guard.active = False
            sys.stdout, sys.stderr = real_stdout, real_stderr
            response = {"ok": False, "error_kind": "need_source", "error": "the worker no longer holds this tool's code"}
        except MemoryError:
            guard.active = False
            sys.stdout, sys.stderr = real_stdout, real_stderr
            response = {"ok": False, "error_kind": "memory", "error": f"the tool ran out of memory (limit {config['memory_mb']} MiB)"}
        except RecursionError:
            guard.active = False
            sys.stdout, sys.stderr = real_stdout, real_stderr
            response = {"ok": False, "error_kind": "exception", "error": "RecursionError: maximum recursion depth exceeded"}
        except BaseException as exc:  # tool code raised: report it to the model, keep serving
            guard.active = False
            sys.stdout, sys.stderr = real_stdout, real_stderr
            kind = "forbidden" if guard.violations or isinstance(exc, SandboxViolation) else "exception"
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<tool ")]
            where = f" (line {frames[-1].lineno})" if frames else ""
            response = {"ok": False, "error_kind": kind, "error": f"{type(exc).__name__}: {exc}{where}"}
        response["stdout"] = sink.text()
        response["cached"] = request["hash"] in namespaces
        try:
            data = json.dumps(response, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError) as exc:
            data = json.dumps({"ok": False, "error_kind": "not_json", "error": str(exc), "stdout": ""}).encode()
        _write_all(proto_out, _HEADER.pack(len(data)) + data)


if __name__ == "__main__":
    main()
