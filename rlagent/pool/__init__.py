"""Pools of HyperTune envs behind one SB3 ``VecEnv``: local worker processes or Ray actors.

Each env runs in its own worker pinned to a device and a share of the CPU threads
(:mod:`rlagent.pool.devices`); the transports differ only in how commands reach the worker
(:mod:`rlagent.pool.local`: pipes to processes; :mod:`rlagent.pool.ray`: Ray actors). Both
surface an env's exception with its traceback and restart a dead or hung worker.
:class:`rlagent.pool.population.PopulationVecEnv` instead runs K envs in one process on one
device and trains their epochs together (batched where that pays).
"""

from __future__ import annotations

from collections.abc import Sequence

from rlagent.config import EnvSpec
from rlagent.errors import EnvWorkerError, SpecError, is_int
from rlagent.pool._supervisor import EnvFn
from rlagent.pool.devices import WorkerSlot, plan_workers
from rlagent.pool.factory import EnvFactory, training_workloads
from rlagent.pool.local import EnvPool
from rlagent.pool.population import PopulationVecEnv
from rlagent.pool.population_pool import PopulationFactory, PopulationPool
from rlagent.pool.ray import RayEnvPool, make_ray_pool

__all__ = [
    "BACKENDS",
    "EnvFactory",
    "EnvFn",
    "EnvPool",
    "EnvWorkerError",
    "PopulationPool",
    "PopulationVecEnv",
    "RayEnvPool",
    "WorkerSlot",
    "make_pool",
    "plan_workers",
]

BACKENDS = ("local", "ray")
"""Where pool workers run: local processes, or Ray actors on a local or remote Ray cluster."""


def make_pool(
    spec: EnvSpec,
    *,
    backend: str = "local",
    n_envs: int | None = None,
    devices: str | Sequence[str] = "auto",
    workloads: Sequence[str] | None = None,
    step_timeout: float = 600.0,
    address: str | None = None,
    population: int | None = None,
    population_mode: str = "auto",
) -> EnvPool | RayEnvPool | PopulationVecEnv | PopulationPool:
    """A pool of HyperTune envs on the spec's training workloads, one worker per env.

    Args:
        spec: The env spec.
        backend: ``local`` (one process per env) or ``ray`` (one Ray actor per env; needs
            ``rlagent[ray]``).
        n_envs: Number of envs; None: one per GPU, else one per CPU core (of the Ray cluster
            with ``ray``).
        devices: ``auto`` or a device list such as ``cuda:0,cuda:1`` / ``cpu``, round-robin.
        workloads: Workload names; None: the spec's training workloads. Held-out ones are refused.
        step_timeout: Seconds an env step may take before its worker is declared hung and restarted.
        address: Ray cluster address (``ray`` only); None starts a local Ray.
        population: If set, each worker (process or Ray actor) owns a :class:`PopulationVecEnv`
            of this many envs (``n_envs`` workers × ``population`` envs in all), supervised and
            restarted like any worker (:class:`PopulationPool`); a single local worker runs in
            this process.
        population_mode: ``auto``, ``batched`` or ``sequential`` (see ``rlagent.batched``).

    Raises:
        SpecError: Unknown backend, held-out workloads, or an address with the local backend.
        RLAgentError: Ray missing or unreachable (``ray`` backend).
    """
    if backend not in BACKENDS:
        raise SpecError("backend", backend, f"one of {list(BACKENDS)}")
    if population is not None and (not is_int(population) or population < 1):
        raise SpecError("population", population, "an integer >= 1, or None")
    if backend == "ray":
        return make_ray_pool(
            spec, n_envs=n_envs, devices=devices, address=address, workloads=workloads, step_timeout=step_timeout,
            population=population, population_mode=population_mode,
        )  # fmt: skip
    if address is not None:
        raise SpecError("address", address, "None with backend 'local' (a Ray address needs backend 'ray')")
    names = training_workloads(spec, workloads)
    slots = plan_workers(n_envs, devices)
    if population is not None:
        if len(slots) == 1:
            slot = slots[0]
            return PopulationVecEnv(
                population,
                spec,
                device=slot.device,
                num_threads=slot.num_threads,
                workloads=names,
                mode=population_mode,
            )
        factory = PopulationFactory(spec, names, population, population_mode)
        return PopulationPool(EnvPool([factory] * len(slots), slots, step_timeout=step_timeout), population)
    return EnvPool([EnvFactory(spec, names)] * len(slots), slots, step_timeout=step_timeout)
