"""The gradient-update alignment of an epoch: is the learning rate too small, or overshooting?

At consecutive steps in the middle of an epoch the fresh minibatch gradient ``g`` is compared
with the update ``Δθ`` the previous step applied: ``cos(g, −Δθ)``, the normalised hypergradient
of the loss with respect to the last step's size (Baydin et al. 2018). Positive while the loss
still falls along the direction just taken (a longer step would have gone further), negative
when the step overshot (the gradient points back). Averaged over the pairs it reads how the
learning rate sits for this run, with minibatch noise shrinking it towards 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

ALIGN_PAIRS = 8
"""Consecutive step pairs whose gradient-update alignment is measured each epoch (fewer in short epochs)."""


def alignment_window(full_steps: int) -> range:
    """The steps of an epoch whose alignment is measured: consecutive full batches in the
    middle of the epoch, ``ALIGN_PAIRS + 1`` of them where the epoch has them (none below 2)."""
    pairs = min(ALIGN_PAIRS, full_steps - 1)
    if pairs < 1:
        return range(0)
    first = (full_steps - pairs - 1) // 2
    return range(first, first + pairs + 1)


def descent_cosine(dot: torch.Tensor, grad_sq: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
    """``cos(g, −Δθ)`` from ``g·Δθ``, ``|g|²`` and ``|Δθ|²`` (0 where either vector is 0)."""
    norm = (grad_sq * delta_sq).sqrt()
    return torch.where(norm > 0, -dot / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))


class AlignmentMeter:
    """Measures one epoch's alignment over a model's parameters, in its step loop.

    Call :meth:`observe` at each step of :attr:`window` (empty when disabled) after
    ``backward()`` and before the optimiser step, then :meth:`result` after the epoch; the step
    loop tests ``step in meter.window`` itself, so the other steps cost nothing. Each measured
    step costs one flat copy of the parameters.

    Args:
        params: The model's parameters (those that do not require grad are left out).
        full_steps: Full batches in the epoch (see :func:`alignment_window`).
        enabled: False: measure nothing, :meth:`result` is None.
    """

    def __init__(self, params: Iterable[torch.Tensor], full_steps: int, enabled: bool = True) -> None:
        self.window = alignment_window(full_steps) if enabled else range(0)
        self._params = [p for p in params if p.requires_grad] if self.window else []
        self._before: torch.Tensor | None = None  # the parameters before the previous step, flat
        self._cosines: list[torch.Tensor] = []

    @torch.no_grad()
    def observe(self, step: int) -> None:
        """Compare step ``step`` (one of :attr:`window`)'s gradients with the previous step's update."""
        flat = torch.cat([p.detach().reshape(-1) for p in self._params])  # a copy
        if self._before is not None:
            grad = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self._params]
            )
            delta = flat - self._before
            self._cosines.append(descent_cosine(grad @ delta, grad @ grad, delta @ delta))
        self._before = flat if step < self.window[-1] else None

    def result(self) -> float | None:
        """The mean cosine over the window's pairs; None if the epoch stopped before its end."""
        if not self.window or len(self._cosines) != len(self.window) - 1:
            return None
        value = float(torch.stack(self._cosines).mean())
        return value if math.isfinite(value) else None
