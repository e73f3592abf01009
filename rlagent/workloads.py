"""Workloads: a dataset, a model factory, an optimiser and the ranges a tuner may move within.

The built-in datasets (:mod:`rlagent.datasets`) and models (:mod:`rlagent.models`) are all
offline; :mod:`rlagent.procedural` draws whole workloads from them. A user's own workload names
``package.module:factory`` for its dataset and/or model.

A run of a workload has three splits. ``train`` is what the optimiser sees, ``val`` feeds the
reward and every selection, ``test`` is only ever reported.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlagent.datasets import DATASETS, Split
from rlagent.errors import SpecError, is_int, is_number
from rlagent.models import MODELS

OPTIMIZER_ARGS: dict[str, tuple[str, ...]] = {
    "adam": ("weight_decay",),
    "adamw": ("weight_decay",),
    "sgd": ("nesterov", "weight_decay"),
    "rmsprop": ("weight_decay",),
}
"""Optimiser families and the keyword arguments each accepts (see :func:`rlagent.training.make_optimizer`)."""
OPTIMIZERS = tuple(OPTIMIZER_ARGS)
DEFAULT_LR_RANGE = (1e-4, 0.3)
"""Learning-rate range of a workload that names none (and of a policy whose record has none)."""
DEFAULT_BATCH_SIZE_RANGE = (16, 512)
"""Batch-size range of a workload that names none."""


@dataclass(frozen=True)
class WorkloadSpec:
    """What to train and within which ranges to tune it."""

    name: str
    """Unique name, e.g. ``"mnist1d-cnn"``."""
    dataset: str
    """A built-in dataset (``digits``, ``mnist1d``, ``synthetic``) or ``package.module:factory``."""
    model: str
    """A built-in model (``mlp``, ``cnn2d``, ``cnn1d``, ``gru``) or ``package.module:factory``."""
    dataset_args: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the dataset builder."""
    model_args: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the model factory."""
    optimizer: str = "adam"
    """Optimiser family: ``adam``, ``adamw``, ``sgd`` (momentum 0.9) or ``rmsprop``."""
    optimizer_args: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of the optimiser, see :data:`OPTIMIZER_ARGS` (e.g. ``{"weight_decay": 0.01}``)."""
    epochs: int = 15
    """Epoch budget of one training run."""
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE
    """Smallest and largest learning rate a tuner may pick."""
    batch_size_range: tuple[int, int] = DEFAULT_BATCH_SIZE_RANGE
    """Smallest and largest batch size a tuner may pick."""
    val_fraction: float = 0.2
    """Share of the non-test data held out for validation."""
    description: str = ""
    """One line for ``rlagent workloads``."""
    family: str = ""
    """Label the benchmark aggregates by (e.g. ``recurrent``); a procedural draw carries
    ``model/norm/dataset/optimizer``."""
    lr_scale: float = 1.0
    """Hidden step-size multiplier: the optimiser steps at ``lr × lr_scale`` while tuners see and
    set ``lr``. 1 for real workloads; procedural draws may randomise it so that the best LR of a
    run cannot be read from the LR alone (see ``ProceduralSpec.lr_scale_range``)."""
    probe_lr_scale: float | None = None
    """The step-size multiplier an LR probe of this run trains at; None (the default) is the run's
    own ``lr_scale``. Another value makes the probe misjudge the run's LR by the ratio of the two,
    as a short range test misjudges the LR a long run stays stable at (see
    ``ProceduralSpec.probe_sees_lr_scale``)."""
    lr_shift: tuple[int, float] | None = None
    """``(epoch, factor)``: once ``epoch`` epochs are trained the hidden multiplier becomes
    ``lr_scale × factor`` for the rest of the run, and no tuner sees it: the run turns hotter or
    colder mid-way, as a real run's best LR moves when its loss landscape does. None (the
    default): no shift. A shift due after the last epoch never happens (see
    ``ProceduralSpec.lr_shift_range``)."""

    def __post_init__(self) -> None:
        where = f"workload {self.name!r}"
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"{where}.optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        if not isinstance(self.optimizer_args, Mapping):
            raise SpecError(f"{where}.optimizer_args", self.optimizer_args, "a table of keyword arguments")
        allowed_args = OPTIMIZER_ARGS[self.optimizer]
        for key, value in self.optimizer_args.items():
            if key not in allowed_args:
                raise SpecError(
                    f"{where}.optimizer_args.{key}", value, f"a key among {allowed_args} for {self.optimizer}"
                )
        wd = self.optimizer_args.get("weight_decay", 0.0)
        if not is_number(wd) or not 0.0 <= wd < 1.0:
            raise SpecError(f"{where}.optimizer_args.weight_decay", wd, "a number in [0, 1)")
        if not isinstance(self.optimizer_args.get("nesterov", False), bool):
            raise SpecError(f"{where}.optimizer_args.nesterov", self.optimizer_args["nesterov"], "true or false")
        if not isinstance(self.family, str):
            raise SpecError(f"{where}.family", self.family, "a string")
        scale = self.lr_scale
        if not is_number(scale) or not 0 < scale < math.inf:
            raise SpecError(f"{where}.lr_scale", scale, "a finite number > 0")
        probe_scale = self.probe_lr_scale
        if probe_scale is not None and (not is_number(probe_scale) or not 0 < probe_scale < math.inf):
            raise SpecError(f"{where}.probe_lr_scale", probe_scale, "a finite number > 0, or unset")
        shift = self.lr_shift
        if shift is not None:
            if not (
                isinstance(shift, (tuple, list))
                and len(shift) == 2
                and is_int(shift[0])
                and shift[0] >= 1
                and is_number(shift[1])
                and 0 < shift[1] < math.inf
            ):
                raise SpecError(f"{where}.lr_shift", shift, "a pair [epoch >= 1, factor > 0] or unset")
            object.__setattr__(self, "lr_shift", (int(shift[0]), float(shift[1])))
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise SpecError(f"{where}.epochs", self.epochs, "an integer >= 1")
        check_range(f"{where}.lr_range", self.lr_range, positive=True)
        check_range(f"{where}.batch_size_range", self.batch_size_range, positive=True, integer=True)
        if not 0.0 < self.val_fraction < 1.0:
            raise SpecError(f"{where}.val_fraction", self.val_fraction, "a number in (0, 1)")
        if self.dataset not in DATASETS and ":" not in self.dataset:
            allowed = f"one of {sorted(DATASETS)} or 'package.module:factory'"
            raise SpecError(f"{where}.dataset", self.dataset, allowed)
        if self.model not in MODELS and ":" not in self.model:
            allowed = f"one of {sorted(MODELS)} or 'package.module:factory'"
            raise SpecError(f"{where}.model", self.model, allowed)


def check_range(name: str, value: Any, *, positive: bool = False, integer: bool = False) -> None:
    """Refuse anything but an increasing ``(low, high)`` pair."""
    kind = "integers" if integer else "numbers"
    ok_types = (int,) if integer else (int, float)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, ok_types) and not isinstance(v, bool) for v in value)
    ):
        raise SpecError(name, value, f"a pair [low, high] of {kind}")
    low, high = value
    if positive and low <= 0:
        raise SpecError(name, value, "low > 0")
    if not low < high:
        raise SpecError(name, value, "low < high (the range is empty or inverted)")


@dataclass
class Data:
    """The three splits of one run plus what models need to know about them."""

    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device | str) -> Data:
        return Data(self.train.to(device), self.val.to(device), self.test.to(device), self.num_classes)


BUILTIN_WORKLOADS: dict[str, WorkloadSpec] = {
    w.name: w
    for w in (
        WorkloadSpec("digits-mlp", "digits", "mlp", model_args={"hidden": [64]},
                     description="sklearn digits 8x8, MLP 64-64-10", family="mlp"),
        WorkloadSpec("digits-cnn", "digits", "cnn2d",
                     description="sklearn digits 8x8, 2-layer CNN (16, 32 ch)", family="cnn"),
        WorkloadSpec("mnist1d-mlp", "mnist1d", "mlp", model_args={"hidden": [100, 100]},
                     description="MNIST-1D, MLP 40-100-100-10", family="mlp"),
        WorkloadSpec("mnist1d-cnn", "mnist1d", "cnn1d",
                     description="MNIST-1D, 3-layer strided 1-D CNN (25 ch)", family="cnn"),
        WorkloadSpec("mnist1d-gru", "mnist1d", "gru",
                     description="MNIST-1D, GRU (32 hidden) read-out of the last state", family="recurrent"),
        WorkloadSpec("synthetic-mlp", "synthetic", "mlp", model_args={"hidden": [64, 64]},
                     description="make_classification 20 features / 4 classes, MLP 64-64", family="mlp"),
    )
}  # fmt: skip


# ---------------------------------------------------------------------------------------------


def import_factory(ref: str, what: str) -> Callable[..., Any]:
    """Resolve ``package.module:attribute`` to a callable, with a clear error."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SpecError(what, ref, "'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(what, ref, f"an importable module ({exc})") from exc
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise SpecError(what, ref, f"a callable named {attr!r} in module {module_name!r}")
    return obj


def as_split(obj: Any, what: str) -> Split:
    """Accept ``(x, y)`` tensors/arrays or a torch ``Dataset`` yielding ``(x, y)`` items.

    Raises:
        SpecError: Naming ``what`` if it is neither, if an item is not an ``(x, y)`` pair, if the
            data are not numeric, if the rows do not match, or if labels are not whole numbers.
    """
    if isinstance(obj, Split):
        return obj
    pairs = (tuple, list)
    try:
        if isinstance(obj, pairs) and len(obj) == 2:
            x, y = obj
        elif isinstance(obj, torch.utils.data.Dataset):
            items = [obj[i] for i in range(len(obj))]  # type: ignore[arg-type]
            bad = next((i for i, item in enumerate(items) if not (isinstance(item, pairs) and len(item) == 2)), None)
            if bad is not None:
                raise SpecError(f"{what}[{bad}]", type(items[bad]).__name__, "an (x, y) tuple")
            x = torch.stack([torch.as_tensor(i[0]) for i in items]) if items else torch.zeros(0)
            y = torch.as_tensor([torch.as_tensor(i[1]).item() for i in items])
        else:
            raise SpecError(what, type(obj).__name__, "(x, y) tensors/arrays or a torch Dataset of (x, y) items")
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(what, type(obj).__name__, f"numeric (x, y) data ({type(exc).__name__}: {exc})") from None
    if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise SpecError(what, f"x of shape {tuple(x.shape)}, y of shape {tuple(y.shape)}", "one label per row of x")
    if y.dtype == torch.bool or y.is_complex():
        raise SpecError(f"{what} labels", str(y.dtype), "integer class labels")
    if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
        raise SpecError(f"{what} labels", "non-integer values", "integer class labels (floats would be truncated)")
    return Split(x, y.long())


@dataclass
class Source:
    """A workload's data before the per-run split: a pool to split, or fixed splits."""

    pool: Split | None
    test: Split
    fixed: tuple[Split, Split] | None = None


def load_source(spec: WorkloadSpec) -> Source:
    """Build (or generate) a workload's data. Deterministic; costs up to ~1.5 s (MNIST-1D)."""
    if spec.dataset in DATASETS:
        pool, test = DATASETS[spec.dataset](**spec.dataset_args)
        return Source(pool, test)
    factory = import_factory(spec.dataset, f"workload {spec.name!r}.dataset")
    out = factory(**spec.dataset_args)
    what = f"workload {spec.name!r} dataset factory {spec.dataset!r}"
    if isinstance(out, (tuple, list)) and len(out) == 3:
        train, val, test = (as_split(o, what) for o in out)
        return Source(None, test, fixed=(train, val))
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return Source(as_split(out[0], what), as_split(out[1], what))
    raise TypeError(f"{what} must return (train, val, test) or (train_pool, test)")


def split_data(source: Source, spec: WorkloadSpec, seed: int) -> Data:
    """Split the pool into train/val with a permutation drawn from ``seed``."""
    if source.fixed is not None:
        train, val = source.fixed
    else:
        assert source.pool is not None
        n = len(source.pool)
        perm = torch.as_tensor(np.random.default_rng(seed).permutation(n))
        n_val = max(1, int(round(n * spec.val_fraction)))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        train = Split(source.pool.x[train_idx], source.pool.y[train_idx])
        val = Split(source.pool.x[val_idx], source.pool.y[val_idx])
    labels = torch.cat([train.y, val.y, source.test.y])
    if labels.min() < 0:
        raise ValueError(f"workload {spec.name!r}: labels must be integers >= 0")
    return Data(train, val, source.test, int(labels.max()) + 1)


def build_model(spec: WorkloadSpec, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build the model with weights drawn from ``seed``, leaving torch's global RNG untouched."""
    if spec.model in MODELS:
        factory = MODELS[spec.model]
    else:
        factory = import_factory(spec.model, f"workload {spec.name!r}.model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(input_shape, num_classes, **spec.model_args)
    if not isinstance(model, nn.Module):
        raise TypeError(f"workload {spec.name!r}: model factory returned {type(model).__name__}, not nn.Module")
    return model


@dataclass
class Run:
    """One seeded training run of a workload: its data splits, a fresh model and its shuffling RNG."""

    data: Data
    model: nn.Module
    generator: torch.Generator


def source_key(spec: WorkloadSpec) -> str:
    """Workloads with equal keys share their data source (e.g. the MNIST-1D models)."""
    return f"{spec.dataset}{sorted(spec.dataset_args.items())}"


def make_run(
    spec: WorkloadSpec,
    seed: int,
    *,
    device: str | torch.device = "cpu",
    sources: dict[str, Source] | None = None,
    replica: int = 0,
) -> Run:
    """The run of ``spec`` for ``seed``: every method given the same seed gets the same split,
    initial weights and shuffling order. ``sources`` caches loaded data across calls.
    ``replica`` > 0 keeps the split and draws other initial weights and shuffling (:func:`run_seeds`)."""
    split_seed, init_seed, shuffle_seed = run_seeds(seed, replica)
    sources = {} if sources is None else sources
    key = source_key(spec)
    if key not in sources:
        sources[key] = load_source(spec)
    data = split_data(sources[key], spec, split_seed).to(device)
    model = build_model(spec, data.input_shape, data.num_classes, init_seed).to(device)
    return Run(data, model, torch.Generator().manual_seed(shuffle_seed))


def run_seeds(seed: int, replica: int = 0) -> tuple[int, int, int]:
    """Independent seeds for (data split, weight init, shuffling) of one run.

    ``replica`` r > 0 gives the same split seed with init and shuffling seeds of their own (from
    ``SeedSequence(seed, spawn_key=(r,))``): another run on the same task, e.g. for best-of-k.
    """
    if not is_int(replica) or replica < 0:
        raise SpecError("replica", replica, "an integer >= 0")
    split, init, shuffle = np.random.SeedSequence(seed).generate_state(3)
    if replica:
        init, shuffle = np.random.SeedSequence(seed, spawn_key=(replica,)).generate_state(2)
    return int(split), int(init), int(shuffle)


def describe(spec: WorkloadSpec, source: Source) -> dict[str, Any]:
    """Sizes and parameter count for ``rlagent workloads``."""
    data = split_data(source, spec, seed=0)
    model = build_model(spec, data.input_shape, data.num_classes, seed=0)
    return {
        "name": spec.name,
        "train": len(data.train),
        "val": len(data.val),
        "test": len(data.test),
        "input_shape": list(data.input_shape),
        "classes": data.num_classes,
        "params": sum(p.numel() for p in model.parameters()),
        "optimizer": spec.optimizer,
        "epochs": spec.epochs,
        "family": spec.family,
        "description": spec.description,
    }


def check_factory_args(spec: WorkloadSpec) -> None:
    """Refuse ``model_args`` / ``dataset_args`` the workload's factories do not accept.

    Reads the factories' signatures (``inspect.signature``); nothing is built. A user factory that
    cannot be imported here is left to fail where it is used. A model factory is
    called as ``factory(input_shape, num_classes, **model_args)``, a dataset factory as
    ``factory(**dataset_args)``.

    Raises:
        SpecError: Naming the workload, the key and the arguments the factory accepts.
    """
    where = f"workloads.define.{spec.name}"
    for kind, args, table, skip in (
        ("model", spec.model_args, MODELS, 2),
        ("dataset", spec.dataset_args, DATASETS, 0),
    ):
        ref = getattr(spec, kind)
        try:
            factory = table[ref] if ref in table else import_factory(ref, f"{where}.{kind}")
            params = list(inspect.signature(factory).parameters.values())[skip:]
        except (SpecError, TypeError, ValueError):
            # Not importable here (it may be on the workers only) or no introspectable
            # signature: the call itself will tell, where the workload is built.
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params):
            continue
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in args:
            if key not in accepted:
                raise SpecError(
                    f"{where}.{kind}_args.{key}", args[key], f"an argument of {kind} {ref!r}: one of {accepted}"
                )
        missing = [p.name for p in params if p.name in accepted and p.default is p.empty and p.name not in args]
        if missing:
            raise SpecError(f"{where}.{kind}_args", dict(args), f"values for the required arguments {missing}")
