"""Workloads: a dataset, a model factory and the ranges a tuner may move within.

Everything here is offline: sklearn's digits ship with scikit-learn, MNIST-1D is generated
procedurally (``mnist1d.data.make_dataset``; the downloading ``get_dataset`` is never used) and
the synthetic tabular task comes from ``sklearn.datasets.make_classification``. A user's own
workload names ``package.module:factory`` for its dataset and/or model.

A run of a workload has three splits. ``train`` is what the optimiser sees, ``val`` feeds the
reward and every selection, ``test`` is only ever reported.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlagent.errors import SpecError

OPTIMIZERS = ("adam", "sgd")
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
    """Optimiser family: ``adam`` or ``sgd`` (momentum 0.9)."""
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

    def __post_init__(self) -> None:
        where = f"workload {self.name!r}"
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"{where}.optimizer", self.optimizer, f"one of {OPTIMIZERS}")
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
class Split:
    """Inputs and integer labels of one split, as tensors."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


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


# ---------------------------------------------------------------------------------------------
# Datasets: each returns (pool, test); the pool is split into train/val per run seed.


def _digits() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    return _split(x_pool, y_pool), _split(x_test, y_test)


def _mnist1d(num_samples: int = 5000, data_seed: int = 42) -> tuple[Split, Split]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    # make_dataset seeds Python's and NumPy's global RNGs; put them back as they were.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    return _split(data["x"], data["y"]), _split(data["x_test"], data["y_test"])


def _synthetic(
    n_samples: int = 4000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 4,
    class_sep: float = 1.0,
    flip_y: float = 0.05,
    data_seed: int = 0,
) -> tuple[Split, Split]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=0,
        n_classes=n_classes,
        class_sep=class_sep,
        flip_y=flip_y,
        random_state=data_seed,
    )
    n_test = n_samples // 5
    return _split(x[n_test:], y[n_test:]), _split(x[:n_test], y[:n_test])


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


DATASETS: dict[str, Callable[..., tuple[Split, Split]]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "synthetic": _synthetic,
}

# ---------------------------------------------------------------------------------------------
# Models: factory(input_shape, num_classes, **args) -> nn.Module.


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (64,)) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn2d(
    input_shape: tuple[int, ...],
    num_classes: int,
    image_shape: list[int] = (1, 8, 8),
    channels: list[int] = (16, 32),
) -> nn.Module:
    c_in, h, w = image_shape
    if math.prod(input_shape) != c_in * h * w:
        raise ValueError(f"cnn2d: input of shape {input_shape} does not fit image_shape {image_shape}")
    layers: list[nn.Module] = [nn.Unflatten(1, (c_in, h, w))]
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
        c_in = c
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c_in * (h // 2) * (w // 2), num_classes)]
    return nn.Sequential(*layers)


def _cnn1d(input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> nn.Module:
    # The MNIST-1D paper's ConvBase: three strided convolutions, then a linear read-out.
    length = input_shape[-1]
    for k in (5, 3, 3):
        length = (length + 2 - k) // 2 + 1
    return nn.Sequential(
        nn.Unflatten(1, (1, input_shape[-1])),
        nn.Conv1d(1, channels, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * length, num_classes),
    )


class _GRUClassifier(nn.Module):
    """Reads a 1-D signal step by step and classifies from the last hidden state."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x.unsqueeze(-1))
        return self.head(h[-1])


def _gru(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> nn.Module:
    return _GRUClassifier(num_classes, hidden)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn2d": _cnn2d,
    "cnn1d": _cnn1d,
    "gru": _gru,
}

BUILTIN_WORKLOADS: dict[str, WorkloadSpec] = {
    w.name: w
    for w in (
        WorkloadSpec("digits-mlp", "digits", "mlp", model_args={"hidden": [64]},
                     description="sklearn digits 8x8, MLP 64-64-10"),
        WorkloadSpec("digits-cnn", "digits", "cnn2d",
                     description="sklearn digits 8x8, 2-layer CNN (16, 32 ch)"),
        WorkloadSpec("mnist1d-mlp", "mnist1d", "mlp", model_args={"hidden": [100, 100]},
                     description="MNIST-1D, MLP 40-100-100-10"),
        WorkloadSpec("mnist1d-cnn", "mnist1d", "cnn1d",
                     description="MNIST-1D, 3-layer strided 1-D CNN (25 ch)"),
        WorkloadSpec("mnist1d-gru", "mnist1d", "gru",
                     description="MNIST-1D, GRU (32 hidden) read-out of the last state"),
        WorkloadSpec("synthetic-mlp", "synthetic", "mlp", model_args={"hidden": [64, 64]},
                     description="make_classification 20 features / 4 classes, MLP 64-64"),
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
    """Accept ``(x, y)`` tensors/arrays or a torch ``Dataset`` yielding ``(x, y)`` items."""
    if isinstance(obj, Split):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    elif isinstance(obj, torch.utils.data.Dataset):
        items = [obj[i] for i in range(len(obj))]  # type: ignore[arg-type]
        if not items:
            raise ValueError(f"{what}: the dataset is empty")
        x = torch.stack([torch.as_tensor(i[0]) for i in items])
        y = torch.as_tensor([int(i[1]) for i in items])
    else:
        raise TypeError(f"{what}: expected (x, y) or a torch Dataset of (x, y), got {type(obj).__name__}")
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y).long()
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"{what}: x has {x.shape[0]} rows but y has shape {tuple(y.shape)}")
    return Split(x, y)


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
    if isinstance(replica, bool) or not isinstance(replica, int) or replica < 0:
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
        "description": spec.description,
    }
