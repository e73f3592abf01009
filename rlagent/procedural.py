"""Procedural workloads: one complete training run drawn from a seed, all offline.

A draw picks a dataset family and its arguments (MNIST-1D with varied noise, shear, scale and
an optional fixed permutation of positions; ``make_classification`` tabular tasks; sklearn's
digits; a motif-detection sequence task), a compatible model family and its arguments (MLP, 1-D
CNN, 2-D CNN on digits, GRU/LSTM), a normalisation, an optimiser and its arguments, an epoch
budget of 8–40, and the run's initial learning rate (log-uniform over the LR range) and batch
size (a power of two in the batch-size range). The result is a plain
:class:`~rlagent.workloads.WorkloadSpec`, so the env, ``make_run``, every baseline and the
benchmark use it unchanged; its ``family`` reads ``model/norm/dataset/optimizer``.

Sizes are capped so that an epoch at batch size 32 costs at most :data:`MAX_EPOCH_SECONDS` on
one core: by the cost model of :mod:`rlagent.costs`, with a margin (:data:`ESTIMATE_MARGIN`),
the sample count is lowered to fit; sizes that do not fit even at the smallest sample count are
drawn again, and a family none of whose sizes fit (a GRU over MNIST-1D's 40 time steps) gives
way to another draw of the family. ``exclude`` removes whole families (a model, a norm, a
dataset or an optimiser) so that they stay held out. ``first = "model"`` picks the model family
before the dataset, so that each model family gets an equal share of the draws.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlagent.costs import epoch_seconds_estimate
from rlagent.datasets import DATASETS
from rlagent.errors import SpecError, is_number
from rlagent.hparams import log_uniform, powers_of_two
from rlagent.models import ACTIVATIONS, MODELS, NORMS, POOLINGS, cnn1d_lengths
from rlagent.workloads import DEFAULT_BATCH_SIZE_RANGE, DEFAULT_LR_RANGE, OPTIMIZERS, WorkloadSpec, check_range

__all__ = [
    "FAMILY_VALUES",
    "FIRST",
    "ESTIMATE_MARGIN",
    "MAX_EPOCH_SECONDS",
    "ProceduralSpec",
    "Task",
    "family_of",
    "sample_task",
]

SAMPLERS = ("procedural",)
"""Names a spec's ``workloads.train = { sampler = ... }`` may take."""
FIRST = ("dataset", "model")
"""Family dimensions a draw may pick first, uniformly (``workloads.train.first``)."""
FAMILY_VALUES: dict[str, tuple[str, ...]] = {
    "model": tuple(MODELS),
    "norm": NORMS,
    "dataset": tuple(DATASETS),
    "optimizer": OPTIMIZERS,
}
"""The family dimensions of a draw and their values; ``exclude`` names values of these."""
MODELS_FOR: dict[str, tuple[str, ...]] = {
    "mnist1d": ("mlp", "cnn1d", "gru", "lstm"),
    "sequence": ("mlp", "cnn1d", "gru", "lstm"),
    "synthetic": ("mlp",),
    "digits": ("mlp", "cnn2d"),
}
"""Model families that fit each dataset family (signals, tabular rows, 8×8 images)."""
NORMS_FOR: dict[str, tuple[str, ...]] = {
    "mlp": NORMS,
    "cnn1d": ("none", "batchnorm"),
    "cnn2d": ("none", "batchnorm"),
    "gru": ("none",),
    "lstm": ("none",),
}
"""Normalisations each model family is drawn with."""
MAX_EPOCH_SECONDS = 0.3
"""Cap on a draw's epoch cost (one core, batch size 32, training plus validation)."""
ESTIMATE_MARGIN = 0.9
"""Draws are fitted to this share of the cap by the cost model, which errs low by up to ~25% on
some narrow max-pooling 1-D CNNs and the widest MLPs. Measured on an idle machine, normalised to
the reference core, the 111 costliest of draws 0–299 (those ``scripts/epoch_costs.py --n 300
--min-estimate 0.15`` selects; fastest of 2 epochs each) took at most 0.28 s; an earlier
measurement had 4 of 200 draws fitted to the whole cap at 0.30–0.33 s."""
EPOCH_RANGE = (8, 40)
"""Epoch budget of a draw (both ends included)."""
SAMPLE_RANGE = (2000, 10000)
"""Sample count of a generated dataset (before the test split), both ends included."""
_SALT = 0x5EED_7A5C  # keeps the sampler's stream apart from the run seeds of the same integer
_MAX_FAMILY_TRIES = 50
_MAX_SIZE_TRIES = 20
_POOL_SHARE = 0.8  # share of a dataset's samples in the train/val pool (the rest is test)
_DIGITS_SAMPLES = 1797


@dataclass(frozen=True)
class ProceduralSpec:
    """A training set drawn by a sampler instead of named: ``train = { sampler = "procedural" }``."""

    sampler: str = "procedural"
    """The sampler: ``procedural`` (:func:`sample_task`)."""
    exclude: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Families never drawn, by dimension: ``{"model": ["gru", "lstm"], "norm": ["batchnorm"],
    "dataset": [...], "optimizer": [...]}`` (values from :data:`FAMILY_VALUES`)."""
    sample_range: tuple[int, int] = SAMPLE_RANGE
    """Sample count of a generated dataset before its test split (digits always has 1,797)."""
    max_epoch_seconds: float = MAX_EPOCH_SECONDS
    """Cap on a draw's estimated epoch cost (one core, batch size 32)."""
    lr_scale_range: tuple[float, float] = (1.0, 1.0)
    """Range of a draw's hidden step-size multiplier (``WorkloadSpec.lr_scale``), log-uniform;
    ``[1, 1]`` (the default) turns it off. Randomising it moves the best LR of a draw by up to
    the range's ratio, so a policy must find the LR from how the run responds rather than
    remember one good value (domain randomisation of the LR's scale)."""

    lr_scale_tail: tuple[float, float, float] = (0.0, 1.0, 1.0)
    """``[share, low, high]``: that share of the draws takes its hidden LR scale log-uniform from
    ``[low, high]`` instead of ``lr_scale_range`` (share 0, the default, turns it off). A tail far
    above the range gives runs that stay stuck unless the LR is cut several times in a row."""

    probe_sees_lr_scale: bool = True
    """Whether an LR probe of a draw trains at its hidden LR scale (true, the default) or at scale 1
    (false: ``WorkloadSpec.probe_lr_scale = 1``). False makes the probe misjudge the run's best LR
    by the hidden scale, as a short range test misjudges the LR a recurrent net stays stable at
    over a whole run: a policy must then check the probe's start against how the run responds."""

    lr_shift_range: tuple[float, float] = (1.0, 1.0)
    """Range of a draw's hidden mid-run shift factor (``WorkloadSpec.lr_shift``), log-uniform, due
    after an epoch drawn uniformly from the second to the third-last; ``[1, 1]`` (the default)
    turns it off. A shift moves the run's best LR at a moment no schedule can know in advance,
    so only a policy that reads the run's response can follow it."""

    start_lr_range: tuple[float, float] | None = None
    """Range a draw's initial LR is drawn from, log-uniform; None (the default) uses the
    episode's whole LR range. Narrowed towards the top of that range it trains on more runs that
    start too high (it must lie inside the episode's LR range)."""

    first: str = "dataset"
    """The family dimension picked first, uniformly over its allowed values; the others are then
    picked uniformly among those that fit it. ``dataset`` (the default) gives each dataset family
    an equal share, so model families that fit several datasets (MLPs fit all of them) are drawn
    more often; ``model`` gives each model family an equal share."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SpecError("workloads.train.sampler", self.sampler, f"one of {SAMPLERS}")
        if self.first not in FIRST:
            raise SpecError("workloads.train.first", self.first, f"one of {FIRST}")
        check_range("workloads.train.sample_range", self.sample_range, positive=True, integer=True)
        object.__setattr__(self, "sample_range", tuple(self.sample_range))
        object.__setattr__(self, "lr_scale_range", _positive_range("lr_scale_range", self.lr_scale_range, off=True))
        share, *tail = self.lr_scale_tail if isinstance(self.lr_scale_tail, (list, tuple)) else (None,)
        if len(tail) != 2 or not is_number(share) or not 0 <= share < 1:
            raise SpecError("workloads.train.lr_scale_tail", self.lr_scale_tail, "[share in [0, 1), low, high]")
        tail = (1.0, 1.0) if share == 0 else _positive_range("lr_scale_tail", tail)
        object.__setattr__(self, "lr_scale_tail", (float(share), *map(float, tail)))
        if share and self.lr_scale_range == (1.0, 1.0):
            raise SpecError(
                "workloads.train.lr_scale_tail",
                list(self.lr_scale_tail),
                "share 0 unless lr_scale_range is other than [1, 1]",
            )
        if not isinstance(self.probe_sees_lr_scale, bool):
            raise SpecError("workloads.train.probe_sees_lr_scale", self.probe_sees_lr_scale, "true or false")
        if not self.probe_sees_lr_scale and self.lr_scale_range == (1.0, 1.0):
            raise SpecError(
                "workloads.train.probe_sees_lr_scale", False, "true unless lr_scale_range is other than [1, 1]"
            )
        object.__setattr__(self, "lr_shift_range", _positive_range("lr_shift_range", self.lr_shift_range, off=True))
        if self.start_lr_range is not None:
            object.__setattr__(self, "start_lr_range", _positive_range("start_lr_range", self.start_lr_range))
        cap = self.max_epoch_seconds
        if not is_number(cap) or not 0 < cap < math.inf:
            raise SpecError("workloads.train.max_epoch_seconds", cap, "a number > 0")
        if not isinstance(self.exclude, Mapping):
            raise SpecError("workloads.train.exclude", self.exclude, f"a table with keys among {tuple(FAMILY_VALUES)}")
        clean: dict[str, tuple[str, ...]] = {}
        for key, values in self.exclude.items():
            where = f"workloads.train.exclude.{key}"
            if key not in FAMILY_VALUES:
                raise SpecError(where, values, f"a key among {tuple(FAMILY_VALUES)}")
            if isinstance(values, str) or not isinstance(values, (list, tuple)):
                raise SpecError(where, values, f"a list of names among {FAMILY_VALUES[key]}")
            for v in values:
                if v not in FAMILY_VALUES[key]:
                    raise SpecError(where, v, f"one of {FAMILY_VALUES[key]}")
            clean[key] = tuple(values)
        object.__setattr__(self, "exclude", clean)
        if not self.combos():
            raise SpecError("workloads.train.exclude", dict(clean), "exclusions that leave some dataset/model/norm")
        if not self.optimizers():
            raise SpecError(
                "workloads.train.exclude.optimizer", list(clean["optimizer"]), "at least one optimiser left"
            )

    def allowed(self, key: str) -> tuple[str, ...]:
        """Values of family dimension ``key`` that may be drawn."""
        return tuple(v for v in FAMILY_VALUES[key] if v not in self.exclude.get(key, ()))

    def optimizers(self) -> tuple[str, ...]:
        """Optimisers that may be drawn."""
        return self.allowed("optimizer")

    def combos(self) -> list[tuple[str, str, str]]:
        """The (dataset, model, norm) triples that may be drawn."""
        models, norms = set(self.allowed("model")), set(self.allowed("norm"))
        return [
            (d, m, n)
            for d in self.allowed("dataset")
            for m in MODELS_FOR[d]
            if m in models
            for n in NORMS_FOR[m]
            if n in norms
        ]

    def allows(self, family: Mapping[str, str]) -> bool:
        """Whether a workload of this family (see :func:`family_of`) could be drawn."""
        return all(family.get(k) not in self.exclude.get(k, ()) for k in FAMILY_VALUES)


def family_of(spec: WorkloadSpec) -> dict[str, str]:
    """The family dimensions of a workload: model, norm, dataset and optimiser."""
    return {
        "model": spec.model,
        "norm": str(spec.model_args.get("norm", "none")),
        "dataset": spec.dataset,
        "optimizer": spec.optimizer,
    }


@dataclass(frozen=True)
class Task:
    """One drawn training run: the workload and where it starts."""

    workload: WorkloadSpec
    """What to train (its ``family`` reads ``model/norm/dataset/optimizer``)."""
    init_lr: float
    """Learning rate of the first epoch (log-uniform over the LR range)."""
    init_batch_size: int
    """Batch size of the first epoch (a power of two in the batch-size range)."""
    est_seconds: float
    """Estimated epoch cost on one core at batch size 32 (see :mod:`rlagent.costs`)."""


def _pick(rng: np.random.Generator, values: tuple[str, ...] | list[str]) -> str:
    return values[int(rng.integers(len(values)))]


def _draw_data(
    rng: np.random.Generator, dataset: str, sample_range: tuple[int, int]
) -> tuple[dict[str, Any], tuple[int, ...], int]:
    """Dataset arguments, the input shape and the class count."""
    n_lo, n_hi = sample_range
    if dataset == "digits":
        return {"standardize": True}, (64,), 10
    if dataset == "mnist1d":
        args = {
            "data_seed": int(rng.integers(2**31)),
            "num_samples": int(rng.integers(n_lo, n_hi + 1)),
            "iid_noise_scale": round(float(rng.uniform(0.0, 0.1)), 3),
            "corr_noise_scale": round(float(rng.uniform(0.0, 0.5)), 3),
            "shear_scale": round(float(rng.uniform(0.0, 1.0)), 3),
            "scale_coeff": round(float(rng.uniform(0.0, 0.8)), 3),
            "shuffle_seq": bool(rng.random() < 0.2),
        }
        return args, (40,), 10
    if dataset == "synthetic":
        n_features, n_classes = int(rng.integers(8, 65)), int(rng.integers(2, 11))
        share = float(rng.uniform(0.3, 1.0))
        # make_classification needs n_classes × 2 clusters ≤ 2 ** n_informative.
        n_informative = min(n_features, max(math.ceil(math.log2(2 * n_classes)), round(share * n_features)))
        args = {
            "data_seed": int(rng.integers(2**31)),
            "n_samples": int(rng.integers(n_lo, n_hi + 1)),
            "n_features": n_features,
            "n_informative": n_informative,
            "n_classes": n_classes,
            "class_sep": round(float(rng.uniform(0.5, 2.0)), 3),
            "flip_y": round(float(rng.uniform(0.0, 0.1)), 3),
            "standardize": True,
        }
        return args, (n_features,), n_classes
    if dataset == "sequence":
        length, n_classes = int(rng.integers(16, 65)), int(rng.integers(2, 9))
        args = {
            "data_seed": int(rng.integers(2**31)),
            "n_samples": int(rng.integers(n_lo, n_hi + 1)),
            "length": length,
            "n_classes": n_classes,
            "motif_length": int(rng.integers(3, 9)),
            "amplitude": round(float(rng.uniform(1.0, 3.0)), 3),
        }
        return args, (length,), n_classes
    raise ValueError(f"dataset: got {dataset!r}; expected one of {tuple(MODELS_FOR)}")


def _draw_model(rng: np.random.Generator, model: str, norm: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Model arguments of a draw."""
    if model == "mlp":
        depth, width = int(rng.integers(1, 5)), 2 ** int(rng.integers(4, 10))
        args: dict[str, Any] = {"hidden": [width] * depth, "activation": _pick(rng, tuple(ACTIVATIONS)), "norm": norm}
        if rng.random() < 0.5:
            args["dropout"] = round(float(rng.uniform(0.0, 0.3)), 3)
        if depth > 1 and rng.random() < 0.4:
            args["residual"] = True
        return args
    if model == "cnn1d":
        pooling, kernel = _pick(rng, POOLINGS), _pick(rng, (3, 5, 7))
        depth = int(rng.integers(1, 5))
        while depth > 1 and cnn1d_lengths(input_shape[-1], depth, int(kernel), pooling)[-1] < 1:
            depth -= 1
        channels = 2 ** int(rng.integers(3, 7))
        return {"channels": channels, "depth": depth, "kernel": int(kernel), "pooling": pooling, "norm": norm}
    if model == "cnn2d":
        depth = int(rng.integers(1, 4))
        return {"channels": [2 ** int(rng.integers(3, 7)) for _ in range(depth)], "norm": norm}
    if model in ("gru", "lstm"):
        return {"hidden": int(rng.integers(16, 129))}
    raise ValueError(f"model: got {model!r}; expected one of {tuple(NORMS_FOR)}")


def _draw_optimizer(rng: np.random.Generator, optimizer: str) -> dict[str, Any]:
    if optimizer == "adamw":
        return {"weight_decay": round(log_uniform(rng, (1e-4, 1e-1)), 6)}
    if optimizer == "sgd":
        return {"nesterov": bool(rng.random() < 0.5)}
    return {}


def _draw_sizes(
    rng: np.random.Generator, sampler: ProceduralSpec, dataset: str, model: str, norm: str, val_fraction: float
) -> tuple[dict[str, Any], dict[str, Any], int, float] | None:
    """Dataset and model arguments whose epoch fits the sampler's cap (fewer samples if needed), or None."""
    max_seconds = sampler.max_epoch_seconds * ESTIMATE_MARGIN
    data_args, input_shape, n_classes = _draw_data(rng, dataset, sampler.sample_range)
    model_args = _draw_model(rng, model, norm, input_shape)
    train_share = _POOL_SHARE * (1.0 - val_fraction)
    size_key = "num_samples" if dataset == "mnist1d" else "n_samples"
    n_total = data_args.get(size_key, _DIGITS_SAMPLES)
    if size_key in data_args:
        per_sample = epoch_seconds_estimate(model, model_args, input_shape, n_classes, 1000) / 1000
        n_fit = int(max_seconds / (per_sample * train_share)) // 10 * 10
        if n_fit < sampler.sample_range[0]:
            return None
        n_total = data_args[size_key] = min(n_total, n_fit)
    est = epoch_seconds_estimate(model, model_args, input_shape, n_classes, round(n_total * train_share))
    return (data_args, model_args, n_total, est) if est <= max_seconds else None


def sample_task(
    seed: int,
    sampler: ProceduralSpec | None = None,
    *,
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE,
    batch_size_range: tuple[int, int] = DEFAULT_BATCH_SIZE_RANGE,
    val_fraction: float = 0.2,
) -> Task:
    """Draw one complete training run from ``seed``.

    Args:
        seed: The draw's seed; equal seeds give equal tasks.
        sampler: Which families may be drawn (default: all).
        lr_range: Range of the workload and of the initial learning rate.
        batch_size_range: Range of the workload and of the initial batch size.
        val_fraction: Share of the pool held out for validation.

    Returns:
        The task, named ``procedural-<seed>``.
    """
    sampler = sampler if sampler is not None else ProceduralSpec()
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, _SALT])
    combos, optimizers = sampler.combos(), sampler.optimizers()
    datasets = list(dict.fromkeys(d for d, _, _ in combos))
    models = list(dict.fromkeys(m for _, m, _ in combos))
    for _ in range(_MAX_FAMILY_TRIES):
        if sampler.first == "model":
            model = _pick(rng, models)
            dataset = _pick(rng, list(dict.fromkeys(d for d, m, _ in combos if m == model)))
        else:
            dataset = _pick(rng, datasets)
            model = _pick(rng, list(dict.fromkeys(m for d, m, _ in combos if d == dataset)))
        norm = _pick(rng, [n for d, m, n in combos if d == dataset and m == model])
        optimizer = _pick(rng, optimizers)
        fit = None
        for _ in range(_MAX_SIZE_TRIES):  # sizes that fit the cap, else another family
            fit = _draw_sizes(rng, sampler, dataset, model, norm, val_fraction)
            if fit is not None:
                break
        if fit is None:
            continue
        data_args, model_args, n_total, est = fit
        optimizer_args = _draw_optimizer(rng, optimizer)
        epochs = int(rng.integers(EPOCH_RANGE[0], EPOCH_RANGE[1] + 1))
        family = f"{model}/{norm}/{dataset}/{optimizer}"
        workload = WorkloadSpec(
            name=f"procedural-{seed}",
            dataset=dataset,
            model=model,
            dataset_args=data_args,
            model_args=model_args,
            optimizer=optimizer,
            optimizer_args=optimizer_args,
            epochs=epochs,
            lr_range=tuple(lr_range),
            batch_size_range=tuple(batch_size_range),
            val_fraction=val_fraction,
            description=f"{dataset} n={n_total}, {model} {_short(model_args)}, {optimizer} {_short(optimizer_args)}".strip(),
            family=family,
        )
        init_lr = log_uniform(rng, sampler.start_lr_range or lr_range)
        sizes = powers_of_two(*batch_size_range)
        init_bs = int(sizes[int(rng.integers(len(sizes)))])
        if sampler.lr_scale_range != (1.0, 1.0):  # drawn last: the rest of a draw stays as without it
            share, *tail = sampler.lr_scale_tail  # its coin only when on: draws without a tail stay as they were
            in_tail = share > 0 and rng.random() < share
            scale = round(log_uniform(rng, tuple(tail) if in_tail else sampler.lr_scale_range), 4)
            blind = "" if sampler.probe_sees_lr_scale else " (not seen by the LR probe)"
            workload = dataclasses.replace(
                workload,
                lr_scale=scale,
                probe_lr_scale=None if sampler.probe_sees_lr_scale else 1.0,
                description=f"{workload.description}, hidden LR scale ×{scale:g}{blind}",
            )
        if sampler.lr_shift_range != (1.0, 1.0):  # drawn after the scale, for the same reason
            factor = round(log_uniform(rng, sampler.lr_shift_range), 4)
            after = int(rng.integers(2, max(2, epochs - 2) + 1))
            workload = dataclasses.replace(
                workload,
                lr_shift=(after, factor),
                description=f"{workload.description}, hidden LR shift ×{factor:g} after epoch {after}",
            )
        return Task(workload, init_lr, init_bs, est)
    raise SpecError(
        "workloads.train", dataclasses.asdict(sampler), "a sampler whose families fit under max_epoch_seconds"
    )


def _positive_range(key: str, value: Any, *, off: bool = False) -> tuple[float, float]:
    """``workloads.train.KEY`` as a pair of floats, refused unless finite and 0 < low < high
    (``off``: [1, 1] too, the value that turns a hidden multiplier off)."""
    if off and isinstance(value, (list, tuple)) and tuple(value) == (1.0, 1.0):
        return (1.0, 1.0)
    check_range(f"workloads.train.{key}", value, positive=True)
    if not all(math.isfinite(v) for v in value):
        raise SpecError(f"workloads.train.{key}", list(value), "a pair of finite numbers")
    return (float(value[0]), float(value[1]))


def _short(args: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in args.items() if k != "norm")
