"""Built-in model factories: ``factory(input_shape, num_classes, **model_args) -> nn.Module``.

Each factory's defaults build exactly the network the named built-in workloads always had (same
modules in the same order, so the same seeded weights); the extra arguments span the families
the procedural sampler (:mod:`rlagent.procedural`) draws from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MODELS", "NORMS", "POOLINGS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
"""Activation functions by name."""
NORMS = ("none", "batchnorm", "layernorm")
"""Normalisation layers by name (convolutions take ``none`` or ``batchnorm``)."""
POOLINGS = ("stride", "max", "avg")
"""How a 1-D CNN layer halves the length: a stride-2 convolution, or max / average pooling."""


def _check(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}; expected one of {tuple(allowed)}")


class _Residual(nn.Module):
    """``x + block(x)`` (the block keeps the width)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (64,),
    activation: str = "relu",
    norm: str = "none",
    dropout: float = 0.0,
    residual: bool = False,
) -> nn.Module:
    """Flatten, then per hidden layer Linear → [norm] → activation → [dropout], then a linear head.

    With ``residual``, a hidden layer whose width equals the previous one's is wrapped as
    ``x + layer(x)``.
    """
    _check("mlp.activation", activation, tuple(ACTIVATIONS))
    _check("mlp.norm", norm, NORMS)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"mlp.dropout: got {dropout!r}; expected a number in [0, 1)")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        block: list[nn.Module] = [nn.Linear(width, h)]
        if norm == "batchnorm":
            block.append(nn.BatchNorm1d(h))
        elif norm == "layernorm":
            block.append(nn.LayerNorm(h))
        block.append(ACTIVATIONS[activation]())
        if dropout > 0:
            block.append(nn.Dropout(dropout))
        if residual and h == width:
            layers.append(_Residual(nn.Sequential(*block)))
        else:
            layers += block
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn2d(
    input_shape: tuple[int, ...],
    num_classes: int,
    image_shape: Sequence[int] = (1, 8, 8),
    channels: Sequence[int] = (16, 32),
    norm: str = "none",
) -> nn.Module:
    """3×3 convolutions (→ [BatchNorm] → ReLU), one 2×2 max-pool, a linear head."""
    _check("cnn2d.norm", norm, ("none", "batchnorm"))
    c_in, h, w = image_shape
    if math.prod(input_shape) != c_in * h * w:
        raise ValueError(f"cnn2d: input of shape {input_shape} does not fit image_shape {image_shape}")
    layers: list[nn.Module] = [nn.Unflatten(1, (c_in, h, w))]
    for c in channels:
        layers.append(nn.Conv2d(c_in, c, 3, padding=1))
        if norm == "batchnorm":
            layers.append(nn.BatchNorm2d(c))
        layers.append(nn.ReLU())
        c_in = c
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c_in * (h // 2) * (w // 2), num_classes)]
    return nn.Sequential(*layers)


def cnn1d_lengths(length: int, depth: int, kernel: int | None, pooling: str) -> list[int]:
    """Signal length after each layer of :func:`_cnn1d` (the first entry is the input length)."""
    kernels = _kernels(depth, kernel)
    out = [length]
    for k in kernels:
        if pooling == "stride":
            length = (length + 2 - k) // 2 + 1
        else:
            length = (length + 2 * (k // 2) - k + 1) // 2
        out.append(length)
    return out


def _kernels(depth: int, kernel: int | None) -> list[int]:
    if kernel is None:  # the MNIST-1D paper's ConvBase: 5, then 3s
        return [5] + [3] * (depth - 1)
    return [kernel] * depth


def _cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: int = 25,
    depth: int = 3,
    kernel: int | None = None,
    pooling: str = "stride",
    norm: str = "none",
) -> nn.Module:
    """Per layer: convolution → [BatchNorm] → ReLU, halving the length; then a linear read-out.

    The defaults are the MNIST-1D paper's ConvBase: three stride-2 convolutions (kernels 5, 3,
    3) of 25 channels. ``pooling`` ``max`` / ``avg`` use stride-1 "same" convolutions followed
    by 2× pooling instead.
    """
    _check("cnn1d.pooling", pooling, POOLINGS)
    _check("cnn1d.norm", norm, ("none", "batchnorm"))
    length = input_shape[-1]
    lengths = cnn1d_lengths(length, depth, kernel, pooling)
    if depth < 1 or lengths[-1] < 1:
        raise ValueError(f"cnn1d: depth {depth} leaves no signal of length {length} (lengths {lengths})")
    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
    c_in = 1
    for k in _kernels(depth, kernel):
        if pooling == "stride":
            layers.append(nn.Conv1d(c_in, channels, k, stride=2, padding=1))
        else:
            layers.append(nn.Conv1d(c_in, channels, k, padding=k // 2))
        if norm == "batchnorm":
            layers.append(nn.BatchNorm1d(channels))
        layers.append(nn.ReLU())
        if pooling != "stride":
            layers.append(nn.MaxPool1d(2) if pooling == "max" else nn.AvgPool1d(2))
        c_in = channels
    layers += [nn.Flatten(), nn.Linear(channels * lengths[-1], num_classes)]
    return nn.Sequential(*layers)


class _RecurrentClassifier(nn.Module):
    """Reads a 1-D signal step by step and classifies from the last hidden state."""

    def __init__(self, cell: str, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(1, hidden, batch_first=True) if cell == "gru" else nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], -1, 1))
        return self.head(out[:, -1])


def _gru(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> nn.Module:
    """A one-layer GRU over the flattened signal; the head reads the last hidden state."""
    return _RecurrentClassifier("gru", num_classes, hidden)


def _lstm(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> nn.Module:
    """A one-layer LSTM over the flattened signal; the head reads the last hidden state."""
    return _RecurrentClassifier("lstm", num_classes, hidden)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn2d": _cnn2d,
    "cnn1d": _cnn1d,
    "gru": _gru,
    "lstm": _lstm,
}
"""Built-in model factories by name."""
