"""Built-in datasets, all generated or shipped offline; each returns ``(pool, test)``.

The pool is split into train/val per run seed by :func:`rlagent.workloads.split_data`.
sklearn's digits ship with scikit-learn; MNIST-1D is generated procedurally
(``mnist1d.data.make_dataset`` — the downloading ``get_dataset`` is never used); the tabular
task is ``sklearn.datasets.make_classification``; ``sequence`` is a motif-detection task of our
own. Every builder is deterministic in its arguments (``data_seed`` included) and leaves every
global RNG as it found it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DATASETS", "Split"]


@dataclass
class Split:
    """Inputs and integer labels of one split, as tensors."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


def _standardize(pool: np.ndarray, test: np.ndarray, per_feature: bool) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance with the pool's statistics (per feature, or over all values for signals)."""
    axis = 0 if per_feature else None
    mean, std = pool.mean(axis=axis), pool.std(axis=axis)
    std = np.where(std > 1e-8, std, 1.0)
    return (pool - mean) / std, (test - mean) / std


def _digits(standardize: bool = False) -> tuple[Split, Split]:
    """sklearn's 8×8 digits (1,797 images, 10 classes), pixels / 16 or standardised per pixel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    if standardize:
        x_pool, x_test = _standardize(x_pool, x_test, per_feature=True)
    return _split(x_pool, y_pool), _split(x_test, y_test)


def _mnist1d(
    num_samples: int = 5000,
    data_seed: int = 42,
    iid_noise_scale: float | None = None,
    corr_noise_scale: float | None = None,
    shear_scale: float | None = None,
    scale_coeff: float | None = None,
    shuffle_seq: bool = False,
) -> tuple[Split, Split]:
    """MNIST-1D (signals of length 40, 10 classes); None keeps mnist1d's default of an argument.

    ``shuffle_seq`` applies one fixed permutation (drawn from ``data_seed``) to the positions of
    every signal. mnist1d standardises the whole dataset with one mean and std.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    args.shuffle_seq = shuffle_seq
    for key, value in (
        ("iid_noise_scale", iid_noise_scale),
        ("corr_noise_scale", corr_noise_scale),
        ("shear_scale", shear_scale),
        ("scale_coeff", scale_coeff),
    ):
        if value is not None:
            setattr(args, key, value)
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
    standardize: bool = False,
) -> tuple[Split, Split]:
    """``make_classification`` (no redundant features); the first fifth is the test split."""
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
    x_pool, x_test = x[n_test:], x[:n_test]
    if standardize:
        x_pool, x_test = _standardize(x_pool, x_test, per_feature=True)
    return _split(x_pool, y[n_test:]), _split(x_test, y[:n_test])


def _sequence(
    n_samples: int = 4000,
    length: int = 40,
    n_classes: int = 4,
    motif_length: int = 6,
    amplitude: float = 1.5,
    noise: float = 1.0,
    data_seed: int = 0,
) -> tuple[Split, Split]:
    """Motif detection: which of ``n_classes`` fixed motifs hides at a random position in noise.

    Each class has one motif (a Gaussian pattern of ``motif_length`` values with unit RMS). A
    sample is white noise of std ``noise`` with its class's motif times ``amplitude`` added at a
    uniformly random offset. Translation-invariant, so convolutions and recurrent cells fit it;
    an MLP must learn every offset. Standardised with one mean and std; the first fifth is test.
    """
    if not 1 <= motif_length <= length:
        raise ValueError(f"sequence: motif_length {motif_length} must be in [1, length={length}]")
    rng = np.random.default_rng(data_seed)
    motifs = rng.standard_normal((n_classes, motif_length))
    motifs /= np.sqrt((motifs**2).mean(axis=1, keepdims=True))
    y = rng.integers(n_classes, size=n_samples)
    x = noise * rng.standard_normal((n_samples, length))
    offsets = rng.integers(0, length - motif_length + 1, size=n_samples)
    cols = offsets[:, None] + np.arange(motif_length)
    x[np.arange(n_samples)[:, None], cols] += amplitude * motifs[y]
    n_test = n_samples // 5
    x_pool, x_test = _standardize(x[n_test:], x[:n_test], per_feature=False)
    return _split(x_pool, y[n_test:]), _split(x_test, y[:n_test])


DATASETS: dict[str, Callable[..., tuple[Split, Split]]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "synthetic": _synthetic,
    "sequence": _sequence,
}
"""Built-in dataset builders by name: ``builder(**dataset_args) -> (pool, test)``."""
