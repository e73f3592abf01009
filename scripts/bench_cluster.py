"""What a two-node Ray cluster costs and what losing a node costs, measured on this machine.

Starts a head and a worker node with ``ray.cluster_utils`` (1 CPU each: the two cores of this
machine, each its own raylet), then:

1. env-steps/s of RayEnvPool with one env actor per node vs the local EnvPool with 2 worker
   processes, same workload, same slots (CPU, 1 thread), "keep" action, median of windows;
2. node loss with a replacement: the worker node's raylet is killed (as a crash does,
   ``allow_graceful=False``) during a step and a new node added; reported: seconds from the loss
   to the step that returns (training going on) and the env steps lost (the epochs of the cut
   episode, plus the step reported as its truncated end);
3. node loss without a replacement: seconds from the loss to Ray listing the node dead, and
   to the pool's ``ClusterLostError`` (``unschedulable_timeout`` = 30 s).

    python scripts/bench_cluster.py                         # mnist1d-mlp, 5 windows x 10 steps
    python scripts/bench_cluster.py --windows 1 --steps 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import ray
from bench_pool import measure  # the same timed windows as the local/Ray pool benchmark
from ray.cluster_utils import Cluster

from rlagent.config import load_spec
from rlagent.errors import ClusterLostError
from rlagent.pool import EnvFactory, EnvPool
from rlagent.pool.devices import WorkerSlot
from rlagent.pool.ray import RayEnvPool

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--spec", default="default", help="spec file or shipped spec name")
parser.add_argument("--workload", default="mnist1d-mlp", help="workload every env trains")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps per env before measuring")
parser.add_argument("--windows", type=int, default=5, help="timed windows (the median counts)")
parser.add_argument("--steps", type=int, default=10, help="steps per env in each window")
parser.add_argument("--loss-after", type=int, default=2, help="steps into an episode before the node is lost")
parser.add_argument("--seed", type=int, default=0, help="seed of the pools' envs")
parser.add_argument("--json", default=None, help="also write the results to this JSON file")

KEEP = np.array([[2, 1], [2, 1]])


def lose_worker(cluster: Cluster, pool: RayEnvPool, args: argparse.Namespace, replace: bool) -> dict[str, Any]:
    """Kill the worker node's raylet during a step; time what follows."""
    worker = next(iter(cluster.worker_nodes))
    lost = pool.node_ids.index(worker.node_id)
    pool.reset()
    for _ in range(args.loss_after):
        infos = pool.step(KEEP)[3]
    epoch = infos[lost]["epoch"]
    out: dict[str, Any] = {"replaced": replace, "episode_epochs_lost": int(epoch)}

    def dead() -> None:
        while not any(n["NodeID"] == worker.node_id and not n["Alive"] for n in ray.nodes()):
            time.sleep(0.1)
        out["seconds_to_listed_dead"] = round(time.monotonic() - t0, 1)

    pool.step_async(KEEP)
    t0 = time.monotonic()
    cluster.remove_node(worker, allow_graceful=False)
    watcher = threading.Thread(target=dead, daemon=True)
    watcher.start()
    if replace:
        cluster.add_node(num_cpus=1)
    try:
        _, _, dones, infos = pool.step_wait()
        out["seconds_to_going_on"] = round(time.monotonic() - t0, 1)
        out["worker_restarted"] = bool(infos[lost].get("worker_restarted")) and bool(dones[lost])
        out["steps_lost"] = int(epoch) + 1  # the cut episode's epochs and its truncated end
    except ClusterLostError as exc:
        out["seconds_to_cluster_lost_error"] = round(time.monotonic() - t0, 1)
        out["error"] = str(exc)
    watcher.join(timeout=120)
    return out


def main() -> None:
    args = parser.parse_args()
    spec = load_spec(args.spec)
    factory = EnvFactory(spec, (args.workload,))
    slot = WorkerSlot("cpu", 1)
    report: dict[str, Any] = {"workload": args.workload, "windows": args.windows, "steps_per_window": args.steps}

    pool = EnvPool([factory] * 2, [slot] * 2)
    try:
        report["local_2_workers"] = measure(pool, args)
    finally:
        pool.close()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        pool = RayEnvPool([factory] * 2, [slot] * 2)
        try:
            assert len(set(pool.node_ids)) == 2, pool.placements
            report["ray_2_nodes"] = measure(pool, args)
            report["loss_replaced"] = lose_worker(cluster, pool, args, replace=True)
            report["loss_not_replaced"] = lose_worker(cluster, pool, args, replace=False)
        finally:
            pool.close()
    finally:
        ray.shutdown()
        cluster.shutdown()

    ratio = report["ray_2_nodes"]["median"] / report["local_2_workers"]["median"]
    report["ray_2_nodes_vs_local"] = round(ratio, 3)
    print(f"{args.workload}: local pool 2 workers {report['local_2_workers']['median']} env-steps/s, "
          f"Ray 2 nodes {report['ray_2_nodes']['median']} env-steps/s ({ratio:.2f}x)")  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
