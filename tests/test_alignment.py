"""The gradient-update alignment: its window of steps, and its sign on a quadratic at a tiny and a huge LR."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlagent.alignment import ALIGN_PAIRS, alignment_window
from rlagent.training import Trainer
from rlagent.workloads import Split


@pytest.mark.parametrize(("full_steps", "expected"), [(0, range(0)), (1, range(0)), (2, range(0, 2)),
                                                    (5, range(0, 5)), (9, range(0, 9)), (20, range(5, 14))])  # fmt: skip
def test_alignment_window_is_consecutive_steps_in_the_middle(full_steps: int, expected: range) -> None:
    window = alignment_window(full_steps)
    assert window == expected
    assert len(window) <= ALIGN_PAIRS + 1 and (not window or window[-1] < full_steps)


def test_alignment_reads_a_too_small_lr_as_positive_and_a_too_large_one_as_negative() -> None:
    """cos(g, -Δθ): along a quadratic valley a tiny step keeps pointing downhill, an overshoot back."""
    x = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()

    def alignment(lr: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        trainer = Trainer(model, Split(x, y), optimizer="sgd", lr=lr, batch_size=200,
                          generator=torch.Generator().manual_seed(0), loss_fn=_quadratic,
                          measure_alignment=True)  # fmt: skip
        trainer.train_epoch()
        stats = trainer.train_epoch()  # 2 full batches: one pair, the whole data each half
        assert stats.alignment is not None and -1.0 <= stats.alignment <= 1.0
        return stats.alignment

    assert alignment(1e-4) > 0.9  # momentum 0.9 keeps stepping the same way: still aligned
    assert alignment(3.0) < -0.5  # far past the valley's 2 / curvature: the gradient points back


def _quadratic(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return (out - 1.0).square().mean()
