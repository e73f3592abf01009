"""A user's own workload for the tests: factories named as ``tests._user_workload:NAME`` in specs.

It lives in an importable module (not in a test file) because a spec refers to its factories by
``package.module:factory`` and rlagent imports them by that name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _blobs(n: int, seed: int, n_features: int = 6, n_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around fixed class centres, drawn from their own generator."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, n_features, generator=torch.Generator().manual_seed(1234)) * 3.0
    y = torch.arange(n) % n_classes
    x = centres[y] + torch.randn(n, n_features, generator=g)
    return x, y


def make_data(n_train: int = 120, n_val: int = 40, n_test: int = 40) -> tuple:
    """Fixed splits: ``(train, val, test)``, each an ``(x, y)`` pair of tensors."""
    return _blobs(n_train, 0), _blobs(n_val, 1), _blobs(n_test, 2)


def make_pool(n_pool: int = 160, n_test: int = 40) -> tuple[TensorDataset, TensorDataset]:
    """A pool for rlagent to split into train/val, and a test set, as torch ``TensorDataset``s."""
    return TensorDataset(*_blobs(n_pool, 3)), TensorDataset(*_blobs(n_test, 4))


def make_model(input_shape: tuple[int, ...], num_classes: int, hidden: int = 8) -> nn.Module:
    """A one-hidden-layer MLP."""
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_module(input_shape: tuple[int, ...], num_classes: int) -> str:
    """A broken model factory: returns something that is not an ``nn.Module``."""
    return "not a model"


NOT_CALLABLE = 3


def write_broken_spec(folder: Path) -> Path:
    """A spec whose only workload names a model factory that does not exist (fails in a worker)."""
    spec = folder / "broken.toml"
    spec.write_text(
        '[episode]\nepochs = 1\n[workloads]\ntrain = ["broken"]\n'
        '[workloads.define.broken]\ndataset = "synthetic"\nmodel = "tests._user_workload:no_such_model"\n'
        "dataset_args = { n_samples = 100 }\n"
    )
    return spec
