"""Every tuning method of the benchmark, each training through the one seeded run.

* ``random`` — 16 static configurations; reported as ``random-1``, ``random-4``, ``random-16``.
* ``tpe`` — an Optuna TPE study of 16 static configurations (``tpe-16``).
* ``hyperband`` — Optuna TPE + Hyperband pruning, trials added until 16 runs' worth of epochs.
* ``pbt`` — Population Based Training with Ray Tune's default exploit/explore rules (``pbt-8``).
* ``constant``, ``cosine``, ``plateau``, ``warmup-cosine`` — hand schedules; ``schedulefree``,
  ``prodigy`` — learning-rate-free optimisers; ``open-loop`` — a fixed per-epoch schedule replayed.
* ``lr-finder`` — an LR range test (torch-lr-finder), then one-cycle at each rule's suggested LR;
  reported as ``lr-finder-steep``, ``lr-finder-min10`` and the better of both, ``lr-finder-best``.
* ``policy`` — a saved tuning policy, through ``HyperTuneEnv``; ``policy-probe`` — the same run
  started where a short LR range test points; ``policy-best-4`` — the best of four of its runs by
  validation accuracy.
* ``ray-pbt``, ``ray-pb2``, ``ray-asha`` — Ray Tune's own PBT, PB2 and ASHA (with the Ray backend only).

A method is a function ``(ctx: TrialContext) -> list[MethodResult]`` registered in
:data:`METHODS` (or :data:`RAY_METHODS`); see :mod:`rlagent.bench.methods.base` for what they share.
"""

from __future__ import annotations

from collections.abc import Callable

from rlagent.bench.methods.base import METHOD_NEEDS, PBT_POPULATION, SEARCH_TRIALS, MethodResult, TrialContext
from rlagent.bench.methods.lr_finder import lr_finder_one_cycle
from rlagent.bench.methods.pbt import pbt as pbt_method
from rlagent.bench.methods.policy import policy as policy_method
from rlagent.bench.methods.policy import policy_best_4, policy_probe
from rlagent.bench.methods.ray_tune import RAY_METHODS, ray_asha, ray_pb2, ray_pbt
from rlagent.bench.methods.schedules import (
    constant,
    cosine,
    mean_schedule,
    open_loop,
    plateau,
    prodigy,
    schedulefree,
    warmup_cosine,
)
from rlagent.bench.methods.search import hyperband, random_search, tpe

METHODS: dict[str, Callable[[TrialContext], list[MethodResult]]] = {
    "random": random_search,
    "tpe": tpe,
    "hyperband": hyperband,
    "pbt": pbt_method,
    "constant": constant,
    "cosine": cosine,
    "plateau": plateau,
    "warmup-cosine": warmup_cosine,
    "lr-finder": lr_finder_one_cycle,
    "schedulefree": schedulefree,
    "prodigy": prodigy,
    "open-loop": open_loop,
    "policy": policy_method,
    "policy-probe": policy_probe,
    "policy-best-4": policy_best_4,
}
"""Every local method by name; each returns one or more reported results (``random`` returns three)."""

ALL_METHODS: dict[str, Callable[[TrialContext], list[MethodResult]]] = {**METHODS, **RAY_METHODS}
"""Local and Ray Tune methods by name."""

METHOD_RUNS: dict[str, float] = {
    "random": SEARCH_TRIALS, "tpe": SEARCH_TRIALS, "hyperband": SEARCH_TRIALS, "ray-asha": SEARCH_TRIALS,
    "pbt": PBT_POPULATION, "ray-pbt": PBT_POPULATION, "ray-pb2": PBT_POPULATION,
    "policy-best-4": 4, "lr-finder": 2.1,
}  # fmt: skip
"""Epochs a method's task spends, in runs of the workload's epoch budget (1 when not listed).
The benchmark starts the longest tasks first, so that short ones fill the workers at the end."""

QUICK_METHODS = ("policy", "policy-best-4", "open-loop", "random", "pbt", "lr-finder")
"""Method tasks of ``rlagent bench --quick``: the policy, its best-of-4, its open-loop replay (does
it react to the run?) and the baselines a reader compares it with first (random search, PBT, the
LR range test). The untuned schedules (Adam's default, warm-up + cosine) are left to the full
benchmark: on the quick workloads they score 0.4-0.6, and they took 7% of its CPU time."""

__all__ = [
    "ALL_METHODS",
    "METHOD_RUNS",
    "METHODS",
    "METHOD_NEEDS",
    "QUICK_METHODS",
    "RAY_METHODS",
    "MethodResult",
    "TrialContext",
    "constant",
    "cosine",
    "hyperband",
    "lr_finder_one_cycle",
    "mean_schedule",
    "open_loop",
    "plateau",
    "policy_best_4",
    "prodigy",
    "random_search",
    "ray_asha",
    "ray_pb2",
    "ray_pbt",
    "schedulefree",
    "tpe",
    "warmup_cosine",
]
