"""Tests for rlagent.training: the shared one-epoch loop and evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rlagent import training
from rlagent.hparams import HParams
from rlagent.training import NOISE_WINDOW, Trainer, make_optimizer
from rlagent.workloads import Split


def _split(n: int = 100, features: int = 5, classes: int = 3, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() * (classes - 2)
    return Split(x, y)


def _model(features: int = 5, classes: int = 3, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def _trainer(split: Split, *, optimizer: str = "adam", lr: float = 1e-2, batch_size: int = 16, **kw) -> Trainer:
    return Trainer(
        _model(split.x.shape[1]), split, optimizer=optimizer, lr=lr, batch_size=batch_size,
        generator=torch.Generator().manual_seed(0), **kw,
    )  # fmt: skip


def test_lr_scale_steps_at_the_scaled_lr_and_reports_the_visible_one() -> None:
    split = _split(120)
    scaled, plain = _trainer(split, lr=1e-2, lr_scale=3.0), _trainer(split, lr=3e-2)
    assert scaled.lr == pytest.approx(1e-2) and scaled.step_lr == pytest.approx(3e-2)
    scaled.lr = 2e-2  # set as tuners do: the visible LR
    plain.lr = 6e-2
    assert scaled.optimizer.param_groups[0]["lr"] == pytest.approx(6e-2)
    a, b = scaled.train_epoch(), plain.train_epoch()
    assert a.train_loss == pytest.approx(b.train_loss, abs=1e-6)
    for p, q in zip(scaled.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    unscaled = _trainer(split, lr=2e-2)
    unscaled.train_epoch()
    assert any(not torch.allclose(p, q) for p, q in zip(scaled.model.parameters(), unscaled.model.parameters()))


def test_lr_shift_changes_the_hidden_scale_after_its_epoch_and_keeps_the_visible_lr() -> None:
    split = _split(120)
    shifted = _trainer(split, lr=1e-2, lr_scale=2.0, lr_shift=(2, 3.0))
    ref = _trainer(split, lr=2e-2)  # the same run, stepping at the hidden rate set by hand
    for epoch in range(4):
        if epoch == 2:
            ref.lr = 6e-2
        a, b = shifted.train_epoch(), ref.train_epoch()
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-6)
        assert shifted.epochs_trained == epoch + 1
        assert shifted.lr == pytest.approx(1e-2)  # tuners never see the shift
        assert shifted.lr_scale == pytest.approx(2.0 if epoch < 1 else 6.0)
    for p, q in zip(shifted.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    restored = _trainer(split, lr=1e-2, lr_scale=2.0, lr_shift=(2, 3.0))  # as from a checkpoint
    restored.set_epochs_trained(4)
    assert (restored.lr_scale, restored.step_lr, restored.lr) == (
        pytest.approx(6.0),
        pytest.approx(6e-2),
        pytest.approx(1e-2),
    )
    restored.set_epochs_trained(1)
    assert restored.lr_scale == pytest.approx(2.0) and restored.step_lr == pytest.approx(2e-2)
    unshifted = _trainer(split, lr=1e-2, lr_scale=2.0)
    for _ in range(4):
        unshifted.train_epoch()
    assert unshifted.lr_scale == 2.0 and unshifted.epochs_trained == 4
    assert any(not torch.allclose(p, q) for p, q in zip(shifted.model.parameters(), unshifted.model.parameters()))


def test_dropout_epoch_depends_on_the_run_generator_only() -> None:
    split = _split(200)

    def dropout_trainer() -> Trainer:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
        return Trainer(model, split, lr=1e-2, batch_size=16, generator=torch.Generator().manual_seed(7))

    a, b = dropout_trainer(), dropout_trainer()
    torch.manual_seed(123)  # whatever ran before in this process must not matter
    a.train_epoch()
    torch.manual_seed(456)
    before = torch.get_rng_state()
    b.train_epoch()
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left as it was
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    c = dropout_trainer()
    c.generator.manual_seed(8)  # another run seed: other dropout masks (and order)
    c.train_epoch()
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))


def test_epoch_stats_count_samples_and_steps() -> None:
    split = _split(100)
    trainer = _trainer(split, batch_size=32)
    stats = trainer.train_epoch()
    assert stats.samples == len(split) == 100
    assert stats.steps == math.ceil(100 / 32)
    assert 0.0 <= stats.train_acc <= 1.0 and math.isfinite(stats.train_loss) and stats.train_loss > 0
    assert stats.loss_noise >= 0.0 and stats.seconds > 0.0 and not stats.diverged


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (1001, 8)])
def test_train_loss_and_acc_are_sample_weighted(n: int, batch_size: int) -> None:
    # With LR 0 the weights never move, so the epoch's running metrics equal a plain evaluation,
    # provided the short last batch (100 = 3 x 32 + 4) is weighted by its size and every sample is
    # counted once (1001 = 125 x 8 + 1 crosses several blocks of the accuracy count).
    split = _split(n)
    trainer = _trainer(split, optimizer="sgd", lr=0.0, batch_size=batch_size)
    stats = trainer.train_epoch()
    full = trainer.evaluate(split)
    assert stats.train_loss == pytest.approx(full.loss, rel=1e-5)
    assert stats.train_acc == pytest.approx(full.acc)


def test_lr_and_batch_size_changes_keep_adam_state() -> None:
    split = _split(100)
    trainer = _trainer(split, lr=1e-2, batch_size=16)
    optimizer = trainer.optimizer
    first = trainer.train_epoch()
    param = next(trainer.model.parameters())
    state = optimizer.state[param]
    exp_avg = state["exp_avg"].clone()
    assert int(state["step"]) == first.steps and exp_avg.abs().sum() > 0

    trainer.lr, trainer.batch_size = 3e-3, 32
    assert trainer.lr == 3e-3 and all(g["lr"] == 3e-3 for g in optimizer.param_groups)
    second = trainer.train_epoch()
    assert trainer.optimizer is optimizer
    assert second.steps == math.ceil(100 / 32)
    state = optimizer.state[param]
    assert int(state["step"]) == first.steps + second.steps  # moments continued, not restarted
    assert not torch.equal(state["exp_avg"], exp_avg)


def test_lr_change_keeps_sgd_momentum() -> None:
    split = _split(100)
    trainer = _trainer(split, optimizer="sgd", lr=1e-2)
    trainer.train_epoch()
    param = next(trainer.model.parameters())
    buffer = trainer.optimizer.state[param]["momentum_buffer"]
    trainer.lr = 1e-3
    trainer.train_epoch()
    assert trainer.optimizer.state[param]["momentum_buffer"] is buffer  # updated in place, never dropped


def test_noise_measured_when_enough_full_batches() -> None:
    split = _split(100)
    stats = _trainer(split, batch_size=16).train_epoch()  # 6 full batches >= NOISE_WINDOW + 1
    assert stats.noise is not None
    small_sq, big_sq, b_small, b_big = stats.noise
    assert (b_small, b_big) == (16.0, 16.0 * NOISE_WINDOW)
    assert small_sq > 0 and big_sq > 0 and math.isfinite(small_sq) and math.isfinite(big_sq)
    assert big_sq < small_sq  # averaging minibatch gradients shrinks the noise


@pytest.mark.parametrize(("batch_size", "measure"), [(32, True), (100, True), (16, False)])
def test_no_noise_without_enough_full_batches(batch_size: int, measure: bool) -> None:
    stats = _trainer(_split(100), batch_size=batch_size, measure_noise=measure).train_epoch()
    assert stats.noise is None


@pytest.mark.parametrize(("batch_size", "measure"), [(100, True), (16, False)])
def test_no_alignment_without_two_full_batches_or_asking(batch_size: int, measure: bool) -> None:
    trainer = _trainer(_split(100), batch_size=batch_size, measure_alignment=measure)
    assert trainer.train_epoch().alignment is None


def test_same_generator_same_epoch_and_global_rng_untouched() -> None:
    split = _split(100)
    state = torch.random.get_rng_state()
    a, b = _trainer(split), _trainer(split)
    for _ in range(2):
        sa, sb = a.train_epoch(), b.train_epoch()
        assert (sa.train_loss, sa.train_acc, sa.noise, sa.alignment) == (
            sb.train_loss,
            sb.train_acc,
            sb.noise,
            sb.alignment,
        )
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_divergence_is_detected_and_stops_the_epoch() -> None:
    split = _split(2000)
    trainer = _trainer(split, optimizer="sgd", lr=1e8, batch_size=8)
    stats = trainer.train_epoch()
    assert stats.diverged
    assert stats.steps < math.ceil(2000 / 8)  # stopped at a divergence check, not at the end
    assert stats.samples == stats.steps * 8
    assert math.isfinite(stats.loss_noise)


@pytest.mark.parametrize("chunk", [4096, 7])
def test_evaluate_matches_manual_computation(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "_EVAL_CHUNK", chunk)
    split = _split(50, seed=3)
    trainer = _trainer(_split(100))
    trainer.train_epoch()
    stats = trainer.evaluate(split)
    with torch.no_grad():
        logits = trainer.model(split.x)
        loss = nn.functional.cross_entropy(logits, split.y).item()
        acc = (logits.argmax(1) == split.y).float().mean().item()
    assert stats.loss == pytest.approx(loss, rel=1e-5)
    assert stats.acc == pytest.approx(acc)
    assert not trainer.model.training


def test_custom_loss_fn_is_used() -> None:
    calls = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(y))
        return nn.functional.cross_entropy(out, y)

    trainer = _trainer(_split(100), batch_size=50, loss_fn=loss_fn)
    trainer.train_epoch()
    assert calls == [50, 50]


def test_make_optimizer() -> None:
    params = list(_model().parameters())
    assert isinstance(make_optimizer("adam", params, 1e-3), torch.optim.Adam)
    sgd = make_optimizer("sgd", params, 1e-3)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="optimizer: got 'lbfgs'"):
        make_optimizer("lbfgs", params, 1e-3)
    model = _model()
    own = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(model, _split(), optimizer=own, lr=5e-3, batch_size=16, generator=torch.Generator())
    assert trainer.optimizer is own and own.param_groups[0]["lr"] == 5e-3


def _scaled(lr: float, bs: int, lr_f: float, bs_f: float, n_train: int) -> tuple[float, int]:
    hp = HParams(lr, bs, (1e-4, 0.1), (8, 512), n_train).scaled(lr_f, bs_f)
    return hp.lr, hp.batch_size


def test_hparams_clip_to_ranges_and_training_set() -> None:
    assert _scaled(1e-3, 32, 2.0, 2.0, 1000) == (2e-3, 64)
    assert _scaled(0.08, 32, 4.0, 1.0, 1000) == (0.1, 32)
    assert _scaled(2e-4, 8, 0.25, 0.5, 1000) == (1e-4, 8)
    assert _scaled(1e-3, 256, 1.0, 2.0, 300) == (1e-3, 300)  # training-set size
    assert _scaled(1e-3, 8, 1.0, 1.0, 5) == (1e-3, 8)  # never below the range
    lr, bs = _scaled(1e-3, 33, 1.0, 2**0.5, 1000)
    assert isinstance(bs, int) and bs == 47


def test_hparams_batch_sizes_are_powers_of_two_in_range() -> None:
    hp = HParams(1e-3, 32, (1e-4, 0.1), (12, 512), 300)
    assert hp.batch_sizes() == [16, 32, 64, 128, 256]
    rng = np.random.default_rng(0)
    assert {hp.sample_batch_size(rng) for _ in range(200)} == set(hp.batch_sizes())
    lrs = [hp.sample_lr(rng) for _ in range(200)]
    assert min(lrs) >= 1e-4 and max(lrs) <= 0.1 and np.median(lrs) < 1e-2  # log-uniform, not uniform


def test_on_step_runs_after_every_optimiser_step_and_changes_nothing_else() -> None:
    split = _split(100)
    plain, hooked = _trainer(split, batch_size=32), _trainer(split, batch_size=32)
    lrs: list[float] = []

    def on_step() -> None:  # a per-minibatch schedule: record the LR just used, then halve it
        lrs.append(hooked.lr)
        hooked.lr = hooked.lr / 2

    hooked.on_step = on_step
    stats = hooked.train_epoch()
    assert len(lrs) == stats.steps == 4
    assert lrs == [1e-2 / 2**i for i in range(4)]
    plain.lr = 1e-2
    plain.on_step = None
    plain_stats = plain.train_epoch()
    assert plain_stats.steps == 4 and plain.lr == 1e-2  # unused, the hook changes nothing
    assert not all(torch.equal(a, b) for a, b in zip(plain.model.parameters(), hooked.model.parameters()))
