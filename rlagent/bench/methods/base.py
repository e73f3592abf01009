"""What every benchmark method shares: its inputs and result, and the one seeded training run.

A method is a function ``(ctx: TrialContext) -> list[MethodResult]``. Every training run it makes
is :class:`Run` — ``make_run(ctx.workload, ctx.seed)`` trained through
:func:`rlagent.training.run_epoch` — so for one seed all methods see the same data split, initial
weights and shuffling order, an epoch costs the same everywhere, and a diverged run is handled by
one rule. Selection always uses final validation accuracy; test accuracy is only reported.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from rlagent._io import optional_import
from rlagent.config import EnvSpec
from rlagent.errors import RLAgentError
from rlagent.features import RunTracker
from rlagent.hparams import HParams
from rlagent.training import Trainer, run_epoch
from rlagent.workloads import Data, Source, WorkloadSpec, make_run

logger = logging.getLogger(__name__)

RANDOM_SIZES = (1, 4, 16)
"""Random search is reported as the best of the first N of its runs, for each N here."""

SEARCH_TRIALS = 16
"""Trials of TPE, and Hyperband's budget in full runs."""

HYPERBAND_REDUCTION = 3

PBT_POPULATION = 8

PBT_INTERVAL = 3
"""Epochs between PBT's exploit/explore steps."""

PBT_QUANTILE = 0.25

PBT_RESAMPLE_P = 0.25

PBT_LR_FACTORS = (0.8, 1.2)

DEFAULT_LR = 1e-3
"""LR of ``constant`` and the start of ``plateau``."""

DEFAULT_BATCH_SIZE = 32
"""Batch size of ``constant``, ``plateau``, ``schedulefree`` and ``prodigy``."""

Decide = Callable[[int, Sequence[dict[str, Any]], Trainer], tuple[float, int]]
"""``decide(epoch, history, trainer) -> (lr, batch_size)`` for the 0-based ``epoch`` about to run."""


@dataclass
class MethodResult:
    """What one tuning method achieved on one workload and seed."""

    method: str
    """Reported name, e.g. ``random-16``, ``tpe-16``, ``pbt-8``, ``policy``."""
    workload: str
    seed: int
    val_acc: float
    """Final validation accuracy of the run the method selected (selection uses validation only)."""
    test_acc: float
    """Test accuracy of that run (reported, never used to select)."""
    epochs: float
    """Epochs trained by the method in total: its compute cost. Fractional when part of it is
    counted in minibatches (an LR range test: iterations × batch size / training-set size)."""
    seconds: float
    """Wall time of the method."""
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-able: chosen hyperparameters, per-epoch history of the selected run, trial counts..."""

    def to_dict(self) -> dict[str, Any]:
        """A plain-data copy (JSON-able)."""
        return asdict(self)


@dataclass(frozen=True)
class TrialContext:
    """Everything a method needs for one (method, workload, seed)."""

    spec: EnvSpec
    workload: WorkloadSpec
    """The workload with the spec's episode overrides applied (``spec.workload(name)``)."""
    seed: int
    """Seed of the run (split, init, shuffling) and of the method's own samplers."""
    workdir: Path
    """Private folder of this (method, workload, seed): Optuna journals."""
    device: str = "cpu"
    policy: str | None = None
    """Policy directory (or shipped policy name) for ``policy``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Inputs from other methods' results: see :data:`METHOD_NEEDS`."""
    sources: dict[str, Source] = field(default_factory=dict, compare=False, repr=False)
    """Cache of loaded datasets; pass one dict to many contexts to load each dataset once."""


class Run:
    """The seeded run of ``ctx.workload`` trained one epoch at a time at the (lr, batch size) given.

    Each epoch is one :func:`rlagent.training.run_epoch`, the env's own epoch step.

    Args:
        ctx: The trial; the run is ``make_run(ctx.workload, ctx.seed)``.
        optimizer: Builds the optimiser from the parameters (its own LR is kept); default: the
            workload's optimiser family.
    """

    def __init__(self, ctx: TrialContext, optimizer: Callable[[Iterable[torch.nn.Parameter]], Any] | None = None):
        run = make_run(ctx.workload, ctx.seed, device=ctx.device, sources=ctx.sources)
        self.data: Data = run.data
        if optimizer is None:
            opt: Any = ctx.workload.optimizer
            lr = DEFAULT_LR
        else:
            opt = optimizer(run.model.parameters())
            lr = float(opt.param_groups[0]["lr"])
        wl = ctx.workload
        self.hparams = dataclasses.replace(workload_hparams(ctx, len(run.data.train)), lr=lr)
        self.trainer = Trainer(
            run.model, run.data.train, optimizer=opt, optimizer_args=wl.optimizer_args if optimizer is None else None,
            lr=lr, batch_size=DEFAULT_BATCH_SIZE, generator=run.generator, lr_scale=wl.lr_scale,
            lr_shift=wl.lr_shift,
        )  # fmt: skip
        self.tracker = RunTracker(
            num_classes=run.data.num_classes, lr_range=wl.lr_range, batch_size_range=wl.batch_size_range,
            epochs=wl.epochs,
        )  # fmt: skip
        self.chance = 1.0 / run.data.num_classes
        self.diverged = False
        self.history: list[dict[str, Any]] = []

    def step(self, lr: float, batch_size: int) -> dict[str, Any]:
        """Train one epoch at exactly (lr, batch size), evaluate, and return the epoch's record.

        Once diverged the run no longer trains: each further epoch is recorded as the diverged
        one was (chance accuracy), so a PBT member scores chance until it is replaced.
        """
        self.hparams = dataclasses.replace(self.hparams, lr=float(lr), batch_size=int(batch_size))
        if self.diverged:
            record = {
                **self.history[-1],
                "epoch": len(self.history) + 1,
                "lr": float(lr),
                "batch_size": int(batch_size),
            }
        else:
            epoch, _ = run_epoch(self.trainer, self.data.val, self.tracker, self.hparams)
            self.diverged = epoch.diverged
            # Numbered along the history: a run restored from a checkpoint (Ray Tune) or given
            # another member's weights and history (PBT) has a fresh tracker.
            record = {**epoch.record(), "epoch": len(self.history) + 1}
        self.history.append(record)
        return record

    def test_acc(self) -> float:
        """Accuracy on the test split now (chance if diverged). For reporting only."""
        return self.chance if self.diverged else self.trainer.evaluate(self.data.test).acc


@dataclass
class Outcome:
    history: list[dict[str, Any]]
    val_acc: float
    test_acc: float
    diverged: bool
    epochs: float
    seconds: float


def train_run(
    ctx: TrialContext,
    decide: Decide,
    *,
    optimizer: Callable[[Iterable[torch.nn.Parameter]], Any] | None = None,
    after_epoch: Callable[[dict[str, Any]], None] | None = None,
    prepare: Callable[[Run], None] | None = None,
) -> Outcome:
    """Train the run for ``ctx.workload.epochs`` epochs, ``decide`` picking (lr, batch size) before each.

    ``prepare`` gets the fresh run before its first epoch (an LR range test that resets the model
    afterwards; a per-step schedule attached as ``run.trainer.on_step``); its time counts in the
    outcome's seconds. ``after_epoch`` sees each epoch's record and may raise to stop the run
    (Hyperband pruning).
    A diverged run stops at once but is charged the full budget E: a static configuration
    commits to E epochs, and charging less would make divergent search spaces look cheap.
    """
    start = time.perf_counter()
    run = Run(ctx, optimizer)
    if prepare is not None:
        prepare(run)
    for epoch in range(ctx.workload.epochs):
        lr, batch_size = decide(epoch, run.history, run.trainer)
        record = run.step(lr, batch_size)
        if after_epoch is not None:
            after_epoch(record)
        if record["diverged"]:
            logger.debug("%s seed %d: diverged in epoch %d at lr %.3g", ctx.workload.name, ctx.seed, epoch + 1, lr)
            break
    return Outcome(
        history=run.history,
        val_acc=run.history[-1]["val_acc"],
        test_acc=run.test_acc(),
        diverged=run.diverged,
        epochs=ctx.workload.epochs,
        seconds=time.perf_counter() - start,
    )


def constant_schedule(lr: float, batch_size: int) -> Decide:
    return lambda epoch, history, trainer: (lr, batch_size)


def method_rng(ctx: TrialContext, purpose: str) -> np.random.Generator:
    """A generator of this method's own, drawn from ``ctx.seed`` and what it is for."""
    return np.random.default_rng([zlib.crc32(purpose.encode()), ctx.seed % 2**64])


def workload_hparams(ctx: TrialContext, n_train: int | None = None) -> HParams:
    """The workload's ranges, the batch size capped at the training-set size, at LR 1e-3 and batch size 32.

    Every method draws, clips and lists its values through this :class:`HParams`, as the env does.

    Args:
        ctx: The trial.
        n_train: Training-set size of the run; None: that of ``make_run(ctx.workload, ctx.seed)``.
    """
    wl = ctx.workload
    if n_train is None:
        n_train = len(make_run(wl, ctx.seed, device="cpu", sources=ctx.sources).data.train)
    return HParams(DEFAULT_LR, DEFAULT_BATCH_SIZE, wl.lr_range, wl.batch_size_range, n_train).clipped()


def sample_configs(ctx: TrialContext, n: int, hparams: HParams) -> list[tuple[float, int]]:
    """Random search's configurations: LR log-uniform, batch size uniform over the powers of two.

    The first ``n`` are the same for every ``n`` (PBT's initial population is random search's
    first members), so the methods are compared on paired draws.
    """
    rng = method_rng(ctx, "configs")
    out = []
    for _ in range(n):
        lr = hparams.sample_lr(rng)
        out.append((lr, hparams.sample_batch_size(rng)))
    return out


def best_index(values: Sequence[float]) -> int:
    """Index of the highest value; the earliest one on ties."""
    return int(np.argmax(np.asarray(values, dtype=float)))


METHOD_NEEDS: dict[str, str] = {"cosine": "random", "open-loop": "policy"}
"""Methods whose ``ctx.extra`` comes from another method's results on the same workload and seed:
``cosine`` needs ``best_lr`` / ``best_batch_size`` (random-16's ``details``), ``open-loop`` needs
``schedule`` (E pairs (lr, batch size), e.g. :func:`~rlagent.bench.methods.schedules.mean_schedule` of the policy's ``details["schedule"]``)."""


def extra_inputs(ctx: TrialContext, method: str, *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in ctx.extra]
    if missing:
        raise RLAgentError(f"the {method!r} baseline needs ctx.extra{missing} (from {METHOD_NEEDS[method]!r})")
    return [ctx.extra[k] for k in keys]


def make_result(ctx: TrialContext, method: str, out: Outcome, details: dict[str, Any]) -> MethodResult:
    return MethodResult(
        method=method, workload=ctx.workload.name, seed=ctx.seed, val_acc=out.val_acc, test_acc=out.test_acc,
        epochs=out.epochs, seconds=out.seconds, details={**details, "diverged": out.diverged, "history": out.history},
    )  # fmt: skip


def require(module: str, method: str) -> ModuleType:
    """The optional module a method needs, or an error naming the extra that installs it."""
    return optional_import(module, extra="bench", purpose=f"the {method!r} baseline")
