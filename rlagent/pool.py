"""A pool of env worker processes that survives dying workers, as an SB3 ``VecEnv``.

One env step is a full training epoch, so a worker can run for minutes, run out of memory, be
killed, or hang on a GPU. ``EnvPool`` is a ``SubprocVecEnv`` for that setting:

* an exception inside an env is raised in the parent as ``EnvWorkerError``, carrying the
  worker's own traceback, device and workload (never a bare ``EOFError``);
* a worker that dies (SIGKILL, OOM) or exceeds ``step_timeout`` is replaced by a fresh one built
  from the same factory and slot; that env's step is reported as a truncated episode end
  (``infos[i]["worker_restarted"]``), so training goes on;
* every receive is bounded, and ``close()`` never hangs.

Workers are started with ``forkserver`` (default) or ``spawn``, never ``fork``: a forked child
of a process that has touched CUDA or started threads is not safe. Env factories must therefore
be picklable (module-level functions, ``functools.partial`` of them, or classes).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import time
import traceback
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from multiprocessing import util as mp_util
from multiprocessing.connection import Connection, wait
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import (
    CloudpickleWrapper,
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from rlagent.devices import WorkerSlot

__all__ = ["EnvFactory", "EnvPool", "EnvWorkerError"]

logger = logging.getLogger(__name__)

EnvFactory = Callable[[WorkerSlot], gym.Env]
"""Picklable callable that builds one env on the device of the worker's slot."""

_START_METHODS = ("forkserver", "spawn")


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


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def _workload_of(env: gym.Env | None) -> str | None:
    if env is None:
        return None
    try:
        return getattr(env.unwrapped, "workload_name", None)
    except Exception:  # noqa: BLE001 - a broken env must not hide the original error
        return None


def _setup_worker(slot: WorkerSlot) -> None:
    """Apply the slot's thread count and GPU before the env (or anything else) touches CUDA."""
    import torch

    torch.set_num_threads(slot.num_threads)
    if slot.cuda_index is not None:
        # The parent's ``set_device`` does not carry over to a child process.
        torch.cuda.set_device(slot.cuda_index)


class _MissingAttr(Exception):
    """An attribute asked for by the parent does not exist (raised as AttributeError there)."""


def _lookup(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError as exc:
        raise _MissingAttr(str(exc)) from exc


def _handle(env: gym.Env, cmd: str, data: Any) -> Any:
    """Run one command on the worker's env and return what goes back to the parent."""
    if cmd == "step":
        obs, reward, terminated, truncated, info = env.step(data)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict[str, Any] = {}
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = env.reset()
        return obs, reward, done, info, reset_info, _workload_of(env)
    if cmd == "reset":
        seed, options = data
        obs, reset_info = env.reset(seed=seed, **({"options": options} if options else {}))
        return obs, reset_info, _workload_of(env)
    if cmd == "get_attr":
        return _lookup(env, data)
    if cmd == "has_attr":
        try:
            env.get_wrapper_attr(data)
        except AttributeError:
            return False
        return True
    if cmd == "set_attr":
        setattr(env, data[0], data[1])
        return None
    if cmd == "env_method":
        name, args, kwargs = data
        return _lookup(env, name)(*args, **kwargs)
    if cmd == "is_wrapped":
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(env, data)
    if cmd == "render":
        return env.render()
    if cmd == "get_spaces":
        return env.observation_space, env.action_space
    raise NotImplementedError(f"unknown env pool command {cmd!r}")


def _error_details(cmd: str, slot: WorkerSlot, env: gym.Env | None) -> dict[str, Any]:
    return {
        "command": cmd,
        "traceback": traceback.format_exc(),
        "device": slot.device,
        "workload": _workload_of(env),
    }


def _worker(conn: Connection, env_fn: CloudpickleWrapper, slot: WorkerSlot, index: int) -> None:
    """Worker process main loop: build the env, then answer commands until told to close.

    Commands are ``(seq, cmd, data)``; every reply is ``(seq, status, payload)`` with the
    command's ``seq`` (0 for the message sent once the env is built), so the parent can drop
    replies to commands it gave up on. ``status`` is ``"ok"`` (payload: the result),
    ``"attr_error"`` (payload: the message) or ``"error"`` (payload: the formatted traceback,
    device and workload name). An exception in a command is reported and the worker keeps
    serving (the parent decides what to do); one while building the env is reported and the
    worker then waits to be closed.
    """
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env: gym.Env | None = None
    try:
        try:
            _setup_worker(slot)
            env = env_fn.var(slot)
            if not isinstance(env, gym.Env):
                raise TypeError(f"env factory returned {type(env).__name__}, not a gymnasium.Env")
        except Exception:  # noqa: BLE001 - reported to the parent
            conn.send((0, "error", _error_details("build", slot, env)))
            conn.recv()  # wait for "close" (or EOF)
            return
        conn.send((0, "ok", None))
        while True:
            seq, cmd, data = conn.recv()
            if cmd == "close":
                break
            try:
                reply = (seq, "ok", _handle(env, cmd, data))
            except _MissingAttr as exc:
                reply = (seq, "attr_error", str(exc))
            except Exception:  # noqa: BLE001 - reported to the parent
                reply = (seq, "error", _error_details(cmd, slot, env))
            try:
                conn.send(reply)
            except OSError:
                raise
            except Exception:  # noqa: BLE001 - the reply could not be pickled
                conn.send((seq, "error", _error_details(cmd, slot, env)))
    except (EOFError, OSError):  # the parent is gone
        pass
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:
                logging.getLogger(__name__).exception("env %d: close() raised", index)
        conn.close()


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


class _Dead:
    """Marker for a worker that gave no reply: it died, or hung past the timeout."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _exit_reason(process: mp.process.BaseProcess | None) -> str:
    if process is None:
        return "is not running"
    code = process.exitcode
    if code is None:
        return "is unresponsive"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _shutdown_workers(
    processes: list[mp.process.BaseProcess | None],
    conns: list[Connection | None],
    timeout: float,
) -> None:
    """Ask workers to close, wait at most ``timeout`` seconds, then terminate and kill them.

    Module-level (not a method) so that the finalizer holding it does not keep the pool alive.
    """
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send((-1, "close", None))
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if p is not None]
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in alive:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
    for conn in conns:
        if conn is not None:
            conn.close()
    for process in alive:
        # ValueError: still running after SIGKILL (e.g. stuck in the kernel).
        with contextlib.suppress(ValueError):
            process.close()


def _stack_obs(obs: Sequence[Any], space: spaces.Space) -> VecEnvObs:
    if isinstance(space, spaces.Dict):
        return {key: np.stack([o[key] for o in obs]) for key in space.spaces}
    if isinstance(space, spaces.Tuple):
        return tuple(np.stack([o[i] for o in obs]) for i in range(len(space.spaces)))
    return np.stack(obs)


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


class _WorkerPool(VecEnv):
    """A ``VecEnv`` whose envs live in workers that may die; the logic shared by both backends.

    This class holds everything that does not depend on how a worker runs: the checks of the
    arguments, the ``VecEnv`` API, auto-reset results, error unwrapping and the restart of dead
    or hung workers (restart seeds, ``max_restarts``, the ``worker_restarted`` step report).
    A subclass (``EnvPool``: processes; ``RayEnvPool``: Ray actors) is only the transport: it
    starts worker ``i`` (``_start_worker``), sends it a command (``_send``), waits for replies
    until a deadline (``_wait``), kills one worker (``_stop_worker``) and all (``_close_workers``).
    Its ``__init__`` calls this one's, sets up its transport, then calls ``_start_all()``.

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
        env_fns: Sequence[EnvFactory],
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

    # ---------------------------------------------------------------------------- VecEnv API

    def reset(self) -> VecEnvObs:
        """Reset every env, using and then clearing the seeds/options set by ``seed()`` etc.

        Returns:
            The stacked reset observations; reset infos are stored in ``reset_infos``.
        """
        self._check_open()
        # A pending step is cancelled: the workers run it before the reset, and its replies are
        # dropped.
        self.waiting = False
        self._unsent = set()
        for i in range(self.num_envs):
            if self._seeds[i] is not None:
                self._base_seeds[i] = self._seeds[i]
            self._last_options[i] = dict(self._options[i] or {})
        self._restarted.clear()
        results = self._request(
            range(self.num_envs),
            "reset",
            [(self._seeds[i], self._options[i] or None) for i in range(self.num_envs)],
            on_death="reset",
        )
        obs = []
        for i, (ob, reset_info, workload) in enumerate(results):
            self._workloads[i] = workload
            self._last_obs[i] = ob
            self.reset_infos[i] = reset_info
            obs.append(ob)
        self._reset_seeds()
        self._reset_options()
        return _stack_obs(obs, self.observation_space)

    def step_async(self, actions: np.ndarray) -> None:
        """Send one action to each env (envs restarted since the last step get none)."""
        self._check_open()
        if self.waiting:
            raise RuntimeError("step_async called while a step is already pending")
        self._unsent = set()
        for i in range(self.num_envs):
            if i in self._restarted:
                continue
            if not self._send(i, "step", actions[i]):
                self._unsent.add(i)
        self._step_deadline = time.monotonic() + self.step_timeout
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Wait for the step started by ``step_async``, restarting workers that died.

        Returns:
            Stacked observations, rewards, dones and the list of info dicts.

        Raises:
            EnvWorkerError: If an env raised, or a worker died once more than ``max_restarts``.
        """
        self._check_open()
        if not self.waiting:
            raise RuntimeError("step_wait called without step_async")
        self.waiting = False
        stepped = [i for i in range(self.num_envs) if i not in self._restarted]
        sent = [i for i in stepped if i not in self._unsent]
        replies = self._collect(sent, self._step_deadline, self._step_limit)
        for i in self._unsent:
            replies[i] = _Dead(f"{self._gone_reason(i)} (could not send the step)")
        self._unsent = set()
        # Raise an env's own exception first: it says more than a death.
        for i in stepped:
            if not isinstance(replies[i], _Dead) and replies[i][0] != "ok":
                self._unwrap(i, replies[i])
        for i in stepped:
            if isinstance(replies[i], _Dead):
                self._restarted[i] = self._restart(i, replies[i].reason)

        obs, rewards, dones, infos = [], [], [], []
        for i in range(self.num_envs):
            if i in self._restarted:
                reset_obs, reset_info, terminal_obs = self._restarted.pop(i)
                ob, reward, done = reset_obs, 0.0, True
                info = {
                    "worker_restarted": True,
                    "TimeLimit.truncated": True,
                    "terminal_observation": terminal_obs,
                }
            else:
                ob, reward, done, info, reset_info, self._workloads[i] = replies[i][1]
            self.reset_infos[i] = reset_info
            self._last_obs[i] = ob
            obs.append(ob)
            rewards.append(reward)
            dones.append(done)
            infos.append(info)
        return (
            _stack_obs(obs, self.observation_space),
            np.asarray(rewards, dtype=np.float32),
            np.asarray(dones, dtype=bool),
            infos,
        )

    def close(self) -> None:
        """Stop all workers; never hangs, safe after a worker died, and idempotent."""
        if self.closed:
            return
        self.closed = True
        self.waiting = False
        self._close_workers()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Return an attribute of each selected env (see ``VecEnv.get_attr``)."""
        return self._request(self._get_indices(indices), "get_attr", attr_name)

    def has_attr(self, attr_name: str) -> bool:
        """Whether every env has the attribute (checked in the workers, nothing is pickled)."""
        return all(self._request(range(self.num_envs), "has_attr", attr_name))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on each selected env (see ``VecEnv.set_attr``)."""
        self._request(self._get_indices(indices), "set_attr", (attr_name, value))

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a method of each selected env and return the results (see ``VecEnv``)."""
        return self._request(self._get_indices(indices), "env_method", (method_name, method_args, method_kwargs))

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether each selected env is wrapped with ``wrapper_class``."""
        return self._request(self._get_indices(indices), "is_wrapped", wrapper_class)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Render each env as an RGB array (only with ``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but get_images needs 'rgb_array'.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return self._request(range(self.num_envs), "render", None)

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


class EnvPool(_WorkerPool):
    """SB3 ``VecEnv`` running each env in its own worker process, restarting dead workers.

    Each worker applies its ``WorkerSlot`` (``torch.set_num_threads``, and
    ``torch.cuda.set_device`` for ``cuda:K``) before it builds its env with
    ``env_fns[i](slots[i])``.

    When a worker dies or exceeds ``step_timeout``, a fresh worker is started with the same
    factory and slot and reset (with a seed derived from the env's original seed and the restart
    count). The step that was lost is reported as ``done`` with ``infos[i]`` holding
    ``"worker_restarted": True``, ``"TimeLimit.truncated": True`` (SB3 bootstraps the value
    instead of treating the end as terminal) and ``"terminal_observation"`` (the last
    observation the env returned); ``obs[i]`` is the fresh worker's reset observation and the
    reward is 0. After ``max_restarts`` restarts of one worker the next death raises
    ``EnvWorkerError``.

    Args:
        env_fns: One picklable env factory per env; it receives the worker's slot.
        slots: One ``WorkerSlot`` per env (see ``rlagent.devices.plan_workers``).
        start_method: ``"forkserver"`` (default where available) or ``"spawn"``.
        step_timeout: Seconds to wait for any reply of a running worker (a step is a whole
            epoch, hence the generous default); a worker past it is killed and restarted.
        start_timeout: Seconds a new worker may take to import and build its env.
        close_timeout: Seconds ``close()`` waits for workers to exit before killing them.
        max_restarts: Restarts allowed per worker over the pool's life.

    Attributes:
        slots: The workers' slots, in env order.
        restarts: Number of times each worker has been restarted.

    Raises:
        ValueError: If the arguments do not fit together.
        EnvWorkerError: If a factory raises or a worker dies while the pool starts.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFactory],
        slots: Sequence[WorkerSlot],
        *,
        start_method: str | None = None,
        step_timeout: float = 600.0,
        start_timeout: float = 300.0,
        close_timeout: float = 10.0,
        max_restarts: int = 3,
    ) -> None:
        super().__init__(
            env_fns,
            slots,
            step_timeout=step_timeout,
            start_timeout=start_timeout,
            close_timeout=close_timeout,
            max_restarts=max_restarts,
        )
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        if start_method not in _START_METHODS:
            raise ValueError(
                f"start_method must be one of {_START_METHODS}, got {start_method!r} "
                "(fork is unsafe once torch/CUDA or threads are in use)"
            )
        n_envs = len(env_fns)
        self._ctx = mp.get_context(start_method)
        self._env_fns = [CloudpickleWrapper(fn) for fn in env_fns]
        self._processes: list[mp.process.BaseProcess | None] = [None] * n_envs
        self._conns: list[Connection | None] = [None] * n_envs
        # Lists are mutated in place on restart, so the finalizer always sees the live workers.
        # exitpriority makes multiprocessing's atexit hook run it before joining children.
        self._finalizer = mp_util.Finalize(
            self,
            _shutdown_workers,
            args=(self._processes, self._conns, self.close_timeout),
            exitpriority=10,
        )
        self._seq = 0
        self._expected: list[int] = [0] * n_envs
        self._start_all()

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker (None for a worker that is not running)."""
        return [p.pid if p is not None else None for p in self._processes]

    # ---------------------------------------------------------------------------- transport

    def _start_worker(self, i: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Not a daemon: an env may start its own processes (e.g. DataLoader workers). The
        # finalizer stops the workers at exit instead.
        process = self._ctx.Process(
            target=_worker,
            args=(child_conn, self._env_fns[i], self.slots[i], i),
            name=f"rlagent-env-{i}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        self._processes[i] = process
        self._conns[i] = parent_conn
        self._expected[i] = 0  # the "env built" message

    def _build_hint(self, i: int, *, restart: bool) -> str:
        # A worker that fails to start the first time most often cannot unpickle its factory.
        return "" if restart else " (see its stderr; can a fresh process import the env factory by name?)"

    def _stop_worker(self, i: int) -> None:
        """Kill worker ``i`` at once (it is dead or hung, so there is no point asking)."""
        process, conn = self._processes[i], self._conns[i]
        self._processes[i] = None
        self._conns[i] = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(5.0)
            with contextlib.suppress(ValueError):
                process.close()

    def _close_workers(self) -> None:
        self._finalizer()

    def _send(self, i: int, cmd: str, data: Any) -> bool:
        """Send a command to worker ``i``; False if its pipe is gone (the worker died)."""
        conn = self._conns[i]
        if conn is None:
            return False
        self._seq += 1
        self._expected[i] = self._seq
        try:
            conn.send((self._seq, cmd, data))
        except (OSError, ValueError):
            return False
        return True

    def _gone_reason(self, i: int) -> str:
        return _exit_reason(self._processes[i])

    def _wait(self, indices: list[int], deadline: float) -> dict[int, tuple[str, Any] | _Dead]:
        """Receive one reply from each worker until ``deadline``, or a ``_Dead`` if it dies.

        Waits on the pipes and on the process sentinels together, so a dead worker is noticed
        at once even if a child of it still holds its end of the pipe. Replies to earlier
        commands (left over after an interrupted wait or a cancelled step) are dropped.
        """
        pending = set(indices)
        replies: dict[int, tuple[str, Any] | _Dead] = {}
        while pending:
            by_conn = {self._conns[i]: i for i in pending}
            by_sentinel = {self._processes[i].sentinel: i for i in pending}
            remaining = deadline - time.monotonic()
            ready = wait([*by_conn, *by_sentinel], timeout=remaining) if remaining > 0 else []
            if not ready:
                break
            for obj in ready:
                i = by_conn.get(obj) if isinstance(obj, Connection) else by_sentinel.get(obj)
                if i is None or i not in pending:
                    continue
                conn = self._conns[i]
                try:
                    # A dead worker's last reply may still sit in the pipe.
                    if isinstance(obj, Connection) or conn.poll(0):
                        seq, status, payload = conn.recv()
                        if seq != self._expected[i]:
                            continue  # stale reply; keep waiting for the current one
                        replies[i] = (status, payload)
                    else:
                        replies[i] = _Dead(_exit_reason(self._processes[i]))
                except (EOFError, OSError):
                    self._processes[i].join(1.0)
                    replies[i] = _Dead(_exit_reason(self._processes[i]))
                pending.discard(i)
        return replies
