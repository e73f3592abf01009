"""Batched training (rlagent.batched) gives what member-by-member training gives."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from rlagent.batched import BatchPlanner, group_key, train_batched, train_epochs
from rlagent.training import Trainer
from rlagent.workloads import Split


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def _cnn1d() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 16)), nn.Conv1d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    )


def _cnn2d_bn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(64, 3),
    )  # fmt: skip


def _mlp_dropout_off() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.0), nn.Linear(12, 3))


def _gru() -> nn.Module:
    class GRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(1, 4, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.gru(x.unsqueeze(-1))[1][-1])

    return GRU()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": _mlp, "cnn1d": _cnn1d, "cnn2d-bn": _cnn2d_bn, "mlp-dropout-off": _mlp_dropout_off,
}  # fmt: skip


def _split(seed: int, n: int = 200) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return Split(x, (x[:, :3].argmax(1) + (torch.rand(n, generator=g) < 0.2).long()) % 3)


def _trainers(
    factory: Callable[[], nn.Module],
    k: int,
    *,
    optimizer: str = "adam",
    bs: int = 8,
    seed: int = 0,
    n: int = 200,
    lr_scales: tuple[float, ...] = (),
) -> list[Trainer]:
    out = []
    for i in range(k):
        torch.manual_seed(seed + i)
        out.append(
            Trainer(factory(), _split(seed + i, n), optimizer=optimizer, lr=3e-3 * (i + 1), batch_size=bs,
                    generator=torch.Generator().manual_seed(100 + seed + i),
                    lr_scale=lr_scales[i] if lr_scales else 1.0, measure_alignment=True)
        )  # fmt: skip
    return out


def _assert_same_epoch(a: Trainer, sa, b: Trainer, sb) -> None:  # noqa: ANN001
    assert (sa.steps, sa.samples, sa.diverged) == (sb.steps, sb.samples, sb.diverged)
    for field in ("train_loss", "train_acc", "loss_noise"):
        assert getattr(sa, field) == pytest.approx(getattr(sb, field), abs=1e-5), field
    assert (sa.noise is None) == (sb.noise is None)
    if sa.noise is not None:
        assert sa.noise == pytest.approx(sb.noise, rel=1e-4)
    assert (sa.alignment is None) == (sb.alignment is None)
    if sa.alignment is not None:
        assert sa.alignment == pytest.approx(sb.alignment, abs=1e-4)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p.float(), q.float(), rtol=0, atol=1e-5, msg=name)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        for key, value in a.optimizer.state[pa].items():
            torch.testing.assert_close(value, b.optimizer.state[pb][key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_forward_backward_equals_per_model(name: str) -> None:
    k = 3
    torch.manual_seed(0)
    models = [MODELS[name]() for _ in range(k)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n, _ in models[0].named_parameters()}  # fmt: skip
    buffers = {n: torch.stack([dict(m.named_buffers())[n].clone() for m in models]) for n, _ in models[0].named_buffers()}  # fmt: skip
    base = copy.deepcopy(models[0]).to("meta").train()

    def loss_of(p, b, x, y):  # noqa: ANN001, ANN202
        out = functional_call(base, (p, b), (x,))
        return nn.functional.cross_entropy(out, y), out

    x, y = torch.randn(k, 10, 16), torch.randint(0, 3, (k, 10))
    grads, (loss, out) = vmap(grad_and_value(loss_of, has_aux=True), randomness="different")(params, buffers, x, y)
    for i, m in enumerate(models):
        m.train()
        ref_out = m(x[i])
        ref = nn.functional.cross_entropy(ref_out, y[i])
        ref.backward()
        torch.testing.assert_close(out[i], ref_out.detach(), rtol=0, atol=1e-5)
        assert float(loss[i]) == pytest.approx(float(ref.detach()), abs=1e-6)
        for n, p in m.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, rtol=0, atol=1e-6)
        for n, b in m.named_buffers():  # BatchNorm's running statistics, updated per member
            torch.testing.assert_close(buffers[n][i], b, rtol=0, atol=1e-6)


def test_dropout_draws_differ_per_member_under_vmap() -> None:
    base = nn.Dropout(0.5).train()
    x = torch.ones(4, 64)
    out = vmap(lambda t: base(t), randomness="different")(x)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize(("name", "optimizer", "bs", "lr_scales"), [
    ("mlp", "adam", 8, ()), ("mlp", "sgd", 24, ()), ("cnn1d", "adam", 16, ()), ("cnn2d-bn", "sgd", 8, ()),
    ("mlp", "adamw", 8, (0.1, 1.0, 7.0)),  # hidden LR scales: each member steps at its own lr x scale
])  # fmt: skip
def test_train_batched_equals_train_epoch(name: str, optimizer: str, bs: int, lr_scales: tuple[float, ...]) -> None:
    seq = _trainers(MODELS[name], 3, optimizer=optimizer, bs=bs, lr_scales=lr_scales)
    bat = _trainers(MODELS[name], 3, optimizer=optimizer, bs=bs, lr_scales=lr_scales)
    for epoch in range(3):
        if epoch == 2:  # optimiser state carries over a change of LR
            for t in (*seq, *bat):
                t.lr *= 0.5
        stats_seq = [t.train_epoch() for t in seq]
        stats_bat = train_batched(bat)
        for a, sa, b, sb in zip(seq, stats_seq, bat, stats_bat):
            _assert_same_epoch(a, sa, b, sb)
    assert stats_bat[0].noise is not None  # the gradient noise scale is measured batched too
    assert stats_bat[0].alignment is not None  # and so is the gradient-update alignment


def test_train_batched_counts_the_epoch_and_applies_a_due_lr_shift() -> None:
    seq, bat = _trainers(MODELS["mlp"], 2), _trainers(MODELS["mlp"], 2)
    for t in (*seq, *bat):
        t.lr_shift = (1, 4.0)
    for epoch in range(2):
        stats_seq = [t.train_epoch() for t in seq]
        stats_bat = train_batched(bat)
        for a, sa, b, sb in zip(seq, stats_seq, bat, stats_bat):
            _assert_same_epoch(a, sa, b, sb)
            assert b.epochs_trained == epoch + 1 and b.lr_scale == 4.0 and b.step_lr == pytest.approx(4 * b.lr)


def test_batched_dropout_is_reproducible_from_the_members_generators() -> None:
    def dropout_mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    first, second = _trainers(dropout_mlp, 3), _trainers(dropout_mlp, 3)
    torch.manual_seed(1)
    train_batched(first)
    torch.manual_seed(2)
    train_batched(second)
    for a, b in zip(first, second):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_divergence_of_one_member_leaves_the_others_untouched() -> None:
    seq = _trainers(_mlp, 3, n=600)
    bat = _trainers(_mlp, 3, n=600)
    for group in (seq, bat):
        with torch.no_grad():
            group[1].model[0].weight.fill_(float("inf"))
    stats_seq = [t.train_epoch() for t in seq]
    stats_bat = train_batched(bat)
    assert stats_bat[1].diverged and stats_bat[1].steps == 32  # stopped at the first check, as train_epoch
    assert not stats_bat[0].diverged and not stats_bat[2].diverged
    for a, sa, b, sb in zip(seq, stats_seq, bat, stats_bat):
        if not sa.diverged:
            _assert_same_epoch(a, sa, b, sb)


def test_train_epochs_groups_and_falls_back() -> None:
    mixed = [*_trainers(_mlp, 2, bs=8), *_trainers(_mlp, 2, bs=16, seed=5), *_trainers(_gru, 2, bs=8, n=60)]
    ref = [*_trainers(_mlp, 2, bs=8), *_trainers(_mlp, 2, bs=16, seed=5), *_trainers(_gru, 2, bs=8, n=60)]
    assert group_key(mixed[0]) == group_key(mixed[1]) != group_key(mixed[2])
    assert group_key(mixed[4]) is None  # nn.GRU has no vmap batching rule
    planner = BatchPlanner("batched")
    stats = train_epochs(mixed, planner)
    for a, sa, b in zip(ref, [t.train_epoch() for t in ref], mixed):
        _assert_same_epoch(a, sa, b, stats[mixed.index(b)])
    assert sorted(way for (_, _, way) in planner.timings) == ["batched", "batched"]


def test_planner_measures_both_ways_then_picks_the_faster() -> None:
    planner = BatchPlanner("auto", recheck_every=5)
    assert planner.choose("k", 1) == "sequential"  # one member: never batched
    assert planner.choose(None, 8) == "sequential"  # not batchable
    assert planner.choose("k", 8) == "batched"
    planner.record("k", 8, "batched", 0.5)
    assert planner.choose("k", 7) == "sequential"  # same size bucket
    planner.record("k", 7, "sequential", 0.2)
    ways = [planner.choose("k", 8) for _ in range(5)]
    assert ways == ["sequential", "sequential", "batched", "sequential", "sequential"]  # 5th use re-checks
    assert planner.choose("k", 16) == "batched"  # another bucket is measured afresh
    assert BatchPlanner("sequential").choose("k", 64) == "sequential"
    with pytest.raises(ValueError, match="mode"):
        BatchPlanner("fast")
    with pytest.raises(ValueError, match="min_members"):
        BatchPlanner(min_members=0)


def test_planner_on_cuda_batches_every_large_enough_group_without_measuring() -> None:
    planner = BatchPlanner("auto", device="cuda:0", min_members=4)
    assert not planner.measures and BatchPlanner("auto").measures
    assert planner.choose("k", 3) == "sequential"  # below min_members
    planner.record("k", 8, "batched", 9.0)  # even when batched was slow: a cost rule, not a timing
    assert [planner.choose("k", 8) for _ in range(30)] == ["batched"] * 30
    planner.batched_failures.add("k")  # a group that failed batched goes member by member
    assert planner.choose("k", 8) == "sequential"
    assert BatchPlanner("sequential", device="cuda").choose("j", 64) == "sequential"


def test_train_batched_refuses_mixed_groups_and_restores_generators() -> None:
    with pytest.raises(ValueError, match="group key"):
        train_batched([*_trainers(_mlp, 1, bs=8), *_trainers(_mlp, 1, bs=16)])
    trainers = _trainers(_mlp, 2)
    trainers[1].train_split = Split(trainers[1].train_split.x, trainers[1].train_split.y + 5)  # bad labels
    states = [t.generator.get_state() for t in trainers]
    with pytest.raises((IndexError, RuntimeError)):
        train_batched(trainers)
    assert all(torch.equal(t.generator.get_state(), s) for t, s in zip(trainers, states))
