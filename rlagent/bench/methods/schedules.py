"""Single runs without search: hand schedules, learning-rate-free optimisers, a replayed schedule."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlagent.bench.methods.base import (
    MethodResult,
    Run,
    TrialContext,
    constant_schedule,
    extra_inputs,
    make_result,
    require,
    train_run,
    workload_hparams,
)
from rlagent.errors import RLAgentError
from rlagent.training import Trainer


def constant(ctx: TrialContext) -> list[MethodResult]:
    """Adam's textbook default: LR 1e-3, batch size 32 (clipped to the ranges), all E epochs."""
    hp = workload_hparams(ctx)
    lr, bs = hp.lr, hp.batch_size
    return [make_result(ctx, "constant", train_run(ctx, constant_schedule(lr, bs)), {"lr": lr, "batch_size": bs})]


def cosine(ctx: TrialContext) -> list[MethodResult]:
    """Cosine decay from random-16's best LR towards 0 over E epochs, at its best batch size.

    Epoch t (0-based) trains at ``best_lr · ½(1 + cos(π t / E))``; like the textbook schedule it
    may go below the LR range. Its cost is E epochs plus the random search it reuses.
    """
    best_lr, best_bs = extra_inputs(ctx, "cosine", "best_lr", "best_batch_size")
    hp = workload_hparams(ctx).with_values(best_lr, best_bs)
    lr0, bs = hp.lr, hp.batch_size
    epochs = ctx.workload.epochs

    def decide(epoch: int, history: Sequence[dict[str, Any]], trainer: Trainer) -> tuple[float, int]:
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)), bs

    out = train_run(ctx, decide)
    return [make_result(ctx, "cosine", out, {"lr": lr0, "batch_size": bs, "uses": "random-16 best LR"})]


WARMUP_SHARE = 0.05
"""Share of ``warmup-cosine``'s optimiser steps spent warming up (at least one step)."""

CONVENTIONAL_LRS = {torch.optim.SGD: 0.01}
"""LRs used where torch's default is no practitioner's: SGD with momentum 0.9 is run at 0.01 (Keras'
default and the usual recipe; torch's 1e-3 is a recent placeholder, the argument was required)."""


def default_lr(optimizer: torch.optim.Optimizer) -> float:
    """The optimiser's default LR: :data:`CONVENTIONAL_LRS`, else torch's (Adam, AdamW 1e-3; RMSprop 1e-2)."""
    cls = type(optimizer)
    if cls in CONVENTIONAL_LRS:
        return CONVENTIONAL_LRS[cls]
    default = inspect.signature(cls).parameters.get("lr")
    if default is None or not isinstance(default.default, (int, float)):
        raise RLAgentError(f"warmup-cosine: optimizer {cls.__name__} has no default learning rate")
    return float(default.default)


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak LR at optimiser step ``step`` (0-based): linear up over the first
    ``warmup`` steps (1/warmup, 2/warmup, ..., 1), then half a cosine to 0 at ``total``. Every
    step that trains has an LR > 0 (``transformers.get_cosine_schedule_with_warmup`` starts at 0)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def warmup_cosine(ctx: TrialContext) -> list[MethodResult]:
    """Linear warm-up over the first 5% of steps, then cosine to 0, per minibatch, at the
    optimiser's default LR (:func:`default_lr`) and batch size 32 (clipped). No search: E epochs.

    The peak is not clipped to the workload's LR range (the optimiser's default is the point).
    Each epoch's record shows the LR of its first minibatch.
    """
    bs = workload_hparams(ctx).batch_size
    used: dict[str, Any] = {}

    def prepare(run: Run) -> None:
        total = ctx.workload.epochs * math.ceil(len(run.data.train) / bs)
        warmup = max(1, round(WARMUP_SHARE * total))
        peak = default_lr(run.trainer.optimizer)
        run.trainer.lr = peak
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            run.trainer.optimizer, lambda step: warmup_cosine_factor(step, warmup, total)
        )
        run.trainer.on_step = scheduler.step
        used.update(lr=peak, warmup_steps=warmup, total_steps=total)

    out = train_run(ctx, lambda epoch, history, trainer: (trainer.lr, bs), prepare=prepare)
    return [make_result(ctx, "warmup-cosine", out, {**used, "batch_size": bs})]


def plateau(ctx: TrialContext) -> list[MethodResult]:
    """``ReduceLROnPlateau`` on validation loss (min, factor 0.5, patience 2) from LR 1e-3, batch 32."""
    hp = workload_hparams(ctx)
    lr0, bs = hp.lr, hp.batch_size
    scheduler: list[torch.optim.lr_scheduler.ReduceLROnPlateau] = []

    def decide(epoch: int, history: Sequence[dict[str, Any]], trainer: Trainer) -> tuple[float, int]:
        if not scheduler:
            trainer.lr = lr0
            scheduler.append(
                torch.optim.lr_scheduler.ReduceLROnPlateau(trainer.optimizer, mode="min", factor=0.5, patience=2)
            )
        else:
            scheduler[0].step(history[-1]["val_loss"])
        return trainer.lr, bs

    out = train_run(ctx, decide)
    return [make_result(ctx, "plateau", out, {"lr": lr0, "batch_size": bs})]


def _optimizer_free(ctx: TrialContext, method: str, module: str, name: str) -> list[MethodResult]:
    """A learning-rate-free optimiser at its defaults, batch size 32, E epochs."""
    cls = getattr(require(module, method), name)
    bs = workload_hparams(ctx).batch_size
    out = train_run(ctx, lambda epoch, history, trainer: (trainer.lr, bs), optimizer=lambda params: cls(params))
    return [make_result(ctx, method, out, {"optimizer": f"{module}.{name}", "batch_size": bs})]


def schedulefree(ctx: TrialContext) -> list[MethodResult]:
    """``schedulefree.AdamWScheduleFree`` at its defaults (LR 0.0025, no warm-up), batch size 32."""
    return _optimizer_free(ctx, "schedulefree", "schedulefree", "AdamWScheduleFree")


def prodigy(ctx: TrialContext) -> list[MethodResult]:
    """``prodigyopt.Prodigy`` at its defaults (LR 1.0), batch size 32."""
    return _optimizer_free(ctx, "prodigy", "prodigyopt", "Prodigy")


def open_loop(ctx: TrialContext) -> list[MethodResult]:
    """Replay ``ctx.extra["schedule"]`` — E pairs (lr, batch size) — without feedback.

    Values are clipped to the ranges and the batch size rounded, as the env does.
    """
    (schedule,) = extra_inputs(ctx, "open-loop", "schedule")
    if len(schedule) != ctx.workload.epochs:
        raise RLAgentError(f"open-loop: the schedule has {len(schedule)} epochs; expected {ctx.workload.epochs}")
    hp = workload_hparams(ctx)
    used = [(h.lr, h.batch_size) for h in (hp.with_values(lr, bs) for lr, bs in schedule)]
    out = train_run(ctx, lambda epoch, history, trainer: used[epoch])
    return [make_result(ctx, "open-loop", out, {"schedule": [list(s) for s in used]})]


def mean_schedule(schedules: Sequence[Sequence[Sequence[float]]], epochs: int) -> list[tuple[float, int]]:
    """Per-epoch geometric mean of several (lr, batch size) schedules, e.g. a policy's over seeds.

    A schedule shorter than ``epochs`` (a diverged run) is padded with its last entry. The batch
    size is rounded to an integer; :func:`open_loop` clips both to the ranges.
    """
    if not schedules or any(len(s) == 0 for s in schedules):
        raise RLAgentError("mean_schedule: needs at least one non-empty schedule")
    padded = np.array([[s[min(t, len(s) - 1)] for t in range(epochs)] for s in schedules], dtype=float)
    mean = np.exp(np.log(padded).mean(axis=0))
    return [(float(lr), int(round(bs))) for lr, bs in mean]
