"""A run's hyperparameters: the LR and batch size with the ranges they are kept in, and the envelope under the LR.

:class:`HParams` is one epoch's learning rate and batch size; every change goes through it, so the
env, ``train_with_policy``, ``Controller`` and every baseline clip the same way. An
:class:`Envelope` is a schedule fixed in advance under the LR a tuner chooses: a policy trained
under one (``episode.schedule = "cosine"`` in a spec) sets a level the envelope then scales epoch
by epoch, so holding the LR follows the schedule and the policy's moves are deviations from it (a
residual policy). The env, :class:`~rlagent.training.Trainer`,
:class:`~rlagent.policy.controller.Controller` and every record of a run (``lr_envelope`` beside
``lr``, :func:`epoch_lr`) share this one definition.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def powers_of_two(low: int, high: int) -> list[int]:
    """The powers of two in ``[low, high]`` (``[low]`` if there are none)."""
    first, last = (low - 1).bit_length(), max(low, high).bit_length() - 1
    return [2**e for e in range(first, last + 1)] or [low]


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A value drawn log-uniformly from ``bounds``."""
    return float(np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


@dataclass(frozen=True)
class HParams:
    """A run's learning rate and batch size, and the ranges they are kept in.

    Every change goes through :meth:`scaled` (or :meth:`clipped`), so the env, ``train_with_policy``,
    ``Controller`` and every baseline clip the same way.
    """

    lr: float
    batch_size: int
    lr_range: tuple[float, float]
    batch_size_range: tuple[int, int]
    n_train: int | None = None
    """Training-set size: the batch size is also capped at it (None: no cap)."""

    @property
    def max_batch_size(self) -> int:
        """The largest batch size allowed: the range's top, capped at the training-set size."""
        low, high = self.batch_size_range
        return high if self.n_train is None else max(low, min(high, self.n_train))

    def scaled(self, lr_factor: float = 1.0, bs_factor: float = 1.0) -> HParams:
        """The values multiplied by the factors, clipped to the ranges (batch size rounded)."""
        lr = float(min(max(self.lr * lr_factor, self.lr_range[0]), self.lr_range[1]))
        bs = int(min(max(round(self.batch_size * bs_factor), self.batch_size_range[0]), self.max_batch_size))
        return dataclasses.replace(self, lr=lr, batch_size=bs)

    def clipped(self) -> HParams:
        """The values clipped to the ranges."""
        return self.scaled(1.0, 1.0)

    def with_values(self, lr: float, batch_size: float) -> HParams:
        """Other values in the same ranges, clipped."""
        return dataclasses.replace(self, lr=float(lr), batch_size=int(round(batch_size))).clipped()

    def batch_sizes(self) -> list[int]:
        """Powers of two inside the batch-size range (capped at the training-set size)."""
        return powers_of_two(self.batch_size_range[0], self.max_batch_size)

    def sample_lr(self, rng: np.random.Generator) -> float:
        """A learning rate drawn log-uniformly from the range."""
        return log_uniform(rng, self.lr_range)

    def sample_batch_size(self, rng: np.random.Generator) -> int:
        """A batch size drawn uniformly from :meth:`batch_sizes`."""
        sizes = self.batch_sizes()
        return int(sizes[int(rng.integers(len(sizes)))])


SCHEDULES = ("constant", "cosine")
"""LR envelopes a run's chosen LR is multiplied by (``episode.schedule``, :class:`Envelope`)."""


@dataclass(frozen=True)
class Envelope:
    """A schedule fixed in advance under the LR a tuner chooses: the optimiser steps at the chosen LR
    times ``envelope(e)`` in the run's epoch ``e`` (0-based), while the tuner sees and moves the
    chosen LR. Holding the LR then follows the schedule; a tuner's moves are deviations from it.

    ``constant``: 1 in every epoch. ``cosine``: half a cosine from 1 in the first epoch to ``floor``
    in the last (epoch ``epochs - 1``), so the last epoch trains at ``floor`` × the chosen LR.
    """

    kind: str
    """One of :data:`SCHEDULES`."""
    epochs: int
    """Epochs of the run the envelope spans."""
    floor: float = 0.01
    """``cosine``: the multiplier of the run's last epoch, in (0, 1]."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"Envelope.kind: got {self.kind!r}; expected one of {SCHEDULES}")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"Envelope.epochs: got {self.epochs!r}; expected an integer >= 1")
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"Envelope.floor: got {self.floor!r}; expected a number in (0, 1]")

    def __call__(self, epoch: int) -> float:
        """The multiplier of the run's epoch ``epoch`` (0-based; past the last, the last's)."""
        if self.kind == "constant" or self.epochs == 1:
            return 1.0
        t = min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def epoch_lr(record: Mapping[str, Any]) -> float:
    """The LR an epoch trained at, from its record (an env step's ``info``, a history entry): its
    ``lr`` times its ``lr_envelope`` where the run has an LR envelope (:class:`Envelope`)."""
    return float(record["lr"]) * float(record.get("lr_envelope", 1.0))


__all__ = ["SCHEDULES", "Envelope", "HParams", "epoch_lr", "log_uniform", "powers_of_two"]
