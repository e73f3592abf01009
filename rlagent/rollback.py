"""Roll a run back to its best epoch so far: the third choice of the ``discrete-rollback`` action.

A run that collapses after a raise of the LR (a recurrent net tipped over its stability edge) has
lost what it learned; cutting the LR afterwards only relearns it slowly, if at all. Rolling back
restores the model and optimiser state of the epoch with the best validation accuracy so far, and
the LR that epoch trained at: the LR that collapsed the run is undone with the weights it wrecked.
The policy's LR factor then applies to that LR (:func:`resume_hparams`), and its batch-size factor
to the present batch size, so the next epoch trains from the best weights at the best epoch's LR,
moved as the policy chose. (Rolled back at the LR that collapsed it, a run collapses again: session
41, ``policies/hot-final/README.md``.) The epoch budget is not refunded: a rollback spends the epoch
it trains like any other. Population-based training's exploit step copies a better member's
weights and hyperparameters in the same way; here the better member is the run's own past.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from rlagent.features import RunTracker
from rlagent.hparams import HParams
from rlagent.training import Trainer


class BestWeights:
    """The model and optimiser state after a run's best epoch so far, to roll back to.

    The copies live on the model's device: one more set of weights and of optimiser state.

    Args:
        trainer: The run's trainer; its present state is kept as ``epoch``'s.
        epoch: The epoch that state is after (0: the untrained model).
    """

    def __init__(self, trainer: Trainer, epoch: int = 0) -> None:
        self.epoch = epoch
        """The epoch whose state is kept."""
        self._model: dict[str, torch.Tensor] = {}
        self._optimizer: dict[str, Any] = {}
        self.keep(trainer, epoch)

    def keep(self, trainer: Trainer, epoch: int) -> None:
        """Keep ``trainer``'s present model and optimiser state as the best, after ``epoch``."""
        self._model = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self._optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.epoch = epoch

    def restore(self, trainer: Trainer) -> int:
        """Load the kept state into ``trainer``, keeping its present LR; returns the kept epoch.

        The optimiser gets a copy (its in-place updates must not reach the kept state), and its
        param groups' LR, which the kept state would bring back, is set again to the present one.
        """
        lr = trainer.lr
        trainer.model.load_state_dict(self._model)
        trainer.optimizer.load_state_dict(copy.deepcopy(self._optimizer))
        trainer.lr = lr
        return self.epoch

    def update(self, trainer: Trainer, tracker: RunTracker, diverged: bool) -> None:
        """After an epoch: keep ``trainer``'s state if that epoch is the run's best so far (``tracker``)."""
        if not diverged and tracker.best_epoch == tracker.epoch:
            self.keep(trainer, tracker.epoch)


def rollback_due(asked: bool, tracker: RunTracker) -> bool:
    """Whether a rollback the policy ``asked`` for applies before the next epoch: only when the run's
    best epoch is not its last (otherwise there is nothing to undo)."""
    return asked and tracker.best_epoch < tracker.epoch


def resume_hparams(hparams: HParams, tracker: RunTracker, lr_factor: float, bs_factor: float, rolling: bool) -> HParams:
    """The next epoch's LR and batch size: the factors applied to the present ones, or, when the run
    rolls back (``rolling``), the LR factor to the LR the best epoch trained at (``tracker.best_lr``)."""
    base = dataclasses.replace(hparams, lr=tracker.best_lr) if rolling else hparams
    return base.scaled(lr_factor, bs_factor)


__all__ = ["BestWeights", "resume_hparams", "rollback_due"]
