"""``--boost`` for benchmarks on a shared machine: nice -20 for the autogroups of this process and
all its descendants (bubblewrap's ``--new-session`` and every spawned worker get an autogroup of
their own, so a plain ``nice`` does not reach them). Root only; a no-op elsewhere."""

from __future__ import annotations

import os

BOOST = {"on": False}


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def boost() -> None:
    """With --boost: nice -20 for the autogroups of this process and all its descendants."""
    if not BOOST["on"]:
        return
    for pid in [os.getpid(), *descendants(os.getpid())]:
        try:
            with open(f"/proc/{pid}/autogroup", "w") as fh:
                fh.write("-20")
        except OSError:
            pass
