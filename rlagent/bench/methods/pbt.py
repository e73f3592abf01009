"""Population Based Training in-process, with Ray Tune's default exploit/explore rules."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np

from rlagent.bench.methods.base import (
    PBT_INTERVAL,
    PBT_LR_FACTORS,
    PBT_POPULATION,
    PBT_QUANTILE,
    PBT_RESAMPLE_P,
    MethodResult,
    Outcome,
    Run,
    TrialContext,
    best_index,
    make_result,
    method_rng,
    sample_configs,
    workload_hparams,
)
from rlagent.hparams import HParams


def _exploit(dst: Run, src: Run) -> None:
    """``dst`` takes deep copies of ``src``'s weights and optimiser state, and its history (lineage)."""
    dst.trainer.model.load_state_dict(copy.deepcopy(src.trainer.model.state_dict()))
    # Optimizer.load_state_dict keeps the tensors it is given: deep-copy so no state is shared.
    dst.trainer.optimizer.load_state_dict(copy.deepcopy(src.trainer.optimizer.state_dict()))
    dst.diverged = src.diverged
    dst.history = copy.deepcopy(src.history)


def _explore(lr: float, batch_size: int, rng: np.random.Generator, hparams: HParams) -> tuple[float, int]:
    """Ray Tune's PBT explore: resample with p = 0.25, else LR ×0.8 / ×1.2 and batch size to a
    neighbouring power of two. Unlike Ray, the LR is clipped to the range (the benchmark's limits)."""
    if rng.random() < PBT_RESAMPLE_P:
        lr = hparams.sample_lr(rng)
    else:
        lr *= float(rng.choice(PBT_LR_FACTORS))
    lr = hparams.with_values(lr, hparams.batch_size).lr
    sizes = hparams.batch_sizes()
    if rng.random() < PBT_RESAMPLE_P or batch_size not in sizes:
        batch_size = int(sizes[int(rng.integers(len(sizes)))])
    else:
        i = sizes.index(batch_size) + int(rng.choice([-1, 1]))
        batch_size = int(sizes[min(max(i, 0), len(sizes) - 1)])
    return lr, batch_size


def pbt(ctx: TrialContext, *, population: int = PBT_POPULATION, interval: int = PBT_INTERVAL) -> list[MethodResult]:
    """Population Based Training of ``population`` members trained in lockstep, ``population``·E epochs.

    The initial configurations are random search's first ones. Every ``interval`` epochs (not
    after the last) members are ranked by current validation accuracy; each of the bottom 25%
    copies the weights and optimiser state of a random top-25% member and explores from its
    hyperparameters (:func:`_explore`). This is Ray Tune's synchronous PBT with its defaults.
    A diverged member scores chance until it is replaced. The member with the best final
    validation accuracy is selected; its history is its lineage's.
    """
    if population < 2 or interval < 1:
        raise ValueError(f"pbt: got population={population}, interval={interval}; expected >= 2 and >= 1")
    start = time.perf_counter()
    epochs = ctx.workload.epochs
    hparams = workload_hparams(ctx)
    rng = method_rng(ctx, "pbt")
    hyper = sample_configs(ctx, population, hparams)
    initial = [list(c) for c in hyper]
    members = [Run(ctx) for _ in range(population)]
    quantile = min(math.ceil(population * PBT_QUANTILE), population // 2)
    events: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        scores = [m.step(lr, bs)["val_acc"] for m, (lr, bs) in zip(members, hyper)]
        if epoch % interval or epoch == epochs or quantile == 0:
            continue
        order = sorted(range(population), key=lambda i: scores[i])  # stable: ties keep member order
        bottom, top = order[:quantile], order[-quantile:]
        for i in bottom:
            j = top[int(rng.integers(len(top)))]
            _exploit(members[i], members[j])
            hyper[i] = _explore(*hyper[j], rng, hparams)
            events.append({"epoch": epoch, "member": i, "from": j, "lr": hyper[i][0], "batch_size": hyper[i][1]})
    finals = [m.history[-1]["val_acc"] for m in members]
    best = best_index(finals)
    out = Outcome(
        history=members[best].history, val_acc=finals[best], test_acc=members[best].test_acc(),
        diverged=members[best].diverged, epochs=population * epochs, seconds=time.perf_counter() - start,
    )  # fmt: skip
    details = {"lr": hyper[best][0], "batch_size": hyper[best][1], "selected": best, "population": population,
               "interval": interval, "initial": initial, "final_val_accs": finals, "exploits": events}  # fmt: skip
    return [make_result(ctx, f"pbt-{population}", out, details)]
