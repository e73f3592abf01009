"""A user's own small model and data for the reuse and Controller tests (seeded, global RNG untouched)."""

from __future__ import annotations

import torch
from torch import nn


def users_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def users_model() -> nn.Module:
    """A seeded init, without touching the global RNG: unseeded, the init came from whatever the
    tests before had drawn, and one such init (after test_validate and test_train) left this
    64-step policy's run stuck at 0.2 validation accuracy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
