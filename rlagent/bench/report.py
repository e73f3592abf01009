"""The benchmark's report: per-workload rows, their aggregate and the markdown table.

Pure functions of the method results (:class:`~rlagent.bench.methods.base.MethodResult`): means over
seeds with Student-t 95% confidence intervals, ranks and normalised scores within each workload,
the aggregate over workloads, and the honesty marks (†) on rows of a policy that was trained on
the workload. :mod:`rlagent.bench.runner` runs the methods and writes these out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from rlagent.bench.methods.base import MethodResult
from rlagent.bench.methods.schedules import mean_schedule
from rlagent.errors import RLAgentError
from rlagent.hparams import epoch_lr

__all__ = [
    "METHOD_ORDER",
    "POLICY_METHODS",
    "SCORE_DEFINITION",
    "AggregateRow",
    "BenchRow",
    "FamilyRow",
    "aggregate",
    "aggregate_by_family",
    "ci95",
    "markdown_table",
    "policy_schedule",
    "summarize",
]

METHOD_ORDER = (
    "random-1", "random-4", "random-16", "tpe-16", "hyperband", "ray-asha", "pbt-8", "ray-pbt-8", "ray-pb2-8",
    "constant", "cosine", "plateau", "warmup-cosine", "schedulefree", "prodigy",
    "lr-finder-steep", "lr-finder-min10", "lr-finder-best", "open-loop", "policy", "policy-probe", "policy-best-4",
)  # fmt: skip
"""Order of the methods in tables and plots (others follow alphabetically): searches, then single
runs without search, the LR range test, and the policy's rows last."""
POLICY_METHODS = ("policy", "policy-probe", "policy-best-4", "open-loop")
"""Methods whose result depends on the policy (marked when it trained on the workload)."""
SCORE_DEFINITION = (
    "score = (test acc - chance) / (best method's test acc - chance) within each workload, "
    "chance = 1 / number of classes (1 = the best method; 0 = chance)"
)


@dataclass
class BenchRow:
    """One method on one workload, over seeds."""

    workload: str
    method: str
    n_seeds: int
    epochs: float
    """Mean epochs trained per seed (the method's compute)."""
    seconds: float
    """Mean wall seconds per seed."""
    val_acc: float
    """Mean validation accuracy of the selected runs (what selection saw)."""
    test_acc: float
    """Mean test accuracy over seeds."""
    test_ci95: float
    """Half-width of the 95% confidence interval of the mean (Student t, n-1 dof); NaN for 1 seed."""
    test_std: float
    """Sample standard deviation over seeds (NaN for 1 seed)."""
    rank: float
    """Rank by mean test accuracy within the workload (1 = best, ties share the average)."""
    score: float
    """Normalised score, see :data:`SCORE_DEFINITION`."""
    trained_on: bool
    """True when the policy behind this row was trained on this workload (not a held-out result)."""


@dataclass
class AggregateRow:
    """One method across workloads."""

    method: str
    workloads: int
    """Workloads it ran on."""
    mean_score: float
    mean_rank: float
    mean_epochs: float
    trained_on: tuple[str, ...]
    """Workloads among them that the policy behind this method was trained on."""


@dataclass
class FamilyRow:
    """One method on one family of workloads (e.g. the recurrent ones)."""

    family: str
    method: str
    workloads: int
    """Workloads of the family it ran on."""
    mean_score: float
    mean_rank: float


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t); NaN width for n < 2."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _marked(result: MethodResult, trained_on: Iterable[str]) -> bool:
    if result.method not in POLICY_METHODS:
        return False
    flag = result.details.get("trained_on") if isinstance(result.details, Mapping) else None
    if isinstance(flag, (list, tuple)):
        flag = result.workload in flag
    return bool(flag) or result.workload in set(trained_on)


def summarize(
    results: Iterable[MethodResult],
    *,
    chance: Mapping[str, float] | None = None,
    trained_on: Iterable[str] = (),
) -> list[BenchRow]:
    """Rows of the table: each method on each workload, over its seeds.

    Args:
        results: Method results (any seeds, workloads and methods).
        chance: Chance accuracy per workload (1 / classes) for the score; missing: 0.
        trained_on: Workloads the benchmarked policy was trained on. Results of ``policy`` and
            ``open-loop`` there are marked, as are those whose ``details["trained_on"]`` says so.

    Returns:
        Rows ordered by workload (first appearance) and method (:data:`METHOD_ORDER`).
    """
    trained_on = tuple(trained_on)
    chance = chance or {}
    groups: dict[tuple[str, str], list[MethodResult]] = {}
    for r in results:
        groups.setdefault((r.workload, r.method), []).append(r)
    # Marking one policy-derived row of a workload marks them all: open-loop replays the policy.
    marked_workloads = {w for (w, _), rs in groups.items() if any(_marked(r, trained_on) for r in rs)}
    rows: list[BenchRow] = []
    for workload in dict.fromkeys(w for w, _ in groups):
        block = []
        for method in sorted((m for w, m in groups if w == workload), key=method_key):
            rs = sorted(groups[(workload, method)], key=lambda r: r.seed)
            test = [r.test_acc for r in rs]
            mean, half = ci95(test)
            block.append(
                BenchRow(
                    workload=workload,
                    method=method,
                    n_seeds=len(rs),
                    epochs=float(np.mean([r.epochs for r in rs])),
                    seconds=float(np.mean([r.seconds for r in rs])),
                    val_acc=float(np.mean([r.val_acc for r in rs])),
                    test_acc=mean,
                    test_ci95=half,
                    test_std=float(np.std(test, ddof=1)) if len(test) > 1 else math.nan,
                    rank=math.nan,
                    score=math.nan,
                    trained_on=method in POLICY_METHODS and workload in marked_workloads,
                )
            )
        accs = np.array([row.test_acc for row in block])
        ranks = stats.rankdata(-accs, method="average")
        best, low = float(accs.max()), float(chance.get(workload, 0.0))
        for row, rank in zip(block, ranks):
            row.rank = float(rank)
            row.score = (row.test_acc - low) / (best - low) if best > low else math.nan
        rows.extend(block)
    return rows


def aggregate(rows: Sequence[BenchRow]) -> list[AggregateRow]:
    """Each method's mean score and mean rank over the workloads it ran on."""
    out = []
    for method in sorted({r.method for r in rows}, key=method_key):
        mine = [r for r in rows if r.method == method]
        scores = [r.score for r in mine if not math.isnan(r.score)]
        out.append(
            AggregateRow(
                method=method,
                workloads=len(mine),
                mean_score=float(np.mean(scores)) if scores else math.nan,
                mean_rank=float(np.mean([r.rank for r in mine])),
                mean_epochs=float(np.mean([r.epochs for r in mine])),
                trained_on=tuple(r.workload for r in mine if r.trained_on),
            )
        )
    return out


def aggregate_by_family(rows: Sequence[BenchRow], families: Mapping[str, str]) -> list[FamilyRow]:
    """Each method's mean score and mean rank within each family of workloads.

    Args:
        rows: Output of :func:`summarize`.
        families: Family label of each workload (``WorkloadSpec.family``); missing or empty: ``-``.

    Returns:
        Rows ordered by family (first appearance) and method (:data:`METHOD_ORDER`).
    """

    def label(w: str) -> str:
        return families.get(w) or "-"

    out = []
    for family in dict.fromkeys(label(r.workload) for r in rows):
        for method in sorted({r.method for r in rows if label(r.workload) == family}, key=method_key):
            mine = [r for r in rows if r.method == method and label(r.workload) == family]
            scores = [r.score for r in mine if not math.isnan(r.score)]
            out.append(
                FamilyRow(
                    family=family,
                    method=method,
                    workloads=len(mine),
                    mean_score=float(np.mean(scores)) if scores else math.nan,
                    mean_rank=float(np.mean([r.rank for r in mine])),
                )
            )
    return out


def _family_table(rows: Sequence[BenchRow], families: Mapping[str, str]) -> list[str]:
    """Markdown lines: one row per method, one column per family, cells "mean score / mean rank"."""
    by_family = aggregate_by_family(rows, families)
    names = list(dict.fromkeys(f.family for f in by_family))
    counts = {n: len({r.workload for r in rows if (families.get(r.workload) or "-") == n}) for n in names}
    cell = {(f.family, f.method): f"{_num(f.mean_score, '.2f')} / {f.mean_rank:.1f}" for f in by_family}
    lines = [
        "By family (mean score / mean rank over the family's workloads):",
        "",
        "| method | " + " | ".join(f"{n} ({counts[n]})" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for method in sorted({r.method for r in rows}, key=method_key):
        lines.append(f"| {method} | " + " | ".join(cell.get((n, method), "") for n in names) + " |")
    return lines


def _num(x: float, fmt: str = ".3f") -> str:
    return "n/a" if math.isnan(x) else format(x, fmt)


def _seconds(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


def _epochs(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def markdown_table(
    rows: Sequence[BenchRow], *, title: str | None = None, families: Mapping[str, str] | None = None
) -> str:
    """The benchmark as markdown: per-workload rows, the aggregate (by family too) and the definitions used.

    Args:
        rows: Output of :func:`summarize`.
        title: Optional heading line (e.g. spec, policy and seeds).
        families: Family label of each workload; with two or more families, a per-family table follows the
            aggregate.
    """
    lines: list[str] = []
    if title:
        lines += [f"# {title}", ""]
    marked = sorted({r.workload for r in rows if r.trained_on})
    if marked:
        lines += [
            f"**Not held out:** the policy was trained on {', '.join(marked)}; "
            "its rows there (marked †) do not measure transfer.",
            "",
        ]
    lines += [
        "| workload | method | seeds | epochs | seconds | val acc | test acc (mean ± 95% CI) | rank | score |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        method = f"{r.method} †" if r.trained_on else r.method
        lines.append(
            f"| {r.workload} | {method} | {r.n_seeds} | {_epochs(r.epochs)} | {_seconds(r.seconds)} | {_num(r.val_acc)} "
            f"| {_num(r.test_acc)} ± {_num(r.test_ci95)} | {r.rank:g} | {_num(r.score, '.2f')} |"
        )
    agg = aggregate(rows)
    n_workloads = len({r.workload for r in rows})
    lines += [
        "",
        f"Aggregate over {n_workloads} workload{'s' if n_workloads != 1 else ''}:",
        "",
        "| method | workloads | mean score | mean rank | mean epochs |",
        "|---|---:|---:|---:|---:|",
    ]
    for a in agg:
        method = f"{a.method} †" if a.trained_on else a.method
        lines.append(
            f"| {method} | {a.workloads} | {_num(a.mean_score)} | {a.mean_rank:.2f} | {_epochs(round(a.mean_epochs, 1))} |"
        )
    if families and len({families.get(r.workload) or "-" for r in rows}) > 1:
        lines += ["", *_family_table(rows, families)]
    lines += [
        "",
        "- Every method selects its run by validation accuracy only; test accuracy is only reported.",
        "- ± is the half-width of the 95% confidence interval of the mean over seeds (Student t, n-1 dof); "
        "seeds pair across methods (same split, initial weights and data order).",
        "- epochs: epochs trained per seed by the method in total (its compute); seconds: wall time per seed.",
        "- rank: by mean test accuracy within the workload, 1 = best, ties share the average rank.",
        f"- {SCORE_DEFINITION}.",
    ]
    if any(r.method == "cosine" for r in rows):
        lines.append(
            "- cosine starts from the LR and batch size random search (best of 16) selected; its epochs exclude that search."
        )
    if any(r.method == "open-loop" for r in rows):
        lines.append("- open-loop replays the policy's per-epoch geometric-mean schedule over the seeds, blind.")
    if marked:
        lines.append(f"- † the policy was trained on this workload ({', '.join(marked)}); not a held-out result.")
    return "\n".join(lines) + "\n"


def policy_schedule(results: Iterable[MethodResult], epochs: int) -> list[tuple[float, int]]:
    """The schedule ``open-loop`` replays: the per-epoch geometric mean of the policy's runs.

    Args:
        results: ``policy`` results (one per seed) with ``details["schedule"]`` or ``details["history"]``.
        epochs: Length of the schedule (a diverged run's last entry is repeated).

    Returns:
        ``[(lr, batch_size), ...]``, one pair per epoch.
    """
    schedules = []
    for r in results:
        steps = r.details.get("schedule") or [(epoch_lr(h), h["batch_size"]) for h in r.details.get("history", [])]
        if steps:
            schedules.append(steps)
    if not schedules:
        raise RLAgentError("open-loop: the policy results hold no per-epoch schedule to replay")
    return mean_schedule(schedules, epochs)
