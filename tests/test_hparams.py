"""Tests for rlagent.hparams: the LR envelope under a tuner's LR (HParams is tested in test_training)."""

from __future__ import annotations

import pytest
import torch

from rlagent.hparams import Envelope, epoch_lr
from tests.test_training import _split, _trainer


def test_the_cosine_envelope_falls_from_one_to_its_floor_over_the_run() -> None:
    env = Envelope("cosine", 9, floor=0.05)
    values = [env(e) for e in range(9)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.05)
    assert values[4] == pytest.approx((1 + 0.05) / 2)  # the middle epoch: half way
    assert all(a > b for a, b in zip(values, values[1:]))
    assert env(20) == env(8) and env(-1) == env(0)  # past the run: its ends
    assert [Envelope("constant", 9)(e) for e in range(9)] == [1.0] * 9
    assert Envelope("cosine", 1)(0) == 1.0  # a one-epoch run trains at the chosen LR


@pytest.mark.parametrize(
    ("args", "shown"),
    [(("linear", 5), "kind: got 'linear'"), (("cosine", 0), "epochs: got 0"), (("cosine", 5, 0.0), "floor: got 0.0")],
)
def test_a_bad_envelope_names_the_field(args: tuple, shown: str) -> None:
    with pytest.raises(ValueError, match=shown):
        Envelope(*args)


def test_epoch_lr_is_the_lr_an_epoch_trained_at() -> None:
    assert epoch_lr({"lr": 0.01}) == 0.01
    assert epoch_lr({"lr": 0.01, "lr_envelope": 0.25}) == pytest.approx(0.0025)


def test_a_trainer_steps_at_the_visible_lr_times_the_envelope_and_reports_the_visible_one() -> None:
    split = _split(120)
    env = Envelope("cosine", 4, floor=0.1)
    shaped = _trainer(split, lr=1e-2, lr_scale=2.0, envelope=env)
    ref = _trainer(split, lr=2e-2)  # the same run, stepping at the envelope's rate set by hand
    for epoch in range(4):
        ref.lr = 2e-2 * env(epoch)
        assert shaped.lr == pytest.approx(1e-2)  # what tuners see and set
        assert shaped.step_lr == pytest.approx(2e-2 * env(epoch))
        a, b = shaped.train_epoch(), ref.train_epoch()
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-6)
    for p, q in zip(shaped.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    restored = _trainer(split, lr=1e-2, envelope=env)  # as from a checkpoint
    restored.set_epochs_trained(3)
    assert restored.step_lr == pytest.approx(1e-2 * 0.1) and restored.lr == pytest.approx(1e-2)
