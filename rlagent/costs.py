"""What an epoch of a built-in model costs: an estimate from its size, and a measurement.

The estimate is a small cost model of one training step at batch size ``b`` on one CPU core,

    step ≈ overhead + per_layer · layers + per_module · other modules + per_timestep · timesteps
           + 3 · b · MACs / rate

(forward plus backward ≈ 3× the forward multiply-accumulates), times ⌈n_train / b⌉ steps, plus
one pass over the validation split. Its constants were fitted to epochs measured with
``torch.set_num_threads(1)`` on the project's reference machine while it was shared, each
normalised by a reference workload measured beside it (``mnist1d-mlp`` at batch size 32 takes
63 ms there unloaded, DESIGN.md); they err on the slow side for MLPs and wide convolutions.
``scripts/epoch_costs.py`` compares them with measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from rlagent.models import cnn1d_lengths
from rlagent.training import Trainer
from rlagent.workloads import Source, WorkloadSpec, describe, make_run, source_key

REFERENCE_WORKLOAD = "mnist1d-mlp"
"""The workload epoch costs are normalised by when the machine is shared."""
REFERENCE_SECONDS = 0.063
"""Its epoch at batch size 32 on one idle core of the reference machine (DESIGN.md)."""
_STEP_OVERHEAD = 0.4e-3
"""Seconds per optimiser step whatever the model (indexing, loss, zero_grad, the Python loop)."""
_LAYER_OVERHEAD = 0.09e-3
"""Seconds per step per layer with parameters (its kernels forward and backward, its update)."""
_MODULE_OVERHEAD = 0.035e-3
"""Seconds per step per parameter-free module (activation, dropout, pooling)."""
_TIMESTEP_OVERHEAD = {"gru": 0.15e-3, "lstm": 0.035e-3}
"""Seconds per step per time step of a recurrent cell (unfused CPU kernels)."""
_MAC_RATE = {"mlp": 2.0e10, "cnn1d": 1.5e9, "cnn2d": 8.0e9, "gru": 2.0e10, "lstm": 2.0e10}
"""Multiply-accumulates per second by model family."""


def _size(
    model: str, args: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
) -> tuple[float, int, int, int]:
    """Forward MACs per sample, layers with parameters, other modules and recurrent time steps."""
    length = math.prod(input_shape)
    norm = args.get("norm", "none") != "none"
    if model == "mlp":
        hidden = list(args.get("hidden", (64,)))
        widths = [length, *hidden, n_classes]
        macs = sum(a * b for a, b in zip(widths, widths[1:]))
        modules = len(hidden) * (2 if args.get("dropout", 0.0) > 0 else 1)
        return float(macs), len(widths) - 1 + (len(hidden) if norm else 0), modules, 0
    if model == "cnn1d":
        depth, kernel, pooling = args.get("depth", 3), args.get("kernel"), args.get("pooling", "stride")
        channels = args.get("channels", 25)
        lengths = cnn1d_lengths(input_shape[-1], depth, kernel, pooling)
        kernels = [5] + [3] * (depth - 1) if kernel is None else [kernel] * depth
        macs, c_in = 0.0, 1
        for k, out_len, in_len in zip(kernels, lengths[1:], lengths):
            macs += c_in * channels * k * (out_len if pooling == "stride" else in_len)
            c_in = channels
        macs += channels * lengths[-1] * n_classes
        modules = depth * (1 if pooling == "stride" else 2)
        return macs, depth + 1 + (depth if norm else 0), modules, 0
    if model == "cnn2d":
        c_in, h, w = args.get("image_shape", (1, 8, 8))
        channels = list(args.get("channels", (16, 32)))
        macs = 0.0
        for c in channels:
            macs += c_in * c * 9 * h * w
            c_in = c
        macs += c_in * (h // 2) * (w // 2) * n_classes
        return macs, len(channels) + 1 + (len(channels) if norm else 0), len(channels) + 1, 0
    if model in ("gru", "lstm"):
        hidden, gates = args.get("hidden", 32), 3 if model == "gru" else 4
        return float(length * gates * hidden * (hidden + 2) + hidden * n_classes), 2, 0, length
    raise ValueError(f"model: got {model!r}; no cost model for it")


def epoch_seconds_estimate(
    model: str,
    model_args: Mapping[str, Any],
    input_shape: tuple[int, ...],
    n_classes: int,
    n_train: int,
    batch_size: int = 32,
    val_fraction: float = 0.2,
) -> float:
    """Estimated seconds of one epoch (training plus validation) of a built-in model on one core."""
    macs, layers, modules, timesteps = _size(model, model_args, input_shape, n_classes)
    step = (
        _STEP_OVERHEAD
        + _LAYER_OVERHEAD * layers
        + _MODULE_OVERHEAD * modules
        + _TIMESTEP_OVERHEAD.get(model, 0.0) * timesteps
        + 3.0 * batch_size * macs / _MAC_RATE[model]
    )
    n_val = n_train * val_fraction / (1.0 - val_fraction)
    return math.ceil(n_train / batch_size) * step + n_val * macs / _MAC_RATE[model]


def measure_epoch_seconds(
    spec: WorkloadSpec,
    *,
    batch_size: int = 32,
    seed: int = 0,
    repeats: int = 1,
    sources: dict[str, Source] | None = None,
) -> float:
    """Measured seconds of one epoch (training plus validation) at ``batch_size``, the fastest of ``repeats``.

    Runs in the calling process with its torch thread setting (set ``torch.set_num_threads(1)``
    for the one-core figure). The first, warm-up epoch is not counted.
    """
    run = make_run(spec, seed, sources=sources)
    trainer = Trainer(
        run.model, run.data.train, optimizer=spec.optimizer, optimizer_args=spec.optimizer_args,
        lr=min(spec.lr_range[1], max(spec.lr_range[0], 1e-3)), batch_size=batch_size, generator=run.generator,
        lr_scale=spec.lr_scale,
    )  # fmt: skip
    trainer.train_epoch()
    best = math.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        trainer.train_epoch()
        trainer.evaluate(run.data.val)
        best = min(best, time.perf_counter() - start)
    return best


def draw_rows(
    spec: Any,
    n: int,
    seed: int = 0,
    *,
    measure: bool = True,
    reference: Callable[[], float] | None = None,
    min_estimate: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` draws of an env spec's sampler (seeds ``seed``, ``seed + 1``, ...) described for a table.

    Each row holds the draw's name, family, sizes (train/val/test, input shape, classes),
    parameter count, epochs, initial LR and batch size, the estimated epoch cost and, with
    ``measure``, the measured one (:func:`measure_epoch_seconds` in this process's thread setting).

    Args:
        spec: An :class:`rlagent.config.EnvSpec` with a procedural training set.
        n: Number of draws.
        seed: Seed of the first draw.
        measure: Also measure each draw's epoch cost (takes about a second per draw).
        reference: Measures the reference workload's epoch; called before and after each
            measured draw to add ``normalised`` (seconds scaled to the idle reference machine).
        min_estimate: Leave out draws whose estimated epoch cost is below this (to measure only
            the costliest ones against the cap).
    """
    rows = []
    for s in range(seed, seed + n):
        task = spec.draw(s)
        if task.est_seconds < min_estimate:
            continue
        sources: dict[str, Source] = {}
        make_run(task.workload, 0, sources=sources)
        row = describe(task.workload, sources[source_key(task.workload)])
        row.update(init_lr=task.init_lr, init_batch_size=task.init_batch_size, est_seconds=task.est_seconds)
        if measure:
            before = reference() if reference else None
            row["seconds"] = measure_epoch_seconds(task.workload, sources=sources)
            if reference and before is not None:
                row["normalised"] = row["seconds"] * REFERENCE_SECONDS / ((before + reference()) / 2)
        rows.append(row)
    return rows
