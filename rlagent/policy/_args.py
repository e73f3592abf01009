"""Checks of :func:`rlagent.policy.reuse.train_with_policy`'s arguments, all made before training.

Each bad argument is refused with a :class:`~rlagent.errors.SpecError` naming the argument, the
value found and what is allowed, instead of a wrong answer (truncated labels, an accuracy of 0 on
an empty validation set, an inverted range pinned to one end) or a torch traceback mid-run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rlagent.errors import SpecError, is_int, is_number
from rlagent.pool.devices import plan_workers
from rlagent.workloads import Split, as_split, check_range

_OPTIMIZERS = ("adam", "sgd")


def _int(name: str, value: Any, low: int) -> int:
    if not is_int(value) or value < low:
        raise SpecError(name, value, f"an integer >= {low}")
    return value


def check_device(device: Any, model: nn.Module) -> torch.device:
    """The device to train on: ``device``, or the model's; it must exist on this machine."""
    if device is None:
        first = next(model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise SpecError("device", device, "'cpu', 'cuda' or 'cuda:N' (a str or torch.device)")
    try:
        (slot,) = plan_workers(1, [str(device)])
    except ValueError as exc:
        raise SpecError("device", str(device), str(exc)) from None
    return torch.device(slot.device)


def check_split(data: Any, what: str, device: torch.device) -> Split:
    """Convert and check one split: non-empty, finite inputs, labels whole numbers >= 0."""
    split = as_split(data, what)
    if len(split) == 0:
        raise SpecError(what, "0 samples", "at least one sample")
    if not bool(torch.isfinite(split.x).all()):
        bad = int((~torch.isfinite(split.x)).flatten(1).any(1).sum()) if split.x.ndim > 1 else 1
        raise SpecError(what, f"NaN or infinite inputs in {bad} rows", "finite inputs")
    if int(split.y.min()) < 0:
        raise SpecError(f"{what} labels", int(split.y.min()), "class indices >= 0")
    return split.to(device)


def model_width(model: nn.Module, val: Split) -> int:
    """The number of logits ``model`` gives per input (one forward of two inputs, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(val.x[:2])
    except Exception as exc:  # noqa: BLE001 -- any failure of the user's forward is reported as such
        raise SpecError(
            "model", type(model).__name__, f"a module accepting the inputs ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(val.x[:2]) or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError("model", f"output {shape}", "logits of shape (batch, num_classes) with num_classes >= 2")
    return int(out.shape[1])


def check_num_classes(num_classes: Any, width: int, splits: dict[str, Split]) -> int:
    """The number of classes: ``num_classes`` or, by default, inferred from the labels.

    The model's output ``width`` must equal it and every split's labels must lie below it.
    """
    top = {what: int(split.y.max()) for what, split in splits.items()}
    if num_classes is None:
        inferred = max(top.values()) + 1
        if inferred < width:
            raise SpecError(
                "model", f"{width} outputs",
                f"logits of shape (batch, {inferred}) for the {inferred} classes in the labels "
                f"(pass num_classes={width} if some classes never occur)",
            )  # fmt: skip
        num_classes = width
    _int("num_classes", num_classes, 2)
    for what, label in top.items():
        if label >= num_classes:
            raise SpecError(f"{what} labels", label, f"class indices in 0..{num_classes - 1} ({num_classes} classes)")
    if num_classes != width:
        raise SpecError(
            "model", f"{width} outputs", f"logits of shape (batch, {num_classes}) for {num_classes} classes"
        )
    return num_classes


def check_hparams(
    *,
    epochs: Any,
    lr: Any,
    batch_size: Any,
    lr_range: Any,
    batch_size_range: Any,
    optimizer: Any,
    loss_fn: Callable[..., Any] | None,
    seed: Any,
    model: Any,
) -> None:
    """Scalar arguments: types, ranges (ordered, positive), optimiser and loss."""
    if not isinstance(model, nn.Module):
        raise SpecError("model", type(model).__name__, "a torch nn.Module")
    _int("epochs", epochs, 1)
    _int("batch_size", batch_size, 1)
    _int("seed", seed, 0)
    if not (isinstance(lr, str) and lr == "probe") and (not is_number(lr) or not (math.isfinite(lr) and lr > 0)):
        raise SpecError("lr", lr, "a finite number > 0 or 'probe'")
    if lr_range is not None:
        check_range("lr_range", lr_range, positive=True)
        if not all(math.isfinite(v) for v in lr_range):
            raise SpecError("lr_range", lr_range, "finite numbers")
    if batch_size_range is not None:
        check_range("batch_size_range", batch_size_range, positive=True, integer=True)
    check_optimizer(optimizer, loss_fn)


def check_optimizer(optimizer: Any, loss_fn: Any) -> None:
    """``optimizer`` is a known name or a torch optimiser; ``loss_fn`` is None or callable."""
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise SpecError("optimizer", optimizer, f"one of {_OPTIMIZERS} or a torch optimizer")
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise SpecError("optimizer", type(optimizer).__name__, f"one of {_OPTIMIZERS} or a torch optimizer")
    if loss_fn is not None and not callable(loss_fn):
        raise SpecError("loss_fn", loss_fn, "a callable loss(logits, labels)")


__all__ = ["check_device", "check_hparams", "check_optimizer", "check_num_classes", "check_split", "model_width"]
