"""The one training loop: one epoch of minibatch training at a given LR and batch size.

The environment, ``train_with_policy`` and every baseline take their epochs through
:func:`run_epoch` — apply the hyperparameters, train one epoch with :class:`Trainer`, evaluate
on validation, apply the one divergence rule, update the run's :class:`RunTracker` — so an
"epoch" costs and means the same everywhere and comparisons between tuners are fair. The run's
learning rate and batch size, with the ranges they are kept in, are one
:class:`rlagent.hparams.HParams` value.
Data stay as tensors on the device and minibatches are gathered by indexing (no ``DataLoader``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlagent.alignment import AlignmentMeter
from rlagent.features import RunTracker
from rlagent.hparams import Envelope, HParams
from rlagent.workloads import OPTIMIZER_ARGS, Split

NOISE_WINDOW = 4
"""Consecutive minibatches whose mean gradient stands in for one batch ``NOISE_WINDOW`` times larger."""
_DIVERGENCE_CHECK_EVERY = 32
_EVAL_CHUNK = 4096


@dataclass
class EpochStats:
    """What one training epoch measured."""

    train_loss: float
    """Mean minibatch loss over the epoch (sample-weighted)."""
    train_acc: float
    """Share of training samples classified correctly while they were trained on."""
    loss_noise: float
    """Standard deviation / mean of the minibatch losses."""
    steps: int
    """Optimiser steps taken."""
    samples: int
    """Training samples seen."""
    seconds: float
    """Wall time of the epoch."""
    noise: tuple[float, float, float, float] | None
    """(|G_small|², |G_big|², B_small, B_big) for the gradient noise scale, or None."""
    alignment: float | None
    """Mean cosine between each measured step's gradient and the previous update's descent
    direction, or None (see :mod:`rlagent.alignment`)."""
    diverged: bool
    """True if the loss became non-finite."""


@contextlib.contextmanager
def seeded_global_rng(generators: list[torch.Generator], device: torch.device) -> Iterator[None]:
    """Run a block with torch's global RNG seeded from the state of ``generators``, then restore it.

    Dropout (and any other module drawing from the global RNG) then depends only on the run's
    own generators, not on what else ran in the process before: an epoch is reproducible from
    its seed in any worker. The generators are read, not advanced, so shuffling is unchanged.
    """
    digest = hashlib.blake2b(digest_size=8)
    for g in generators:
        digest.update(g.get_state().numpy().tobytes())
    seed = int.from_bytes(digest.digest(), "little") & (2**63 - 1)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]):
            torch.cuda.default_generators[index].manual_seed(seed)  # the generator dropout on it draws from
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # not torch.manual_seed: ~0.2 ms for its device probes
            yield


@dataclass
class EvalStats:
    """Loss and accuracy of a model on one split."""

    loss: float
    acc: float


def make_optimizer(name: str, params, lr: float, args: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """An optimiser of family ``name`` at ``lr`` with keyword arguments ``args``.

    ``adam``, ``adamw`` (torch's default weight decay 0.01 unless ``weight_decay`` is given) and
    ``rmsprop`` with torch's defaults; ``sgd`` with momentum 0.9 (``nesterov`` optional). The
    arguments each accepts are :data:`rlagent.workloads.OPTIMIZER_ARGS`.
    """
    args = dict(args or {})
    if name not in OPTIMIZER_ARGS:
        raise ValueError(f"optimizer: got {name!r}; expected one of {tuple(OPTIMIZER_ARGS)}")
    unknown = sorted(set(args) - set(OPTIMIZER_ARGS[name]))
    if unknown:
        raise ValueError(f"optimizer {name}: got arguments {unknown}; expected among {OPTIMIZER_ARGS[name]}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **args)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, **args)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, **args)
    return torch.optim.RMSprop(params, lr=lr, **args)


def _count_correct(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Correct predictions among consecutive minibatches' logits, as a 0-d tensor (no sync)."""
    return (torch.cat(logits).argmax(1) == labels).sum()


class Trainer:
    """Trains ``model`` on ``train`` one epoch at a time; LR and batch size may change between epochs.

    Changing either keeps the optimiser state (Adam moments, momentum buffers).

    Args:
        model: The network, already on ``device``.
        train: Training split, already on ``device``.
        optimizer: An optimiser over ``model``'s parameters, or the name of a family.
        optimizer_args: Keyword arguments of a named family (see :func:`make_optimizer`).
        lr: Initial learning rate.
        batch_size: Initial batch size.
        generator: CPU generator that owns all shuffling randomness.
        loss_fn: Loss on (logits, labels); cross-entropy by default.
        measure_noise: Measure the gradient noise scale on a few minibatches per epoch.
        measure_alignment: Measure the gradient-update alignment (``EpochStats.alignment``,
            :class:`rlagent.alignment.AlignmentMeter`). Off by default: it is no observation feature yet, and
            it costs about 1.5 ms of a 55 ms MNIST-1D MLP epoch, which the env's 5% overhead
            target cannot spare.
        on_step: Called after every optimiser step, e.g. a per-batch LR scheduler's ``step``
            (one-cycle, warm-up + cosine); None: nothing runs. Also settable as an attribute
            between epochs. An LR it sets holds until the next epoch's :func:`run_epoch` sets
            the epoch's LR, so a caller with a per-step schedule passes ``trainer.lr`` as the
            epoch's LR.
        lr_scale: Hidden step-size multiplier: the optimiser steps at ``lr × lr_scale`` while
            ``trainer.lr`` reads and sets ``lr`` (see ``WorkloadSpec.lr_scale``).
        lr_shift: ``(epoch, factor)``: once ``epoch`` epochs are trained the hidden multiplier is
            ``lr_scale × factor``, the visible LR unchanged (``WorkloadSpec.lr_shift``); None: no shift.
        envelope: A schedule under the visible LR: the optimiser steps at ``lr × lr_scale ×
            envelope(epochs_trained)`` (``episode.schedule``); None: none.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Split,
        *,
        optimizer: str | torch.optim.Optimizer = "adam",
        optimizer_args: Mapping[str, Any] | None = None,
        lr: float,
        batch_size: int,
        generator: torch.Generator,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        measure_noise: bool = True,
        measure_alignment: bool = False,
        on_step: Callable[[], None] | None = None,
        lr_scale: float = 1.0,
        lr_shift: tuple[int, float] | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        self.model = model
        self.lr_scale = float(lr_scale)
        self.lr_shift = lr_shift
        self.envelope = envelope
        self.epochs_trained = 0  # by train_epoch or rlagent.batched.train_batched
        self.train_split = train
        if isinstance(optimizer, str):
            self.optimizer = make_optimizer(optimizer, model.parameters(), lr, optimizer_args)
        else:
            self.optimizer = optimizer
        self.loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
        self.generator = generator
        self.measure_noise = measure_noise
        self.measure_alignment = measure_alignment
        self.on_step = on_step
        self.batch_size = batch_size
        self.lr = lr

    @property
    def lr(self) -> float:
        """The learning rate tuners see and set (the optimiser steps at ``lr ×`` :attr:`lr_multiplier`)."""
        return self.step_lr / self.lr_multiplier

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value * self.lr_multiplier

    @property
    def lr_multiplier(self) -> float:
        """What the visible LR is multiplied by for the next epoch: ``lr_scale`` × the envelope's value."""
        return self.lr_scale * (self.envelope(self.epochs_trained) if self.envelope else 1.0)

    @property
    def step_lr(self) -> float:
        """The learning rate the optimiser steps at."""
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self) -> EpochStats:
        """One pass over the training split in a fresh random order.

        Its randomness (shuffling, dropout) comes from ``generator`` alone: torch's global RNG is
        seeded from it for the epoch and restored afterwards.
        """
        with seeded_global_rng([self.generator], self.train_split.x.device):
            stats = self._train_epoch()
        self.set_epochs_trained(self.epochs_trained + 1)
        return stats

    def set_epochs_trained(self, epochs: int) -> None:
        """Set the epoch count (after each epoch, or for a run restored from a checkpoint), with the
        hidden multiplier ``lr_shift`` and the envelope give after that many epochs; the visible LR
        is kept."""
        lr, multiplier = self.lr, self.lr_multiplier
        at, factor = self.lr_shift or (math.inf, 1.0)
        if (self.epochs_trained >= at) != (epochs >= at):
            self.lr_scale *= factor if epochs >= at else 1.0 / factor
        self.epochs_trained = epochs
        if self.lr_multiplier != multiplier:  # else the step LR stays bit for bit
            self.lr = lr

    def _train_epoch(self) -> EpochStats:
        start = time.perf_counter()
        x, y = self.train_split.x, self.train_split.y
        n, bs = len(y), int(self.batch_size)
        perm = torch.randperm(n, generator=self.generator).to(x.device)
        n_steps = math.ceil(n / bs)
        full_steps = n // bs
        # Measure the noise scale on a window of full batches in the middle of the epoch.
        window = range(0)
        if self.measure_noise and full_steps >= NOISE_WINDOW + 1:
            first = (full_steps - NOISE_WINDOW) // 2
            window = range(first, first + NOISE_WINDOW)
        small_sq: list[torch.Tensor] = []
        grad_sum: list[torch.Tensor] | None = None
        meter = AlignmentMeter(self.model.parameters(), full_steps, self.measure_alignment)
        align = meter.window

        self.model.train()
        if hasattr(self.optimizer, "train"):  # schedule-free optimisers keep two sets of weights
            self.optimizer.train()
        losses: list[torch.Tensor] = []
        # Accuracy is counted in blocks: per-step argmax/compare/sum ops cost ~4% of a small model's epoch.
        logits: list[torch.Tensor] = []
        correct: list[torch.Tensor] = []
        counted = 0  # steps whose predictions are in `correct`
        diverged = False
        on_step = self.on_step
        for step in range(n_steps):
            idx = perm[step * bs : (step + 1) * bs]
            xb, yb = x[idx], y[idx]
            out = self.model(xb)
            loss = self.loss_fn(out, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step in window:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                small_sq.append(torch.nn.utils.get_total_norm(grads).square())
                if grad_sum is None:
                    grad_sum = [g.detach().clone() for g in grads]
                else:
                    torch._foreach_add_(grad_sum, grads)
            if step in align:
                meter.observe(step)
            self.optimizer.step()
            if on_step is not None:
                on_step()
            losses.append(loss.detach())
            logits.append(out.detach())
            if step % _DIVERGENCE_CHECK_EVERY == _DIVERGENCE_CHECK_EVERY - 1:
                correct.append(_count_correct(logits, y[perm[counted * bs : (step + 1) * bs]]))
                logits, counted = [], step + 1
                if not torch.isfinite(loss):
                    diverged = True
                    break
        if logits:
            correct.append(_count_correct(logits, y[perm[counted * bs :]]))

        loss_t = torch.stack(losses).float()
        sizes = torch.full((len(losses),), float(bs), device=loss_t.device)
        sizes[-1] = min(bs, n - (len(losses) - 1) * bs)
        seen = int(sizes.sum().item())
        train_loss = float((loss_t * sizes).sum() / sizes.sum())
        train_acc = float(torch.stack(correct).sum()) / seen
        mean = float(loss_t.mean())
        loss_noise = float(loss_t.std()) / mean if len(losses) > 1 and mean > 0 else 0.0
        noise = None
        if grad_sum is not None and len(small_sq) == NOISE_WINDOW:
            big_sq = torch.nn.utils.get_total_norm(grad_sum).square() / NOISE_WINDOW**2
            noise = (float(torch.stack(small_sq).mean()), float(big_sq), float(bs), float(bs * NOISE_WINDOW))
        diverged = diverged or not math.isfinite(train_loss)
        return EpochStats(
            train_loss=train_loss,
            train_acc=train_acc,
            loss_noise=loss_noise if math.isfinite(loss_noise) else 0.0,
            steps=len(losses),
            samples=seen,
            seconds=time.perf_counter() - start,
            noise=noise,
            alignment=meter.result(),
            diverged=diverged,
        )

    @torch.inference_mode()
    def evaluate(self, split: Split) -> EvalStats:
        """Mean loss and accuracy on a whole split, in large chunks."""
        self.model.eval()
        if hasattr(self.optimizer, "eval"):
            self.optimizer.eval()
        loss_sum = torch.zeros((), device=split.x.device)
        correct = torch.zeros((), device=split.x.device, dtype=torch.long)
        for i in range(0, len(split), _EVAL_CHUNK):
            xb, yb = split.x[i : i + _EVAL_CHUNK], split.y[i : i + _EVAL_CHUNK]
            out = self.model(xb)
            loss_sum += self.loss_fn(out, yb).float() * len(yb)
            correct += (out.argmax(1) == yb).sum()
        n = max(1, len(split))
        return EvalStats(loss=float(loss_sum) / n, acc=float(correct) / n)


@dataclass
class EpochResult:
    """One epoch of a run, after the divergence rule: what every caller records and reports."""

    epoch: int
    """1-based index of the epoch in the run."""
    lr: float
    batch_size: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    diverged: bool
    """True if the loss became non-finite: the accuracies are then chance and the losses
    ``DIVERGED_LOSS × log(classes)``, and the run is over."""
    stats: EpochStats
    """The raw measurements of the epoch (steps, samples, seconds, noise)."""

    def record(self) -> dict[str, Any]:
        """The epoch as a plain JSON-able record (the ``history`` entries of every method)."""
        return {
            "epoch": self.epoch, "lr": self.lr, "batch_size": self.batch_size, "train_loss": self.train_loss,
            "train_acc": self.train_acc, "val_loss": self.val_loss, "val_acc": self.val_acc,
            "diverged": self.diverged,
        }  # fmt: skip


DIVERGED_LOSS = 10.0
"""A diverged epoch's losses, in units of log(classes): the top of the observation's loss scale."""


def run_epoch(
    trainer: Trainer,
    val: Split,
    tracker: RunTracker,
    hparams: HParams,
) -> tuple[EpochResult, np.ndarray]:
    """Train one epoch at ``hparams``, evaluate on ``val``, apply the divergence rule, update ``tracker``.

    The one epoch step of the package. A diverged epoch (non-finite training or validation
    loss) counts as chance accuracy with losses pinned at ``DIVERGED_LOSS × log(classes)``;
    the caller ends the run.

    Args:
        trainer: The run's trainer (its LR and batch size are set to ``hparams``).
        val: Validation split.
        tracker: The run's tracker; it alone keeps the best validation accuracy.
        hparams: Learning rate and batch size of this epoch.

    Returns:
        The epoch's result and the observation after it.
    """
    trainer.lr, trainer.batch_size = hparams.lr, hparams.batch_size
    stats = trainer.train_epoch()
    diverged = stats.diverged
    if not diverged:
        ev = trainer.evaluate(val)
        diverged = not math.isfinite(ev.loss)
    if diverged:
        chance = 1.0 / tracker.num_classes
        worst = DIVERGED_LOSS * tracker.loss_scale
        train_loss, train_acc, val_loss, val_acc = worst, chance, worst, chance
    else:
        train_loss, train_acc, val_loss, val_acc = stats.train_loss, stats.train_acc, ev.loss, ev.acc
    obs = tracker.update(
        train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
        lr=hparams.lr, batch_size=hparams.batch_size, loss_noise=stats.loss_noise, noise=stats.noise,
    )  # fmt: skip
    result = EpochResult(
        epoch=tracker.epoch, lr=hparams.lr, batch_size=hparams.batch_size, train_loss=train_loss,
        train_acc=train_acc, val_loss=val_loss, val_acc=val_acc, diverged=diverged, stats=stats,
    )  # fmt: skip
    return result, obs
