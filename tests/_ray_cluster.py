"""A real two-node Ray cluster on this machine for the ``cluster`` tests (``ray.cluster_utils``).

A head and one worker node, 1 CPU each (the test machine has 2 cores); each node is its own
raylet with its own node id, so actors and tasks are spread, and a node can be removed (its
raylet killed) and another one added while a run goes on. Tests marked ``cluster`` run last
(see conftest.py), since the local Ray of the other tests is shut down first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests._markers import requires_ray

cluster_test = [pytest.mark.cluster, requires_ray]
"""Marks of a test on a multi-node cluster (``pytestmark = cluster_test``)."""


@contextlib.contextmanager
def two_node_cluster() -> Iterator[Any]:
    """Start a head and one worker node (1 CPU each, no dashboard); shut everything down after.

    Yields:
        The ``ray.cluster_utils.Cluster``; ``cluster.address`` is what ``--address`` takes.
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the session's local Ray (conftest.py): cluster tests run last
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def ensure_worker(cluster: Any) -> Any:
    """Make the cluster a head plus exactly one alive worker node again; returns that worker."""
    while len(cluster.worker_nodes) > 1:
        cluster.remove_node(next(iter(cluster.worker_nodes)))
    if not cluster.worker_nodes:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    return next(iter(cluster.worker_nodes))


def connect(cluster: Any) -> Any:
    """Connect this process to the cluster as a driver (unless it is); returns ``ray``."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster.address, logging_level=logging.WARNING)
    return ray


def wait_for(condition: Any, timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``condition()`` until it is true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def node_dead(node_id: str) -> bool:
    """Whether the connected Ray lists the node as dead (its death has been noticed)."""
    import ray

    return any(n["NodeID"] == node_id and not n["Alive"] for n in ray.nodes())
