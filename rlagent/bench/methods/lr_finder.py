"""What a practitioner runs instead of a tuner: an LR range test, then one-cycle.

``torch-lr-finder``'s exponential range test (:data:`RANGE_TEST_ITERS` minibatches at the
default batch size, LR from the bottom of the workload's range to :data:`RANGE_TEST_END_LR`,
stopped early when the smoothed loss exceeds 5× its best) runs on the run's own seeded model,
optimiser and training split, then ``LRFinder.reset()`` restores the initial weights and
optimiser state, so training starts from the same init as every other method. Its minibatches
come from a ``DataLoader`` with a generator of the method's own: the run's shuffling generator
and torch's global RNG (dropout) are left as they were. Training is
``torch.optim.lr_scheduler.OneCycleLR(max_lr=suggestion, epochs=E, steps_per_epoch=S)`` at its
defaults (warm-up over 30% of the steps from max_lr/25, cosine annealing to max_lr/25e4, momentum
or Adam's β1 cycled 0.95 → 0.85 → 0.95), stepped after every minibatch through
``Trainer.on_step``, at batch size 32 (clipped).

Suggestion rules, all reported by the one method task ``lr-finder`` from one range test:

* ``lr-finder-steep`` — torch-lr-finder's own: the LR of steepest descent of the smoothed loss
  (``LRFinder.plot(skip_start=10, skip_end=5)``, i.e. ``argmin(np.gradient(loss))``).
* ``lr-finder-min10`` — the classic: the LR at the minimum smoothed loss, ÷ 10.
* ``lr-finder-best`` — both from one range test, each trained, the better by validation
  accuracy kept (two runs of compute).

Suggestions are clipped to the workload's LR range (the limits every method searches in).
Compute: the range test's minibatches count as ``iterations × batch size / n_train`` epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rlagent.bench.methods.base import (
    MethodResult,
    Outcome,
    Run,
    TrialContext,
    best_index,
    make_result,
    method_rng,
    require,
    train_run,
    workload_hparams,
)

logger = logging.getLogger(__name__)

RANGE_TEST_ITERS = 100
"""Minibatches of the range test (torch-lr-finder's usual ``num_iter``)."""
RANGE_TEST_END_LR = 10.0
"""Last LR of the range test: past any workload's range, so the test sees where training breaks."""
STEEP_SKIP = (10, 5)
"""Points skipped at the start and the end of the curve by the steepest-descent rule (torch-lr-finder's plot)."""
MIN_DIVISOR = 10.0
RULES = ("steep", "min10")


@dataclass
class RangeTest:
    """One LR range test and the learning rates its rules suggest."""

    lrs: list[float]
    """LR of each minibatch of the test."""
    losses: list[float]
    """Smoothed training loss after each minibatch (torch-lr-finder's ``history["loss"]``)."""
    batch_size: int
    epochs: float
    """Its compute: minibatches × batch size / training-set size."""
    seconds: float
    suggested: dict[str, float]
    """Rule → suggested LR, before clipping."""
    chosen: dict[str, float]
    """Rule → LR one-cycle peaks at (the suggestion clipped to the workload's range)."""


def steepest_lr(finder: Any) -> float:
    """torch-lr-finder's suggestion, from its own ``plot`` (drawn on an off-screen figure).

    With fewer than 17 points (the test stopped early) the skips are dropped so a short curve
    still yields a suggestion.
    """
    from matplotlib.figure import Figure

    start, end = STEEP_SKIP
    if len(finder.history["lr"]) < start + end + 2:
        start, end = 0, 0
    ax = Figure().subplots()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the suggestion
        _, lr = finder.plot(skip_start=start, skip_end=end, log_lr=True, ax=ax, suggest_lr=True)
    return float(lr)


def min_loss_lr(lrs: list[float], losses: list[float]) -> float:
    """The LR at the minimum smoothed loss, ÷ 10."""
    return float(lrs[int(np.nanargmin(np.asarray(losses, dtype=float)))] / MIN_DIVISOR)


def range_test(ctx: TrialContext, run: Run, batch_size: int) -> RangeTest:
    """torch-lr-finder's exponential range test on ``run``'s model and optimiser, then ``reset()``.

    Args:
        ctx: The trial (its seed draws the test's minibatch order).
        run: A fresh run; its weights and optimiser state are the same afterwards.
        batch_size: Minibatch size of the test (the size one-cycle trains at).

    Returns:
        The curve and the suggestions of every rule in :data:`RULES`.
    """
    lr_finder = require("torch_lr_finder", "lr-finder")
    start = time.perf_counter()
    train = run.data.train
    gen = torch.Generator().manual_seed(int(method_rng(ctx, "lr-finder").integers(2**63 - 1)))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train.x, train.y), batch_size=batch_size, shuffle=True, generator=gen
    )
    trainer = run.trainer
    finder = lr_finder.LRFinder(trainer.model, trainer.optimizer, trainer.loss_fn)
    sink = io.StringIO()  # it prints, and draws a tqdm bar on stderr
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        finder.range_test(
            loader, start_lr=ctx.workload.lr_range[0], end_lr=RANGE_TEST_END_LR, num_iter=RANGE_TEST_ITERS
        )
    lrs = [float(x) for x in finder.history["lr"]]
    losses = [float(x) for x in finder.history["loss"]]
    suggested = {"steep": steepest_lr(finder), "min10": min_loss_lr(lrs, losses)}
    finder.reset()
    n = len(train)
    hparams = workload_hparams(ctx, n)
    chosen = {rule: hparams.with_values(lr, batch_size).lr for rule, lr in suggested.items()}
    logger.debug("%s seed %d: range test of %d steps suggests %s", ctx.workload.name, ctx.seed, len(lrs), suggested)
    return RangeTest(
        lrs=lrs, losses=losses, batch_size=batch_size, epochs=len(lrs) * batch_size / n,
        seconds=time.perf_counter() - start, suggested=suggested, chosen=chosen,
    )  # fmt: skip


def attach_one_cycle(run: Run, max_lr: float, epochs: int, batch_size: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """``OneCycleLR`` over ``epochs`` epochs of ``run`` at ``batch_size``, stepped after every minibatch.

    The scheduler sets the optimiser's LR (to max_lr / 25) at once; pass ``run.trainer.lr`` as
    each epoch's LR so :func:`~rlagent.training.run_epoch` keeps the scheduled value.
    """
    steps = math.ceil(len(run.data.train) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        run.trainer.optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps
    )
    run.trainer.on_step = scheduler.step
    return scheduler


def _one_cycle_run(ctx: TrialContext, batch_size: int, max_lr: Callable[[Run], float]) -> Outcome:
    """One E-epoch one-cycle run; ``max_lr(run)`` runs on the fresh run first and gives the peak LR
    (it may range-test the run's own model, which the test resets)."""

    def prepare(run: Run) -> None:
        attach_one_cycle(run, max_lr(run), ctx.workload.epochs, batch_size)

    return train_run(ctx, lambda epoch, history, trainer: (trainer.lr, batch_size), prepare=prepare)


def lr_finder_one_cycle(ctx: TrialContext) -> list[MethodResult]:
    """One range test, one one-cycle run at each rule's LR: reported per rule and as the better of both.

    Every run starts from the same seeded init and shuffling order, so the test needs doing once and
    each rule's run is the run that rule alone would make: ``lr-finder-steep`` and ``lr-finder-min10``
    count the test and their own run (E epochs + the test), ``lr-finder-best`` both runs and the test,
    and keeps the better by validation accuracy.
    """
    bs = workload_hparams(ctx).batch_size
    found: list[RangeTest] = []

    def peak(rule: str) -> Callable[[Run], float]:
        def max_lr(run: Run) -> float:
            if not found:
                found.append(range_test(ctx, run, bs))
            return found[0].chosen[rule]

        return max_lr

    outcomes = [_one_cycle_run(ctx, bs, peak(rule)) for rule in RULES]
    rt = found[0]
    test = {
        **{k: v for k, v in asdict(rt).items() if k != "seconds"}, "iterations": len(rt.lrs),
        "start_lr": ctx.workload.lr_range[0], "end_lr": RANGE_TEST_END_LR,
    }  # fmt: skip
    schedule = "OneCycleLR (torch defaults)"
    results = []
    for j, (rule, out) in enumerate(zip(RULES, outcomes)):
        own_test = 0.0 if j == 0 else rt.seconds  # the test ran in the first run's `prepare`, in its seconds
        single = dataclasses.replace(out, epochs=rt.epochs + ctx.workload.epochs, seconds=out.seconds + own_test)
        details = {"rule": rule, "lr": rt.chosen[rule], "batch_size": bs, "schedule": schedule, "range_test": test}
        results.append(make_result(ctx, f"lr-finder-{rule}", single, details))
    i = best_index([o.val_acc for o in outcomes])
    best = dataclasses.replace(
        outcomes[i], epochs=rt.epochs + len(RULES) * ctx.workload.epochs, seconds=sum(o.seconds for o in outcomes)
    )
    details = {
        "rule": RULES[i], "lr": rt.chosen[RULES[i]], "batch_size": bs, "schedule": schedule, "range_test": test,
        "runs": [{"rule": r, "lr": rt.chosen[r], "val_acc": o.val_acc, "test_acc": o.test_acc,
                  "diverged": o.diverged} for r, o in zip(RULES, outcomes)],
    }  # fmt: skip
    return [*results, make_result(ctx, "lr-finder-best", best, details)]
