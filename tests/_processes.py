"""Process-tree helpers for the tests that stop a command and check its workers went with it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

HAS_PROC = Path("/proc/self/stat").is_file()
"""Whether this system shows processes under /proc (Linux), which these helpers read."""


def process_tree(root: int) -> dict[int, int]:
    """Live descendants of ``root`` by depth (1: children), read from /proc; zombies left out."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
            except OSError:
                continue  # gone meanwhile
            if state != "Z":
                parents[int(entry.name)] = int(ppid)
    depth: dict[int, int] = {}
    frontier = {root: 0}
    while frontier:
        frontier = {pid: d + 1 for pid, ppid in parents.items() for p, d in frontier.items() if ppid == p}
        depth.update(frontier)
    return depth


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def still_alive(pids: Iterable[int], timeout: float) -> set[int]:
    """Those of ``pids`` still running after up to ``timeout`` seconds of waiting for them to end."""
    left, deadline = set(pids), time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {pid for pid in left if alive(pid)}
    return left
