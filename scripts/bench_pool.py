"""Env-steps/s of the local EnvPool with 1 and 2 workers and of the Ray backend with 2 workers.

All three step the same workload with the "keep" action ([2, 1]: LR x1, batch size x1) and the
same worker slots (CPU, ``--threads`` torch threads each), so they differ only in how the envs
are run. Each pool is warmed up (env built, first epochs run), then timed over ``--windows``
windows of ``--steps`` steps per env; the median window counts. Episode ends (and the env's
auto-reset) happen inside the windows, as in training. Ray start-up is not timed. Targets:
local 2 workers / 1 worker >= 1.8 on a 2-core machine (issue 3); Ray close to the local pool.

    python scripts/bench_pool.py                                  # mnist1d-mlp, 5 windows x 10 steps
    python scripts/bench_pool.py --windows 1 --steps 2 --warmup 1 # smoke run
    python scripts/bench_pool.py --no-ray --json bench_pool.json  # local pool only; also write JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from rlagent.config import load_spec
from rlagent.pool import EnvFactory, EnvPool
from rlagent.pool.devices import WorkerSlot, visible_cpu_count

TARGET_SCALING = 1.8  # local pool, 2 workers vs 1 (issue 3)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--spec", default="default", help="spec file or shipped spec name")
parser.add_argument("--workload", default="mnist1d-mlp", help="workload every env trains")
parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps per env before measuring")
parser.add_argument("--windows", type=int, default=5, help="timed windows (the median counts)")
parser.add_argument("--steps", type=int, default=10, help="steps per env in each window")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def measure(pool: VecEnv, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then env-steps/s of each timed window and their median."""
    keep = np.array([[2, 1]] * pool.num_envs)
    pool.seed(args.seed)
    pool.reset()
    for _ in range(args.warmup):
        pool.step(keep)
    rates = []
    for _ in range(args.windows):
        start = time.perf_counter()
        for _ in range(args.steps):
            pool.step(keep)
        rates.append(pool.num_envs * args.steps / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "windows": [round(r, 2) for r in rates]}


def main() -> None:
    args = parser.parse_args()
    spec = load_spec(args.spec)
    factory = EnvFactory(spec, (args.workload,))
    slot = WorkerSlot("cpu", args.threads)  # the same for every backend

    results: list[dict[str, Any]] = []
    for n in (1, 2):
        pool = EnvPool([factory] * n, [slot] * n)
        try:
            results.append({"backend": "local", "workers": n, **measure(pool, args)})
        finally:
            pool.close()

    if not args.no_ray:
        import ray

        from rlagent.pool.ray import RayEnvPool

        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=visible_cpu_count(), include_dashboard=False)
        try:
            pool = RayEnvPool([factory] * 2, [slot] * 2)
            try:
                results.append({"backend": "ray", "workers": 2, **measure(pool, args)})
            finally:
                pool.close()
        finally:
            if started:
                ray.shutdown()

    base = results[0]["median"]
    local2 = results[1]["median"]
    print(
        f"{args.workload}, {args.threads} thread(s)/worker, {visible_cpu_count()} cores, median of {args.windows} x {args.steps} steps/env"
    )
    print(f"{'backend':<8} {'workers':>7} {'env-steps/s':>12} {'min-max':>15} {'vs local-1':>10}")
    for r in results:
        spread = f"{min(r['windows']):.1f}-{max(r['windows']):.1f}"
        print(f"{r['backend']:<8} {r['workers']:>7} {r['median']:>12.2f} {spread:>15} {r['median'] / base:>9.2f}x")
    scaling = local2 / base
    print(
        f"local scaling 2/1 workers: {scaling:.2f}x (target >= {TARGET_SCALING}: {'ok' if scaling >= TARGET_SCALING else 'BELOW'})"
    )
    report = {
        "workload": args.workload,
        "spec": spec.name,
        "threads_per_worker": args.threads,
        "cores": visible_cpu_count(),
        "warmup": args.warmup,
        "windows": args.windows,
        "steps_per_window": args.steps,
        "results": [{**r, "median": round(r["median"], 2)} for r in results],
        "local_scaling_2_vs_1": round(scaling, 3),
        "target_scaling": TARGET_SCALING,
    }
    if not args.no_ray:
        report["ray_vs_local_2"] = round(results[2]["median"] / local2, 3)
        print(f"ray / local, 2 workers: {report['ray_vs_local_2']:.2f}x")
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
