"""Which device and how many CPU threads each env worker gets.

One env step is a whole training epoch, so env workers are the expensive part of a run. With
GPUs, each worker trains on one GPU (round-robin when there are more envs than GPUs); on CPU,
the cores are split between the workers so that ``workers x threads <= cores`` and the workers
do not fight over the same cores. ``plan_workers`` only plans: the pool (``rlagent.pool``)
applies a ``WorkerSlot`` inside its worker process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlagent.errors import is_int

__all__ = ["WorkerSlot", "plan_workers", "visible_cpu_count", "visible_cuda_count"]

_CUDA_RE = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class WorkerSlot:
    """Where one env worker runs."""

    device: str
    """Torch device the worker builds its env on: ``"cpu"`` or ``"cuda:K"``."""

    num_threads: int
    """Torch intra-op threads (``torch.set_num_threads``) the worker uses; at least 1."""

    def __post_init__(self) -> None:
        if self.num_threads < 1:
            raise ValueError(f"WorkerSlot.num_threads must be >= 1, got {self.num_threads!r}")

    def apply(self, *, cuda: bool = True) -> None:
        """Run this process in the slot: its torch threads and, for ``cuda:K``, its current GPU.

        Call it in the worker before anything touches CUDA: a parent's ``set_device`` does not
        carry over to a child process. ``cuda=False`` leaves the device alone.
        """
        torch.set_num_threads(self.num_threads)
        if cuda and self.cuda_index is not None:
            torch.cuda.set_device(self.cuda_index)

    @property
    def cuda_index(self) -> int | None:
        """Index ``K`` of a ``"cuda:K"`` device, or None for the CPU."""
        match = _CUDA_RE.fullmatch(self.device)
        if match is None:
            return None
        return int(match.group(1) or 0)


def visible_cpu_count() -> int:
    """Number of CPU cores this process may run on (its affinity mask where available)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def visible_cuda_count() -> int:
    """Number of CUDA devices torch can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _normalize_device(value: object, cuda_count: int) -> str:
    """Check one device string and return its canonical form (``"cuda"`` -> ``"cuda:0"``).

    Args:
        value: The device as given by the user.
        cuda_count: Number of CUDA devices on the machine.

    Returns:
        ``"cpu"`` or ``"cuda:K"``.

    Raises:
        ValueError: If ``value`` is not ``cpu``, ``cuda`` or ``cuda:N`` with ``N < cuda_count``.
    """
    allowed = "'cpu'" if cuda_count == 0 else f"'cpu', 'cuda' or 'cuda:N' with 0 <= N < {cuda_count}"
    machine = f"this machine has {cuda_count} CUDA device{'s' if cuda_count != 1 else ''}"
    text = value.strip().lower() if isinstance(value, str) else None
    if text == "cpu":
        return "cpu"
    match = _CUDA_RE.fullmatch(text) if text is not None else None
    if match is None:
        raise ValueError(f"invalid device {value!r}: expected {allowed} ({machine})")
    index = int(match.group(1) or 0)
    if index >= cuda_count:
        raise ValueError(f"device {value!r} is not available: expected {allowed} ({machine})")
    return f"cuda:{index}"


def plan_workers(
    n_envs: int | None,
    devices: str | Sequence[str] | None = "auto",
    *,
    cpu_count: int | None = None,
    cuda_count: int | None = None,
) -> list[WorkerSlot]:
    """Plan the device and thread count of each env worker.

    With ``devices="auto"`` (or None), each env gets one visible CUDA device, round-robin, and
    ``n_envs`` defaults to the number of CUDA devices; without CUDA, every env runs on the CPU
    and ``n_envs`` defaults to the number of cores. An explicit device list (a comma-separated
    string such as ``"cuda:0,cuda:1"`` or a sequence such as ``["cpu", "cpu"]``) is assigned
    round-robin to the envs, and ``n_envs`` defaults to its length. In every case the cores are
    split evenly between the workers (``workers x threads <= cores``, at least 1 thread each).

    Args:
        n_envs: Number of envs (workers); None picks the default described above.
        devices: ``"auto"``, None, a comma-separated device string, or a sequence of devices.
        cpu_count: Cores to plan for; None uses the cores this process may run on. Tests pass
            a number to fake a machine.
        cuda_count: CUDA devices to plan for; None asks torch. Tests pass a number to fake a
            machine.

    Returns:
        One ``WorkerSlot`` per env, in env order.

    Raises:
        ValueError: If ``n_envs`` is not a positive integer, the device list is empty, or a
            device is not ``cpu``, ``cuda`` or ``cuda:N`` with ``N < cuda_count``.
    """
    if n_envs is not None and (not is_int(n_envs) or n_envs < 1):
        raise ValueError(f"n_envs must be a positive integer or None, got {n_envs!r}")
    cores = visible_cpu_count() if cpu_count is None else cpu_count
    if cores < 1:
        raise ValueError(f"cpu_count must be >= 1, got {cpu_count!r}")
    gpus = visible_cuda_count() if cuda_count is None else cuda_count
    if gpus < 0:
        raise ValueError(f"cuda_count must be >= 0, got {cuda_count!r}")

    if devices is None or (isinstance(devices, str) and devices.strip().lower() == "auto"):
        pool = [f"cuda:{k}" for k in range(gpus)] if gpus > 0 else ["cpu"] * (n_envs or cores)
    else:
        items = devices.split(",") if isinstance(devices, str) else list(devices)
        if not items or (isinstance(devices, str) and not devices.strip()):
            raise ValueError(f"devices must be 'auto' or a non-empty list of devices, got {devices!r}")
        pool = [_normalize_device(item, gpus) for item in items]

    count = n_envs if n_envs is not None else len(pool)
    threads = max(1, cores // count)
    return [WorkerSlot(device=pool[i % len(pool)], num_threads=threads) for i in range(count)]
