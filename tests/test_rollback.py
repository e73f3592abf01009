"""Rolling a run back to its best epoch: the kept state, restored exactly and never aliased."""

from __future__ import annotations

import pytest
import torch

from rlagent.rollback import BestWeights
from tests.test_training import _split, _trainer


def _state(trainer) -> dict[str, torch.Tensor]:
    moments = trainer.optimizer.state_dict()["state"]
    return {
        **{k: v.clone() for k, v in trainer.model.state_dict().items()},
        **{f"opt.{i}.{k}": torch.as_tensor(v).clone() for i, s in moments.items() for k, v in s.items()},
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_restore_brings_back_weights_and_optimiser_state_and_keeps_the_lr(optimizer: str) -> None:
    trainer = _trainer(_split(120), optimizer=optimizer, lr=1e-2, lr_scale=2.0)
    trainer.train_epoch()
    kept = BestWeights(trainer, epoch=1)
    at_best = _state(trainer)
    trainer.lr = 0.2
    trainer.train_epoch()
    assert not _equal(_state(trainer), at_best)
    trainer.lr = 5e-3  # the LR the policy chose for the next epoch
    assert kept.restore(trainer) == 1
    assert _equal(_state(trainer), at_best)
    assert trainer.lr == pytest.approx(5e-3) and trainer.step_lr == pytest.approx(1e-2)  # × the hidden scale 2


def test_training_after_a_restore_leaves_the_kept_state_alone() -> None:
    trainer = _trainer(_split(120))
    trainer.train_epoch()
    kept = BestWeights(trainer, epoch=1)
    at_best = _state(trainer)
    kept.restore(trainer)
    trainer.train_epoch()  # Adam updates its moments in place: they must be the optimiser's own copy
    kept.restore(trainer)
    assert _equal(_state(trainer), at_best)


def test_keep_replaces_the_kept_state() -> None:
    trainer = _trainer(_split(120))
    kept = BestWeights(trainer)
    assert kept.epoch == 0
    trainer.train_epoch()
    kept.keep(trainer, epoch=1)
    after_one = _state(trainer)
    trainer.train_epoch()
    assert kept.restore(trainer) == 1 and _equal(_state(trainer), after_one)
