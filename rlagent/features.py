"""Scale-free observation features: what the agent sees of a training run.

Every feature means the same thing for any model and dataset (losses are divided by
``log(num_classes)``, accuracies are measured above chance, learning rate and batch size are
placed inside their ranges), so a policy trained on small MLPs can be reused on a new model.
``FEATURE_NAMES`` is the contract between the environment and saved policies: a policy file
records it and refuses to load against a different list.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "progress",  # epochs done / episode epochs
    "lr_pos",  # log LR placed in [0, 1] inside the LR range
    "bs_pos",  # log2 batch size placed in [0, 1] inside the batch-size range
    "lr_rel_start",  # log(LR / the run's initial LR) / log(LR range ratio), in [-1, 1]
    "train_loss",  # mean train loss of the last epoch / log(num_classes)
    "val_loss",  # validation loss / log(num_classes)
    "train_acc",  # train accuracy above chance: (acc - chance) / (1 - chance)
    "val_acc",  # validation accuracy above chance
    "loss_rel_start",  # train loss / the untrained model's validation loss (> 1: worse than at start)
    "d_train_loss",  # change of train_loss since the previous epoch
    "d_val_loss",  # change of val_loss since the previous epoch
    "d_val_acc",  # change of val_acc since the previous epoch
    "train_loss_slope",  # least-squares slope of train_loss per epoch over the last SLOPE_WINDOW epochs
    "val_acc_slope",  # least-squares slope of val_acc per epoch over the last SLOPE_WINDOW epochs
    "gen_gap",  # val_loss - train_loss
    "loss_noise",  # std / mean of the minibatch losses within the epoch
    "best_val_acc",  # best val_acc so far (above chance)
    "since_best",  # epochs since best_val_acc improved / episode epochs
    "log_noise_scale",  # log(B_simple / batch size), gradient noise scale (McCandlish et al.)
    "noise_scale_known",  # 1 once a gradient-noise-scale estimate exists, else 0
    "last_lr_action",  # LR change actually applied before the last epoch (after clipping), log2 / 2, in [-1, 1]
    "last_bs_action",  # batch-size change actually applied (after clipping), log2, in [-1, 1]
)
"""Names of the observation vector's entries, in order."""

_BOUNDS: dict[str, tuple[float, float]] = {
    "progress": (0.0, 1.0),
    "lr_pos": (0.0, 1.0),
    "bs_pos": (0.0, 1.0),
    "lr_rel_start": (-1.0, 1.0),
    "train_loss": (0.0, 10.0),
    "val_loss": (0.0, 10.0),
    "train_acc": (-1.0, 1.0),
    "val_acc": (-1.0, 1.0),
    "loss_rel_start": (0.0, 10.0),
    "d_train_loss": (-10.0, 10.0),
    "d_val_loss": (-10.0, 10.0),
    "d_val_acc": (-2.0, 2.0),
    "train_loss_slope": (-10.0, 10.0),
    "val_acc_slope": (-2.0, 2.0),
    "gen_gap": (-10.0, 10.0),
    "loss_noise": (0.0, 10.0),
    "best_val_acc": (-1.0, 1.0),
    "since_best": (0.0, 1.0),
    "log_noise_scale": (-10.0, 10.0),
    "noise_scale_known": (0.0, 1.0),
    "last_lr_action": (-1.0, 1.0),
    "last_bs_action": (-1.0, 1.0),
}

SLOPE_WINDOW = 4
"""Epochs the loss and accuracy slopes are fitted over (fewer at the start of a run)."""

OBS_LOW = np.array([_BOUNDS[n][0] for n in FEATURE_NAMES], dtype=np.float32)
OBS_HIGH = np.array([_BOUNDS[n][1] for n in FEATURE_NAMES], dtype=np.float32)


def position(value: float, low: float, high: float) -> float:
    """Where ``value`` sits between ``low`` and ``high`` on a log scale, in [0, 1]."""
    if high <= low:
        return 0.0
    return min(1.0, max(0.0, math.log(value / low) / math.log(high / low)))


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` per step (0 for fewer than two values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2.0, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def move_sign(before: float, after: float) -> int:
    """The direction of a hyperparameter change: 1 up, -1 down, 0 for none (within rounding)."""
    if math.isclose(before, after, rel_tol=1e-9):
        return 0
    return 1 if after > before else -1


def above_chance(acc: float, num_classes: int) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1."""
    chance = 1.0 / num_classes
    return (acc - chance) / (1.0 - chance)


@dataclass
class NoiseScale:
    """Exponential moving averages behind the simple gradient noise scale ``tr(Σ) / |G|²``.

    Fed with squared gradient norms measured at two batch sizes: single minibatches
    (``b_small``) and the mean gradient of ``k`` consecutive minibatches (``b_big = k·b_small``).
    """

    decay: float = 0.5
    trace: float | None = None
    grad_sq: float | None = None

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> None:
        """Fold in one pair of measurements (McCandlish et al. 2018, appendix A.1)."""
        if not (math.isfinite(small_sq) and math.isfinite(big_sq)) or b_big <= b_small:
            return
        g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        tr = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
        self.grad_sq = g2 if self.grad_sq is None else self.decay * self.grad_sq + (1 - self.decay) * g2
        self.trace = tr if self.trace is None else self.decay * self.trace + (1 - self.decay) * tr

    def b_simple(self) -> float | None:
        """The critical-batch-size estimate, or None while the estimate is not usable."""
        if self.trace is None or self.grad_sq is None or self.grad_sq <= 0 or self.trace <= 0:
            return None
        return self.trace / self.grad_sq


def clip_features(values: dict[str, float]) -> np.ndarray:
    """Pack named feature values into the observation vector, finite and inside the bounds."""
    missing = set(FEATURE_NAMES) - set(values)
    if missing:
        raise KeyError(f"missing observation features: {sorted(missing)}")
    vec = np.array([values[n] for n in FEATURE_NAMES], dtype=np.float64)
    vec = np.nan_to_num(vec, nan=0.0, posinf=OBS_HIGH, neginf=OBS_LOW)
    return np.clip(vec, OBS_LOW, OBS_HIGH).astype(np.float32)


class RunTracker:
    """Turns the per-epoch metrics of one training run into observation vectors.

    Shared by the environment and by :class:`rlagent.policy.controller.Controller`, so a policy sees exactly
    the same features in a user's own training loop as it saw during its training. The last
    action is derived from the LR and batch size actually trained with, so a change that the
    ranges clipped away reads as no change.

    Args:
        num_classes: Number of classes (sets chance level and the loss scale ``log C``).
        lr_range: The learning-rate range the run may move within.
        batch_size_range: The batch-size range the run may move within.
        epochs: Epoch budget of the run.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        lr_range: tuple[float, float],
        batch_size_range: tuple[int, int],
        epochs: int,
    ) -> None:
        self.num_classes = max(2, int(num_classes))
        self.loss_scale = math.log(self.num_classes)
        self.lr_range = lr_range
        self.batch_size_range = batch_size_range
        self.epochs = epochs
        self.epoch = 0
        self.best_val_acc = -math.inf
        self.best_epoch = 0
        self.best_lr = math.nan
        """The LR the best epoch trained at (at epoch 0: the start's), where a rollback returns to."""
        self.noise_scale = NoiseScale()
        self._prev: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._recent: deque[tuple[float, float]] = deque(maxlen=SLOPE_WINDOW)

    def _vector(
        self,
        *,
        train_loss: float,
        train_acc: float,
        val_loss: float,
        val_acc: float,
        lr: float,
        batch_size: int,
        loss_noise: float,
    ) -> np.ndarray:
        tl, vl = train_loss / self.loss_scale, val_loss / self.loss_scale
        ta, va = above_chance(train_acc, self.num_classes), above_chance(val_acc, self.num_classes)
        prev = self._prev or {"tl": tl, "vl": vl, "va": va, "lr": lr, "bs": batch_size}
        self._recent.append((tl, va))
        b_simple = self.noise_scale.b_simple()
        lo, hi = self.lr_range
        values = {
            "progress": self.epoch / self.epochs,
            "lr_pos": position(lr, lo, hi),
            "bs_pos": position(batch_size, *self.batch_size_range),
            "lr_rel_start": math.log(lr / self._start["lr"]) / math.log(hi / lo) if hi > lo else 0.0,
            "train_loss": tl,
            "val_loss": vl,
            "train_acc": ta,
            "val_acc": va,
            "loss_rel_start": tl / self._start["vl"] if self._start["vl"] > 0 else 1.0,
            "d_train_loss": tl - prev["tl"],
            "d_val_loss": vl - prev["vl"],
            "d_val_acc": va - prev["va"],
            "train_loss_slope": slope([t for t, _ in self._recent]),
            "val_acc_slope": slope([a for _, a in self._recent]),
            "gen_gap": vl - tl,
            "loss_noise": loss_noise,
            "best_val_acc": above_chance(max(self.best_val_acc, val_acc), self.num_classes),
            "since_best": (self.epoch - self.best_epoch) / self.epochs,
            "log_noise_scale": math.log(b_simple / batch_size) if b_simple else 0.0,
            "noise_scale_known": 1.0 if b_simple else 0.0,
            "last_lr_action": math.log2(lr / prev["lr"]) / 2.0,
            "last_bs_action": math.log2(batch_size / prev["bs"]),
        }
        self._prev = {"tl": tl, "vl": vl, "va": va, "lr": lr, "bs": batch_size}
        return clip_features(values)

    def start(self, *, val_loss: float, val_acc: float, lr: float, batch_size: int) -> np.ndarray:
        """Observation before the first epoch, from an evaluation of the untrained model."""
        self.epoch = 0
        self.best_val_acc, self.best_epoch, self.best_lr = val_acc, 0, lr
        self._prev = {}
        self._recent.clear()
        self._start = {"lr": lr, "vl": val_loss / self.loss_scale}
        return self._vector(
            train_loss=val_loss, train_acc=val_acc, val_loss=val_loss, val_acc=val_acc,
            lr=lr, batch_size=batch_size, loss_noise=0.0,
        )  # fmt: skip

    def update(
        self,
        *,
        train_loss: float,
        train_acc: float,
        val_loss: float,
        val_acc: float,
        lr: float,
        batch_size: int,
        loss_noise: float = 0.0,
        noise: tuple[float, float, float, float] | None = None,
    ) -> np.ndarray:
        """Observation after one more epoch.

        Args:
            train_loss: Mean training loss of the epoch.
            train_acc: Training accuracy of the epoch.
            val_loss: Validation loss after the epoch.
            val_acc: Validation accuracy after the epoch.
            lr: Learning rate the epoch was trained with.
            batch_size: Batch size the epoch was trained with.
            loss_noise: Std / mean of the epoch's minibatch losses, if known.
            noise: Gradient-norm measurements for the noise scale, if any.

        Without a ``start`` first (a run that only needs the tracker's bookkeeping, e.g. a
        benchmark baseline), this epoch's LR and validation loss stand for the run's start.
        """
        if not self._start:
            self._start = {"lr": lr, "vl": val_loss / self.loss_scale}
        self.epoch += 1
        if noise is not None:
            self.noise_scale.update(*noise)
        if val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch, self.best_lr = val_acc, self.epoch, lr
        return self._vector(
            train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
            lr=lr, batch_size=batch_size, loss_noise=loss_noise,
        )  # fmt: skip
