"""The benchmark: a policy against random search and the strongest other tuners at equal compute.

* :mod:`rlagent.bench.runner` — tasks, resume, dependencies, outputs (:func:`run_benchmark`);
* :mod:`rlagent.bench.executors` — where tasks run (worker processes or Ray tasks);
* :mod:`rlagent.bench.methods` — every method, each on the one seeded run;
* :mod:`rlagent.bench.report` and :mod:`rlagent.bench.plots` — statistics, table and plots.
"""

from __future__ import annotations

from rlagent.bench.executors import TrialError
from rlagent.bench.methods import METHODS, RAY_METHODS, MethodResult, TrialContext
from rlagent.bench.report import AggregateRow, BenchRow, aggregate, markdown_table, summarize
from rlagent.bench.runner import BenchConfig, BenchReport, run_benchmark

__all__ = [
    "METHODS",
    "RAY_METHODS",
    "AggregateRow",
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "MethodResult",
    "TrialContext",
    "TrialError",
    "aggregate",
    "markdown_table",
    "run_benchmark",
    "summarize",
]
