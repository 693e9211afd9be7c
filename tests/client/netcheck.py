"""Which TCP sockets a process tree holds (from /proc, no psutil): to prove Ray stays on loopback."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def _children(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _addr(hex_addr: str) -> str:
    ip_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # /proc/net/tcp6: four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
    return f"{ip}:{int(port_hex, 16)}"


def tcp_sockets(root: int | None = None) -> list[tuple[str, str, str]]:
    """(local, remote, state) of every TCP socket held by ``root`` (default: this process) and its descendants."""
    inodes = _socket_inodes(_children(root or os.getpid()))
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[9] in inodes:
                out.append((_addr(parts[1]), _addr(parts[2]), parts[3]))
    return out


def off_loopback(sockets: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Sockets bound or connected to anything but loopback (a listener on 0.0.0.0 counts)."""
    bad = []
    for local, remote, state in sockets:
        lip = ipaddress.ip_address(local.rsplit(":", 1)[0])
        rip = ipaddress.ip_address(remote.rsplit(":", 1)[0])
        if not lip.is_loopback or not (rip.is_loopback or rip.is_unspecified):
            bad.append((local, remote, state))
    return bad
