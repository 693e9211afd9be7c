"""Host side of the sandbox: model-written tool code runs in a bubblewrap sandbox, one fresh process per call.

Standard library, ``anyio`` and (to build the seccomp filters) ``pyseccomp`` over the system's
libseccomp only: this module is vendored into emitted environment directories, which also carry
the filters prebuilt for the machine that emitted them, so they need nothing but Python and ``mcp``.

Isolation (see ``bwrap_command``): the worker runs under ``bwrap`` (bubblewrap) with
- new user, pid, network, ipc, uts and cgroup namespaces (``--unshare-all --unshare-user``), and no
  further user namespaces (``--disable-userns``); uid/gid 65534 inside, every capability dropped,
  no new privileges, a new session, killed with its host (``--die-with-parent``);
- no network at all (a fresh network namespace: no interface but a down loopback), no host socket
  (nothing of the host's filesystem is there to connect to);
- a minimal read-only filesystem: the Python runtime (interpreter, standard library), the system
  libraries it links, the time-zone database, ``/dev/{null,zero,urandom}`` and the worker script;
  no ``/proc``, no ``/etc``, no home directories; ``/`` itself read-only;
- scratch: a private tmpfs on ``/tmp`` with a size limit (``--size``; bubblewrap mounts it nosuid,nodev;
  it cannot mount it noexec, so the tool filter below denies executing or mapping-executable *any*
  file, which is stricter), emptied after every call;
- a seccomp deny-list for the whole sandbox (mount/umount, pivot_root, chroot, namespace creation,
  ptrace and process_vm_*, kernel modules, kexec, keyrings, bpf, perf, userfaultfd, io_uring,
  open_by_handle_at, new mount API, non-AF_UNIX sockets...) and a stricter one that every child
  loads before the tool code runs (no exec, no fork, no signals to other processes, no sockets,
  no F_SETOWN, no PROT_EXEC mappings, no prlimit on other processes);
- limits: per-call rlimits in the child (CPU, address space, file size, processes, open files, no
  core), a wall-clock limit kept here (past it the call's whole sandbox is killed and replaced),
  a pids cgroup when one can be created (root), bounded reply, output and state sizes.
The audit hook inside the worker is defence in depth only (``Sandbox(audit_hook=False)`` turns it
off; the red-team suite runs both ways).

Where the sandbox cannot be set up (no bubblewrap, user namespaces refused, no libseccomp) a
:class:`SandboxUnavailable` names the cause and the fix. Running model-written code unsandboxed
needs an explicit, loud opt-in: ``ASTRA_UNSAFE_NO_SANDBOX=1`` (or ``--unsafe-no-sandbox``).

Every episode runs in a bubblewrap sandbox of its own (a fresh pid namespace, scratch tmpfs and
warm parent, taken from a small pool of spares launched ahead): nothing at all -- not even the pid
or inode counters of its namespaces -- reaches another episode or survives a reset. Inside it
(``SandboxLimits.process_scope``) one child forked from that parent serves all the episode's calls
(``ProcessScope.EPISODE``, the default: a real server's semantics and no fork between calls; the
child is renewed after a failed call, on ``renew`` (a restore) and before its lifetime CPU limit,
and the parent enforces each call's CPU limit from the child's CPU clock), or every call runs in a
fresh child (``ProcessScope.CALL``: nothing a call changes -- globals, builtins, modules, patched
functions, scratch files -- reaches the next call). The reply comes on a pipe of its own as one
frame tied to the request's nonce; anything else fails the call. Episodes run in parallel, so a
call that hangs delays only its own episode.
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false
# (pyseccomp ships no type information)
import errno
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
import weakref
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

log = logging.getLogger("astra.servers.sandbox")

_HEADER = struct.Struct(">I")
_WORKER = Path(__file__).with_name("_worker.py")
_CGROUP_PIDS = Path("/sys/fs/cgroup/pids")
UNSAFE_ENV = "ASTRA_UNSAFE_NO_SANDBOX"
LIMITS_ENV = "ASTRA_SANDBOX_LIMITS"  # JSON object of SandboxLimits fields, e.g. {"wall_s": 10}
AUDIT_HOOK_ENV = "ASTRA_SANDBOX_AUDIT_HOOK"  # "0": leave the audit hook out (the red-team suite does)
SANDBOX_UID = 65534
_START_TIMEOUT_S = 30.0
_WIPE_S = 2.0  # the worker parent's budget to empty the scratch after a call (as in _worker)
_MAX_ERROR = 4200  # characters of a tool's error message (the worker sends at most 4000 and a line number)
_BACKSTOP_S = 5.0  # beyond the wall limit, for the parent to report; then the whole sandbox is replaced


class ErrorKind(StrEnum):
    """Why a sandboxed call failed."""

    EXCEPTION = "exception"  # the tool raised
    FORBIDDEN = "forbidden"  # the audit hook refused an operation
    NOT_JSON = "not_json"  # arguments, result or state are not JSON
    STATE_TOO_LARGE = "state_too_large"
    TIMEOUT = "timeout"  # wall-clock limit
    CPU = "cpu"  # CPU-time limit
    MEMORY = "memory"  # address-space limit
    FILE_SIZE = "file_size"  # file-size limit
    OUTPUT_LIMIT = "output_limit"  # the reply was larger than every limit allows
    BAD_REPLY = "bad_reply"  # bytes on the reply channel that are not the one frame of this call
    CRASH = "crash"  # the call's process died
    SANDBOX = "sandbox"  # the sandbox itself failed and was replaced


class ProcessScope(StrEnum):
    """What one process of tool code serves inside an episode's sandbox."""

    EPISODE = "episode"  # every call of the episode (a real server's semantics; the fast default)
    CALL = "call"  # one call: nothing a call leaves in the interpreter or scratch reaches the next


_CHILD_KINDS = frozenset({ErrorKind.EXCEPTION, ErrorKind.FORBIDDEN, ErrorKind.NOT_JSON, ErrorKind.STATE_TOO_LARGE,
                          ErrorKind.MEMORY})


class SandboxError(RuntimeError):
    """The sandbox itself could not start or talk to its worker (not a tool failure)."""


class SandboxUnavailable(SandboxError):
    """The sandbox cannot be set up on this machine; the message names the cause and the fix."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for sandboxed tool code: per call, and on the sandboxes alive at once (memory)."""

    cpu_s: float = 2.0  # CPU time (rounded up to whole seconds by the kernel's RLIMIT_CPU)
    memory_mb: int = 256  # address space of the call's process
    max_procs: int = 16  # tasks (threads) of the sandbox
    file_size_mb: int = 16  # largest file the tool may write
    scratch_mb: int = 32  # the scratch tmpfs
    wall_s: float = 5.0
    max_output_bytes: int = 64 * 1024
    max_result_bytes: int = 256 * 1024
    max_state_bytes: int = 8 * 1024 * 1024
    # one bubblewrap sandbox per episode: at most this many alive at once (~11 MB each; scratch is
    # emptied after every call); at capacity the least recently used idle episode's sandbox is released
    max_sandboxes: int = 64
    # launched ahead, so that a new or reset episode does not wait for one (a launch takes ~30-50 ms, most of
    # it waiting: four cover resets back to back on two cores)
    spare_sandboxes: int = 4
    # EPISODE: one process serves all the calls of an episode (renewed on restore and after a breached
    # limit); CALL: a fresh process per call (slower: a fork and an exit between calls)
    process_scope: ProcessScope = ProcessScope.EPISODE
    # CPU seconds an episode's process may use in all (the kernel's hard limit, which tool code cannot
    # raise; each call still has ``cpu_s``); 0: ten calls' worth. The host renews the process before
    # it runs short.
    process_cpu_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "process_scope", ProcessScope(self.process_scope))

    @property
    def cpu_limit_s(self) -> int:
        """``cpu_s`` as the kernel counts it (whole seconds, at least 1)."""
        return max(1, round(self.cpu_s))

    @property
    def process_cpu_limit_s(self) -> int:
        """The lifetime CPU limit of an episode's process, in whole seconds (at least two calls' worth)."""
        wanted = self.process_cpu_s or 10 * self.cpu_limit_s
        return max(2 * self.cpu_limit_s + 1, int(-(-wanted // 1)))

    @classmethod
    def from_env(cls) -> SandboxLimits:
        """The defaults, overridden by ``ASTRA_SANDBOX_LIMITS`` (a JSON object; how an emitted
        server or ``astra env serve`` is given other limits)."""
        raw = os.environ.get(LIMITS_ENV, "").strip()
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            return cls(**values)
        except (TypeError, ValueError) as exc:
            fields = ", ".join(cls.__dataclass_fields__)
            raise SandboxError(f"{LIMITS_ENV}: {exc} (expected a JSON object of {fields})") from exc


@dataclass
class SandboxResult:
    """The outcome of one sandboxed call. ``state`` is the state after a successful stateful call."""

    ok: bool
    value: Any = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    state: dict[str, Any] | None = None
    latency_s: float = 0.0
    stdout: str = ""
    truncated: bool = False
    restarted: bool = False


def unsafe_opt_in() -> bool:
    """Whether the user asked to run model-written code without a sandbox (``ASTRA_UNSAFE_NO_SANDBOX=1``)."""
    return os.environ.get(UNSAFE_ENV, "").strip().lower() in {"1", "true", "yes"}


# --------------------------------------------------------------------------- seccomp

_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
_CLONE_THREAD = 0x00010000
_CLONE_PIDFD = 0x00001000
_FUTEX_PRIVATE_FLAG = 128
_SANDBOX_DENIED = (
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "ptrace", "process_vm_readv",
    "process_vm_writev", "kcmp", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff",
    "reboot", "syslog", "acct", "quotactl", "vhangup", "fanotify_init", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr", "iopl", "ioperm", "uselib", "personality", "lookup_dcookie",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
)
_TOOL_DENIED = (
    "execve", "execveat", "fork", "vfork", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "socket", "socketpair", "memfd_create", "setsid",
    # SysV IPC and POSIX message queues live in the worker's ipc namespace, not the call's process: data
    # would cross calls, episodes and resets, shared memory would outlive the call's memory limit, and
    # shmat(SHM_EXEC) maps executable memory (red team round 3: R3-01, R3-02, R3-08)
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # inotify events belong to the host's inodes (every runtime file): a channel between sandboxes and a
    # view of host activity (R3-09); the rest: host memory/page-cache probes and legacy calls (R3-10)
    "inotify_init", "inotify_init1", "inotify_add_watch", "modify_ldt", "mincore", "remap_file_pages", "move_pages",
    "migrate_pages", "sysfs", "ustat",
    # a pipe's inode number comes from a machine-wide counter: one episode's pipes would move the numbers
    # another episode sees (the call's own request and reply pipes come from the host)
    "pipe", "pipe2",
    # machine-wide figures other episodes move: sysinfo's shared memory counts every sandbox's scratch
    # pages and its process count every task (red team round 4: R4-09)
    "sysinfo",
    # FIFOs made in scratch would hold pipe buffers (kernel memory outside the call's memory limit)
    "mknod", "mknodat",
    # native AIO reserves events from a machine-wide pool (fs.aio-max-nr): one episode could exhaust it for
    # every process of the host, and the free count is a channel (red team round 5: R5-11)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
)
# Syscalls numbered from 424 on have the same number on every architecture (Linux 5.1+). The tool filter
# refuses all of them (ENOSYS, as from an older kernel: callers fall back) except these, so a syscall
# added by a later kernel (statmount, listmount, ... reveal host paths: R3-10) is denied by default.
_NEW_SYSCALLS_FROM, _NEW_SYSCALLS_TO = 424, 512
_NEW_SYSCALLS_ALLOWED = (
    436,  # close_range
    439,  # faccessat2
    441,  # epoll_pwait2
    453,  # map_shadow_stack
)  # not futex_waitv/futex_wake/futex_wait/futex_requeue (449, 454-456): shared futexes (below); libc uses futex
_PROGRAMS: dict[str, tuple[bytes, bytes]] = {}


def _shipped_programs_path() -> Path:
    return Path(__file__).with_name(f"seccomp-{platform.machine()}.json")


def _build_programs() -> tuple[bytes, bytes]:
    import pyseccomp as sc  # raises ImportError (or OSError without libseccomp) when missing

    def export(flt: Any) -> bytes:
        with tempfile.TemporaryFile() as fh:
            flt.export_bpf(fh)
            fh.seek(0)
            return fh.read()

    def rule(flt: Any, action: int, name: str, *args: Any) -> None:
        try:
            flt.add_rule(action, name, *args)
        except (ValueError, RuntimeError, OSError) as exc:  # a syscall this architecture lacks
            if "unknown" not in str(exc).lower() and not isinstance(exc, ValueError):
                raise

    eperm, eacces = sc.ERRNO(errno.EPERM), sc.ERRNO(errno.EACCES)
    succeed_noop = sc.ERRNO(0)  # the call returns 0 and does nothing
    sandbox = sc.SyscallFilter(sc.ALLOW)
    for name in _SANDBOX_DENIED:
        rule(sandbox, eperm, name)
    for flag in _CLONE_NAMESPACES:
        rule(sandbox, eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    rule(sandbox, sc.ERRNO(errno.ENOSYS), "clone3")  # flags hidden in a struct: callers fall back to clone
    rule(sandbox, eacces, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    rule(sandbox, eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, 0x5412))  # TIOCSTI

    tool = sc.SyscallFilter(sc.ALLOW)
    for name in _TOOL_DENIED:
        rule(tool, eacces, name)
    named = {sc.resolve_syscall(sc.Arch.NATIVE, name) for name in (*_TOOL_DENIED, *_SANDBOX_DENIED, "clone3")}
    for number in range(_NEW_SYSCALLS_FROM, _NEW_SYSCALLS_TO):
        if number not in named and number not in _NEW_SYSCALLS_ALLOWED:
            tool.add_rule(sc.ERRNO(errno.ENOSYS), number)
    rule(tool, eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # threads yes, processes no
    # a pidfd's inode number comes from a machine-wide counter (every task created anywhere moves it): a
    # thread made with CLONE_PIDFD would read other episodes' activity (red team round 4: R4-01)
    rule(tool, eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_PIDFD, _CLONE_PIDFD))
    # Only process-private futexes: a shared one is keyed by the file's inode and offset, and the runtime files
    # are the host's inodes bound into every sandbox, so a FUTEX_WAIT in one episode and a FUTEX_WAKE in another
    # meet (red team round 5: R5-01). The C library and CPython use private futexes only.
    rule(tool, eperm, "futex", sc.Arg(1, sc.MASKED_EQ, _FUTEX_PRIVATE_FLAG, 0))
    # statx reports a mount's unique id from a machine-wide counter (every sandbox launched moves it: R4-08);
    # the C library and CPython stat with newfstatat, and callers of statx fall back on ENOSYS
    rule(tool, sc.ERRNO(errno.ENOSYS), "statx")
    prot_exec = 0x4
    for name in ("mmap", "mprotect", "pkey_mprotect"):
        rule(tool, eacces, name, sc.Arg(2, sc.MASKED_EQ, prot_exec, prot_exec))
    # F_SETOWN, F_SETSIG, F_SETOWN_EX: SIGIO to another process; F_SETLEASE: a lease on a host file
    # (the runtime is bound from the host) would stall the host's writers of that file
    # F_NOTIFY (dnotify on a runtime directory: the inotify channel again, R5-07); F_SETPIPE_SZ (pipe pages
    # are charged to the host user, machine-wide: R5-03)
    for command in (8, 10, 15, 1024, 1026, 1031):
        rule(tool, eperm, "fcntl", sc.Arg(1, sc.EQ, command))
        rule(tool, eperm, "fcntl64", sc.Arg(1, sc.EQ, command))
    # The device nodes (/dev/null, /dev/zero, /dev/urandom) are the host's inodes, bound writable, and when
    # the host runs as root the sandbox's user owns them: changing their mode, owner or times would change
    # the host's (a tool could make the host's /dev/null unusable; stamped times are a channel: R5-06). Mode
    # and time changes succeed without doing anything (shutil.copy2 and friends keep working on scratch
    # files), owner changes are refused (an unprivileged user cannot make them anyway).
    for name in ("chmod", "fchmod", "fchmodat", "utime", "utimes", "utimensat", "futimesat"):
        rule(tool, succeed_noop, name)
    for name in ("chown", "fchown", "lchown", "fchownat"):
        rule(tool, eperm, name)
    # Flushing: sync/syncfs write back every dirty page of the host (a disk-I/O DoS that no CPU watch sees:
    # R5-08); scratch is a tmpfs, so none of them has anything to do for tool code.
    for name in ("sync", "syncfs", "fsync", "fdatasync", "sync_file_range"):
        rule(tool, succeed_noop, name)
    # The host's page cache of the runtime files: evicting (fadvise DONTNEED, MADV_COLD/PAGEOUT) and probing
    # without reading (RWF_NOWAIT) would make it a channel between episodes and a view of the host (R5-05)
    for name in ("fadvise64", "readahead"):
        rule(tool, succeed_noop, name)
    for advice in (20, 21):  # MADV_COLD, MADV_PAGEOUT
        rule(tool, eperm, "madvise", sc.Arg(2, sc.EQ, advice))
    rwf_nowait = 0x8
    for name in ("preadv2", "pwritev2"):
        rule(tool, eperm, name, sc.Arg(5, sc.MASKED_EQ, rwf_nowait, rwf_nowait))
    # Advisory locks: the runtime files are the host's inodes, so a lock taken on one would stall host
    # processes locking it. Taking a lock succeeds without doing anything (flock; F_SETLK, F_SETLKW,
    # F_OFD_SETLK, F_OFD_SETLKW; fcntl64's F_SETLK64/F_SETLKW64): the only files tool code may lock legitimately
    # are its own scratch files, seen by one process (the call's) that exists for one call, so a lock has
    # nothing to exclude but the call's own threads; code that locks them keeps working (no ENOLCK).
    rule(tool, succeed_noop, "flock")
    for name, commands in (("fcntl", (6, 7, 37, 38)), ("fcntl64", (6, 7, 13, 14, 37, 38))):
        for command in commands:
            rule(tool, succeed_noop, name, sc.Arg(1, sc.EQ, command))
    rule(tool, eperm, "prlimit64", sc.Arg(0, sc.NE, 0))
    # scheduling of other processes (the warm parent, the spares that run later calls): one call
    # must not slow every later call of every episode (same uid, so the kernel allows it)
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        rule(tool, eperm, name, sc.Arg(0, sc.NE, 0))
    rule(tool, eperm, "setpriority", sc.Arg(0, sc.NE, 0))  # PRIO_PGRP / PRIO_USER reach the parent too
    rule(tool, eperm, "setpriority", sc.Arg(1, sc.NE, 0))
    rule(tool, eperm, "ioprio_set", sc.Arg(0, sc.NE, 1))  # IOPRIO_WHO_PROCESS of the caller only
    rule(tool, eperm, "ioprio_set", sc.Arg(1, sc.NE, 0))
    return export(sandbox), export(tool)


def seccomp_programs() -> tuple[bytes, bytes]:
    """The BPF programs ``(sandbox-wide, tool code)`` for this machine: built with libseccomp
    (``pyseccomp``), or the ones an emitted environment ships for its architecture."""
    if "programs" in _PROGRAMS:
        return _PROGRAMS["programs"]
    try:
        programs = _build_programs()
    except (ImportError, OSError) as exc:
        shipped = _shipped_programs_path()
        if not shipped.is_file():
            raise SandboxUnavailable(
                f"cannot build the sandbox's seccomp filters: {type(exc).__name__}: {exc}. Fix: "
                "`pip install pyseccomp` and install libseccomp (Debian/Ubuntu: `apt-get install libseccomp2`); "
                f"to run model-written code without a sandbox anyway, set {UNSAFE_ENV}=1 (dangerous)") from exc
        data = json.loads(shipped.read_text(encoding="utf-8"))
        programs = (bytes.fromhex(data["sandbox"]), bytes.fromhex(data["tool"]))
    _PROGRAMS["programs"] = programs
    return programs


def write_seccomp_programs(directory: Path) -> Path:
    """Ship this machine's filters beside a vendored copy of this module (``astra env emit``)."""
    sandbox, tool = seccomp_programs()
    path = Path(directory) / f"seccomp-{platform.machine()}.json"
    path.write_text(json.dumps({"sandbox": sandbox.hex(), "tool": tool.hex()}) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- bubblewrap


def _interpreter() -> str:
    """The real interpreter binary (not a virtualenv's symlink: the worker needs no site-packages)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


_VIEW: dict[str, list[str]] = {}  # the runtime binds, computed once per process
_NOT_IN_VIEW = ("site-packages", "dist-packages")  # never bound, even where they sit inside the stdlib
# What the warm parent loads besides its preloads (the tool filter is installed with _ctypes).
_PARENT_MODULES = ("_ctypes",)
_MAPS_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import _worker
for name in (*getattr(_worker, '_PRELOAD', ()), *sys.argv[2:]):
    try:
        __import__(name)
    except ImportError:
        pass
with open('/proc/self/maps') as maps:
    for line in maps:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith('/'):
            print(fields[5].rstrip('\\n'))
"""


def _elf_interpreter(path: str) -> str | None:
    """The program interpreter (PT_INTERP: the dynamic loader) named in an ELF executable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] not in (1, 2):
                return None
            order = "<" if head[5] == 1 else ">"
            if head[4] == 2:
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            for index in range(phnum):
                fh.seek(phoff + index * phentsize)
                entry = fh.read(phentsize)
                if struct.unpack_from(order + "I", entry, 0)[0] != 3:  # PT_INTERP
                    continue
                word, at_offset, at_size = ("Q", 8, 32) if head[4] == 2 else ("I", 4, 16)
                offset, = struct.unpack_from(order + word, entry, at_offset)
                size, = struct.unpack_from(order + word, entry, at_size)
                fh.seek(offset)
                return fh.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _mapped_files(exe: str) -> list[str]:
    """The files the interpreter maps once it has loaded what the worker loads (its shared libraries, the
    loader, locale data), as the host's dynamic loader resolves them: from a probe run of the interpreter."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # as the worker runs
    run = subprocess.run([exe, "-I", "-S", "-B", "-c", _MAPS_PROBE, str(_WORKER.parent), *_PARENT_MODULES],
                         capture_output=True, text=True, env=env, timeout=60, check=True)
    return sorted({line for line in run.stdout.splitlines() if line.startswith("/") and os.path.isfile(line)})


def _names_of(path: str) -> list[str]:
    """``path`` and the symbolic links beside it that resolve to it (the names the loader looks up:
    ``libz.so.1`` for ``libz.so.1.2.13``)."""
    names = [path]
    directory = os.path.dirname(path)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return names
    for entry in entries:
        if entry.is_symlink() and os.path.realpath(entry.path) == path:
            names.append(entry.path)
    return names


def _path_ops(path: str, symlinks: dict[str, str], files: set[str]) -> None:
    """What makes ``path`` resolve in the sandbox as on the host: each symbolic link met on the way
    (into ``symlinks``: link -> its target as written) and the file it ends at (into ``files``)."""
    resolved = "/"
    parts = [part for part in path.split("/") if part]
    hops = 0
    while parts and hops < 40:  # at most 40 links, as the kernel
        candidate = os.path.normpath(os.path.join(resolved, parts.pop(0)))
        if os.path.islink(candidate):
            hops += 1
            target = os.readlink(candidate)
            symlinks[candidate] = target
            parts = [part for part in os.path.join(resolved, target).split("/") if part] + parts
            resolved = "/"
        else:
            resolved = candidate
    if os.path.isfile(resolved):
        files.add(resolved)


def _broad_binds(exe: str) -> list[str]:
    """The view before the runtime was resolved file by file (``/usr/lib`` whole), for a host whose
    interpreter cannot be probed."""
    paths = {exe, "/usr/share/zoneinfo"} | {p for p in ("/usr/lib", "/usr/lib64", "/usr/lib32") if os.path.isdir(p)}
    args: list[str] = []
    for path in sorted(paths):
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for name in ("lib", "lib64", "lib32", "bin"):
        host = "/" + name
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
    return args


def _runtime_binds() -> list[str]:
    """Read-only binds of what the worker's interpreter needs and nothing else: the interpreter, the
    shared libraries and loader it maps once the worker's modules are loaded (resolved by running it,
    with the links the loader looks them up by), the base standard library without its site-packages /
    dist-packages (never a virtualenv's), and the time-zone database. Computed once per process."""
    if "args" in _VIEW:
        return _VIEW["args"]
    exe = _interpreter()
    symlinks: dict[str, str] = {}
    files: set[str] = set()
    dirs: set[str] = set()
    masked: set[str] = set()
    base_paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    for key in ("stdlib", "platstdlib"):
        value = base_paths.get(key)
        if value and os.path.isdir(value):
            stdlib = os.path.realpath(value)
            dirs.add(stdlib)
            masked.update(os.path.join(stdlib, name) for name in _NOT_IN_VIEW
                          if os.path.isdir(os.path.join(stdlib, name)))
    if os.path.isdir("/usr/share/zoneinfo"):
        dirs.add(os.path.realpath("/usr/share/zoneinfo"))
    try:
        mapped = _mapped_files(exe)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not list the files the interpreter maps (%s); the sandbox binds /usr/lib whole", exc)
        _VIEW["args"] = _broad_binds(exe) + [arg for d in sorted(dirs) for arg in ("--ro-bind", d, d)]
        return _VIEW["args"]
    wanted = [exe, *mapped]
    loader = _elf_interpreter(exe)
    if loader:
        wanted.append(loader)
    for path in wanted:
        for name in _names_of(os.path.realpath(path)) + [path]:
            _path_ops(name, symlinks, files)
    # a file or link inside a bound directory needs nothing of its own
    dirs = {d for d in dirs if not any(d.startswith(o.rstrip("/") + "/") for o in dirs if o != d)}

    def inside_dirs(path: str) -> bool:
        return any(path.startswith(d.rstrip("/") + "/") for d in dirs)

    args: list[str] = []
    for directory in sorted(dirs):
        args += ["--ro-bind", directory, directory]
    for path in sorted(masked):  # an empty read-only directory over site-packages
        args += ["--tmpfs", path, "--remount-ro", path]
    for path in sorted(f for f in files if not inside_dirs(f)):
        args += ["--ro-bind", path, path]
    links = {link: target for link, target in symlinks.items() if not inside_dirs(link)}
    for parent in sorted({os.path.dirname(link) for link in links} - {"/"}):
        args += ["--dir", parent]  # else bubblewrap makes it 0700, which the sandbox's uid cannot enter
    for link in sorted(links, key=lambda p: (p.count("/"), p)):
        args += ["--symlink", links[link], link]
    _VIEW["args"] = args
    return args


def bwrap_command(bwrap: str, *, seccomp_fd: int, worker_fd: int, scratch_bytes: int,
                  worker_args: list[str]) -> list[str]:
    """The bubblewrap command line that runs ``worker_args`` (the compiled worker at ``WORKER_PATH``, copied
    from ``worker_fd`` into the sandbox rather than bound: no host path of it shows inside)."""
    return [
        bwrap,
        "--unshare-all", "--unshare-user", "--disable-userns", "--assert-userns-disabled",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL", "--new-session", "--die-with-parent",
        "--hostname", "sandbox",
        "--clearenv", "--setenv", "PATH", "/nonexistent", "--setenv", "LANG", "C.UTF-8",
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
        *_runtime_binds(),
        "--dir", "/dev",
        "--dev-bind", "/dev/null", "/dev/null", "--dev-bind", "/dev/zero", "/dev/zero",
        "--dev-bind", "/dev/urandom", "/dev/urandom",
        "--ro-bind-data", str(worker_fd), WORKER_PATH,
        "--size", str(scratch_bytes), "--perms", "0700", "--tmpfs", "/tmp",
        "--size", str(FIFO_DIR_BYTES), "--perms", "0700", "--tmpfs", FIFO_DIR,
        "--remount-ro", "/",
        "--chdir", "/tmp",
        "--seccomp", str(seccomp_fd),
        "--", *worker_args,
    ]


_WORKER_SOURCE: dict[str, bytes] = {}
WORKER_PATH = "/astra/_worker.pyc"  # where the worker is inside the sandbox
# a small tmpfs of the sandbox's own where the parent makes each process's request and reply FIFOs
# (numbered by this file system, not by the machine-wide counter of pipes and sockets)
FIFO_DIR, FIFO_DIR_BYTES = "/run", 1024 * 1024


def _fifo_dir_beside(scratch: Path) -> Path:
    """Without bubblewrap (unsafe mode): the host directory of a sandbox's FIFOs, beside its scratch."""
    return scratch.with_name(scratch.name + "-fifos")


def _worker_source() -> bytes:
    """The worker compiled once here (a ``.pyc`` image: every sandbox launch skips compiling it; the
    sandbox runs this very interpreter, ``_interpreter``, so the bytecode matches)."""
    if "source" not in _WORKER_SOURCE:
        import importlib.util
        import marshal

        source = _WORKER.read_bytes()
        code = compile(source, WORKER_PATH[:-1], "exec", dont_inherit=True)
        header = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, 0, len(source) & 0xFFFFFFFF)
        _WORKER_SOURCE["source"] = header + marshal.dumps(code)
    return _WORKER_SOURCE["source"]


def _unavailable(cause: str) -> SandboxUnavailable:
    lowered = cause.lower()
    if any(word in lowered for word in ("namespace", "uid map", "permission", "operation not permitted")):
        fix = ("enable unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`; "
               "`sysctl -w user.max_user_namespaces=15000`; on Ubuntu 24.04+ `sysctl -w "
               "kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile allowing bwrap), or run "
               "in a container started with user namespaces allowed (e.g. docker --security-opt seccomp=unconfined)")
    else:
        fix = "check that bubblewrap (>= 0.8) works: `bwrap --unshare-all --unshare-user --ro-bind / / true`"
    return SandboxUnavailable(
        f"the tool sandbox cannot start: {cause.strip() or 'bwrap exited without a message'}. Fix: {fix}; "
        f"to run model-written code without a sandbox anyway, set {UNSAFE_ENV}=1 (dangerous)")


BWRAP_ENV = "ASTRA_BWRAP"  # path of the bwrap binary, when it is not on PATH
_BWRAP_FALLBACKS = ("/usr/bin/bwrap", "/bin/bwrap")


def _find_bwrap() -> str:
    chosen = os.environ.get(BWRAP_ENV, "").strip()
    if chosen:
        found = chosen if os.access(chosen, os.X_OK) else None
    else:
        found = shutil.which("bwrap") or next((p for p in _BWRAP_FALLBACKS if os.access(p, os.X_OK)), None)
    if found is None:
        raise SandboxUnavailable(
            f"bubblewrap (bwrap) is not installed{f' at {chosen}' if chosen else ''}, so model-written tool code "
            "cannot be sandboxed. Fix: install it (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
            f"bubblewrap`; Arch: `pacman -S bubblewrap`); to run model-written code without a sandbox anyway, set "
            f"{UNSAFE_ENV}=1 (dangerous)")
    return found


# --------------------------------------------------------------------------- pids cgroup (root only)


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


_UNREMOVED_CGROUPS: set[Path] = set()  # this process's groups whose workers were still exiting


def _remove_cgroup(path: Path) -> None:
    try:
        path.rmdir()
        _UNREMOVED_CGROUPS.discard(path)
    except FileNotFoundError:
        _UNREMOVED_CGROUPS.discard(path)
    except OSError:
        _UNREMOVED_CGROUPS.add(path)  # retried when the next group is made


def _make_cgroup(name: str, max_tasks: int) -> Path | None:
    """A cgroup-v1 pids group (where this process may create one): the kernel's limit on tasks. Without
    it RLIMIT_NPROC holds for non-root hosts; for root hosts it does not (the kernel exempts root)."""
    if not _CGROUP_PIDS.is_dir() or not os.access(_CGROUP_PIDS, os.W_OK):
        return None
    _sweep_stale_cgroups()
    for leftover in list(_UNREMOVED_CGROUPS):
        _remove_cgroup(leftover)
    path = _CGROUP_PIDS / f"astra-sandbox-{os.getpid()}-{name}"
    try:
        path.mkdir(exist_ok=True)
        (path / "pids.max").write_text(str(max_tasks))
    except OSError:
        return None
    return path


# --------------------------------------------------------------------------- resources


@dataclass
class _Resources:
    """What a sandbox's workers hold outside Python: released by ``aclose`` or, failing that, by a finalizer."""

    # the bubblewrap processes, as Popen objects: killed through them, never by a bare pid, which the system
    # may have given to another process once its own was reaped
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cgroups: set[Path] = field(default_factory=set)
    paths: set[Path] = field(default_factory=set)  # logs, unsafe-mode scratch directories


def _release(res: _Resources) -> None:
    for process in res.processes:
        try:
            process.kill()  # polls first: a process already reaped is not signalled
        except (ProcessLookupError, PermissionError):
            pass
    res.processes.clear()
    for path in res.paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass
    res.paths.clear()
    for cgroup in res.cgroups:
        _remove_cgroup(cgroup)  # refused while a killed worker is still exiting: retried later
    res.cgroups.clear()


@dataclass
class _Spare:
    """A child forked ahead of its call, confined and warm: the host's ends of its request and reply
    FIFOs (closing the request FIFO unused makes it exit)."""

    pid: int
    request: int  # write end, non-blocking; -1 once closed
    reply: int  # read end, non-blocking; -1 once closed

    def close_request(self) -> None:
        if self.request >= 0:
            os.close(self.request)
            self.request = -1

    def close(self) -> None:
        self.close_request()
        if self.reply >= 0:
            os.close(self.reply)
            self.reply = -1

    def pending(self) -> bool:
        """Whether anything waits on the reply FIFO between calls (bytes a call's tool code left, or
        the end of the stream: the process is gone or closed it): the process cannot take a call."""
        try:
            os.read(self.reply, 1)  # a byte, or b"" at the end of the stream: either way not ready
        except BlockingIOError:
            return False
        except OSError:
            pass
        return True


class _Unsettled(Exception):
    """The previous call of a sandbox did not settle (its process gone, the scratch emptied) within
    its budget, or the sandbox died between calls: the next call runs in a fresh sandbox instead."""


@dataclass(eq=False)
class _Worker:
    popen: subprocess.Popen[bytes]
    control: socket.socket
    log: Path
    scratch: Path | None  # host directory in unsafe mode only
    cgroup: Path | None
    alive: bool = True
    ready: bool = False  # its parent reported ready
    readying: anyio.Event | None = None  # set once ``ready`` is known
    spares: deque[_Spare] = field(default_factory=deque)
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)  # the parent's, by the child's pid
    previous: int | None = None  # the last call's process until it is reported done (gone, scratch emptied)
    previous_deadline: float = 0.0  # when its wall clock ran out
    dirty: bool = False  # the parent could not empty the scratch after a call: this sandbox is done
    busy: bool = False  # a call is being exchanged with it
    current: _Spare | None = None  # ProcessScope.EPISODE: the process serving the episode's calls

    def kill(self) -> None:
        self.alive = False
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
        self.control.close()
        for spare in self.spares:
            spare.close()
        self.spares.clear()
        if self.current is not None:
            self.current.close()
            self.current = None

    def retire(self) -> bool:
        """End the episode's process (ProcessScope.EPISODE): the parent kills it whatever its tool code
        does, empties the scratch and reports; the episode's next call waits for that and runs in a
        fresh process."""
        current, self.current = self.current, None
        if current is None:
            return True
        current.close()
        self.previous, self.previous_deadline = current.pid, time.monotonic()
        try:
            self.control.send(json.dumps({"op": "retire", "pid": current.pid}).encode())
        except OSError:
            return False  # the sandbox is gone or stuck: the caller replaces it
        return True

    async def wait(self, timeout: float = 10.0) -> int | None:
        with anyio.move_on_after(timeout):
            while self.popen.poll() is None:
                await anyio.sleep(0.002)
        return self.popen.poll()

    def _file(self, data: bytes, fds: list[int]) -> dict[str, Any]:
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the sandbox worker closed its control channel")
        message = json.loads(data)
        if message.get("op") == "spare" and len(fds) == 2:
            for fd in fds:
                os.set_blocking(fd, False)
            self.spares.append(_Spare(int(message["pid"]), request=fds[0], reply=fds[1]))
        else:
            for fd in fds:
                os.close(fd)
            if message.get("op") == "done" and isinstance(message.get("pid"), int):
                pid = message["pid"]
                serving = False
                if self.current is not None and pid == self.current.pid:
                    self.current.close()  # the episode's process died between calls: the next call takes a spare
                    self.current, serving = None, True
                waited_for = pid == self.previous
                if waited_for:
                    self.previous = None
                if serving or waited_for:
                    self.dirty = self.dirty or message.get("clean") is not True
                self.reports[message["pid"]] = message
                while len(self.reports) > 64:  # reports on calls whose reply was complete are not read
                    self.reports.pop(next(iter(self.reports)))
        return message

    def drain(self) -> None:
        """File every message already waiting (spares, reports) without blocking."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, 1 << 16, 2)
            except BlockingIOError:
                return
            self._file(data, fds)

    async def receive(self) -> dict[str, Any]:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, 1 << 16, 2)
            except BlockingIOError:
                await anyio.wait_readable(self.control)
                continue
            return self._file(data, fds)

    def settled(self) -> bool:
        """Whether the previous call is reported done (without waiting)."""
        try:
            self.drain()
        except (EOFError, OSError, ValueError):
            return False
        return self.previous is None

    async def settle(self) -> None:
        """Wait for the parent's report on the previous call: its process is gone and the scratch
        emptied (or ``dirty`` says it could not be)."""
        while self.previous is not None:
            await self.receive()

    async def spare(self) -> _Spare:
        while not self.spares:
            await self.receive()
        return self.spares.popleft()

    async def report(self, pid: int) -> dict[str, Any]:
        """The parent's report on the call process ``pid`` (its exit status and CPU time)."""
        while pid not in self.reports:
            await self.receive()
        return self.reports.pop(pid)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await anyio.wait_writable(fd)


async def _read_reply(fd: int, limit: int, *, framed: bool) -> tuple[bytes, bool]:
    """A call's reply and whether it claimed more than ``limit`` bytes (then its first ``limit`` bytes).

    ``framed`` (a reply FIFO that stays open between calls): one frame (4-byte length + body) and whatever
    already waits behind it (a frame must be alone: extra bytes fail the call). Otherwise everything written
    until the writer closes. Either way, what came before the end of the stream when it ends early."""
    buffer = bytearray()
    want = _HEADER.size if framed else limit + 1
    while len(buffer) < want:
        try:
            chunk = os.read(fd, min(1 << 16, want - len(buffer)))
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not chunk:
            return bytes(buffer), False
        buffer += chunk
        if framed and want == _HEADER.size and len(buffer) == want:
            want += _HEADER.unpack_from(buffer)[0]
        if want > limit + (0 if framed else 1):
            return bytes(buffer[:limit]), True
    if not framed:
        return bytes(buffer[:limit]), True
    try:
        extra = os.read(fd, 1 << 16)
    except BlockingIOError:
        extra = b""
    return bytes(buffer + extra), False


class _EpisodeToken:
    """The episode of one call made without one (``Sandbox.call(..., episode=None)``)."""


@dataclass(eq=False)
class _Binding:
    """An episode's claim on a sandbox: its worker (None until its first call, or after the worker
    was replaced or evicted), the calls holding or awaiting it, and when it was last used."""

    key: Any  # a weak reference to the episode object, or the object itself when it takes none
    worker: _Worker | None = None
    users: int = 0
    ended: bool = False  # the episode ended while a call was in flight: released when the call returns
    last_used: float = field(default_factory=time.monotonic)
    lock: anyio.Lock | None = None
    lock_token: object = None
    renew: bool = False  # the episode was restored: its next call runs in a fresh process

    def holds(self, episode: object) -> bool:
        held = self.key() if isinstance(self.key, weakref.ref) else self.key
        return held is episode


class Sandbox:
    """Isolated, warm sandboxes for untrusted tool code (see the module docstring).

    ``async with Sandbox(limits=SandboxLimits(...)) as sb: await sb.call(source, entrypoint, args,
    episode=obj)``. Every episode (any object: ``episode=`` of ``call``) gets a bubblewrap sandbox
    of its own on its first call: a fresh pid namespace, scratch tmpfs and warm pre-imported
    parent, taken from a small pool of pre-launched spares (``SandboxLimits.spare_sandboxes``) so
    that opening or resetting an episode costs no launch. Nothing an episode's calls do, not even
    a kernel counter of its namespaces or tmpfs, reaches another episode: two episodes never share
    a sandbox. Inside its sandbox every call runs in a fresh child of the parent (one call at a time
    per episode; episodes run in parallel). An episode's sandbox is released by ``end_episode``, or
    when the episode object is garbage-collected (the runtime's episodes: on reset, close, expiry).
    A call without ``episode`` is an episode of its own (a sandbox for that call alone).

    Memory is bounded: at most ``SandboxLimits.max_sandboxes`` sandboxes (bound and spare) live at
    once, each ~11 MB (PSS; its scratch is emptied after every call, so only a running call holds up
    to ``scratch_mb`` more). At capacity the least recently used idle episode loses its sandbox (its
    next call starts in a fresh one; its state lives on the host and is not lost); when every
    sandbox is running a call, a new episode's call waits for one to finish. Two episodes never share
    a sandbox. ``audit_hook=False`` leaves out the in-process audit hook (the sandbox must hold
    without it); ``unsafe_no_sandbox=True`` (or ``ASTRA_UNSAFE_NO_SANDBOX=1``) runs without bubblewrap.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, audit_hook: bool | None = None,
                 unsafe_no_sandbox: bool | None = None, max_workers: int | None = None) -> None:
        if max_workers is not None:  # the earlier shared pool's size: every episode now has a sandbox
            warnings.warn("Sandbox(max_workers=...) no longer applies: every episode gets a sandbox of its own "
                          "(SandboxLimits.max_sandboxes bounds them); it is ignored", FutureWarning, stacklevel=2)
        self.limits = limits or SandboxLimits.from_env()
        if self.limits.max_sandboxes < 1 or self.limits.spare_sandboxes < 0:
            raise ValueError("SandboxLimits: max_sandboxes must be >= 1 and spare_sandboxes >= 0")
        self.audit_hook = os.environ.get(AUDIT_HOOK_ENV, "1").strip() != "0" if audit_hook is None else audit_hook
        self.unsafe = unsafe_opt_in() if unsafe_no_sandbox is None else unsafe_no_sandbox
        self._workers: list[_Worker] = []  # live sandboxes: bound to an episode or spare
        self._spares: deque[_Worker] = deque()  # launched, bound to no episode yet
        self._dying: list[_Worker] = []  # killed, not reaped yet
        self._bindings: dict[int, _Binding] = {}  # id(episode object) -> its binding
        self._ended: list[int] = []  # ids of episode objects collected since the last call (weakref callbacks)
        self._freed: anyio.Event | None = None
        self._freed_token: object = None
        self.restarts = 0  # sandboxes replaced after a failed call
        self.evictions = 0  # idle episodes' sandboxes released at capacity
        self.launches = 0
        self.isolation: dict[str, Any] = {}
        self._warned = False
        self._started = False
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, _release, self._res)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Launch the spare sandboxes now and wait until they are ready: a sandbox that cannot be set
        up fails here, closed, and the first episodes do not wait for a launch. Cheap once started."""
        if self._started:
            return
        self._refill()
        if not self._spares:  # spare_sandboxes=0: still check that a sandbox can start
            self._spares.append(self._launch())
        for worker in list(self._spares):
            await self._until_ready(worker)
        self._started = True

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for worker in list(self._workers):
                self._discard(worker)
            for worker in list(self._dying):
                await worker.wait()
            self._reap()
            self._bindings.clear()
            self._started = False
            self._finalizer()

    def abandon(self) -> None:
        """Kill the sandboxes without waiting for them (outside any event loop)."""
        for worker in list(self._workers):
            self._discard(worker)

    def end_episode(self, episode: object) -> None:
        """Release ``episode``'s sandbox (killed now, or when its call in flight returns): a later call
        with the same object starts in a fresh one. The runtime's episodes need not call this: their
        sandbox goes when the episode object is collected (reset, close, expiry)."""
        binding = self._bindings.get(id(episode))
        if binding is None or not binding.holds(episode):
            return
        binding.ended = True
        if binding.users == 0:
            self._unbind(id(episode), binding)

    def renew(self, episode: object) -> None:
        """Give ``episode`` a fresh process for its next call (ProcessScope.EPISODE: what earlier calls
        left in the interpreter and the scratch directory goes; the runtime calls this on a restore)."""
        binding = self._bindings.get(id(episode))
        if binding is not None and binding.holds(episode):
            binding.renew = True

    @property
    def open_sandboxes(self) -> int:
        """Sandboxes alive now (bound to an episode or spare)."""
        return len(self._workers)

    # ------------------------------------------------------------------ sandboxes

    def _config(self, control_fd: int, scratch: str, tool_filter: bytes, fifo_dir: str = FIFO_DIR) -> dict[str, Any]:
        limits = self.limits
        return {
            "control_fd": control_fd, "scratch": scratch, "tool_filter": tool_filter.hex(), "fifo_dir": fifo_dir,
            "audit_hook": self.audit_hook, "cpu_s": limits.cpu_s, "cpu_limit_s": limits.cpu_limit_s,
            "wall_s": limits.wall_s,
            "memory_mb": limits.memory_mb, "max_procs": limits.max_procs, "file_size_mb": limits.file_size_mb,
            "max_output_bytes": limits.max_output_bytes, "max_result_bytes": limits.max_result_bytes,
            "max_state_bytes": limits.max_state_bytes, "process_scope": limits.process_scope.value,
            "process_cpu_s": limits.process_cpu_limit_s,
        }

    def _launch(self) -> _Worker:
        """Start a sandbox (bubblewrap and the warm parent in it) without waiting for it to be ready:
        it warms up in the background while the episodes already bound run their calls."""
        limits = self.limits
        log_fd, log_name = tempfile.mkstemp(prefix="astra-sandbox-", suffix=".log")
        os.close(log_fd)  # reopened for the launch below (this descriptor leaked once per launch)
        log_path = Path(log_name)
        self._res.paths.add(log_path)
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        seccomp_fd = worker_fd = None
        scratch_dir: Path | None = None
        cgroup: Path | None = None
        tool_program = b""
        try:
            if self.unsafe:
                try:
                    _sandbox_program, tool_program = seccomp_programs()
                except SandboxUnavailable:
                    tool_program = b""
                scratch_dir = Path(tempfile.mkdtemp(prefix="astra-unsafe-scratch-"))
                self._res.paths.add(scratch_dir)
                fifo_dir = _fifo_dir_beside(scratch_dir)
                fifo_dir.mkdir(mode=0o700)
                self._res.paths.add(fifo_dir)
                config = self._config(worker_end.fileno(), str(scratch_dir), tool_program, str(fifo_dir))
                config["inode_budget"] = False  # host directories: their file systems count the host's files
                command = [_interpreter(), "-I", "-S", "-B", str(_WORKER), json.dumps(config)]
                if not self._warned:
                    self._warned = True
                    message = (f"SANDBOX DISABLED ({UNSAFE_ENV}=1 / --unsafe-no-sandbox): model-written tool code "
                               "runs on this machine WITHOUT bubblewrap isolation: it can read your files and reach "
                               "the network")
                    warnings.warn(message, RuntimeWarning, stacklevel=4)
                    log.warning(message)
                    print(f"WARNING: {message}", file=sys.stderr, flush=True)
                pass_fds: tuple[int, ...] = (worker_end.fileno(),)
            else:
                bwrap = _find_bwrap()
                sandbox_program, tool_program = seccomp_programs()
                seccomp_fd = os.memfd_create("astra-seccomp", 0)
                os.write(seccomp_fd, sandbox_program)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
                worker_fd = os.memfd_create("astra-worker", 0)
                os.write(worker_fd, _worker_source())
                os.lseek(worker_fd, 0, os.SEEK_SET)
                config = self._config(worker_end.fileno(), "/tmp", tool_program)
                worker_args = [_interpreter(), "-I", "-S", "-B", WORKER_PATH, json.dumps(config)]
                command = bwrap_command(bwrap, seccomp_fd=seccomp_fd, worker_fd=worker_fd,
                                        scratch_bytes=limits.scratch_mb * 1024 * 1024, worker_args=worker_args)
                # max_procs for the call, 8 for bwrap, the parent and the spares
                cgroup = _make_cgroup(f"{id(self):x}-{secrets.token_hex(3)}", limits.max_procs + 8)
                if cgroup is not None:
                    # join the pids cgroup before bubblewrap forks anything
                    command = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" || exit 97; exec "$@"', str(cgroup),
                               *command]
                    self._res.cgroups.add(cgroup)
                pass_fds = (worker_end.fileno(), seccomp_fd, worker_fd)
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            with log_path.open("wb") as log_file:
                try:
                    popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=log_file, env=env, pass_fds=pass_fds,
                                             cwd=str(scratch_dir) if scratch_dir else "/")
                except OSError as exc:
                    raise _unavailable(f"cannot run {command[0]}: {exc}") from exc
        except BaseException:
            host_end.close()
            for path in (log_path, scratch_dir, scratch_dir and _fifo_dir_beside(scratch_dir)):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                    self._res.paths.discard(path)
            if cgroup is not None:
                _remove_cgroup(cgroup)
                self._res.cgroups.discard(cgroup)
            raise
        finally:
            worker_end.close()
            for fd in (seccomp_fd, worker_fd):
                if fd is not None:
                    os.close(fd)
        host_end.setblocking(False)
        self._res.processes.append(popen)
        self.launches += 1
        worker = _Worker(popen=popen, control=host_end, log=log_path, scratch=scratch_dir, cgroup=cgroup)
        self._workers.append(worker)
        self.isolation = {
            "bubblewrap": not self.unsafe,
            "seccomp": not self.unsafe,
            "tool_seccomp": bool(tool_program),
            "audit_hook": self.audit_hook,
            "pids_limit": "cgroup" if cgroup is not None else ("rlimit" if os.geteuid() != 0 else "none"),
            "sandbox_per_episode": True,
            "process_scope": self.limits.process_scope.value,
        }
        return worker

    async def _until_ready(self, worker: _Worker) -> None:
        """Wait for a launched sandbox's parent to report ready; a sandbox that does not start is
        discarded and :class:`SandboxUnavailable` names why."""
        if worker.ready:
            return
        if worker.readying is not None:  # another task is waiting for this one
            await worker.readying.wait()
            if not worker.ready:
                raise _unavailable("the sandbox did not start (see the first error)")
            return
        worker.readying = anyio.Event()
        ready = None
        try:
            with anyio.move_on_after(_START_TIMEOUT_S):
                try:
                    while not (ready and ready.get("op") == "ready"):
                        ready = await worker.receive()  # its spares are filed as they come
                except (EOFError, OSError, ValueError):
                    ready = None
        finally:
            worker.ready = bool(ready and ready.get("op") == "ready")
            worker.readying.set()
            if not worker.ready:
                self._discard(worker)
        if not (ready and ready.get("op") == "ready"):
            await worker.wait(2)
            cause = worker.log.read_text(errors="replace")[-2000:] if worker.log.exists() else ""
            if not cause.strip():
                cause = f"the worker exited with status {worker.popen.poll()} before it was ready"
            self._reap()
            raise _unavailable(cause)

    def _refill(self) -> None:
        """Launch spares up to ``spare_sandboxes``, within ``max_sandboxes``."""
        while len(self._spares) < self.limits.spare_sandboxes and len(self._workers) < self.limits.max_sandboxes:
            self._spares.append(self._launch())

    def _discard(self, worker: _Worker) -> None:
        """Kill a sandbox now (everything in its pid namespace dies with it); reaped later."""
        worker.kill()
        if worker in self._workers:
            self._workers.remove(worker)
            self._dying.append(worker)
        if worker in self._spares:
            self._spares.remove(worker)

    def _reap(self) -> None:
        """Release what killed sandboxes held once they are gone; forget collected episodes."""
        while self._ended:
            key = self._ended.pop()
            binding = self._bindings.get(key)
            if binding is not None and isinstance(binding.key, weakref.ref) and binding.key() is None:
                binding.ended = True
                if binding.users == 0:
                    self._unbind(key, binding)
        now = time.monotonic()
        for worker in list(self._workers):  # a call's process lingering past its wall clock (it forged
            # its reply and went on): its sandbox goes now, not at its episode's next call
            if worker.previous is not None and not worker.busy and \
                    now > worker.previous_deadline + _WIPE_S + _BACKSTOP_S:
                if not worker.settled():
                    self._discard(worker)
        for worker in list(self._dying):
            if worker.popen.poll() is None:
                continue
            self._dying.remove(worker)
            if worker.popen in self._res.processes:
                self._res.processes.remove(worker.popen)
            for path in (worker.scratch, worker.scratch and _fifo_dir_beside(worker.scratch), worker.log):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                    self._res.paths.discard(path)
            if worker.cgroup is not None:
                _remove_cgroup(worker.cgroup)  # a killed sandbox's tasks still exiting: retried later
                self._res.cgroups.discard(worker.cgroup)

    def _unbind(self, key: int, binding: _Binding) -> None:
        if self._bindings.get(key) is binding:
            del self._bindings[key]
        if binding.worker is not None:
            self._discard(binding.worker)
            binding.worker = None
        self._notify_freed()

    def _binding(self, episode: object) -> tuple[int, _Binding]:
        key = id(episode)
        binding = self._bindings.get(key)
        if binding is not None and binding.holds(episode) and not binding.ended:
            return key, binding
        if binding is not None:  # a stale record under a reused id, or an ended episode used again
            binding.ended = True
            if binding.users == 0:
                self._unbind(key, binding)
        try:
            this = weakref.ref(self)
            ref: Any = weakref.ref(episode, lambda _ref, key=key: (me := this()) is not None and me._ended.append(key))
        except TypeError:  # an object that takes no weak reference (a str, an int): held until ended or evicted
            ref = episode
        binding = _Binding(key=ref)
        self._bindings[key] = binding
        return key, binding

    def _lock(self, binding: _Binding) -> anyio.Lock:
        token = anyio.lowlevel.current_token()  # a sandbox may serve several event loops in turn
        if binding.lock is None or binding.lock_token != token:
            binding.lock, binding.lock_token = anyio.Lock(), token
        return binding.lock

    def _notify_freed(self) -> None:
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    async def _wait_freed(self) -> None:
        token = anyio.lowlevel.current_token()
        if self._freed is None or self._freed_token != token:
            self._freed, self._freed_token = anyio.Event(), token
        await self._freed.wait()

    async def _acquire(self) -> _Worker:
        """A sandbox for an episode that has none: a spare, a new launch, or (at capacity) one freed by
        evicting the least recently used idle episode. Never one another episode used."""
        while True:
            self._reap()
            if self._spares:
                worker = self._spares.popleft()  # replaced once the call is answered (Sandbox.call)
                await self._until_ready(worker)
                return worker
            if len(self._workers) < self.limits.max_sandboxes:
                worker = self._launch()
                self._spares.remove(worker) if worker in self._spares else None
                await self._until_ready(worker)
                return worker
            idle = [(b.last_used, k, b) for k, b in self._bindings.items() if b.worker is not None and b.users == 0]
            if idle:
                _used, key, victim = min(idle, key=lambda item: item[0])
                log.info("sandbox capacity (%d): the least recently used idle episode's sandbox is released",
                         self.limits.max_sandboxes)
                self.evictions += 1
                assert victim.worker is not None
                self._discard(victim.worker)
                victim.worker = None
                if isinstance(victim.key, weakref.ref) and victim.key() is not None:
                    continue  # the episode keeps its record (and lock): its next call gets a fresh sandbox
                del self._bindings[key]
                continue
            await self._wait_freed()  # every sandbox is running a call

    # ------------------------------------------------------------------ calls

    async def call(
        self,
        source: str,
        entrypoint: str,
        arguments: dict[str, Any],
        *,
        state: dict[str, Any] | None = None,
        episode: object | None = None,
    ) -> SandboxResult:
        """Run ``entrypoint(**arguments)`` (or ``entrypoint(state, **arguments)`` when a state is
        given) from ``source`` in a fresh child of ``episode``'s sandbox (see the class docstring).
        Never raises for tool failures: see ``SandboxResult``. Raises :class:`SandboxUnavailable`
        when the sandbox cannot start."""
        start = time.perf_counter()
        nonce = secrets.token_hex(16)
        request = {"id": nonce, "source": source, "entrypoint": entrypoint, "arguments": arguments,
                   "stateful": state is not None, "state": state}
        try:
            payload = json.dumps(request, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            return SandboxResult(ok=False, error_kind=ErrorKind.NOT_JSON,
                                 error=f"arguments or state are not JSON: {exc}")
        self._reap()
        # a call without an episode is an episode of its own: a sandbox (from the spares) for that one call,
        # released after it, so that such calls (the synthesis pipeline's checks of candidate tools) share
        # neither an interpreter nor counters nor a wait for each other's processes (R4-05, R5-09, R5-10)
        ephemeral = _EpisodeToken() if episode is None else None
        key, binding = self._binding(ephemeral if episode is None else episode)
        binding.users += 1
        try:
            async with self._lock(binding):
                result = SandboxResult(ok=False, error_kind=ErrorKind.SANDBOX, restarted=True,
                                       error="the sandbox failed before the call started; it was restarted")
                for _attempt in range(2):
                    worker = binding.worker
                    if worker is None or not worker.alive:
                        binding.worker = None
                        worker = binding.worker = await self._acquire()
                    if binding.renew:
                        binding.renew = False
                        if worker.current is not None and not worker.retire():
                            self._replace(worker)
                            binding.worker = None
                            continue
                    try:
                        # calls without an episode are independent of each other: a fresh process each
                        result = await self._exchange(worker, nonce, payload, stateful=state is not None,
                                                      reuse=episode is not None)
                    except _Unsettled as exc:  # the call has not started: it runs in a fresh sandbox
                        log.info("sandbox replaced before a call: %s", exc)
                        self._replace(worker)
                        binding.worker = None
                        continue
                    if not worker.alive and binding.worker is worker:
                        binding.worker = None  # replaced: the episode's next call starts in a fresh sandbox
                    break
        finally:
            binding.users -= 1
            binding.last_used = time.monotonic()
            if binding.ended and binding.users == 0:
                self._unbind(key, binding)
            elif binding.users == 0:
                self._notify_freed()
        if ephemeral is not None:
            self.end_episode(ephemeral)
        result.latency_s = time.perf_counter() - start
        self._refill()  # the spares a new episode took, launched after its call rather than before
        return result

    def _replace(self, worker: _Worker) -> None:
        """A sandbox that failed a call goes; its episode's next call starts in a fresh one."""
        self._discard(worker)
        self.restarts += 1

    async def _exchange(self, worker: _Worker, nonce: str, payload: bytes, *, stateful: bool,
                        reuse: bool) -> SandboxResult:
        limits = self.limits
        reply_limit = limits.max_result_bytes * 4 + limits.max_state_bytes * 4 + limits.max_output_bytes * 4 + 65536
        worker.busy = True
        try:
            return await self._exchange_with(worker, nonce, payload, stateful=stateful, reply_limit=reply_limit,
                                             reuse=reuse)
        finally:
            worker.busy = False

    async def _exchange_with(self, worker: _Worker, nonce: str, payload: bytes, *, stateful: bool,
                             reply_limit: int, reuse: bool) -> SandboxResult:
        limits = self.limits
        # the episode's process serves its next call too; the parent watches the call's CPU (a process of
        # ProcessScope.EPISODE has a lifetime CPU limit, not a per-call one, even when used once)
        watched = limits.process_scope is ProcessScope.EPISODE
        per_episode = watched and reuse
        try:
            worker.drain()  # reports already waiting (an episode's process that died since its last call goes)
        except (EOFError, OSError, ValueError) as exc:
            raise _Unsettled(f"{type(exc).__name__}: {exc}") from exc
        current = worker.current
        # bytes a call's tool code left on the reply FIFO, or the process gone: it takes no more calls
        if current is not None and current.pending() and not worker.retire():
            raise _Unsettled("the sandbox's control channel is closed")
        if worker.current is None:
            try:  # the previous process gone (pids), the scratch emptied: before this call's wall clock
                budget = max(0.0, worker.previous_deadline - time.monotonic()) + _WIPE_S + _BACKSTOP_S
                with anyio.fail_after(budget):
                    await worker.settle()
            except (TimeoutError, EOFError, OSError, ValueError) as exc:
                raise _Unsettled(f"{type(exc).__name__}: {exc}") from exc
            if worker.dirty:
                raise _Unsettled("the scratch directory could not be emptied in time")
        process: _Spare | None = None
        sent = completed = False
        report: dict[str, Any] | None = None
        try:
            # the call's wall clock, here where tool code cannot reach it: past it the whole sandbox goes
            with anyio.fail_after(limits.wall_s):
                process = worker.current
                if process is None:
                    process = await worker.spare()
                    if per_episode:
                        worker.current = process
                if watched:  # the parent keeps the call's CPU limit
                    worker.control.send(json.dumps({"op": "call", "pid": process.pid}).encode())
                sent = True
                if not per_episode:
                    worker.previous, worker.previous_deadline = process.pid, time.monotonic() + limits.wall_s
                try:
                    await _write_all(process.request, _HEADER.pack(len(payload)) + payload)
                except BrokenPipeError:
                    pass  # the child died before reading: its status says why
                if not per_episode:
                    process.close_request()
                reply, overflow = await _read_reply(process.reply, reply_limit, framed=per_episode)
                if overflow:
                    self._replace(worker)  # the call's process goes with its sandbox
                    return SandboxResult(ok=False, error_kind=ErrorKind.OUTPUT_LIMIT, restarted=True,
                                         error="the tool's reply was larger than the output, result and state "
                                               "limits allow; it was stopped")
                problem, data = _parse_reply(reply, nonce, limits)
                if watched and data is not None:
                    worker.control.send(json.dumps({"op": "idle", "pid": process.pid}).encode())
                if data is None:
                    # an episode's process that failed its call goes (it may still be running: the
                    # parent kills it); its exit status says why the call failed
                    if worker.current is process and not worker.retire():
                        raise EOFError("the sandbox's control channel is closed")
                    report = await worker.report(process.pid)
            completed = True
        except TimeoutError:
            self._replace(worker)
            return SandboxResult(ok=False, error_kind=ErrorKind.TIMEOUT, restarted=True,
                                 error=_timeout_message(limits))
        except (EOFError, OSError, ValueError) as exc:
            self._replace(worker)
            return SandboxResult(ok=False, error_kind=ErrorKind.SANDBOX, restarted=True,
                                 error=f"the sandbox failed during the call ({type(exc).__name__}: {exc}); "
                                       "it was restarted")
        finally:
            if process is not None and worker.current is not process:
                process.close()  # a spare never sent a call exits at the end of its request FIFO
            if sent and not completed and worker.alive:  # cancelled mid-call: the call goes with its sandbox
                self._replace(worker)
        if process is not None and not per_episode:
            worker.reports.pop(process.pid, None)  # a complete reply's report is not needed
        result = self._judge(problem, data, report, stateful=stateful)
        if per_episode and worker.current is process and data is not None:
            self._after_episode_call(worker, data, result)
        return result

    def _after_episode_call(self, worker: _Worker, data: dict[str, Any], result: SandboxResult) -> None:
        """ProcessScope.EPISODE: renew the episode's process after a failed call (what the call changed goes
        with it, as its state changes do: a MemoryError or a patched builtin may have left the process
        unhealthy) and before its lifetime CPU limit could end a call."""
        try:
            used = float(data.get("cpu_before") or 0.0)
        except (TypeError, ValueError):
            used = float("inf")  # a forged frame: renew
        limits = self.limits
        short = limits.process_cpu_limit_s - used < 2 * limits.cpu_limit_s + 1
        if not result.ok or short:
            if not worker.retire():
                self._replace(worker)

    def _judge(self, problem: str | None, data: dict[str, Any] | None, report: dict[str, Any] | None,
               *, stateful: bool) -> SandboxResult:
        """The call's result from its reply frame and (when the frame is missing or bad) the parent's report
        (``killed``: why the parent killed the process: "cpu" past a call's CPU limit, "retired" by the host)."""
        limits = self.limits
        if data is not None:
            return self._from_frame(data, stateful=stateful)
        assert report is not None
        status = int(report.get("status", -1))
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            cpu_limit = max(1, int(-(-limits.cpu_s // 1)))
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and report.get("killed") != "retired" and (
                    report.get("killed") in ("cpu", "idle_cpu") or float(report.get("cpu_s", 0)) >= cpu_limit - 0.05)):
                return SandboxResult(ok=False, error_kind=ErrorKind.CPU,
                                     error=f"the tool used more than {limits.cpu_s:g} s of CPU; it was stopped")
            if sig == signal.SIGKILL and report.get("killed") == "retired":  # the host ended it after a bad reply
                return SandboxResult(ok=False, error_kind=ErrorKind.BAD_REPLY,
                                     error=f"the tool's reply channel carried {problem}; the call was discarded")
            if sig == signal.SIGKILL and report.get("killed") == "inodes":
                return SandboxResult(ok=False, error_kind=ErrorKind.FILE_SIZE,
                                     error="the tool kept too many files in its scratch directory; it was stopped")
            if sig == signal.SIGXFSZ:
                return SandboxResult(ok=False, error_kind=ErrorKind.FILE_SIZE,
                                     error=f"the tool wrote a file larger than {limits.file_size_mb} MiB; "
                                           "it was stopped")
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return SandboxResult(ok=False, error_kind=ErrorKind.CRASH, error=f"the tool's process died ({name})")
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        if code != 0:
            return SandboxResult(ok=False, error_kind=ErrorKind.CRASH, error=f"the tool's process exited (code {code})")
        return SandboxResult(ok=False, error_kind=ErrorKind.BAD_REPLY,
                             error=f"the tool's reply channel carried {problem}; the call was discarded")

    def _from_frame(self, data: dict[str, Any], *, stateful: bool) -> SandboxResult:
        # the worker keeps to the limits, but tool code can write a frame of its own (with its call's
        # nonce, found on the stack): the limits are checked again here, where tool code cannot reach
        limits = self.limits
        stdout = (data.get("stdout") or "")[:limits.max_output_bytes + 100]  # room for the worker's truncation note
        if not data["ok"]:
            kind = ErrorKind(data["error_kind"])
            return SandboxResult(ok=False, error_kind=kind, error=str(data.get("error") or kind.value)[:_MAX_ERROR],
                                 stdout=stdout)
        state = data.get("state")
        if stateful and not isinstance(state, dict):
            return SandboxResult(ok=False, error_kind=ErrorKind.BAD_REPLY,
                                 error="the tool's reply carried no state object; the call was discarded")
        value, truncated = data.get("value"), bool(data.get("truncated"))
        try:
            state_size, size = (_json_length(state) if stateful else 0), _json_length(value)
        except RecursionError:
            return SandboxResult(ok=False, error_kind=ErrorKind.BAD_REPLY,
                                 error="the tool's reply was nested too deeply; the call was discarded")
        if state_size > limits.max_state_bytes:
            return SandboxResult(ok=False, error_kind=ErrorKind.STATE_TOO_LARGE,
                                 error=f"the tool grew the state beyond {limits.max_state_bytes} characters")
        if size > limits.max_result_bytes and not (truncated and isinstance(value, str)
                                                   and len(value) <= limits.max_result_bytes + 200):
            value = json.dumps(value, ensure_ascii=False)[:limits.max_result_bytes] + \
                f"...[truncated: result was {size} characters, limit {limits.max_result_bytes}]"
            truncated = True
        return SandboxResult(ok=True, value=value, state=state if stateful else None, stdout=stdout,
                             truncated=truncated)


def _timeout_message(limits: SandboxLimits) -> str:
    return f"the tool did not finish within {limits.wall_s:g} s (wall-clock limit); it was stopped"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: the worker never sends them (allow_nan=False)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: a number the worker never writes (allow_nan=False)
        raise ValueError(f"{text[:40]} is out of a float's range")
    return value


def _json_length(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def _frame_characters(limits: SandboxLimits) -> int:
    """The most characters a frame of the worker can have: the state and an untruncated result as the
    worker measured them, a truncated result string re-escaped (at most 2 characters each: only quotes and
    backslashes are left to escape), output and an error message of control characters (6 each, ``\\u0000``)."""
    return (limits.max_state_bytes + 2 * (limits.max_result_bytes + 200) + 6 * (limits.max_output_bytes + 200)
            + 6 * _MAX_ERROR + 4096)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_reply(
    reply: bytes, nonce: str, limits: SandboxLimits | None = None
) -> tuple[str | None, dict[str, Any] | None]:
    """(problem, data): exactly one frame, valid UTF-8 JSON, this call's nonce, the expected fields.

    A frame longer than the worker can write under ``limits`` (:func:`_frame_characters`) is refused before
    it is parsed: the event loop parses frames, so a forged one at the reply cap (4 bytes a character) would
    stall every episode for its parse (~140 ms at 34 MB; a thread does not help: json holds the GIL). Lone
    surrogates (``\\ud800``), which the worker never writes (its frames are UTF-8), are refused too."""
    if len(reply) < _HEADER.size:
        return "no reply", None
    (size,) = _HEADER.unpack_from(reply)
    if len(reply) != _HEADER.size + size:
        return f"{len(reply)} bytes where one frame of {_HEADER.size + size} was expected (extra or forged bytes)", None
    most = None if limits is None else _frame_characters(limits)
    if most is not None and size > 4 * most:  # more than `most` characters, whatever they are
        return f"a frame of {size} bytes, more than the worker writes under its limits", None
    try:
        text = reply[_HEADER.size:].decode("utf-8")
    except UnicodeDecodeError:
        return "bytes that are not UTF-8", None
    if most is not None and len(text) > most:
        return f"a frame of {len(text)} characters, more than the {most} the worker writes under its limits", None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError:
        return "a frame that is not JSON", None
    except RecursionError:  # a forged frame nested deeper than the host's parser goes
        return "a frame nested too deeply", None
    if not isinstance(data, dict) or not secrets.compare_digest(str(data.get("id")), nonce):
        return "a frame that does not belong to this call", None
    if not isinstance(data.get("ok"), bool) or not isinstance(data.get("stdout", ""), str):
        return "a malformed frame", None
    if not data["ok"] and (data.get("error_kind") not in {k.value for k in _CHILD_KINDS}
                           or not isinstance(data.get("error", ""), str)):
        return "a malformed error frame", None
    if _SURROGATE_ESCAPE.search(text) is not None:  # escaped surrogates: paired ones are fine
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "text that is not valid Unicode (a lone surrogate)", None
        except RecursionError:
            return "a frame nested too deeply", None
    return None, data
