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
import time
from collections.abc import Sequence
from typing import Any

from rlagent.config import EnvSpec
from rlagent.errors import ClusterLostError, RLAgentError

# Everything but the transport (the VecEnv API, restarts and their reports) is the local pool's
# own, so that both backends answer every call the same way.
from rlagent.pool._base import _WorkerPool
from rlagent.pool._ray_actor import _actor_class, _death_reason, actor_slot
from rlagent.pool._supervisor import EnvFn, _Dead
from rlagent.pool.devices import WorkerSlot
from rlagent.pool.factory import EnvFactory, training_workloads
from rlagent.pool.population_pool import PopulationFactory, PopulationPool
from rlagent.pool.ray_cluster import (  # RAY_MISSING, connect_ray, import_ray and plan_ray_slots: re-exported
    RAY_MISSING,
    cluster_capacity,
    connect_ray,
    describe_node,
    import_ray,
    node_alive,
    plan_ray_slots,
    ray_demand,
)

__all__ = ["RAY_MISSING", "RayEnvPool", "actor_slot", "connect_ray", "import_ray", "make_ray_pool", "plan_ray_slots"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 1.0
"""How often a wait for a recreated actor asks Ray whether the cluster can still host it."""


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


class RayEnvPool(_WorkerPool):
    """SB3 ``VecEnv`` running each env in its own Ray actor, recreating dead actors.

    Actor ``i`` reserves ``num_cpus=slots[i].num_threads`` and, for a ``cuda:K`` slot,
    ``num_gpus=gpus_per_env``; it applies its slot (torch threads, CUDA device) and builds its
    env with ``env_fns[i](slot)``, where a CUDA slot becomes ``cuda:0`` because Ray exposes
    only the actor's own GPU(s) to it. Ray must be initialised (``ray.init``) beforehand;
    :func:`make_ray_pool` does that.

    When an actor dies or exceeds ``step_timeout``, it is killed and a fresh actor with the same
    factory and slot (on any node Ray picks) is reset with a seed derived from the env's seed and the restart count. The
    lost step is reported as ``done`` with ``infos[i]`` holding ``"worker_restarted": True``,
    ``"TimeLimit.truncated": True`` and ``"terminal_observation"`` (the env's last observation);
    ``obs[i]`` is the fresh env's reset observation and the reward is 0. After ``max_restarts``
    restarts of one env the next death raises ``EnvWorkerError``. A fresh actor that the cluster
    cannot host (its node was lost and the alive nodes lack the pool's resources, see
    :func:`rlagent.pool.ray_cluster.cluster_capacity`) for ``unschedulable_timeout`` seconds
    raises ``ClusterLostError`` naming the lost node and the resources, instead of waiting out
    ``start_timeout``.

    Args:
        env_fns: One picklable env factory per env; it receives the slot as seen in the actor.
        slots: One ``WorkerSlot`` per env (see ``rlagent.pool.devices.plan_workers``).
        gpus_per_env: Ray ``num_gpus`` of an actor with a CUDA slot; a fraction (``0.5``) lets
            envs share a GPU.
        step_timeout: Seconds to wait for any reply of a running actor; a late actor is killed
            and recreated.
        start_timeout: Seconds a new actor may take to be scheduled, start and build its env.
        close_timeout: Seconds ``close()`` lets envs close before the actors are killed.
        max_restarts: Restarts allowed per env over the pool's life.
        unschedulable_timeout: Seconds a recreated actor may stay unplaceable (time for a
            replacement node to join) before ``ClusterLostError``; None: wait ``start_timeout``.
        shutdown_ray: Call ``ray.shutdown()`` in ``close()`` (set by ``make_ray_pool`` when it
            started or connected Ray itself).

    Attributes:
        slots: The slots as seen inside the actors (``cuda:0`` for every GPU actor).
        restarts: Number of times each env's actor has been recreated.
        placements: Where each actor runs (node address and id, pid, Ray's GPU ids).
        node_ids: Ray's id of the node each actor runs on.

    Raises:
        ValueError: If the arguments do not fit together.
        RLAgentError: If Ray is not installed or not initialised.
        EnvWorkerError: If a factory raises, or an actor dies or cannot be scheduled in time
            while the pool starts.
        ClusterLostError: (From a step or reset) if a lost node's actor cannot be placed again.
    """

    _kind = "actor"
    _restarting = "recreating"
    _log = logger

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        slots: Sequence[WorkerSlot],
        *,
        gpus_per_env: float = 1.0,
        step_timeout: float = 600.0,
        start_timeout: float = 300.0,
        close_timeout: float = 10.0,
        max_restarts: int = 3,
        unschedulable_timeout: float | None = 30.0,
        shutdown_ray: bool = False,
    ) -> None:
        super().__init__(
            env_fns,
            slots,
            step_timeout=step_timeout,
            start_timeout=start_timeout,
            close_timeout=close_timeout,
            max_restarts=max_restarts,
        )
        if not gpus_per_env > 0:
            raise ValueError(f"gpus_per_env must be > 0, got {gpus_per_env!r}")
        if unschedulable_timeout is not None and not unschedulable_timeout > 0:
            raise ValueError(f"unschedulable_timeout must be > 0 or None, got {unschedulable_timeout!r}")
        ray = import_ray()
        if not ray.is_initialized():
            raise RLAgentError("RayEnvPool needs a running Ray: call ray.init() first, or use make_ray_pool()")

        n_envs = len(env_fns)
        self._ray = ray
        self._env_fns = list(env_fns)
        self._planned = tuple(slots)
        self.slots = tuple(actor_slot(s) for s in slots)
        self.gpus_per_env = float(gpus_per_env)
        self.placements: list[str | None] = [None] * n_envs
        self.node_ids: list[str | None] = [None] * n_envs
        self._node_addresses: list[str | None] = [None] * n_envs
        self.unschedulable_timeout = unschedulable_timeout
        # When each recreated actor was first seen unplaceable (see _check_placeable).
        self._unplaceable_since: dict[int, float] = {}
        self.shutdown_ray = shutdown_ray
        self._actors: list[Any] = [None] * n_envs
        # The reference of each actor's reply to its last command, and that command.
        self._replies: list[tuple[Any, str] | None] = [None] * n_envs
        self._start_all()

    @property
    def actors(self) -> tuple[Any, ...]:
        """The Ray actor handle of each env (None for one that is not running)."""
        return tuple(self._actors)

    # ---------------------------------------------------------------------------- transport

    def _start_worker(self, i: int) -> None:
        """Create actor ``i``; its ``ready()`` reply is the "build" reply."""
        actor = _actor_class().options(
            num_cpus=self.slots[i].num_threads,
            num_gpus=self._gpus(i),
            max_restarts=0,  # the pool recreates dead actors itself (and reports it)
            max_task_retries=0,
        )
        self._actors[i] = actor.remote(self._env_fns[i], self.slots[i])
        self._replies[i] = (self._actors[i].ready.remote(), "build")

    def _built(self, i: int, payload: Any) -> None:
        self._node_addresses[i], self.node_ids[i], self.placements[i] = payload
        self._unplaceable_since.pop(i, None)

    def _build_hint(self, i: int, *, restart: bool) -> str:
        return (
            f" (it asks Ray for num_cpus={self.slots[i].num_threads}, num_gpus={self._gpus(i):g}: does the "
            "cluster have them free, and rlagent installed on every node?)"
        )

    def _where(self, i: int) -> str:
        return f", {self.placements[i]}" if self.placements[i] else ""

    def _gpus(self, i: int) -> float:
        return self.gpus_per_env if self._planned[i].cuda_index is not None else 0

    def _stop_worker(self, i: int) -> None:
        """Kill actor ``i`` at once (it is dead or hung, so there is no point asking)."""
        actor, self._actors[i] = self._actors[i], None
        self._replies[i] = None
        if actor is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)

    def _close_workers(self) -> None:
        """Close the envs and kill the actors (and shut Ray down if ``shutdown_ray``)."""
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
        self._replies = [None] * len(self._replies)

    def _send(self, i: int, cmd: str, data: Any) -> bool:
        """Send a command to actor ``i``; False if it is not running (its last restart failed)."""
        actor = self._actors[i]
        if actor is None:
            return False
        self._replies[i] = (actor.call.remote(cmd, data), cmd)
        return True

    def _gone_reason(self, i: int) -> str:
        return "is not running"

    def _wait(self, indices: list[int], deadline: float) -> dict[int, tuple[str, Any] | _Dead]:
        """Wait for each actor's reply until ``deadline``: ``(status, payload)`` or a ``_Dead``.

        An actor's death arrives as its reply (``RayActorError`` and the like); a Ray-level
        task error (e.g. a reply that cannot be pickled) becomes an ``"error"`` reply. While a
        recreated actor is being placed, the cluster's capacity is checked every
        ``_POLL_SECONDS`` (``_check_placeable``).

        Raises:
            ClusterLostError: If a recreated actor stayed unplaceable for ``unschedulable_timeout``.
        """
        ray = self._ray
        refs = {i: self._replies[i][0] for i in indices}
        watch = [i for i in indices if self._replies[i][1] == "build" and self._watched(i)]
        done: set[Any] = set()
        while len(done) < len(refs):
            remaining = max(0.0, deadline - time.monotonic())
            pending = [ref for ref in refs.values() if ref not in done]
            timeout = min(remaining, _POLL_SECONDS) if watch else remaining
            done.update(ray.wait(pending, num_returns=len(pending), timeout=timeout)[0])
            if not watch or time.monotonic() >= deadline:
                break
            self._check_placeable([i for i in watch if refs[i] not in done])
        replies: dict[int, tuple[str, Any] | _Dead] = {}
        for i, ref in refs.items():
            if ref not in done:
                continue
            try:
                replies[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # str() of a RayTaskError is the remote traceback.
                details = {"command": self._replies[i][1], "traceback": str(exc), "device": self.slots[i].device}
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

    def _watched(self, i: int) -> bool:
        """Whether actor ``i`` is a replacement whose placement is checked (it ran before)."""
        return self.unschedulable_timeout is not None and self.node_ids[i] is not None

    def _check_placeable(self, waiting: list[int]) -> None:
        """Raise ``ClusterLostError`` for an actor unplaceable for ``unschedulable_timeout``."""
        now = time.monotonic()
        pool = {"CPU": sum(s.num_threads for s in self.slots), "GPU": sum(map(self._gpus, range(len(self.slots))))}
        for i in waiting:
            why = cluster_capacity(self._ray, ray_demand(self.slots[i].num_threads, self._gpus(i)), pool)
            if why is None:
                self._unplaceable_since.pop(i, None)
                continue
            since = self._unplaceable_since.setdefault(i, now)
            if now - since >= self.unschedulable_timeout:
                raise self._lost_error(i, why, now - since)

    def _lost_error(self, i: int, why: str, waited: float) -> ClusterLostError:
        node_id = self.node_ids[i]
        node = describe_node(self._node_addresses[i], node_id)
        lost = node_id is not None and not node_alive(self._ray, node_id)
        resources = {"num_cpus": self.slots[i].num_threads, "num_gpus": self._gpus(i)}
        asks = ", ".join(f"{key}={value:g}" for key, value in resources.items())
        return ClusterLostError(
            f"env actor {i} (workload={self._workloads[i]}) {'lost its node' if lost else 'died on node'} {node} "
            f"and no alive node can host it again: it needs {asks}, and {why} (for {waited:.0f} s)",
            index=i,
            node=node,
            resources=resources,
        )


# --------------------------------------------------------------------------------------------


def make_ray_pool(
    spec: EnvSpec,
    *,
    n_envs: int | None = None,
    devices: str | Sequence[str] = "auto",
    address: str | None = None,
    workloads: Sequence[str] | None = None,
    step_timeout: float = 600.0,
    max_restarts: int = 3,
    unschedulable_timeout: float | None = 30.0,
    population: int | None = None,
    population_mode: str = "auto",
) -> RayEnvPool | PopulationPool:
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
        unschedulable_timeout: Seconds an actor of a lost node may wait for the cluster to
            have room for it again before ``ClusterLostError`` (see ``RayEnvPool``).
        population: If set, each actor owns a population of this many envs (``n_envs`` actors ×
            ``population`` envs, as one :class:`~rlagent.pool.PopulationPool`).
        population_mode: ``auto``, ``batched`` or ``sequential`` (see ``rlagent.batched``).

    Returns:
        The pool; its ``close()`` shuts Ray down again if this call initialised it.

    Raises:
        RLAgentError: If Ray is not installed or the cluster cannot be reached.
        SpecError: If a held-out workload is asked for.
    """
    ray = import_ray()
    names = training_workloads(spec, workloads)
    started = connect_ray(ray, address)
    try:
        slots, cpus, gpus = plan_ray_slots(ray, n_envs, devices)
        gpu_envs = sum(s.cuda_index is not None for s in slots)
        gpus_per_env = 1.0 if gpu_envs <= gpus else 1.0 / math.ceil(gpu_envs / gpus)
        factory = (
            EnvFactory(spec, names)
            if population is None
            else PopulationFactory(spec, names, population, population_mode)
        )
        logger.info(
            "Ray cluster with %d CPUs, %d GPUs: %d env actors (%s)%s",
            cpus,
            gpus,
            len(slots),
            ", ".join(f"{s.device}/{s.num_threads} threads" for s in slots),
            "" if population is None else f", {population} envs each",
        )
        pool = RayEnvPool(
            [factory] * len(slots),
            slots,
            gpus_per_env=gpus_per_env,
            step_timeout=step_timeout,
            max_restarts=max_restarts,
            unschedulable_timeout=unschedulable_timeout,
            shutdown_ray=started,
        )
        return pool if population is None else PopulationPool(pool, population)
    except BaseException:
        if started:
            ray.shutdown()
        raise
