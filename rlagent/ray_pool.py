"""The env pool on Ray actors: ``rlagent train --backend ray``, on one machine or a cluster.

``RayEnvPool`` is :class:`rlagent.pool.EnvPool` with Ray actors instead of local worker
processes, and the same semantics:

* each env lives in its own actor, which reserves ``num_cpus`` = the slot's torch threads and,
  for a CUDA slot, ``num_gpus=1`` (Ray then sets ``CUDA_VISIBLE_DEVICES``, so inside the actor
  the env runs on ``cuda:0``, whichever physical GPU Ray picked);
* an exception inside an env is raised in the driver as ``EnvWorkerError`` carrying the
  actor's traceback, device and workload;
* an actor that dies (``ray.kill``, OOM, a lost node: ``ActorDiedError``) or exceeds
  ``step_timeout`` is replaced by a fresh one and that env's step is reported as a truncated
  episode end (``infos[i]["worker_restarted"]``), so training goes on;
* every wait is bounded, and ``close()`` never hangs (actors are killed after
  ``close_timeout``).

Ray is an optional extra (``pip install 'rlagent[ray]'``) and is imported only when a pool is
made. Env factories are pickled by Ray (cloudpickle); classes and functions defined in an
installed module are pickled by name, so every node must have rlagent (and the module of a
custom factory) installed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from rlagent.agent import EnvFactory as HyperTuneEnvFactory
from rlagent.config import EnvSpec
from rlagent.devices import WorkerSlot, plan_workers, visible_cpu_count
from rlagent.errors import RLAgentError, SpecError

# The worker-side command handling and the restart bookkeeping are the local pool's own, so
# that both backends answer every VecEnv call the same way.
from rlagent.pool import (
    EnvFactory,
    EnvWorkerError,
    _Dead,
    _error_details,
    _handle,
    _MissingAttr,
    _restart_seed,
    _setup_worker,
    _stack_obs,
)

__all__ = ["RAY_MISSING", "RayEnvPool", "make_ray_pool"]

logger = logging.getLogger(__name__)

RAY_MISSING = "--backend ray needs Ray: pip install 'rlagent[ray]'"
"""Message of the ``RLAgentError`` raised when Ray is not installed."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RLAgentError(RAY_MISSING) from exc
    return ray


# --------------------------------------------------------------------------------------------
# Actor side
# --------------------------------------------------------------------------------------------


class _EnvActor:
    """Body of one env actor (made a Ray actor class by ``_actor_class``).

    Replies are ``(status, payload)`` as in the local pool's workers: ``"ok"``,
    ``"attr_error"`` or ``"error"`` (payload: traceback, device, workload). A failure while
    building the env is kept and reported by ``ready()``, so the actor stays alive to say why.
    """

    def __init__(self, env_fn: EnvFactory, slot: WorkerSlot) -> None:
        self._slot = slot
        self._env: gym.Env | None = None
        self._build_error: dict[str, Any] | None = None
        env = None
        try:
            _setup_worker(slot)
            env = env_fn(slot)
            if not isinstance(env, gym.Env):
                raise TypeError(f"env factory returned {type(env).__name__}, not a gymnasium.Env")
            self._env = env
        except Exception:  # noqa: BLE001 - reported by ready()
            self._build_error = _error_details("build", slot, env)

    def ready(self) -> tuple[str, Any]:
        """``("ok", where this actor runs)`` once the env is built, else the build error."""
        if self._build_error is not None:
            return "error", self._build_error
        import ray

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        where = f"node {ray.util.get_node_ip_address()}, pid {os.getpid()}"
        return "ok", where + (f", GPU {','.join(map(str, gpus))}" if gpus else "")

    def call(self, cmd: str, data: Any) -> tuple[str, Any]:
        """Run one pool command (``rlagent.pool._handle``) on the env."""
        try:
            return "ok", _handle(self._env, cmd, data)
        except _MissingAttr as exc:
            return "attr_error", str(exc)
        except Exception:  # noqa: BLE001 - reported to the driver
            return "error", _error_details(cmd, self._slot, self._env)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    """The Ray actor class, created on first use (so that importing this module needs no Ray)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = _import_ray().remote(_EnvActor)
    return _ACTOR_CLASS


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


def _death_reason(exc: BaseException) -> str:
    """One line from a Ray death error, e.g. "died (ActorDiedError: ... killed by `ray.kill`.)"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("\t")]
    return f"died ({type(exc).__name__}: {' '.join(lines)})"


def _actor_slot(slot: WorkerSlot) -> WorkerSlot:
    """The slot as seen inside a Ray actor: a GPU actor sees only its own GPU, as ``cuda:0``."""
    return WorkerSlot("cuda:0", slot.num_threads) if slot.cuda_index is not None else slot


class RayEnvPool(VecEnv):
    """SB3 ``VecEnv`` running each env in its own Ray actor, recreating dead actors.

    Actor ``i`` reserves ``num_cpus=slots[i].num_threads`` and, for a ``cuda:K`` slot,
    ``num_gpus=gpus_per_env``; it applies its slot (torch threads, CUDA device) and builds its
    env with ``env_fns[i](slot)``, where a CUDA slot becomes ``cuda:0`` because Ray exposes
    only the actor's own GPU(s) to it. Ray must be initialised (``ray.init``) beforehand;
    :func:`make_ray_pool` does that.

    When an actor dies or exceeds ``step_timeout``, it is killed and a fresh actor with the same
    factory and slot is reset with a seed derived from the env's seed and the restart count. The
    lost step is reported as ``done`` with ``infos[i]`` holding ``"worker_restarted": True``,
    ``"TimeLimit.truncated": True`` and ``"terminal_observation"`` (the env's last observation);
    ``obs[i]`` is the fresh env's reset observation and the reward is 0. After ``max_restarts``
    restarts of one env the next death raises ``EnvWorkerError``.

    Args:
        env_fns: One picklable env factory per env; it receives the slot as seen in the actor.
        slots: One ``WorkerSlot`` per env (see ``rlagent.devices.plan_workers``).
        gpus_per_env: Ray ``num_gpus`` of an actor with a CUDA slot; a fraction (``0.5``) lets
            envs share a GPU.
        step_timeout: Seconds to wait for any reply of a running actor; a late actor is killed
            and recreated.
        start_timeout: Seconds a new actor may take to be scheduled, start and build its env.
        close_timeout: Seconds ``close()`` lets envs close before the actors are killed.
        max_restarts: Restarts allowed per env over the pool's life.
        shutdown_ray: Call ``ray.shutdown()`` in ``close()`` (set by ``make_ray_pool`` when it
            started or connected Ray itself).

    Attributes:
        slots: The slots as seen inside the actors (``cuda:0`` for every GPU actor).
        restarts: Number of times each env's actor has been recreated.
        placements: Where each actor runs (node address, pid, Ray's GPU ids).

    Raises:
        ValueError: If the arguments do not fit together.
        RLAgentError: If Ray is not installed or not initialised.
        EnvWorkerError: If a factory raises, or an actor dies or cannot be scheduled in time
            while the pool starts.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFactory],
        slots: Sequence[WorkerSlot],
        *,
        gpus_per_env: float = 1.0,
        step_timeout: float = 600.0,
        start_timeout: float = 300.0,
        close_timeout: float = 10.0,
        max_restarts: int = 3,
        shutdown_ray: bool = False,
    ) -> None:
        if len(env_fns) == 0:
            raise ValueError("env_fns must not be empty")
        if len(env_fns) != len(slots):
            raise ValueError(f"env_fns and slots must have the same length, got {len(env_fns)} and {len(slots)}")
        for name, value in (
            ("gpus_per_env", gpus_per_env),
            ("step_timeout", step_timeout),
            ("start_timeout", start_timeout),
            ("close_timeout", close_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts!r}")
        ray = _import_ray()
        if not ray.is_initialized():
            raise RLAgentError("RayEnvPool needs a running Ray: call ray.init() first, or use make_ray_pool()")

        n_envs = len(env_fns)
        self._ray = ray
        self._env_fns = list(env_fns)
        self._planned = tuple(slots)
        self.slots: tuple[WorkerSlot, ...] = tuple(_actor_slot(s) for s in slots)
        self.gpus_per_env = float(gpus_per_env)
        self.restarts: list[int] = [0] * n_envs
        self.placements: list[str | None] = [None] * n_envs
        self.step_timeout = float(step_timeout)
        self.start_timeout = float(start_timeout)
        self.close_timeout = float(close_timeout)
        self.max_restarts = int(max_restarts)
        self.shutdown_ray = shutdown_ray
        self.waiting = False
        self.closed = False

        self._actors: list[Any] = [None] * n_envs
        self._workloads: list[str | None] = [None] * n_envs
        self._last_obs: list[Any] = [None] * n_envs
        self._base_seeds: list[int | None] = [None] * n_envs
        self._last_options: list[dict[str, Any]] = [{} for _ in range(n_envs)]
        # Envs restarted outside step_wait: (reset obs, reset info, terminal obs), reported as a
        # done at the next step_wait.
        self._restarted: dict[int, tuple[Any, dict[str, Any], Any]] = {}
        self._step_refs: dict[int, Any] = {}
        self._step_deadline = 0.0

        try:
            refs = {i: self._start_actor(i) for i in range(n_envs)}
            replies = self._collect(refs, "build", time.monotonic() + self.start_timeout, self._start_limit)
            for i, reply in replies.items():
                if isinstance(reply, _Dead):
                    raise self._death_error(i, f"{reply.reason} while building its env{self._resources_hint(i)}")
                self.placements[i] = self._unwrap(i, reply)
            observation_space, action_space = self._request([0], "get_spaces", None)[0]
        except BaseException:
            self.close()
            raise
        super().__init__(n_envs, observation_space, action_space)

    # ---------------------------------------------------------------------------- properties

    @property
    def actors(self) -> tuple[Any, ...]:
        """The Ray actor handle of each env (None for one that is not running)."""
        return tuple(self._actors)

    # ---------------------------------------------------------------------------- VecEnv API

    def reset(self) -> VecEnvObs:
        """Reset every env, using and then clearing the seeds/options set by ``seed()`` etc.

        Returns:
            The stacked reset observations; reset infos are stored in ``reset_infos``.
        """
        self._check_open()
        # A pending step is cancelled: the actors run it before the reset, and its result is
        # dropped.
        self.waiting = False
        self._step_refs = {}
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
        """Send one action to each env (envs recreated since the last step get none)."""
        self._check_open()
        if self.waiting:
            raise RuntimeError("step_async called while a step is already pending")
        self._step_refs = {
            i: self._submit(i, "step", actions[i]) for i in range(self.num_envs) if i not in self._restarted
        }
        self._step_deadline = time.monotonic() + self.step_timeout
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Wait for the step started by ``step_async``, recreating actors that died.

        Returns:
            Stacked observations, rewards, dones and the list of info dicts.

        Raises:
            EnvWorkerError: If an env raised, or an actor died once more than ``max_restarts``.
        """
        self._check_open()
        if not self.waiting:
            raise RuntimeError("step_wait called without step_async")
        self.waiting = False
        refs, self._step_refs = self._step_refs, {}
        replies = self._collect(refs, "step", self._step_deadline, self._step_limit)
        # Raise an env's own exception first: it says more than a death.
        for i, reply in replies.items():
            if not isinstance(reply, _Dead) and reply[0] != "ok":
                self._unwrap(i, reply)
        for i, reply in replies.items():
            if isinstance(reply, _Dead):
                self._restarted[i] = self._restart(i, reply.reason)

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
        """Close the envs and kill the actors; never hangs, safe after a death, idempotent."""
        if self.closed:
            return
        self.closed = True
        self.waiting = False
        self._step_refs = {}
        ray = self._ray
        if ray.is_initialized():  # else the actors went with the cluster connection
            live = [actor for actor in self._actors if actor is not None]
            refs = []
            for actor in live:
                with contextlib.suppress(Exception):
                    refs.append(actor.close.remote())
            if refs:
                # A dead actor answers at once (with an error); a busy one gets close_timeout.
                with contextlib.suppress(Exception):
                    ray.wait(refs, num_returns=len(refs), timeout=self.close_timeout)
            for actor in live:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            if self.shutdown_ray:
                ray.shutdown()
        self._actors = [None] * len(self._actors)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Return an attribute of each selected env (see ``VecEnv.get_attr``)."""
        return self._request(self._get_indices(indices), "get_attr", attr_name)

    def has_attr(self, attr_name: str) -> bool:
        """Whether every env has the attribute (checked in the actors, nothing is pickled)."""
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
            raise RuntimeError("RayEnvPool is closed")

    def _resources_hint(self, i: int) -> str:
        gpus = self.gpus_per_env if self._planned[i].cuda_index is not None else 0
        return (
            f" (it asks Ray for num_cpus={self.slots[i].num_threads}, num_gpus={gpus:g}: does the cluster have "
            "them free, and rlagent installed on every node?)"
        )

    def _start_actor(self, i: int) -> Any:
        """Create actor ``i``; returns the reference of its ``ready()`` reply."""
        gpus = self.gpus_per_env if self._planned[i].cuda_index is not None else 0
        actor = _actor_class().options(
            num_cpus=self.slots[i].num_threads,
            num_gpus=gpus,
            max_restarts=0,  # the pool recreates dead actors itself (and reports it)
            max_task_retries=0,
        )
        self._actors[i] = actor.remote(self._env_fns[i], self.slots[i])
        return self._actors[i].ready.remote()

    def _stop_actor(self, i: int) -> None:
        """Kill actor ``i`` at once (it is dead or hung, so there is no point asking)."""
        actor, self._actors[i] = self._actors[i], None
        if actor is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)

    def _submit(self, i: int, cmd: str, data: Any) -> Any:
        """Send a command to actor ``i``; None if it is not running (its last restart failed)."""
        actor = self._actors[i]
        return actor.call.remote(cmd, data) if actor is not None else None

    def _collect(self, refs: dict[int, Any], cmd: str, deadline: float, limit: str) -> dict[int, Any]:
        """Wait for each env's reply until ``deadline``: ``(status, payload)`` or a ``_Dead``.

        An actor's death arrives as its reply (``RayActorError`` and the like); a Ray-level
        task error (e.g. a reply that cannot be pickled) becomes an ``"error"`` reply.
        """
        ray = self._ray
        waiting = [ref for ref in refs.values() if ref is not None]
        done: set[Any] = set()
        if waiting:
            remaining = max(0.0, deadline - time.monotonic())
            done = set(ray.wait(waiting, num_returns=len(waiting), timeout=remaining)[0])
        replies: dict[int, Any] = {}
        for i, ref in refs.items():
            if ref is None:
                replies[i] = _Dead("is not running")
                continue
            if ref not in done:
                replies[i] = _Dead(f"gave no reply within {limit}")
                continue
            try:
                replies[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # str() of a RayTaskError is the remote traceback.
                details = {"command": cmd, "traceback": str(exc), "device": self.slots[i].device}
                replies[i] = ("error", {**details, "workload": self._workloads[i]})
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError,
                ray.exceptions.OutOfMemoryError,
                ray.exceptions.NodeDiedError,
            ) as exc:
                replies[i] = _Dead(_death_reason(exc))
        return replies

    def _unwrap(self, i: int, reply: tuple[str, Any]) -> Any:
        """Return the result of an ``ok`` reply; raise the error an actor reported."""
        status, payload = reply
        if status == "ok":
            return payload
        if status == "attr_error":
            raise AttributeError(payload)
        device, workload = payload["device"], payload["workload"]
        self._workloads[i] = workload or self._workloads[i]
        where = f", {self.placements[i]}" if self.placements[i] else ""
        raise EnvWorkerError(
            f"env actor {i} (device={device}, workload={workload}{where}) raised during "
            f"{payload['command']}:\n{payload['traceback']}",
            index=i,
            device=device,
            workload=workload,
            remote_traceback=payload["traceback"],
        )

    def _request(self, indices: Iterable[int], cmd: str, data: Any, *, on_death: str = "retry") -> list[Any]:
        """Run ``cmd`` on the selected envs and return their results, in order.

        ``data`` is shared by all envs, except for ``reset`` where it is a per-env list. A dead
        actor is recreated; for ``reset`` the new env's own reset is the result, for other
        commands the command is retried once on the new actor and the restart is reported as a
        done at the next ``step_wait``.
        """
        self._check_open()
        if self.waiting:
            raise RuntimeError(f"cannot run {cmd!r} while a step is pending (call step_wait)")
        indices = list(indices)
        per_env = cmd == "reset"
        refs = {i: self._submit(i, cmd, data[k] if per_env else data) for k, i in enumerate(indices)}
        replies = self._collect(refs, cmd, time.monotonic() + self.step_timeout, self._step_limit)
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
            f"env actor {i} (device={device}, workload={workload}) {reason}",
            index=i,
            device=device,
            workload=workload,
            remote_traceback=None,
        )

    def _restart(self, i: int, reason: str) -> tuple[Any, dict[str, Any], Any]:
        """Replace dead actor ``i`` by a fresh, reset one.

        Returns:
            The fresh env's reset observation and info, and the old env's last observation.

        Raises:
            EnvWorkerError: If the env used up ``max_restarts`` or the new env raises.
        """
        # A second restart before the next step still reports the env's last real observation.
        pending = self._restarted.pop(i, None)
        terminal_obs = pending[2] if pending is not None else self._last_obs[i]
        while True:
            self._stop_actor(i)
            if self.restarts[i] >= self.max_restarts:
                raise self._death_error(i, f"{reason}; not restarting, max_restarts={self.max_restarts} used up")
            self.restarts[i] += 1
            logger.warning(
                "env actor %d (device=%s, workload=%s) %s; recreating it (restart %d of %d)",
                i,
                self.slots[i].device,
                self._workloads[i],
                reason,
                self.restarts[i],
                self.max_restarts,
            )
            ref = self._start_actor(i)
            reply = self._collect({i: ref}, "build", time.monotonic() + self.start_timeout, self._start_limit)[i]
            if isinstance(reply, _Dead):
                reason = f"{reply.reason} while building its env{self._resources_hint(i)}"
                continue
            self.placements[i] = self._unwrap(i, reply)
            seed = _restart_seed(self._base_seeds[i], self.restarts[i])
            ref = self._submit(i, "reset", (seed, self._last_options[i] or None))
            reply = self._collect({i: ref}, "reset", time.monotonic() + self.step_timeout, self._step_limit)[i]
            if isinstance(reply, _Dead):
                reason = f"{reply.reason} during its reset"
                continue
            reset_obs, reset_info, self._workloads[i] = self._unwrap(i, reply)
            self._last_obs[i] = reset_obs
            return reset_obs, reset_info, terminal_obs


# --------------------------------------------------------------------------------------------


def _connect(ray: Any, address: str | None) -> bool:
    """Initialise Ray unless it already is; returns whether this call did.

    ``address=None`` starts a local cluster sized to this machine (unless ``RAY_ADDRESS`` names
    one); ``"auto"`` or ``"HOST:PORT"`` connects to a running cluster.
    """
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray is already initialised; address=%r is not used", address)
        return False
    try:
        if address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(num_cpus=visible_cpu_count(), include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        target = address or os.environ.get("RAY_ADDRESS")
        raise RLAgentError(f"cannot connect to the Ray cluster at {target!r}: {first}") from exc
    return True


def make_ray_pool(
    spec: EnvSpec,
    *,
    n_envs: int | None = None,
    devices: str | Sequence[str] = "auto",
    address: str | None = None,
    workloads: Sequence[str] | None = None,
    step_timeout: float = 600.0,
    max_restarts: int = 3,
) -> RayEnvPool:
    """A pool of HyperTune envs, one Ray actor per env, planned on the Ray cluster's resources.

    Devices and threads are planned as for the local pool (``plan_workers``), with the cluster's
    CPU and GPU totals in place of this machine's: each actor reserves ``num_cpus`` = its torch
    threads (at most one node's CPUs) and, on a CUDA device, one GPU (a fraction when there are
    more GPU envs than GPUs). Held-out workloads are refused: a pool made here is for training.

    Args:
        spec: The env spec.
        n_envs: Number of envs; None: one per cluster GPU, else one per cluster CPU.
        devices: ``auto`` or a device list, as for ``make_pool``; with Ray, ``cuda:K`` only asks
            for a GPU: Ray picks which.
        address: Ray cluster to connect to (``"auto"``, ``"HOST:6379"``); None starts a local
            one. Ignored if Ray is already initialised.
        workloads: Workload names; None: the spec's training workloads.
        step_timeout: Seconds an env step may take before its actor is recreated.
        max_restarts: Restarts allowed per env.

    Returns:
        The pool; its ``close()`` shuts Ray down again if this call initialised it.

    Raises:
        RLAgentError: If Ray is not installed or the cluster cannot be reached.
        SpecError: If a held-out workload is asked for.
    """
    ray = _import_ray()
    names = tuple(workloads) if workloads is not None else spec.workloads.train
    leaked = sorted(set(names) & set(spec.workloads.heldout))
    if leaked:
        raise SpecError("workloads", leaked, "training workloads only (these are held out)")
    started = _connect(ray, address)
    try:
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        slots = plan_workers(n_envs, devices, cpu_count=max(1, cpus), cuda_count=gpus)
        # An actor must fit on one node.
        node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        most = max(1, max(node_cpus, default=cpus))
        slots = [WorkerSlot(s.device, min(s.num_threads, most)) for s in slots]
        gpu_envs = sum(s.cuda_index is not None for s in slots)
        gpus_per_env = 1.0 if gpu_envs <= gpus else 1.0 / math.ceil(gpu_envs / gpus)
        factory = HyperTuneEnvFactory(spec, names)
        logger.info(
            "Ray cluster with %d CPUs, %d GPUs: %d env actors (%s)",
            cpus,
            gpus,
            len(slots),
            ", ".join(f"{s.device}/{s.num_threads} threads" for s in slots),
        )
        return RayEnvPool(
            [factory] * len(slots),
            slots,
            gpus_per_env=gpus_per_env,
            step_timeout=step_timeout,
            max_restarts=max_restarts,
            shutdown_ray=started,
        )
    except BaseException:
        if started:
            ray.shutdown()
        raise
