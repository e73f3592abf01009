"""Exceptions with messages that name what is wrong, and the type checks made before raising them."""

from __future__ import annotations

from typing import Any


def is_number(value: object) -> bool:
    """An int or float that is not a bool (``True`` is an int to Python, never a value here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


class RLAgentError(Exception):
    """Base class of rlagent's own errors; the CLI prints these as one line."""


class SpecError(RLAgentError, ValueError):
    """A configuration value is missing, mistyped or out of range.

    Args:
        field: Dotted path of the offending field, e.g. ``episode.lr_range``.
        value: The value found.
        allowed: What would have been accepted.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; expected {allowed}")


class PolicyFileError(RLAgentError, ValueError):
    """A policy directory is missing, malformed, tampered with or does not fit."""


class ClusterLostError(RLAgentError):
    """The Ray cluster lost a node and can no longer host one of the run's actors.

    Raised by :class:`rlagent.pool.ray.RayEnvPool` when an actor whose node died cannot be
    placed anywhere else for ``unschedulable_timeout`` seconds; ``rlagent train`` then writes a
    checkpoint and re-raises it with the checkpoint's path and the ``--resume`` hint.

    Attributes:
        index: Index of the env whose actor was lost.
        node: The lost node, e.g. ``"10.0.0.5 (id 3f2a91c0)"``, or None if unknown.
        resources: What the actor asks Ray for, e.g. ``{"num_cpus": 1, "num_gpus": 0}``.
        checkpoint: The checkpoint written after the loss, once there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int,
        node: str | None,
        resources: dict[str, float],
        checkpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.node = node
        self.resources = dict(resources)
        self.checkpoint = checkpoint

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_cluster_lost, (str(self), self.index, self.node, self.resources, self.checkpoint))


def _rebuild_cluster_lost(
    message: str, index: int, node: str | None, resources: dict[str, float], checkpoint: str | None
) -> ClusterLostError:
    return ClusterLostError(message, index=index, node=node, resources=resources, checkpoint=checkpoint)


class EnvWorkerError(RuntimeError):
    """An env worker failed: its env raised, or it died more often than ``max_restarts``.

    Attributes:
        index: Index of the env (worker) in the pool.
        device: Device of the worker, e.g. ``"cuda:1"``.
        workload: Workload the env was running (``env.unwrapped.workload_name``), if known.
        remote_traceback: Traceback text from the worker, or None when the worker died
            without one.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int,
        device: str,
        workload: str | None,
        remote_traceback: str | None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.device = device
        self.workload = workload
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by the default exception pickling.
        return (
            _rebuild_worker_error,
            (str(self), self.index, self.device, self.workload, self.remote_traceback),
        )


def _rebuild_worker_error(
    message: str, index: int, device: str, workload: str | None, remote_traceback: str | None
) -> EnvWorkerError:
    return EnvWorkerError(message, index=index, device=device, workload=workload, remote_traceback=remote_traceback)
