"""Process-tree helpers for the tests that stop a command and check its workers went with it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
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


def sigterm_when(
    command: Sequence[str], ready: Callable[[subprocess.Popen[str]], bool], *, settle: float = 0.0
) -> tuple[int, str, dict[int, int]]:
    """Run ``command``, send it SIGTERM once ``ready(process)`` holds (polled for up to 120 s)
    and ``settle`` seconds more have passed, and wait for it to end (30 s at most).

    Returns:
        Its exit status, its stderr, and its descendants (:func:`process_tree`) just before the signal.
    """
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready(proc) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"it ended before it was stopped: {proc.communicate()[1]}"
        time.sleep(settle)
        tree = process_tree(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, err, tree
