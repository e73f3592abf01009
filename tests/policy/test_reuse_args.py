"""``train_with_policy`` refuses bad arguments before any epoch is trained, naming each."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rlagent.errors import RLAgentError, SpecError
from rlagent.policy.reuse import train_with_policy

_G = torch.Generator().manual_seed(0)
X = torch.randn(60, 6, generator=_G)
Y = torch.randint(0, 3, (60,), generator=_G)


def _model(out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, out))


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[3, 2] = float("nan")
    return x


class _DictItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": X[i], "y": Y[i]}


# (argument, bad value, text the error must contain)
BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("train_data", lambda: (X[:40], Y[:40].float() + 0.5), "train_data labels"),
    ("val_data", lambda: (X[:0], Y[:0]), "val_data: got '0 samples'"),
    ("model", lambda: _model(out=5), "logits of shape (batch, 3)"),
    ("lr_range", lambda: (0.3, 1e-4), "lr_range"),
    ("batch_size_range", lambda: (0, 0), "batch_size_range"),
    ("train_data", lambda: (_with_nan(X[:40]), Y[:40]), "finite inputs"),
    ("val_data", lambda: (X[40:], Y[40:] + 5), "val_data labels"),
    ("train_data", lambda: _DictItems(), "train_data[0]: got 'dict'; expected an (x, y) tuple"),
    ("device", lambda: "cuda:99", "device"),
    ("device", lambda: "bogus", "device"),
    ("num_classes", lambda: 2, "train_data labels: got 2; expected class indices in 0..1"),
    ("epochs", lambda: 0, "epochs"),
    ("lr", lambda: float("inf"), "lr"),
    ("optimizer", lambda: "lbfgs", "optimizer"),
    ("train_data", lambda: (X[:40], Y[:39]), "one label per row"),
    ("val_data", lambda: "data.csv", "val_data"),
]


def _good(policy: Path) -> dict[str, Any]:
    return {
        "model": _model(),
        "train_data": (X[:40], Y[:40]),
        "val_data": (X[40:], Y[40:]),
        "epochs": 2,
        "policy": policy,
    }


def _refused_before_training(kwargs: dict[str, Any]) -> RLAgentError:
    model = kwargs["model"]
    before = [p.detach().clone() for p in model.parameters()] if isinstance(model, nn.Module) else []
    start = time.perf_counter()
    with pytest.raises(RLAgentError) as info:
        train_with_policy(kwargs.pop("model"), kwargs.pop("train_data"), kwargs.pop("val_data"), **kwargs)
    assert time.perf_counter() - start < 5.0
    if before:  # no optimiser step was taken
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return info.value


@pytest.mark.parametrize(("arg", "value", "text"), BAD, ids=[f"{a}-{t[:20]}" for a, _, t in BAD])
def test_bad_argument_is_refused_naming_it(tiny_policy: Path, arg: str, value: Callable[[], Any], text: str) -> None:
    err = _refused_before_training({**_good(tiny_policy), arg: value()})
    assert isinstance(err, SpecError)
    assert text in str(err)


def test_integral_float_labels_are_accepted(tiny_policy: Path) -> None:
    result = train_with_policy(_model(), (X[:40], Y[:40].double()), (X[40:], Y[40:]), epochs=1, policy=tiny_policy)
    assert len(result.history) == 1


_BAD_VALUES: dict[str, list[Any]] = {
    "epochs": [0, -1, 1.5, "3", True, None],
    "lr": [0, -1e-3, float("nan"), float("inf"), "1e-3", "fast"],  # None is the default (the trained start)
    "batch_size": [0, -4, 2.5, "32"],
    "lr_range": [(0.3, 1e-4), (0.0, 1.0), (1e-4,), "ab", (float("nan"), 1.0), (1e-4, float("inf")), (1, 1)],
    "batch_size_range": [(0, 0), (8, 4), (1.5, 8), (4,), "x"],
    "num_classes": [0, 1, 2, "3", 2.0],
    "device": ["cuda:99", "bogus", "tpu", 3, ""],
    "optimizer": ["lbfgs", 3, None],
    "loss_fn": [3, "mse"],
    "seed": [-1, "x", 1.5],
    "train_data": [None, 5, "x", (X,), (X, Y, Y), (X[:0], Y[:0]), (X[:40], Y[:40] - 1), (X[:40], Y[:40] * 0.3)],
    "val_data": [None, (X[:5], Y[:4]), (X[:5] * float("inf"), Y[:5]), ([["a"]], [0]), _DictItems()],
    "model": [None, "mlp", _model(out=2), _model(out=4), nn.Linear(7, 3)],
    "policy": ["no-such-policy", 3],
}


@settings(max_examples=60, deadline=None)
@given(
    bad=st.lists(
        st.sampled_from([(k, i) for k, vs in _BAD_VALUES.items() for i in range(len(vs))]),
        min_size=1,
        max_size=3,
        unique_by=lambda kv: kv[0],
    )
)
def test_random_bad_arguments_only_raise_our_errors_before_training(
    tiny_policy: Path, bad: list[tuple[str, int]]
) -> None:
    kwargs = _good(tiny_policy)
    for key, index in bad:
        kwargs[key] = _BAD_VALUES[key][index]
    _refused_before_training(kwargs)
