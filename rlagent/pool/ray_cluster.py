"""The Ray cluster as the pools see it: connecting, planning slots on its resources, and
telling whether it can still host an actor after losing a node.

Ray is imported only by :func:`import_ray`; every other function takes the initialised ``ray``
module. Only Ray's public API is used (``cluster_resources``, ``available_resources``, ``nodes``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from rlagent._io import optional_import
from rlagent.errors import RLAgentError
from rlagent.pool.devices import WorkerSlot, plan_workers, visible_cpu_count

__all__ = [
    "RAY_MISSING",
    "cluster_capacity",
    "connect_ray",
    "describe_node",
    "node_alive",
    "import_ray",
    "plan_ray_slots",
    "ray_demand",
]

logger = logging.getLogger(__name__)

RAY_MISSING = "--backend ray needs ray: pip install 'rlagent[ray]'"
"""Message of the ``RLAgentError`` raised when Ray is not installed."""


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`RLAgentError` naming the extra that installs it."""
    return optional_import("ray", extra="ray", purpose="--backend ray")


def connect_ray(ray: Any, address: str | None) -> bool:
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
            # "local": a new Ray of our own, even when `ray start` (or another run's
            # ray.cluster_utils cluster) left its address in /tmp/ray/ray_current_cluster,
            # which a plain ray.init() would connect to (and then refuse num_cpus).
            ray.init(address="local", num_cpus=visible_cpu_count(), include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        target = address or os.environ.get("RAY_ADDRESS")
        raise RLAgentError(f"cannot connect to the Ray cluster at {target!r}: {first}") from exc
    return True


def plan_ray_slots(
    ray: Any, n: int | None, devices: str | Sequence[str], *, n_tasks: int | None = None
) -> tuple[list[WorkerSlot], int, int]:
    """Plan slots on a running Ray cluster: ``plan_workers`` with the cluster's CPU and GPU totals.

    Each slot's threads are capped at one node's CPUs, since an actor or task must fit on one
    node. Used by :func:`rlagent.pool.ray.make_ray_pool` and :func:`rlagent.bench.executors.ray_executor`.

    Args:
        ray: The initialised ``ray`` module.
        n: Number of slots; None: one per cluster GPU, else one per cluster CPU.
        devices: ``auto`` or a device list, as for ``plan_workers``.
        n_tasks: With ``n=None``, at most this many slots (their threads shared out over the
            CPUs), when the number of jobs is known.

    Returns:
        The slots, and the cluster's CPU and GPU counts.
    """
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    slots = plan_workers(n, devices, cpu_count=max(1, cpus), cuda_count=gpus)
    if n is None and n_tasks is not None and len(slots) > n_tasks:
        slots = plan_workers(n_tasks, devices, cpu_count=max(1, cpus), cuda_count=gpus)
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    most = max(1, max(node_cpus, default=cpus))
    return [WorkerSlot(s.device, min(s.num_threads, most)) for s in slots], cpus, gpus


def ray_demand(num_cpus: float, num_gpus: float) -> dict[str, float]:
    """An actor's ``num_cpus``/``num_gpus`` under the names of Ray's resources (``CPU``, ``GPU``)."""
    return {"CPU": float(num_cpus), "GPU": float(num_gpus)}


def _fmt(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in resources.items())


def cluster_capacity(ray: Any, demand: Mapping[str, float], pool_demand: Mapping[str, float]) -> str | None:
    """Why the cluster's alive nodes can never host an actor, or None if they could.

    An actor cannot be placed when no alive node is large enough for it, or when all alive
    nodes together hold less than the whole pool (all its actors, this one included) asks for:
    the pool's other actors keep their share, so this one would wait forever. Capacity, not
    momentary free resources, decides: a replacement actor that was just placed and is still
    starting holds its CPUs, so "nothing free" alone would be a false alarm.

    Args:
        ray: The initialised ``ray`` module.
        demand: This actor's resources (``ray_demand``).
        pool_demand: The resources of all the pool's actors together.

    Returns:
        None if it can be placed, else one line: the cluster's alive and free resources.
    """
    total = ray.cluster_resources()  # alive nodes only
    alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    wanted = {key: value for key, value in demand.items() if value > 0}
    fits_a_node = any(all(res.get(key, 0.0) >= value for key, value in wanted.items()) for res in alive)
    fits_the_pool = all(total.get(key, 0.0) >= value for key, value in pool_demand.items() if value > 0)
    if fits_a_node and fits_the_pool:
        return None
    free = ray.available_resources()
    keys = list(demand)
    return (
        f"the cluster's {len(alive)} alive node(s) have {_fmt({k: total.get(k, 0.0) for k in keys})} in all "
        f"({_fmt({k: free.get(k, 0.0) for k in keys})} free), the pool needs {_fmt(pool_demand)}"
    )


def node_alive(ray: Any, node_id: str) -> bool:
    """Whether Ray lists the node as alive."""
    return any(node.get("NodeID") == node_id and node.get("Alive") for node in ray.nodes())


def describe_node(address: str | None, node_id: str | None) -> str:
    """A node as messages name it: ``10.0.0.5 (id 3f2a91c0)``."""
    short = f"id {node_id[:8]}" if node_id else "id unknown"
    return f"{address} ({short})" if address else f"({short})"
