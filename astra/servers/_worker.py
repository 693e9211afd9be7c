"""The sandbox worker: a warm, pre-imported parent that forks the processes tool code runs in.

Started by :class:`astra.servers.Sandbox` as ``python -I -S -B _worker.py CONFIG_JSON`` inside
bubblewrap (see ``_sandbox``: unprivileged uid, no capabilities, no new privileges, fresh user,
pid, network, ipc, uts and cgroup namespaces, no namespace creation, a minimal read-only
filesystem, no ``/proc``, a size-limited tmpfs as scratch, a seccomp deny-list). Standard library
only: this file is also vendored into emitted environment directories.

One worker serves one episode (the host launches a bubblewrap sandbox per episode, so the pid
namespace, the scratch tmpfs and this parent are the episode's own). The parent (``main``) never
runs tool code and never sees a request or a reply: it forks spare children ahead of their calls
and hands each to the host on the control socket (an inherited ``SOCK_SEQPACKET`` descriptor) as
``{"op": "spare", "pid"}`` with the host's ends of the spare's request and reply FIFOs (made on the
sandbox's own tmpfs, see ``_fork_spare``). A spare confines itself and warms up
before it waits: it closes every other descriptor, sets its rlimits (address space, file size,
processes, open files, CPU, no core), loads the tool-code seccomp filter (no exec, no fork, no
signals to other processes, no sockets, no pipes, no F_SETOWN, no executable mappings: nothing
native can be loaded from scratch) and runs a harmless call of its own, so that the copy-on-write
faults of a call's first steps are taken before the call arrives. The host writes a call to the
child's request FIFO as a frame (4-byte big-endian length + UTF-8 JSON) and keeps the call's wall
clock itself (where tool code cannot reach it; past it the whole sandbox is killed and replaced).
The child marks its ``ran`` pipe (read by the parent only) before its first call, sets its CPU
limit for the call, optionally installs the audit hook (defence in depth only), reads the request,
runs the tool and writes one frame (carrying the request's nonce) to its reply FIFO, which the host
checks: anything else on the FIFO fails the call.

``process_scope`` "episode" (the default): the child serves every call of its episode (a real
server's semantics: what one call leaves in the interpreter or the scratch directory the next call
of the same episode sees; nothing reaches another episode, whose sandbox is another). The host
retires it (``{"op": "retire", "pid"}``: the parent kills it) on a restore or a breached limit,
and the episode's next call runs in a fresh child. ``process_scope`` "call": the child closes its
request FIFO once it has read its call and exits after it, so that no global, builtin, module,
patched function or scratch file reaches the next call; the host waits for the parent's report on
the previous call before the next.

When a child exits the parent reaps it, empties the scratch directory if it ran a call (outside
every call's wall clock; ``clean`` false when it could not within its budget: the host then
replaces the sandbox), forks its replacement (before reporting, so that pids do not depend on
timing) and reports ``{"op": "done", "pid", "status", "cpu_s", "ran", "clean", "killed"}``.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from typing import Any

_HEADER = struct.Struct(">I")
# what the runner needs after the tool code ran, held here (tool code may replace any builtin or module
# attribute; an episode's process runs the episode's later calls after it): deeper tampering only
# garbles the episode's own replies, and a bad reply retires the process
_len, _pack, _write, _close, _exit = len, _HEADER.pack, os.write, os.close, os._exit
_read, _dumps, _loads, _compile, _exec, _callable = os.read, json.dumps, json.loads, compile, exec, callable
_SPARES = 2  # children forked ahead of their call, so that a call does not wait for a fork
_WIPE_S = 2.0  # the parent's budget to empty the scratch after a call; past it the sandbox is replaced
_WATCH_S = 0.02  # how often the parent reads the CPU clock of a process running a call
_IDLE_WATCH_S = 0.1  # ... and of an episode's process between its calls
_IDLE_CPU_S = 0.25  # CPU an episode's process may use between its calls (none, but for the runner's own work)
# files and directories an episode's process may keep in its scratch: tmpfs bounds bytes, not inodes (each
# ~1 KB of kernel memory outside every other limit), and an episode's scratch lasts across its calls
_MAX_INODES = 20000
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Pre-imported in the parent: the child cannot map new native code (no PROT_EXEC mappings), so the
# extension modules tool code may need must already be loaded; pure-Python modules load on demand.
_PRELOAD = (
    "_json", "_datetime", "_decimal", "_random", "_sha1", "_sha256", "_sha512", "_md5", "_sha3", "_blake2", "math",
    "cmath", "_struct", "array", "binascii", "zlib", "_csv", "unicodedata", "_statistics", "_zoneinfo", "_bisect",
    "_heapq", "_pickle", "_queue", "_uuid", "_contextvars", "_typing", "_opcode", "_bz2", "_lzma",
    "_multibytecodec", "pyexpat", "_elementtree", "_socket", "resource", "fcntl", "grp", "select", "_posixshmem",
)
_DENIED_IMPORTS = frozenset(
    # Sockets may be imported (email.utils does) but not used: every socket.* audit event is refused.
    {"_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing", "ctypes", "_ctypes", "pty",
     "asyncio", "resource", "signal", "_signal", "mmap", "fcntl", "gc", "faulthandler", "_tracemalloc"}
)
_PATH_EVENTS_WRITE = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.chmod": (0,), "os.chown": (0,),
    "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1), "os.chdir": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,), "os.lchflags": (0,), "os.mkfifo": (0,),
    "os.mknod": (0,),
}
_PATH_EVENTS_READ = {"os.listdir": (0,), "os.scandir": (0,), "glob.glob": (0,), "os.getxattr": (0,),
                     "os.listxattr": (0,)}
_DENIED_PREFIXES = ("socket.", "ctypes.", "subprocess.", "_winapi.", "pty.", "signal.", "webbrowser.",
                    "urllib.Request", "http.", "ftplib.", "smtplib.", "telnetlib.", "poplib.", "imaplib.",
                    "nntplib.", "gc.", "_thread.", "mmap.")
_DENIED_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill", "os.killpg",
     "os.startfile", "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "os.putenv", "os.unsetenv",
     "os.setuid", "os.setgid", "os.chroot", "_posixsubprocess.fork_exec", "sys._current_frames", "sys.setprofile",
     "sys.settrace", "sys.setrecursionlimit", "os.add_dll_directory", "cpython.run_command", "cpython.run_file"}
)
# Signals the parent ignores: none of them can reach it from a child (the tool filter denies every
# signal-sending call and F_SETOWN), but a stray one must not end the sandbox either.
_IGNORED_SIGNALS = ("SIGPIPE", "SIGIO", "SIGURG", "SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2",
                    "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGTTIN", "SIGTTOU", "SIGTSTP")


class SandboxViolation(PermissionError):
    """An operation the audit hook does not allow (raised inside tool code)."""


class _BoundedText(io.TextIOBase):
    """A text sink that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: Any) -> int:  # tool code may pass anything
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
    """The audit hook (defence in depth; the sandbox holds without it). Everything it uses is captured
    here, so tool code cannot patch it."""
    lstat, readlink, getcwd, fsdecode, fspath = os.lstat, os.readlink, os.getcwd, os.fsdecode, os.fspath
    is_link = stat.S_ISLNK
    violation, str_, bytes_, int_, tuple_, isinstance_, len_, any_ = (
        SandboxViolation, str, bytes, int, tuple, isinstance, len, any)
    denied_events, denied_prefixes = frozenset(_DENIED_EVENTS), tuple(_DENIED_PREFIXES)
    denied_imports = frozenset(_DENIED_IMPORTS)
    write_events, read_events = dict(_PATH_EVENTS_WRITE), dict(_PATH_EVENTS_READ)
    write_flags = _WRITE_FLAGS
    rlimit_cpu = 0  # RLIMIT_CPU on Linux (resource is not imported here: the parent need not load it)

    def resolve(path: Any) -> str | None:
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

    def hook(event: str, args: tuple[Any, ...]) -> None:
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
        if event == "resource.setrlimit" and len_(args) and args[0] == rlimit_cpu:
            return  # the runner sets each call's CPU limit (the kernel keeps it under the hard limit)
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


class _Filter:
    """The tool-code seccomp filter (BPF built by the host with libseccomp), loaded by each child."""

    def __init__(self, program: bytes) -> None:
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._prog = SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self._ref = ctypes.byref(self._prog)
        self._get_errno = ctypes.get_errno

    def load(self) -> None:
        pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
        if self._libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
                self._libc.prctl(pr_set_seccomp, seccomp_mode_filter, self._ref, 0, 0) != 0:
            raise OSError(self._get_errno(), "cannot load the tool seccomp filter")


def _wipe(path: str, deadline: float) -> bool:
    """Empty a directory the tool code may have booby-trapped (read-only dirs, deep trees, fifos), and
    clear what the directory itself can carry to the next call: extended attributes and times."""
    try:
        for name in os.listxattr(path):
            os.removexattr(path, name)
    except OSError:
        return False
    stack = [path]
    while stack:
        if time.monotonic() > deadline:
            return False
        current = stack[-1]
        try:
            os.chmod(current, 0o700)
            entries = list(os.scandir(current))
        except OSError:
            return False
        pushed = False
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    pushed = True
                    break
                os.unlink(entry.path)
            except OSError:
                return False
        if pushed:
            continue
        stack.pop()
        if current != path:
            try:
                os.rmdir(current)
            except OSError:
                return False
    try:
        os.utime(path)  # now: times set by the last call (or changed by its last write) tell nothing
    except OSError:
        return False
    return True


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``, or None at the end of the stream before them."""
    chunks, left = [], size
    while left:
        chunk = _read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= _len(chunk)
    return b"".join(chunks)


def _child(config: dict[str, Any], request_fd: int, reply_fd: int, ran: int, tool_filter: _Filter | None,
           guard: Any) -> None:
    """A spare child: confine itself, warm up, wait for its call(s), run them; never returns.

    It is forked before its call arrives (so a call does not wait for a fork) and takes no
    descriptor but its request and reply FIFOs and ``ran`` into confinement. A request is a frame
    (4-byte big-endian length + UTF-8 JSON); the child marks ``ran`` before its first call (a pipe
    only the parent reads, closed before any tool code runs: the scratch is emptied after this
    process) and answers with one frame. With ``process_scope`` "call" it exits after one call; with
    "episode" it serves the episode's calls until the host closes the request FIFO (or the parent
    kills it)."""
    status = 0
    try:
        import resource

        low = 3
        for keep in sorted((request_fd, reply_fd, ran)):
            os.closerange(low, keep)
            low = keep + 1
        os.closerange(low, 1 << 16)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        for name in _IGNORED_SIGNALS + ("SIGXCPU", "SIGXFSZ"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        mib = 1024 * 1024
        per_episode = config.get("process_scope") == "episode"
        # CPU: per call, the soft limit (set again before each call: SIGXCPU ends the process); the hard
        # limit, which no process can raise, bounds the process's whole life (one call, or an episode)
        cpu_hard = int(config["process_cpu_s"]) if per_episode else int(config["cpu_limit_s"]) + 1
        for which, soft, hard in (
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_AS, int(config["memory_mb"]) * mib, int(config["memory_mb"]) * mib),
            (resource.RLIMIT_FSIZE, int(config["file_size_mb"]) * mib, int(config["file_size_mb"]) * mib),
            (resource.RLIMIT_NPROC, int(config["max_procs"]), int(config["max_procs"])),
            (resource.RLIMIT_NOFILE, 64, 64),
            (resource.RLIMIT_CPU, cpu_hard, cpu_hard),
            # queued signals and POSIX timers (each holds one) count against the sandbox user, whose
            # count reaches the host user's: bounded here so that one episode cannot exhaust it (R4-10)
            (resource.RLIMIT_SIGPENDING, 64, 64),
        ):
            resource.setrlimit(which, (soft, hard))
        if tool_filter is not None:
            tool_filter.load()
        _prefault(config)
        getrusage, setrlimit = resource.getrusage, resource.setrlimit
        rusage_self, rlimit_cpu, cpu_s = resource.RUSAGE_SELF, resource.RLIMIT_CPU, float(config["cpu_s"])
        unpack = _HEADER.unpack
        calls = 0
        while True:
            header = _read_exactly(request_fd, 4)
            if header is None:
                break  # retired (unused, or its episode is over)
            request = _read_exactly(request_fd, unpack(header)[0])
            if request is None:
                break
            if not per_episode:
                _close(request_fd)  # one call: tool code keeps no descriptor but its reply FIFO
            if calls == 0:
                _write(ran, b"1")  # before any tool code: the parent empties the scratch after this process
                _close(ran)
            calls += 1
            used = getrusage(rusage_self)
            used_s = used.ru_utime + used.ru_stime
            soft = min(cpu_hard, max(1, -int(-(used_s + cpu_s) // 1)))  # whole seconds, rounded up: never short
            setrlimit(rlimit_cpu, (soft, cpu_hard))
            reply = _run(config, _loads(request), guard, used_s)
            view = memoryview(reply)
            while view:
                view = view[_write(reply_fd, view):]
            if not per_episode:
                _close(reply_fd)  # the host sees the end of the reply now, not after this process is torn down
                break
    except BaseException:  # noqa: BLE001 - the host sees the missing reply and the exit status
        status = 70
    _exit(status)


_WARM_UP = {"id": "warm-up", "source": "def warm(state, n):\n    state['n'] = [n, str(n)]\n    return {'n': n}\n",
            "entrypoint": "warm", "arguments": {"n": 1}, "stateful": True, "state": {"k": [1, "a"]}}


def _warm_up(config: dict[str, Any]) -> None:
    """Run one harmless call here, so that the lazily built parts of the interpreter (compiler, json
    encoder, code caches) exist before forking instead of being built again by every child."""
    saved = sys.stdout, sys.stderr
    try:
        _run(config, json.loads(json.dumps(_WARM_UP)), None)
    finally:
        sys.stdout, sys.stderr = saved


def _prefault(config: dict[str, Any]) -> None:
    """In a spare, before its call: the same harmless call, which touches (and so copies, page by
    page) the parent's memory a call's first steps write to -- reference counts of the compiler,
    json, builtins -- while nothing waits for this process, instead of during the call."""
    try:
        _run(config, json.loads(json.dumps(_WARM_UP)), None)
    except BaseException:  # noqa: BLE001 - only a warm-up: the call itself reports its own failures
        pass


def _fork_spare(config: dict[str, Any], tool_filter: _Filter | None, guard: Any,
                serial: int) -> tuple[int, int, int, int]:
    """A spare: its pid, the host's ends of its request and reply FIFOs, and the read end of its ``ran`` pipe.

    The FIFOs are made on the sandbox's own small tmpfs (``fifo_dir``) and unlinked at once: their inode
    numbers come from that file system's counter, which only this sandbox moves. Pipes and sockets would
    number theirs from a machine-wide counter that every episode's calls move (red team round 4: R4-02);
    the ``ran`` pipe is closed before any tool code runs."""
    base = os.path.join(config["fifo_dir"], str(serial))
    request_path, reply_path = base + ".request", base + ".reply"
    # the directory is writable only while the parent makes the FIFOs (tool code cannot change modes: its
    # chmod is a no-op), so that tool code keeps nothing there
    os.chmod(config["fifo_dir"], 0o700)
    try:
        os.mkfifo(request_path, 0o600)
        os.mkfifo(reply_path, 0o600)
    finally:
        os.chmod(config["fifo_dir"], 0o500)
    try:
        request_r = os.open(request_path, os.O_RDONLY | os.O_NONBLOCK)
        request_w = os.open(request_path, os.O_WRONLY | os.O_NONBLOCK)
        reply_r = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
        reply_w = os.open(reply_path, os.O_WRONLY | os.O_NONBLOCK)
    finally:
        os.chmod(config["fifo_dir"], 0o700)
        os.unlink(request_path)
        os.unlink(reply_path)
        os.chmod(config["fifo_dir"], 0o500)
    ran_r, ran_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (request_w, reply_r, ran_r):
            os.close(fd)
        os.set_blocking(request_r, True)
        os.set_blocking(reply_w, True)
        _child(config, request_r, reply_w, ran_w, tool_filter, guard)
    for fd in (request_r, reply_w, ran_w):
        os.close(fd)
    return pid, request_w, reply_r, ran_r


_GUARD_INSTALLED: list[bool] = []


def _run(config: dict[str, Any], request: dict[str, Any], guard: Any, cpu_before: float = 0.0) -> bytes:
    """Run the tool code of one request; the reply frame (tool failures are replies too). ``cpu_before``:
    the CPU seconds this process had used before the call (the host renews an episode's process
    before its lifetime CPU limit would end a call)."""
    max_output, max_result = int(config["max_output_bytes"]), int(config["max_result_bytes"])
    max_state = int(config["max_state_bytes"])
    dumps, loads = _dumps, _loads
    nonce = request["id"]
    stateful = bool(request.get("stateful"))
    state = request.get("state")
    sink = _BoundedText(max_output)
    if guard is not None and not _GUARD_INSTALLED:
        _GUARD_INSTALLED.append(True)
        sys.addaudithook(guard)
        for name in _DENIED_IMPORTS:
            sys.modules.pop(name, None)  # so that `import resource` etc. goes through the audit hook
    reply: dict[str, Any]
    try:
        sys.stdout = sys.stderr = sink
        ns = {"__name__": "astra_tool", "__builtins__": builtins}
        _exec(_compile(request["source"], "<tool " + request["entrypoint"] + ">", "exec"), ns)
        fn = ns.get(request["entrypoint"])
        if not _callable(fn):
            raise NameError(f"the tool source defines no function named {request['entrypoint']!r}")
        args = request.get("arguments") or {}
        value = fn(state, **args) if stateful else fn(**args)
        try:
            encoded = dumps(value, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            reply = {"ok": False, "error_kind": "not_json",
                     "error": f"the tool returned a value that is not JSON-serialisable "
                              f"({type(value).__name__}): {exc}"}
        else:
            truncated = len(encoded) > max_result
            if truncated:
                marker = f"...[truncated: result was {len(encoded)} characters, limit {max_result}]"
                value = encoded[:max_result] + marker
            else:
                value = loads(encoded)
            reply = {"ok": True, "value": value, "truncated": truncated}
            if stateful:
                try:
                    state_json = dumps(state, allow_nan=False, ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    reply = {"ok": False, "error_kind": "not_json",
                             "error": f"the tool left a state that is not JSON-serialisable: {exc}"}
                else:
                    if len(state_json) > max_state:
                        reply = {"ok": False, "error_kind": "state_too_large",
                                 "error": f"the tool grew the state to {len(state_json)} characters "
                                          f"(limit {max_state})"}
                    else:
                        reply["state"] = loads(state_json)
    except MemoryError:
        reply = {"ok": False, "error_kind": "memory",
                 "error": f"the tool ran out of memory (limit {config['memory_mb']} MiB)"}
    except RecursionError:
        reply = {"ok": False, "error_kind": "exception", "error": "RecursionError: maximum recursion depth exceeded"}
    except BaseException as exc:  # noqa: BLE001 - tool code raised: report it to the model
        line = ""
        try:
            kind = "forbidden" if isinstance(exc, SandboxViolation) or isinstance(exc.__context__, SandboxViolation) \
                else "exception"
            tb = exc.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_filename.startswith("<tool "):
                    line = f" (line {tb.tb_lineno})"
                tb = tb.tb_next
            message = f"{type(exc).__name__}: {exc}"
        except BaseException:  # noqa: BLE001 - a hostile __str__
            kind, message = "exception", "the tool raised an exception whose message cannot be shown"
        reply = {"ok": False, "error_kind": kind, "error": message[:4000] + line}
    reply["stdout"] = sink.text()
    reply["id"] = nonce
    reply["cpu_before"] = cpu_before
    try:
        data = dumps(reply, ensure_ascii=False).encode("utf-8")
    except BaseException as error:  # noqa: BLE001 - lone surrogates and the like
        failure = {"id": nonce, "ok": False, "error_kind": "not_json", "error": str(error)[:500], "stdout": ""}
        data = dumps(failure).encode()
    return _pack(_len(data)) + data


def main() -> None:
    config = json.loads(sys.argv[1])
    control = socket.socket(fileno=int(config["control_fd"]))
    scratch = config["scratch"]
    os.chdir(scratch)
    for name in _IGNORED_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for name in _PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    import sysconfig

    guard_roots = sorted(
        {p for key in ("stdlib", "platstdlib") if (p := sysconfig.get_paths().get(key))}
        | {os.path.dirname(os.__file__), os.path.dirname(json.__file__)}
        | {"/usr/share/zoneinfo", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero"}
    )
    program = bytes.fromhex(config.get("tool_filter") or "")
    tool_filter = _Filter(program) if program else None
    for name in ("ctypes", "_ctypes", "ctypes._endian"):
        sys.modules.pop(name, None)
    _wipe(scratch, time.monotonic() + _WIPE_S)
    _warm_up(config)
    guard = _make_guard(scratch, guard_roots) if config.get("audit_hook", True) else None
    import gc

    gc.freeze()  # children's collections then skip the parent's objects (fewer copy-on-write faults)
    # pid -> (pidfd, read end of its "ran" pipe)
    children: dict[int, tuple[int, int]] = {}
    # an episode's process serves all its calls: one spare covers the rare replacement (after a failure)
    spares = 1 if config.get("process_scope") == "episode" else _SPARES
    serial = [0]
    fifo_dir = config["fifo_dir"]
    os.chmod(fifo_dir, 0o500)  # writable only while the parent makes a process's FIFOs
    # the scratch and FIFO file systems are the sandbox's own tmpfs (off without bubblewrap: host directories)
    max_inodes = _MAX_INODES if config.get("inode_budget", True) else 0

    def fork_spares() -> None:
        # hand the host fresh spares: their FIFOs (the host dispatches calls there itself). One
        # child is forked for each that exits, before its exit is reported (so never while a call
        # runs): a call's pid and its threads' ids depend on its episode's own history only, not on
        # timing (the pid namespace is the episode's)
        while len(children) < spares:
            serial[0] += 1
            pid, request_w, reply_r, ran = _fork_spare(config, tool_filter, guard, serial[0])
            socket.send_fds(control, [json.dumps({"op": "spare", "pid": pid}).encode()], [request_w, reply_r])
            os.close(request_w)
            os.close(reply_r)
            children[pid] = (os.pidfd_open(pid), ran)

    fork_spares()
    control.sendall(json.dumps({"op": "ready", "pid": os.getpid()}).encode())
    # The host enforces the wall clock (it replaces the whole sandbox on a timeout). With
    # process_scope "episode" it also says when a call starts and ends ({"op": "call"/"idle", "pid"}):
    # the process outlives its calls, so its kernel CPU limit covers its whole life, and tool code can
    # ignore the per-call SIGXCPU; this process reads the child's CPU clock while a call runs and kills
    # it past the call's CPU limit. Otherwise it wakes when a child exits and when the host goes away.
    cpu_limit = int(config["cpu_limit_s"])  # SandboxLimits.cpu_limit_s
    watched: dict[int, float] = {}  # pid -> its CPU seconds when its call started
    # pid -> its CPU seconds when its call ended: a thread left running (or a call that replied early
    # and went on) burns no CPU between calls past _IDLE_CPU_S; the process is killed and replaced
    idle: dict[int, float] = {}
    killed: dict[int, str] = {}  # pid -> why this process killed it ("cpu", "idle_cpu", "retired")

    def unwatch(pid: int) -> None:
        watched.pop(pid, None)
        idle.pop(pid, None)

    def inodes_used() -> int:
        total = 0
        for path in (scratch, fifo_dir):
            try:
                fs = os.statvfs(path)
            except OSError:
                continue
            total += fs.f_files - fs.f_ffree
        return total

    def cpu_of(pid: int) -> float | None:
        try:
            return time.clock_gettime(((~pid) << 3) | 2)  # the process's CPU clock (CPUCLOCK_SCHED)
        except OSError:
            return None

    control_fd = control.fileno()
    while True:
        # poll, not select: the descriptors' numbers come from the host (the control socket keeps its
        # number), and select() refuses any at or above FD_SETSIZE (1024)
        by_fd = {pidfd: pid for pid, (pidfd, _ran) in children.items()}
        poller = select.poll()
        for fd in (control_fd, *by_fd):
            poller.register(fd, select.POLLIN)
        timeout = _WATCH_S if watched else _IDLE_WATCH_S if idle else None
        ready = [fd for fd, _event in poller.poll(None if timeout is None else timeout * 1000)]
        for table, budget, why in ((watched, cpu_limit, "cpu"), (idle, _IDLE_CPU_S, "idle_cpu")):
            for pid, start in list(table.items()):
                used = cpu_of(pid)
                if used is not None and used - start > budget and pid in children:
                    killed[pid] = why
                    del table[pid]
                    os.kill(pid, signal.SIGKILL)
        if (watched or idle) and max_inodes and inodes_used() > max_inodes:
            for pid in [*watched, *idle]:  # the processes that can have made them (a spare ran no tool code)
                if pid in children:
                    killed[pid] = "inodes"
                    os.kill(pid, signal.SIGKILL)
            watched.clear()
            idle.clear()
        if control_fd in ready:
            message, fds, _flags, _addr = socket.recv_fds(control, 1 << 16, 4)
            for fd in fds:
                os.close(fd)
            if not message:
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                os._exit(0)  # the host went away
            try:
                order = json.loads(message)
            except ValueError:
                order = None
            op, target = (order.get("op"), order.get("pid")) if isinstance(order, dict) else (None, None)
            if target in children:
                if op in ("call", "idle"):
                    start = cpu_of(target)
                    unwatch(target)
                    if start is not None:
                        (watched if op == "call" else idle)[target] = start
                elif op == "retire":
                    # the host retires an episode's process (restore, a limit breached): it goes whatever
                    # its tool code does; its exit is reported like a call's, after the scratch is emptied
                    killed.setdefault(target, "retired")
                    unwatch(target)
                    os.kill(target, signal.SIGKILL)
        for fd in ready:
            pid = by_fd.get(fd)
            if pid is None:
                continue
            _pid, status, usage = os.wait4(pid, 0)
            pidfd, ran = children.pop(pid)
            unwatch(pid)
            os.close(pidfd)
            try:
                ran_call = os.read(ran, 1) == b"1"  # written before its tool code ran; the process is gone
            finally:
                os.close(ran)
            # what the call left in scratch goes now, before the next call starts and outside its wall
            # clock (a flood of inodes costs this sandbox, not the next call)
            clean = not ran_call or (_wipe(scratch, time.monotonic() + _WIPE_S)
                                     and _wipe(fifo_dir, time.monotonic() + _WIPE_S))
            os.chmod(fifo_dir, 0o500)  # _wipe leaves it writable
            fork_spares()
            report = {"op": "done", "pid": pid, "status": status, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "ran": ran_call, "clean": clean, "killed": killed.pop(pid, None)}
            control.sendall(json.dumps(report).encode())


if __name__ == "__main__":
    main()
