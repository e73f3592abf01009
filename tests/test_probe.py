from __future__ import annotations

import pytest
import torch
from torch import nn

from rlagent.errors import SpecError
from rlagent.hparams import HParams
from rlagent.probe import PROBE_STEPS, Probe, checked_start, probe_lr, probe_start_lr
from rlagent.training import Trainer
from rlagent.workloads import Split

RANGE = (1e-4, 0.3)


def _split(n: int = 400, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return Split(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def _trainer(optimizer: str = "adam", lr_scale: float = 1.0, dropout: float = 0.0) -> Trainer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 2))
    return Trainer(
        model, _split(), optimizer=optimizer, lr=1e-3, batch_size=32,
        generator=torch.Generator().manual_seed(1), lr_scale=lr_scale,
    )  # fmt: skip


def test_probe_leaves_the_run_as_it_was() -> None:
    trainer = _trainer(dropout=0.2)
    trainer.train_epoch()  # optimiser state to keep
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
    gen_state, rng_state = trainer.generator.get_state(), torch.get_rng_state()
    probe_lr(trainer, RANGE, seed=3)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(trainer.optimizer.state.values(), moments))
    assert torch.equal(trainer.generator.get_state(), gen_state)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert trainer.lr == pytest.approx(1e-3)
    # ...so the next epoch is the one it would have been without the probe.
    twin = _trainer(dropout=0.2)
    twin.train_epoch()
    assert trainer.train_epoch().train_loss == twin.train_epoch().train_loss


def test_probe_is_reproducible_and_seeded() -> None:
    a, b = probe_lr(_trainer(), RANGE, seed=5), probe_lr(_trainer(), RANGE, seed=5)
    assert a == b
    assert probe_lr(_trainer(), RANGE, seed=6).losses != a.losses


def test_probe_finds_a_minimum_inside_the_sweep_and_stops_after_it() -> None:
    probe = probe_lr(_trainer(), RANGE, seed=0)
    assert RANGE[0] < probe.lr < RANGE[1] * 30
    assert probe.losses[probe.lrs.index(probe.lr)] == min(probe.losses)
    # The LR rises by a constant factor per step from the bottom of the range.
    ratios = [b / a for a, b in zip(probe.lrs, probe.lrs[1:])]
    assert probe.lrs[0] == pytest.approx(RANGE[0]) and max(ratios) == pytest.approx(min(ratios))
    assert len(probe.lrs) <= PROBE_STEPS and probe.samples == 32 * len(probe.lrs)


def test_probe_reads_a_hidden_step_size_scale() -> None:
    """The optimiser steps at LR × lr_scale: a run 10× hotter has its minimum at a 10× lower LR."""
    plain = probe_lr(_trainer("sgd"), RANGE, seed=0).lr
    hot = probe_lr(_trainer("sgd", lr_scale=10.0), RANGE, seed=0).lr
    assert hot < plain / 3


def test_probe_may_train_at_another_scale_than_the_run() -> None:
    """``lr_scale=1`` on a hot run probes as on a plain one (same minimum), and the run's own
    scale is the default: the probe is then blind to how hot the run is."""
    plain = probe_lr(_trainer("sgd"), RANGE, seed=0)
    assert probe_lr(_trainer("sgd", lr_scale=10.0), RANGE, seed=0, lr_scale=1.0) == plain
    assert probe_lr(_trainer("sgd"), RANGE, seed=0, lr_scale=10.0) == probe_lr(
        _trainer("sgd", lr_scale=10.0), RANGE, seed=0
    )
    trainer = _trainer("sgd", lr_scale=10.0)
    probe_lr(trainer, RANGE, seed=0, lr_scale=1.0)
    assert trainer.lr_scale == 10.0 and trainer.step_lr == pytest.approx(1e-2)  # the run keeps its own


def test_start_lr_is_a_tenth_of_the_minimum_kept_in_range() -> None:
    probe = Probe(lr=0.05, lrs=(0.05,), losses=(1.0,), samples=32)
    assert probe_start_lr(probe, RANGE) == pytest.approx(0.005)
    assert probe_start_lr(Probe(lr=1e-4, lrs=(), losses=(), samples=0), RANGE) == RANGE[0]
    assert probe_start_lr(Probe(lr=9.0, lrs=(), losses=(), samples=0), RANGE) == RANGE[1]
    assert probe_start_lr(probe, RANGE, divisor=30) == pytest.approx(0.05 / 30)
    assert probe_start_lr(probe, RANGE, divisor=1) == pytest.approx(0.05)  # the minimum itself


@pytest.mark.parametrize("divisor", [0.5, 0.0, -10.0, float("inf"), float("nan"), "10", True])
def test_a_divisor_that_would_start_past_the_minimum_is_refused(divisor: object) -> None:
    probe = Probe(lr=0.05, lrs=(0.05,), losses=(1.0,), samples=32)
    with pytest.raises(SpecError, match="probe_divisor"):
        probe_start_lr(probe, RANGE, divisor=divisor)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="probe_divisor"):  # before a probe is spent on it
        checked_start(_trainer(), HParams(0.3, 16, RANGE, (16, 512), 400), seed=0, divisor=divisor)  # type: ignore[arg-type]


def test_checked_start_replaces_a_start_past_the_minimum_and_keeps_any_other() -> None:
    minimum = probe_lr(_trainer(), RANGE, seed=2).lr
    hot = HParams(minimum * 2, 64, RANGE, (16, 512), 400)
    trainer = _trainer()
    probe, hp, replaced = checked_start(trainer, hot, seed=2)
    assert replaced and probe.lr == minimum
    assert hp.lr == pytest.approx(probe_start_lr(probe, RANGE)) == trainer.lr and hp.batch_size == 64
    for lr in (RANGE[0], minimum):  # at or below the minimum: the start stays for the policy to move
        trainer = _trainer()
        probe, hp, replaced = checked_start(trainer, HParams(lr, 16, RANGE, (16, 512), 400), seed=2)
        assert not replaced and hp.lr == lr and trainer.lr == pytest.approx(1e-3) and probe.lr == minimum
    trainer = _trainer()  # a replaced start goes to the minimum ÷ the divisor given
    probe, hp, replaced = checked_start(trainer, hot, seed=2, divisor=30)
    assert replaced and hp.lr == pytest.approx(probe_start_lr(probe, RANGE, 30)) == trainer.lr


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr_range": (0.3, 1e-4)}, "lr_range"),
        ({"steps": 1}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr_scale": 0.0}, "lr_scale"),
        ({"lr_scale": float("inf")}, "lr_scale"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, field: str) -> None:
    args = {"lr_range": RANGE, **kwargs}
    with pytest.raises(SpecError, match=field):
        probe_lr(_trainer(), args.pop("lr_range"), seed=0, **args)
