"""A short LR range test on a throwaway copy of a run: where this run's learning rate belongs.

A policy that reads the LR off its absolute value acts on a prior learnt from its training draws;
a few minibatches at an exponentially rising LR (Smith 2017, "Cyclical Learning Rates") say where
the loss of *this* network, data and optimiser stops falling. :func:`probe_lr` runs them on a deep
copy of the model and its optimiser (settings and state), under its own generator
and a forked global RNG, so the run itself is untouched: its weights, optimiser state, shuffling
and dropout stream are what they were, and it trains exactly as without the probe.

The LR of the minimum smoothed loss is no LR to train at (it sits just below divergence); the
practitioner's rule divides it by 10 (:func:`probe_start_lr`; the env's reset option
``probe_divisor`` sets another, to test the rule: ``scripts/start_ablation.py``).

A start chosen by hand can be checked the same way (:func:`checked_start`): one above the probe's
minimum-loss LR is past where this run's loss stops falling, and one epoch there can wreck it
before a policy gets to act, so it is replaced by the probe's start; any other is kept.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlagent.datasets import Split
from rlagent.errors import SpecError, is_number
from rlagent.hparams import HParams
from rlagent.training import Trainer, seeded_global_rng

logger = logging.getLogger(__name__)

PROBE_STEPS = 48
"""Minibatches in a probe: about 1 500 samples at batch 32, a fraction of one epoch of most draws."""
PROBE_BATCH_SIZE = 32
PROBE_SPAN = 30.0
"""The probe's LR rises from the range's bottom to this multiple of its top."""
PROBE_BETA = 0.9
"""Smoothing of the probe's loss (an exponential moving average, bias-corrected)."""
PROBE_STOP = 4.0
"""The probe stops once the smoothed loss exceeds this multiple of its minimum."""
START_DIVISOR = 10.0
"""The probe's start LR is its minimum-loss LR divided by this."""


@dataclass(frozen=True)
class Probe:
    """What one probe measured."""

    lr: float
    """The LR (as tuners see it: before a hidden ``lr_scale``) at the minimum smoothed loss."""
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    """Smoothed losses at ``lrs``; the probe stopped early when it holds fewer than PROBE_STEPS."""
    samples: int


def probe_lr(
    trainer: Trainer,
    lr_range: tuple[float, float],
    *,
    seed: int,
    steps: int = PROBE_STEPS,
    batch_size: int = PROBE_BATCH_SIZE,
    lr_scale: float | None = None,
) -> Probe:
    """Run an LR range test on a copy of ``trainer``'s model and return its minimum-loss LR.

    Args:
        trainer: The run; its model, optimiser, generator and the global RNG are left as they were.
        lr_range: The run's LR range: the probe rises from its bottom to ``PROBE_SPAN`` × its top.
        seed: Seeds the probe's minibatch order and dropout, so a probe is reproducible.
        steps: Minibatches at most.
        batch_size: Their size (capped by the training split).
        lr_scale: The hidden step-size multiplier the probe trains at (default: the run's own
            ``trainer.lr_scale``); the LRs it reports are before it.

    Raises:
        SpecError: Naming the argument, if ``steps`` < 2, ``batch_size`` < 1, ``lr_scale`` is not a
            finite number > 0, or the range is not two numbers 0 < low < high.
    """
    low, high = float(lr_range[0]), float(lr_range[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise SpecError("lr_range", lr_range, "two finite numbers 0 < low < high")
    if steps < 2:
        raise SpecError("steps", steps, "an integer >= 2")
    if batch_size < 1:
        raise SpecError("batch_size", batch_size, "an integer >= 1")
    if lr_scale is not None and not (is_number(lr_scale) and 0 < lr_scale < math.inf):
        raise SpecError("lr_scale", lr_scale, "a finite number > 0, or None for the run's own")
    scale = trainer.lr_scale if lr_scale is None else float(lr_scale)
    split: Split = trainer.train_split
    # One deepcopy of both: the copied optimiser then steps the copied model's parameters.
    model, optimizer = copy.deepcopy((trainer.model, trainer.optimizer))
    model: nn.Module
    gen = torch.Generator().manual_seed(int(seed) % 2**63)
    top = high * PROBE_SPAN
    ratio = (top / low) ** (1.0 / (steps - 1))
    n, bs = len(split), min(int(batch_size), len(split))
    lrs: list[float] = []
    smoothed: list[float] = []
    avg, best, ran = 0.0, math.inf, 0
    model.train()
    if hasattr(optimizer, "train"):
        optimizer.train()
    with seeded_global_rng([gen], split.x.device):
        for i in range(steps):
            lr = low * ratio**i
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            idx = torch.randint(n, (bs,), generator=gen).to(split.x.device)
            loss = trainer.loss_fn(model(split.x[idx]), split.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ran += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            avg = PROBE_BETA * avg + (1 - PROBE_BETA) * value
            s = avg / (1 - PROBE_BETA ** (i + 1))
            lrs.append(lr)
            smoothed.append(s)
            best = min(best, s)
            if s > PROBE_STOP * best:
                break
    if not lrs:  # the first step's loss was not finite: the bottom of the range is all it can say
        return Probe(lr=low, lrs=(), losses=(), samples=bs * ran)
    at = min(range(len(smoothed)), key=smoothed.__getitem__)
    return Probe(lr=lrs[at], lrs=tuple(lrs), losses=tuple(smoothed), samples=bs * ran)


def probe_seed(episode_seed: int, replica: int = 0) -> int:
    """The probe's seed for an episode (and replica): apart from the run's own seed streams."""
    return (int(episode_seed) * 7919 + 17 + 104729 * int(replica)) % 2**63


def probe_start_lr(probe: Probe, lr_range: tuple[float, float], divisor: float = START_DIVISOR) -> float:
    """The start LR a probe points to: its minimum-loss LR ÷ ``divisor``, kept in ``lr_range``.

    Raises:
        SpecError: Naming ``probe_divisor``, unless ``divisor`` is a finite number >= 1.
    """
    return float(min(max(probe.lr / check_divisor(divisor), lr_range[0]), lr_range[1]))


def check_divisor(divisor: Any, field: str = "probe_divisor") -> float:
    """``divisor`` as a float, refused (naming ``field``) unless a finite number >= 1: a start at
    or below the probe's minimum-loss LR."""
    if not (is_number(divisor) and 1 <= divisor < math.inf):
        raise SpecError(field, divisor, "a finite number >= 1")
    return float(divisor)


def start_from_probe(
    trainer: Trainer,
    hparams: HParams,
    *,
    seed: int,
    lr_scale: float | None = None,
    divisor: float = START_DIVISOR,
) -> tuple[Probe, HParams]:
    """Probe ``trainer``'s run (:func:`probe_lr` over ``hparams``' LR range, at ``lr_scale``) and
    start it at the LR the probe points to (its minimum-loss LR ÷ ``divisor``): ``trainer.lr`` is
    set, and the probe and ``hparams`` at that LR (batch size kept) are returned."""
    check_divisor(divisor)
    probe = probe_lr(trainer, hparams.lr_range, seed=seed, lr_scale=lr_scale)
    return probe, _start_at_probe(trainer, hparams, probe, divisor)


def _start_at_probe(trainer: Trainer, hparams: HParams, probe: Probe, divisor: float) -> HParams:
    """``hparams`` at the probe's start LR (batch size kept), with ``trainer.lr`` set to it."""
    hparams = hparams.with_values(probe_start_lr(probe, hparams.lr_range, divisor), hparams.batch_size)
    trainer.lr = hparams.lr
    return hparams


def checked_start(
    trainer: Trainer,
    hparams: HParams,
    *,
    seed: int,
    lr_scale: float | None = None,
    divisor: float = START_DIVISOR,
) -> tuple[Probe, HParams, bool]:
    """Check a given start LR against a probe of ``trainer``'s run (:func:`probe_lr`).

    A start above the probe's minimum-loss LR — where the short test's loss already rises — is
    replaced by the probe's start (:func:`probe_start_lr` with ``divisor``) and ``trainer.lr`` set to it; any
    other start is kept as it is, so a low start stays for a policy to raise. The batch size is
    kept either way.

    Returns:
        The probe, the hparams to start from, and whether the start was replaced.
    """
    check_divisor(divisor)
    probe = probe_lr(trainer, hparams.lr_range, seed=seed, lr_scale=lr_scale)
    if hparams.lr <= probe.lr:
        return probe, hparams, False
    given, hparams = hparams.lr, _start_at_probe(trainer, hparams, probe, divisor)
    logger.info(
        "start LR %.3g is above the probe's minimum-loss LR %.3g: starting at %.3g", given, probe.lr, hparams.lr
    )
    return probe, hparams, True
