"""Env-steps/s of populations (K envs per worker, trained together) against the process pool.

For each family of workloads — ``mlp`` (the spec's training workloads with an MLP), ``cnn``
(those with a CNN) and ``distribution`` (all of its training workloads; a workload is just a
``WorkloadSpec``, so a procedural task sampler's workloads plug in through the spec) — the
script times the local process pool (one env per worker, one worker per core or per GPU, each
with its share of the cores) and then populations of K ∈ {1, 4, 16, 64} members per worker on
the same workers (the pool over 8x the timed steps, ``--pool-steps``, so that its few envs
cover about as many epochs and draws). Every env gets the same seeded random actions (LR
×{¼..4}, batch size ×{½,1,2}), so batch sizes spread as they do under a policy; episode ends
and resets happen inside the timed steps, as in training. Memory per member: the model, optimiser state and data
tensors of one member (in process, K=4), and on CUDA the peak allocated memory / K.

    python scripts/bench_population.py --quick                # K in {1, 4, 16}, short windows
    python scripts/bench_population.py                        # the full table
    python scripts/bench_population.py --device cuda          # one population per GPU
    python scripts/bench_population.py --families mlp --ks 16 # one cell

Last line: ``speed-up vs pool: mlp A.AAx, cnn B.BBx, distribution C.CCx`` (the best K of each
family over the pool). Targets (issue 12): ≥ 2× on MLP draws on 2 CPU cores, never slower than
the pool on any family; with ``--device cuda`` ≥ 20× one HyperTuneEnv on that GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from rlagent.config import load_spec
from rlagent.pool import make_pool
from rlagent.pool.devices import visible_cpu_count
from rlagent.pool.population import PopulationVecEnv
from rlagent.workloads import BUILTIN_WORKLOADS

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--spec", default="default", help="spec file or shipped spec name")
parser.add_argument("--device", default="cpu", help="cpu, or cuda (one worker per GPU)")
parser.add_argument("--workers", type=int, default=None, help="workers (default: one per core, or per GPU)")
parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "distribution"])
parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64], help="members per worker")
parser.add_argument("--steps", type=int, default=6, help="timed steps per env")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps per env first (the planner measures)")
parser.add_argument(
    "--pool-steps",
    type=int,
    default=None,
    help="timed steps per env of the pool (default: 8x --steps, so that the pool's few envs "
    "cover about as many epochs and workload draws as the populations)",
)
parser.add_argument("--mode", default="auto", help="population mode: auto, batched or sequential")
parser.add_argument("--quick", action="store_true", help="K in {1, 4, 16}, 3 timed steps, 2 warm-up steps")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def family_workloads(spec: Any, family: str) -> tuple[str, ...] | None:
    """Training workloads of one model family, or None for the spec's whole training distribution.

    With a procedural training set, a family's workloads are the named (built-in or defined) ones
    that are not held out.
    """
    if family == "distribution":
        return None
    names = spec.workloads.train_names or tuple(
        n for n in (*BUILTIN_WORKLOADS, *spec.workloads.define) if n not in spec.workloads.heldout
    )
    picked = tuple(n for n in names if spec.workload(n).model.startswith(family))
    if not picked:
        raise SystemExit(f"--families: the spec has no {family} training workload")
    return picked


def measure(venv: VecEnv, steps: int, warmup: int, seed: int) -> float:
    """Env-steps/s over ``steps`` steps of seeded random actions, after ``warmup`` steps."""
    rng = np.random.default_rng(seed)
    venv.seed(seed)
    venv.reset()

    def actions() -> np.ndarray:
        return np.stack([[rng.integers(0, 5), rng.integers(0, 3)] for _ in range(venv.num_envs)])

    for _ in range(warmup):
        venv.step(actions())
    start = time.perf_counter()
    for _ in range(steps):
        venv.step(actions())
    return venv.num_envs * steps / (time.perf_counter() - start)


def member_memory(spec: Any, names: tuple[str, ...], device: str, seed: int) -> dict[str, float]:
    """MiB per member: its tensors (K=4, in process), and on CUDA the peak allocation / K."""
    k = 4
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    pop = PopulationVecEnv(k, spec, device=device, workloads=names)
    pop.seed(seed)
    pop.reset()
    pop.step(np.tile([2, 1], (k, 1)))
    out = {"tensors_mib": pop.memory_per_member() / 2**20}
    if device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / k / 2**20
    pop.close()
    return out


def main() -> None:
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.ks, args.steps, args.warmup = [k for k in args.ks if k <= 16], 3, 2
    args.pool_steps = args.pool_steps or 8 * args.steps
    spec = load_spec(args.spec)
    cuda = args.device.startswith("cuda")
    devices = "auto" if cuda else ["cpu"] * (args.workers or visible_cpu_count())
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for family in args.families:
        names = family_workloads(spec, family)
        pool = make_pool(spec, n_envs=args.workers, devices=devices, workloads=names)
        n_workers = pool.num_envs
        try:
            base = measure(pool, args.pool_steps, args.warmup, args.seed)
        finally:
            pool.close()
        row: dict[str, Any] = {"workloads": names, "workers": n_workers, "pool": base, "population": {}}
        print(f"{family:12s} pool ({n_workers} workers, 1 env each): {base:7.2f} env-steps/s", flush=True)
        for k in args.ks:
            venv = make_pool(
                spec, n_envs=args.workers, devices=devices, workloads=names, population=k, population_mode=args.mode
            )
            try:
                rate = measure(venv, args.steps, args.warmup, args.seed)
            finally:
                venv.close()
            row["population"][k] = rate
            print(f"{family:12s} population K={k:3d} x {n_workers}: {rate:7.2f} env-steps/s ({rate / base:.2f}x pool)",
                  flush=True)  # fmt: skip
        row["memory_per_member"] = member_memory(spec, names, "cuda:0" if cuda else "cpu", args.seed)
        print(f"{family:12s} memory per member: {row['memory_per_member']}", flush=True)
        best = max(row["population"], key=row["population"].get)
        row["best_k"], row["speedup"] = best, row["population"][best] / base
        results[family] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2, default=str)
    parts = [f"{family} {results[family]['speedup']:.2f}x" for family in args.families]
    print("speed-up vs pool: " + ", ".join(parts))


if __name__ == "__main__":
    main()
