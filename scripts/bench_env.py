"""Epoch cost inside the env vs a plain hand-written PyTorch loop on the same model and data.

One env step with the "keep" action ([2, 1]) trains one epoch and evaluates the validation split.
The plain loop does the same with nothing else: randperm indexing, forward, cross-entropy,
zero_grad, backward, Adam step, then the validation split under no_grad. Both start each round
from the same freshly initialised weights; rounds alternate which goes first, and the medians of
the per-epoch times are compared. The env should cost at most ~5% more than the plain loop.

    python scripts/bench_env.py                      # MNIST-1D MLP, 7 rounds x 5 epochs, 1 thread
    python scripts/bench_env.py --json               # one JSON object instead of text
    python scripts/bench_env.py --action discrete-rollback  # with the best epoch kept for a rollback
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time

import gymnasium as gym
import torch
from torch import nn

from rlagent import ENV_ID
from rlagent.config import ACTIONS, load_spec
from rlagent.env import hold_action

TARGET_RATIO = 1.05

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--spec", default="default", help="spec file or shipped spec name")
parser.add_argument("--workload", default="mnist1d-mlp", help="workload to time")
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--rounds", type=int, default=7, help="measurement rounds (each method once per round)")
parser.add_argument("--epochs", type=int, default=5, help="epochs per method per round")
parser.add_argument("--warmup", type=int, default=2, help="untimed epochs per method before measuring")
parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
parser.add_argument("--action", default="discrete", choices=ACTIONS, help="the env's action kind")
args = parser.parse_args()

torch.set_num_threads(args.threads)
spec = load_spec(args.spec)
env = gym.make(ENV_ID, spec=dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, action=args.action)))
options = {"workload": args.workload, "lr": args.lr, "batch_size": args.batch_size}
KEEP = hold_action(args.action)  # LR x1, batch size x1 (and no rollback)


def start_round(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    """Reset the env and give the plain loop a copy of the env's fresh model and its own Adam."""
    env.reset(seed=seed, options=options)
    model = copy.deepcopy(env.unwrapped.trainer.model)
    return model, torch.optim.Adam(model.parameters(), lr=args.lr), torch.Generator().manual_seed(seed)


def plain_epoch(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
    """One epoch + validation, hand-written; returns the validation accuracy."""
    data = env.unwrapped.data
    x, y, bs = data.train.x, data.train.y, args.batch_size
    model.train()
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), bs):
        idx = perm[i : i + bs]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(data.val.x)
        nn.functional.cross_entropy(out, data.val.y).item()
        return (out.argmax(1) == data.val.y).float().mean().item()


def time_env(epochs: int) -> list[float]:
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        env.step(KEEP)
        times.append(time.perf_counter() - t)
    return times


def time_plain(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, epochs: int) -> list[float]:
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        plain_epoch(model, opt, gen)
        times.append(time.perf_counter() - t)
    return times


# Warm-up: data generation, first-call allocations, lazy imports.
model, opt, gen = start_round(args.seed)
time_env(args.warmup)
time_plain(model, opt, gen, args.warmup)

env_times: list[float] = []
plain_times: list[float] = []
for r in range(args.rounds):
    model, opt, gen = start_round(args.seed + r)
    if r % 2 == 0:
        env_times += time_env(args.epochs)
        plain_times += time_plain(model, opt, gen, args.epochs)
    else:
        plain_times += time_plain(model, opt, gen, args.epochs)
        env_times += time_env(args.epochs)

data = env.unwrapped.data
env_ms, plain_ms = statistics.median(env_times) * 1e3, statistics.median(plain_times) * 1e3
result = {
    "workload": args.workload,
    "action": args.action,
    "train_samples": len(data.train),
    "val_samples": len(data.val),
    "lr": args.lr,
    "batch_size": args.batch_size,
    "threads": args.threads,
    "epochs_timed": len(env_times),
    "env_ms": round(env_ms, 2),
    "plain_ms": round(plain_ms, 2),
    "ratio": round(env_ms / plain_ms, 3),
    "target_ratio": TARGET_RATIO,
    "torch": torch.__version__,
}
if args.json:
    print(json.dumps(result))
else:
    print(f"{args.workload}: {len(data.train)} train / {len(data.val)} val samples, batch {args.batch_size}, "
          f"LR {args.lr:g}, {args.threads} thread(s), median of {len(env_times)} epochs each")  # fmt: skip
    print(f"  env.step (train epoch + val): {env_ms:8.2f} ms")
    print(f"  plain PyTorch loop:           {plain_ms:8.2f} ms")
    verdict = "within" if result["ratio"] <= TARGET_RATIO else "ABOVE"
    print(f"  ratio env/plain:              {result['ratio']:8.3f}  ({verdict} target {TARGET_RATIO})")
