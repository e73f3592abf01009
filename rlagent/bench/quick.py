"""``rlagent bench --quick``: a representative subset of the benchmark in minutes.

Two held-out workloads (a convolutional and a recurrent one), two seeds, and the methods a reader
compares the policy with first (:data:`rlagent.bench.methods.QUICK_METHODS`). About 480 epochs
per workload and seed; under 10 minutes on 2 CPU cores. It is an ordinary benchmark (same tasks,
trial files and resume) written to its own folder, so it never overwrites a full run's table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlagent.bench.methods import QUICK_METHODS
from rlagent.bench.runner import BenchConfig
from rlagent.config import EnvSpec, load_spec

QUICK_WORKLOADS = ("mnist1d-cnn", "mnist1d-gru")
"""Workloads of the quick benchmark, where the spec holds them out (else its first two held-out ones)."""
QUICK_SEEDS = 2


def quick_workloads(spec: EnvSpec) -> tuple[str, ...]:
    """:data:`QUICK_WORKLOADS` among the spec's held-out workloads, else its first two held-out ones."""
    chosen = tuple(w for w in QUICK_WORKLOADS if w in spec.workloads.heldout)
    return chosen or tuple(spec.workloads.heldout[:2])


def quick_config(
    *,
    spec: str | Path | EnvSpec = "default",
    policy: str | Path = "default",
    workloads: Sequence[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    results_dir: str | Path | None = None,
    **kwargs: Any,
) -> BenchConfig:
    """The quick benchmark's configuration; any argument given replaces its default.

    Args:
        spec: Spec file, shipped spec name or :class:`EnvSpec`.
        policy: Policy directory or shipped policy name.
        workloads: Default: :func:`quick_workloads`.
        seeds: Default: :data:`QUICK_SEEDS`.
        methods: Default: :data:`~rlagent.bench.methods.QUICK_METHODS`.
        results_dir: Default: ``results/bench__{spec name}__{policy name}__quick``.
        **kwargs: Other :class:`BenchConfig` fields (epochs, n_workers, devices, ...).
    """
    loaded = spec if isinstance(spec, EnvSpec) else load_spec(spec)
    if results_dir is None:
        results_dir = Path("results") / f"bench__{loaded.name}__{Path(str(policy)).name}__quick"
    config = BenchConfig(
        spec=spec, policy=policy, workloads=workloads or quick_workloads(loaded),
        seeds=QUICK_SEEDS if seeds is None else seeds, methods=methods or QUICK_METHODS,
        results_dir=results_dir, **kwargs,
    )  # fmt: skip
    return config
