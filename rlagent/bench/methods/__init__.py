"""Every tuning method of the benchmark, each training through the one seeded run.

* ``random`` — 16 static configurations; reported as ``random-1``, ``random-4``, ``random-16``.
* ``tpe`` — an Optuna TPE study of 16 static configurations (``tpe-16``).
* ``hyperband`` — Optuna TPE + Hyperband pruning, trials added until 16 runs' worth of epochs.
* ``pbt`` — Population Based Training with Ray Tune's default exploit/explore rules (``pbt-8``).
* ``constant``, ``cosine``, ``plateau`` — hand schedules; ``schedulefree``, ``prodigy`` —
  learning-rate-free optimisers; ``open-loop`` — a fixed per-epoch schedule replayed;
  ``policy`` — a saved tuning policy, through ``HyperTuneEnv``.
* ``ray-pbt``, ``ray-asha`` — Ray Tune's own PBT and ASHA (with the Ray backend only).

A method is a function ``(ctx: TrialContext) -> list[MethodResult]`` registered in
:data:`METHODS` (or :data:`RAY_METHODS`); see :mod:`rlagent.bench.methods.base` for what they share.
"""

from __future__ import annotations

from collections.abc import Callable

from rlagent.bench.methods.base import METHOD_NEEDS, MethodResult, TrialContext
from rlagent.bench.methods.pbt import pbt as pbt_method
from rlagent.bench.methods.policy import policy as policy_method
from rlagent.bench.methods.ray_tune import RAY_METHODS, ray_asha, ray_pbt
from rlagent.bench.methods.schedules import (
    constant,
    cosine,
    mean_schedule,
    open_loop,
    plateau,
    prodigy,
    schedulefree,
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
    "schedulefree": schedulefree,
    "prodigy": prodigy,
    "open-loop": open_loop,
    "policy": policy_method,
}
"""Every local method by name; each returns one or more reported results (``random`` returns three)."""

ALL_METHODS: dict[str, Callable[[TrialContext], list[MethodResult]]] = {**METHODS, **RAY_METHODS}
"""Local and Ray Tune methods by name."""

__all__ = [
    "ALL_METHODS",
    "METHODS",
    "METHOD_NEEDS",
    "RAY_METHODS",
    "MethodResult",
    "TrialContext",
    "constant",
    "cosine",
    "hyperband",
    "mean_schedule",
    "open_loop",
    "plateau",
    "prodigy",
    "random_search",
    "ray_asha",
    "ray_pbt",
    "schedulefree",
    "tpe",
]
