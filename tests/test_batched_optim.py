"""Each batched optimiser equals its torch.optim counterpart, member by member, to 1e-6."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rlagent.batched_optim import BatchedOptimizer, OptimizerConfig

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adam-l2": lambda p, lr: torch.optim.Adam(p, lr=lr, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr),
    "adamw-wd": lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.3),
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "sgd-momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "sgd-nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd-dampening": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, dampening=0.3),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "rmsprop-full": lambda p, lr: torch.optim.RMSprop(p, lr=lr, momentum=0.5, centered=True, weight_decay=0.01),
}


def _models(k: int, seed: int) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)) for _ in range(k)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_batched_optimizer_equals_torch_optim(name: str) -> None:
    make = OPTIMIZERS[name]
    k, lrs = 3, [1e-2, 3e-3, 0.1]
    models = _models(k, 0)
    opts = [make(m.parameters(), lr) for m, lr in zip(models, lrs)]
    named = [dict(m.named_parameters()) for m in models]
    gen = torch.Generator().manual_seed(1)
    shapes = {n: p.shape for n, p in named[0].items()}

    def grads() -> dict[str, torch.Tensor]:
        return {n: torch.randn((k, *s), generator=gen) for n, s in shapes.items()}

    def torch_step(g: dict[str, torch.Tensor], members: range) -> None:
        for i in members:
            for n, p in named[i].items():
                p.grad = g[n][i].clone()
            opts[i].step()

    # Member 0 has taken two steps before stacking: states and step counts differ per member.
    for _ in range(2):
        torch_step(grads(), range(1))
    stacked = {n: torch.stack([d[n].detach().clone() for d in named]) for n in shapes}
    batched = BatchedOptimizer.from_torch(opts, named, stacked)
    for _ in range(25):
        g = grads()
        torch_step(g, range(k))
        batched.step(stacked, g, torch.tensor(lrs, dtype=torch.float64))
    for i in range(k):
        for n in shapes:
            torch.testing.assert_close(stacked[n][i], named[i][n].detach(), rtol=0, atol=1e-6)

    # State written back into fresh optimisers continues the same trajectory.
    clones = _models(k, 0)
    with torch.no_grad():
        for i, m in enumerate(clones):
            for n, p in m.named_parameters():
                p.copy_(stacked[n][i])
    clone_opts = [make(m.parameters(), lr) for m, lr in zip(clones, lrs)]
    clone_named = [dict(m.named_parameters()) for m in clones]
    batched.write_back(clone_opts, clone_named)
    g = grads()
    torch_step(g, range(k))
    for i in range(k):
        for n, p in clone_named[i].items():
            p.grad = g[n][i].clone()
        clone_opts[i].step()
        for n in shapes:
            torch.testing.assert_close(clone_named[i][n].detach(), named[i][n].detach(), rtol=0, atol=1e-6)


def test_unsupported_optimizers_have_no_config() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert OptimizerConfig.of(torch.optim.Adam(p, amsgrad=True)) is None
    assert OptimizerConfig.of(torch.optim.SGD(p, lr=0.1, maximize=True)) is None
    assert OptimizerConfig.of(torch.optim.Adagrad(p)) is None
    assert OptimizerConfig.of(torch.optim.AdamW(p)).family == "adamw"
    with pytest.raises(ValueError, match="family"):
        OptimizerConfig("lion")
