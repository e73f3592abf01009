"""Workers that may die, behind a transport: start, request, time out, restart.

:class:`_Supervisor` is the half of the env pools that keeps their workers alive: it checks the
pool's arguments, starts every worker, sends commands and collects the replies within the
timeouts, turns a worker's error report into an :class:`EnvWorkerError`, and replaces a dead or
hung worker by a fresh, reset one (restart seeds, ``max_restarts``). The ``VecEnv`` API on top
of it is :class:`rlagent.pool._base._WorkerPool`; the transports are the subclasses
(:class:`rlagent.pool.local.EnvPool`: processes; :class:`rlagent.pool.ray.RayEnvPool`: Ray actors).
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from rlagent.errors import EnvWorkerError
from rlagent.pool.devices import WorkerSlot

logger = logging.getLogger(__name__)

EnvFn = Callable[[WorkerSlot], gym.Env]
"""Picklable callable that builds one env on the device of the worker's slot."""


class _Dead:
    """Marker for a worker that gave no reply: it died, or hung past the timeout."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _restart_seed(seed: int | None, restarts: int) -> int | None:
    """Seed for a restarted worker: deterministic in (original seed, restart count).

    A plain ``seed + restarts`` would collide with the next env's seed (SB3 seeds env ``i``
    with ``seed + i``), so the two numbers are hashed through a ``SeedSequence``.
    """
    if seed is None:
        return None
    state = np.random.SeedSequence([abs(int(seed)), restarts]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def _check_positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be > 0, got {value!r}")


class _Supervisor(VecEnv):
    """A ``VecEnv`` whose envs live in workers that may die: starting, requests, restarts.

    This class holds everything about the workers that does not depend on how a worker runs:
    the checks of the arguments, start-up, requests with timeouts, error unwrapping and the
    restart of dead or hung workers (restart seeds, ``max_restarts``). A transport subclass
    (``EnvPool``: processes; ``RayEnvPool``: Ray actors) starts worker ``i``
    (``_start_worker``), sends it a command (``_send``), waits for replies until a deadline
    (``_wait``), kills one worker (``_stop_worker``) and all (``_close_workers``). Its
    ``__init__`` calls this one's, sets up its transport, then calls ``_start_all()``.

    A worker answers a command ``(cmd, data)`` with ``(status, payload)`` as ``_handle`` does:
    ``"ok"``, ``"attr_error"`` or ``"error"`` (payload: traceback, device, workload); its first
    reply, once its env is built, answers the command ``"build"``.
    """

    _kind = "worker"
    """How messages name a worker: ``env worker 3 (device=...)``."""
    _restarting = "restarting"
    """How the warning about a restart names it: ``...; restarting it (restart 1 of 3)``."""
    _log = logger
    """Where restarts are logged (the subclass's module logger)."""

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        slots: Sequence[WorkerSlot],
        *,
        step_timeout: float,
        start_timeout: float,
        close_timeout: float,
        max_restarts: int,
    ) -> None:
        if len(env_fns) == 0:
            raise ValueError("env_fns must not be empty")
        if len(env_fns) != len(slots):
            raise ValueError(f"env_fns and slots must have the same length, got {len(env_fns)} and {len(slots)}")
        _check_positive("step_timeout", step_timeout)
        _check_positive("start_timeout", start_timeout)
        _check_positive("close_timeout", close_timeout)
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts!r}")

        n_envs = len(env_fns)
        self.slots: tuple[WorkerSlot, ...] = tuple(slots)
        self.restarts: list[int] = [0] * n_envs
        self.step_timeout = float(step_timeout)
        self.start_timeout = float(start_timeout)
        self.close_timeout = float(close_timeout)
        self.max_restarts = int(max_restarts)
        self.waiting = False
        self.closed = False

        self._workloads: list[str | None] = [None] * n_envs
        self._last_obs: list[Any] = [None] * n_envs
        self._base_seeds: list[int | None] = [None] * n_envs
        self._last_options: list[dict[str, Any]] = [{} for _ in range(n_envs)]
        # Envs restarted outside step_wait (e.g. during get_attr): (reset obs, reset info,
        # terminal obs), reported as a done at the next step_wait.
        self._restarted: dict[int, tuple[Any, dict[str, Any], Any]] = {}
        self._step_deadline = 0.0
        self._unsent: set[int] = set()  # envs whose step could not be sent

    def _start_all(self) -> None:
        """Start every worker, wait for their envs, and finish ``VecEnv.__init__`` with their spaces.

        Raises:
            EnvWorkerError: If a factory raises or a worker dies or is late; the pool is closed.
        """
        n_envs = len(self.slots)
        try:
            for i in range(n_envs):
                self._start_worker(i)
            replies = self._collect(range(n_envs), time.monotonic() + self.start_timeout, self._start_limit)
            for i, reply in replies.items():
                if isinstance(reply, _Dead):
                    hint = self._build_hint(i, restart=False)
                    raise self._death_error(i, f"{reply.reason} while building its env{hint}")
                self._built(i, self._unwrap(i, reply))
            observation_space, action_space = self._request([0], "get_spaces", None)[0]
        except BaseException:
            self.close()
            raise
        super().__init__(n_envs, observation_space, action_space)

    # ---------------------------------------------------------------------------- transport

    @abstractmethod
    def _start_worker(self, i: int) -> None:
        """Start worker ``i``, which builds env ``i``; its "build" reply is the next to wait for."""

    @abstractmethod
    def _send(self, i: int, cmd: str, data: Any) -> bool:
        """Send a command to worker ``i``; False if it cannot be reached (it died)."""

    @abstractmethod
    def _wait(self, indices: list[int], deadline: float) -> dict[int, tuple[str, Any] | _Dead]:
        """Wait until ``deadline`` for each worker's reply to its last command.

        Returns:
            The reply ``(status, payload)`` of each worker that answered, or a ``_Dead`` saying
            why for each that died; a worker left out did neither by ``deadline``.
        """

    @abstractmethod
    def _gone_reason(self, i: int) -> str:
        """Why worker ``i`` could not be sent a command, e.g. ``"was killed by SIGKILL"``."""

    @abstractmethod
    def _stop_worker(self, i: int) -> None:
        """Kill worker ``i`` at once (it is dead or hung, so there is no point asking)."""

    @abstractmethod
    def _close_workers(self) -> None:
        """Stop every worker within ``close_timeout`` (``close()`` calls this once)."""

    def _built(self, i: int, payload: Any) -> None:
        """Take the payload of worker ``i``'s "build" reply."""

    def _build_hint(self, i: int, *, restart: bool) -> str:
        """Text added to the error of a worker that died or was late building its env."""
        return ""

    def _where(self, i: int) -> str:
        """Where worker ``i`` runs, added to its env's errors (``", node ..."``), or ""."""
        return ""

    # ---------------------------------------------------------------------------- internals

    @property
    def _step_limit(self) -> str:
        return f"step_timeout={self.step_timeout:g} s"

    @property
    def _start_limit(self) -> str:
        return f"start_timeout={self.start_timeout:g} s"

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def _collect(self, indices: Iterable[int], deadline: float, limit: str) -> dict[int, Any]:
        """Receive one reply from each worker, or a ``_Dead`` if it dies or passes ``deadline``.

        Replies are ``(status, payload)``; ``limit`` names the timeout in messages.
        """
        indices = list(indices)
        replies: dict[int, Any] = self._wait(indices, deadline) if indices else {}
        for i in indices:
            if i not in replies:
                replies[i] = _Dead(f"gave no reply within {limit}")
        return replies

    def _unwrap(self, i: int, reply: tuple[str, Any]) -> Any:
        """Return the result of an ``ok`` reply; raise the error a worker reported."""
        status, payload = reply
        if status == "ok":
            return payload
        if status == "attr_error":
            raise AttributeError(payload)
        device, workload = payload["device"], payload["workload"]
        self._workloads[i] = workload or self._workloads[i]
        raise EnvWorkerError(
            f"env {self._kind} {i} (device={device}, workload={workload}{self._where(i)}) raised during "
            f"{payload['command']}:\n{payload['traceback']}",
            index=i,
            device=device,
            workload=workload,
            remote_traceback=payload["traceback"],
        )

    def _request(
        self,
        indices: Iterable[int],
        cmd: str,
        data: Any,
        *,
        on_death: str = "retry",
    ) -> list[Any]:
        """Send ``cmd`` to the selected workers and return their results, in order.

        ``data`` is shared by all workers, except for ``reset`` where it is a per-env list.
        A worker that dies is restarted; for ``reset`` the restart's own reset is the result,
        for other commands the command is retried once on the fresh worker and the restart is
        reported as a done at the next ``step_wait``.
        """
        self._check_open()
        if self.waiting:
            raise RuntimeError(f"cannot run {cmd!r} while a step is pending (call step_wait)")
        indices = list(indices)
        per_env = cmd == "reset"
        unsent = [i for k, i in enumerate(indices) if not self._send(i, cmd, data[k] if per_env else data)]
        sent = [i for i in indices if i not in unsent]
        replies = self._collect(sent, time.monotonic() + self.step_timeout, self._step_limit)
        for i in unsent:
            replies[i] = _Dead(f"{self._gone_reason(i)} (could not send {cmd!r})")
        for i in indices:
            if not isinstance(replies[i], _Dead) and replies[i][0] != "ok":
                self._unwrap(i, replies[i])
        results = []
        for k, i in enumerate(indices):
            reply = replies[i]
            if not isinstance(reply, _Dead):
                results.append(reply[1])
                continue
            if on_death == "reset":
                self._base_seeds[i] = data[k][0] if data[k][0] is not None else self._base_seeds[i]
                reset_obs, reset_info, _ = self._restart(i, reply.reason)
                results.append((reset_obs, reset_info, self._workloads[i]))
            else:
                self._restarted[i] = self._restart(i, reply.reason)
                results.append(self._request([i], cmd, data)[0])
        return results

    def _death_error(self, i: int, reason: str) -> EnvWorkerError:
        device, workload = self.slots[i].device, self._workloads[i]
        return EnvWorkerError(
            f"env {self._kind} {i} (device={device}, workload={workload}) {reason}",
            index=i,
            device=device,
            workload=workload,
            remote_traceback=None,
        )

    def _restart(self, i: int, reason: str) -> tuple[Any, dict[str, Any], Any]:
        """Replace dead worker ``i`` by a fresh, reset one.

        Returns:
            The fresh worker's reset observation and info, and the last observation the old
            worker returned.

        Raises:
            EnvWorkerError: If the worker used up ``max_restarts`` or the new env raises.
        """
        # A second restart before the next step still reports the env's last real observation.
        pending = self._restarted.pop(i, None)
        terminal_obs = pending[2] if pending is not None else self._last_obs[i]
        while True:
            self._stop_worker(i)
            if self.restarts[i] >= self.max_restarts:
                raise self._death_error(i, f"{reason}; not restarting, max_restarts={self.max_restarts} used up")
            self.restarts[i] += 1
            self._log.warning(
                "env %s %d (device=%s, workload=%s) %s; %s it (restart %d of %d)",
                self._kind,
                i,
                self.slots[i].device,
                self._workloads[i],
                reason,
                self._restarting,
                self.restarts[i],
                self.max_restarts,
            )
            self._start_worker(i)
            reply = self._collect([i], time.monotonic() + self.start_timeout, self._start_limit)[i]
            if isinstance(reply, _Dead):
                reason = f"{reply.reason} while building its env{self._build_hint(i, restart=True)}"
                continue
            self._built(i, self._unwrap(i, reply))
            seed = _restart_seed(self._base_seeds[i], self.restarts[i])
            options = self._last_options[i] or None
            if not self._send(i, "reset", (seed, options)):
                reason = f"{self._gone_reason(i)} before its reset"
                continue
            reply = self._collect([i], time.monotonic() + self.step_timeout, self._step_limit)[i]
            if isinstance(reply, _Dead):
                reason = f"{reply.reason} during its reset"
                continue
            reset_obs, reset_info, self._workloads[i] = self._unwrap(i, reply)
            self._last_obs[i] = reset_obs
            return reset_obs, reset_info, terminal_obs
