"""Check the env pool on the devices of this machine: one env per device, each where it should be.

    python scripts/check_devices.py [--devices auto] [--steps 10] [--json OUT.json]

For each worker: the device it was given, the device its model and data really live on, the CUDA
device current in the worker, and the mean epoch time; then the pool's env-steps/s. With
``--devices auto`` the pool gets one env per visible GPU (or CPU workers on a CPU-only machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from rlagent.config import load_spec
from rlagent.pool import EnvFactory, EnvPool
from rlagent.pool.devices import plan_workers, visible_cuda_count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="default")
    p.add_argument("--devices", default="auto")
    p.add_argument("--n-envs", type=int, default=None)
    p.add_argument("--workload", default="mnist1d-mlp")
    p.add_argument("--steps", type=int, default=10, help="env steps (epochs) per env")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    spec = load_spec(args.spec)
    slots = plan_workers(args.n_envs, args.devices)
    pool = EnvPool([EnvFactory(spec, (args.workload,))] * len(slots), slots)
    try:
        pool.seed(0)
        pool.reset()
        keep = np.array([[2, 1]] * pool.num_envs)  # LR x1, batch size x1
        times: list[list[float]] = [[] for _ in slots]
        start = time.perf_counter()
        for _ in range(args.steps):
            pool.step(keep)
            for i, t in enumerate(pool.get_attr("epoch_time")):
                times[i].append(t)
        elapsed = time.perf_counter() - start
        placed = pool.env_method("placement")
    finally:
        pool.close()

    report = {
        "visible_cuda_devices": visible_cuda_count(),
        "workload": args.workload,
        "env_steps_per_s": round(args.steps * len(slots) / elapsed, 2),
        "workers": [
            {
                "slot_device": s.device,
                "threads": s.num_threads,
                **where,
                "median_epoch_s": round(statistics.median(t), 4),
            }
            for s, where, t in zip(slots, placed, times)
        ],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    wrong = [w for w in report["workers"] if not w["slot_device"] == w["model_device"] == w["data_device"]]
    if wrong:
        raise SystemExit(f"workers on the wrong device: {wrong}")


if __name__ == "__main__":
    main()
