"""The sandbox worker: runs untrusted tool code, one call at a time, behind the host's limits.

Started by :class:`astra.servers.Sandbox` as ``python -I -S _worker.py CONFIG_JSON`` inside
fresh user, network, mount and pid namespaces (no network, every mount read-only except the
scratch directory, only the sandbox's own processes in ``/proc``), in a pids cgroup, with a
cleaned environment and the scratch directory as its working directory. Standard library
only: this file is also vendored into emitted environment directories.

Protocol on the inherited stdin/stdout (then moved to private descriptors, so that tool
code writing to fd 1 cannot corrupt it): frames of a 4-byte big-endian length plus UTF-8
JSON. Request ``{"hash", "source"?, "entrypoint", "arguments", "state"?, "stateful"}``;
response ``{"ok", "value"?, "error"?, "error_kind"?, "state"?, "stdout", "truncated", "cached"}``.

The audit hook is installed before any tool code runs and stays on for the rest of the
worker's life, in every thread, so there is no switch for tool code to find: it is a
closure held only by the interpreter, and everything it uses was captured when it was
made (tool code may monkeypatch any module). It refuses process and thread creation,
sockets, ctypes, gc introspection, signals, rlimit changes, writes outside the scratch
directory and reads outside the standard library and the scratch directory. The worker's
own protocol code raises no audit event that the hook refuses. Limits: rlimits on address
space, file size, processes and open files, no core dumps, and a CPU-time timer
(``ITIMER_PROF``, whose signal ends the process) armed for each call. stdout/stderr of tool
code go to a bounded buffer.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import stat
import struct
import sys

_MAX_CACHED = 256  # compiled tool modules kept warm; the oldest is dropped beyond this
_HEADER = struct.Struct(">I")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DENIED_IMPORTS = frozenset(
    # Sockets may be imported (email.utils does) but not used: every socket.* audit event is refused.
    {"_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing", "ctypes", "_ctypes", "pty",
     "asyncio", "resource", "signal", "_signal", "mmap", "fcntl", "gc", "faulthandler", "_tracemalloc"}
)
_PATH_EVENTS_WRITE = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.chmod": (0,), "os.chown": (0,),
    "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1), "os.chdir": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,), "os.lchflags": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
}
_PATH_EVENTS_READ = {"os.listdir": (0,), "os.scandir": (0,), "glob.glob": (0,), "os.getxattr": (0,), "os.listxattr": (0,)}
_DENIED_PREFIXES = ("socket.", "ctypes.", "subprocess.", "_winapi.", "pty.", "signal.", "webbrowser.", "urllib.Request",
                    "http.", "ftplib.", "smtplib.", "telnetlib.", "poplib.", "imaplib.", "nntplib.", "gc.", "_thread.", "mmap.")
_DENIED_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill", "os.killpg",
     "os.startfile", "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "os.putenv", "os.unsetenv",
     "os.setuid", "os.setgid", "os.chroot", "_posixsubprocess.fork_exec", "sys._current_frames", "sys.setprofile",
     "sys.settrace", "sys.setrecursionlimit", "os.add_dll_directory", "cpython.run_command", "cpython.run_file"}
)


class SandboxViolation(PermissionError):
    """An operation the sandbox does not allow (raised inside tool code)."""


class _NeedSource(Exception):
    """The host sent a hash the worker no longer (or never) compiled: it resends the source."""


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


def _make_guard(scratch: str, read_roots: list[str]):  # type: ignore[no-untyped-def]
    """The audit hook. Everything it uses is captured here, so tool code cannot patch it."""
    lstat, readlink, getcwd, fsdecode, fspath = os.lstat, os.readlink, os.getcwd, os.fsdecode, os.fspath
    is_link = stat.S_ISLNK
    violation, str_, bytes_, int_, tuple_, isinstance_, len_, any_, frozenset_ = SandboxViolation, str, bytes, int, tuple, isinstance, len, any, frozenset
    denied_events, denied_prefixes, denied_imports = frozenset_(_DENIED_EVENTS), tuple_(_DENIED_PREFIXES), frozenset_(_DENIED_IMPORTS)
    write_events, read_events = dict(_PATH_EVENTS_WRITE), dict(_PATH_EVENTS_READ)
    write_flags = _WRITE_FLAGS

    def resolve(path: object) -> str | None:
        """realpath() from captured primitives (posixpath's own globals are patchable)."""
        if isinstance_(path, int_):
            return None
        if isinstance_(path, bytes_):
            path = fsdecode(path)
        if not isinstance_(path, str_):
            path = fspath(path)
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts: list[str] = []
        pending = path.split("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            candidate = "/" + "/".join(parts + [part])
            try:
                link = is_link(lstat(candidate).st_mode)
            except OSError:
                link = False
            if link and hops < 40:
                hops += 1
                target = readlink(candidate)
                if target.startswith("/"):
                    parts = []
                pending = target.split("/") + pending
                continue
            parts.append(part)
        return "/" + "/".join(parts)

    def within(path: str, roots: list[str]) -> bool:
        return any_(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    scratch = resolve(scratch) or scratch
    readable = [resolve(p) or p for p in read_roots] + [scratch]
    writable = [scratch]

    path_rules = ((write_events, writable, " (outside the scratch directory)"), (read_events, readable, ""))

    def deny(what: str) -> None:
        raise violation(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple_(args) + (None, None, 0))[:3]
            resolved = resolve(path)
            if resolved is None:
                return
            writing = (isinstance_(mode, str_) and any_(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not within(resolved, writable):
                deny(f"writing {resolved!r} (outside the scratch directory)")
            if not writing and not within(resolved, readable):
                deny(f"reading {resolved!r}")
            return
        if event == "import":
            name = str_(args[0]) if len_(args) else ""
            if name.split(".")[0] in denied_imports:
                deny(f"importing {name!r}")
            return
        if event in denied_events or event.startswith(denied_prefixes):
            deny(event)
        for events, roots, why in path_rules:
            positions = events.get(event)
            if positions is None:
                continue
            for pos in positions:
                if pos < len_(args) and args[pos] is not None:
                    resolved = resolve(args[pos])
                    if resolved is not None and not within(resolved, roots):
                        deny(f"{event} on {resolved!r}{why}")
            return

    return hook


def main() -> None:
    import resource
    import signal

    config = json.loads(sys.argv[1])
    scratch = config["scratch"]
    os.chdir(scratch)

    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    mib = 1024 * 1024
    for which, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_AS, int(config["memory_mb"]) * mib),
        (resource.RLIMIT_FSIZE, int(config["file_size_mb"]) * mib),
        (resource.RLIMIT_NPROC, int(config["max_procs"])),
        (resource.RLIMIT_NOFILE, 64),
    ):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    import sysconfig

    read_roots = sorted(
        {p for key in ("stdlib", "platstdlib") if (p := sysconfig.get_paths().get(key))}
        | {os.path.dirname(os.__file__), os.path.dirname(json.__file__)}
        | {"/usr/share/zoneinfo", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero"}
    )
    # Import what tool code commonly needs before the guard exists.
    import collections, datetime, decimal, enum, fractions, functools, hashlib, itertools, random, re, statistics, string, typing, dataclasses, uuid, zoneinfo  # noqa: F401,E401

    setitimer, cpu_timer = signal.setitimer, signal.ITIMER_PROF
    cpu_s = float(config["cpu_s"])
    max_output, max_result, max_state = int(config["max_output_bytes"]), int(config["max_result_bytes"]), int(config["max_state_bytes"])
    dumps, loads = json.dumps, json.loads
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.addaudithook(_make_guard(scratch, read_roots))
    for name in _DENIED_IMPORTS:
        sys.modules.pop(name, None)  # so that `import resource` etc. goes through the audit hook
    del resource, signal

    def read_exact(n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(proto_in, n)
            if not chunk:
                os._exit(0)
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    namespaces: dict[str, dict] = {}
    while True:
        (size,) = _HEADER.unpack(read_exact(4))
        payload = read_exact(size)
        sink = _BoundedText(max_output)
        reply: dict = {}
        digest = ""
        try:
            request = loads(payload)
            digest = request["hash"]
            state = request.get("state")
            setitimer(cpu_timer, cpu_s)
            sys.stdout = sys.stderr = sink
            try:
                ns = namespaces.get(digest)
                if ns is None:
                    source = request.get("source")
                    if source is None:
                        raise _NeedSource
                    ns = {"__name__": "astra_tool_" + digest[:12], "__builtins__": builtins}
                    exec(compile(source, "<tool " + request["entrypoint"] + ">", "exec"), ns)
                    namespaces[digest] = ns
                    while len(namespaces) > _MAX_CACHED:
                        namespaces.pop(next(iter(namespaces)))
                fn = ns.get(request["entrypoint"])
                if not callable(fn):
                    raise NameError(f"the tool source defines no function named {request['entrypoint']!r}")
                args = request.get("arguments") or {}
                value = fn(state, **args) if request.get("stateful") else fn(**args)
                try:
                    encoded = dumps(value, allow_nan=False, ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    reply = {"ok": False, "error_kind": "not_json", "error": f"the tool returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}"}
                else:
                    truncated = len(encoded) > max_result
                    if truncated:
                        value = encoded[:max_result] + f"...[truncated: result was {len(encoded)} characters, limit {max_result}]"
                    else:
                        value = loads(encoded)  # plain JSON data, whatever the tool returned
                    reply = {"ok": True, "value": value, "truncated": truncated}
                    if request.get("stateful"):
                        try:
                            state_json = dumps(state, allow_nan=False, ensure_ascii=False)
                        except (TypeError, ValueError) as exc:
                            reply = {"ok": False, "error_kind": "not_json", "error": f"the tool left a state that is not JSON-serialisable: {exc}"}
                        else:
                            if len(state_json) > max_state:
                                reply = {"ok": False, "error_kind": "state_too_large", "error": f"the tool grew the state to {len(state_json)} characters (limit {max_state})"}
                            else:
                                reply["state"] = loads(state_json)
            finally:
                setitimer(cpu_timer, 0)
                sys.stdout, sys.stderr = real_stdout, real_stderr
        except _NeedSource:
            reply = {"ok": False, "error_kind": "need_source", "error": "the worker no longer holds this tool's code"}
        except MemoryError:
            reply = {"ok": False, "error_kind": "memory", "error": f"the tool ran out of memory (limit {config['memory_mb']} MiB)"}
        except RecursionError:
            reply = {"ok": False, "error_kind": "exception", "error": "RecursionError: maximum recursion depth exceeded"}
        except BaseException as exc:  # tool code raised: report it to the model, keep serving
            line = ""
            try:
                kind = "forbidden" if isinstance(exc, SandboxViolation) or isinstance(exc.__context__, SandboxViolation) else "exception"
                tb = exc.__traceback__
                while tb is not None:
                    if tb.tb_frame.f_code.co_filename.startswith("<tool "):
                        line = f" (line {tb.tb_lineno})"
                    tb = tb.tb_next
                message = f"{type(exc).__name__}: {exc}"
            except BaseException:  # a hostile __str__
                kind, message = "exception", "the tool raised an exception whose message cannot be shown"
            reply = {"ok": False, "error_kind": kind, "error": message[:4000] + line}
        reply["stdout"] = sink.text()
        reply["cached"] = digest in namespaces
        value = state = fn = args = request = exc = None  # noqa: F841
        try:
            data = dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except BaseException as error:
            data = dumps({"ok": False, "error_kind": "not_json", "error": str(error)[:500], "stdout": "", "cached": False}).encode()
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(proto_out, view):]


if __name__ == "__main__":
    main()
