"""Tests for rlagent.bench.report: the statistics, ranks, scores, honesty marks and the markdown table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rlagent.bench.methods.base import MethodResult
from rlagent.bench.report import aggregate, aggregate_by_family, ci95, markdown_table, policy_schedule, summarize


def _result(method: str, workload: str, seed: int, test: float, **kw) -> MethodResult:
    base = dict(val_acc=test, epochs=10, seconds=1.0, details={})
    base.update(kw)
    return MethodResult(method=method, workload=workload, seed=seed, test_acc=test, **base)


def test_ci_is_the_student_t_interval() -> None:
    accs = [0.61, 0.70, 0.64, 0.66]
    rows = summarize([_result("constant", "w", s, a) for s, a in enumerate(accs)])
    (row,) = rows
    low, high = stats.t.interval(0.95, len(accs) - 1, loc=np.mean(accs), scale=stats.sem(accs))
    assert row.n_seeds == 4 and row.test_acc == pytest.approx(np.mean(accs))
    assert row.test_ci95 == pytest.approx((high - low) / 2)
    assert row.test_std == pytest.approx(np.std(accs, ddof=1))


def test_one_seed_has_no_interval() -> None:
    rows = summarize([_result("constant", "w", 0, 0.5)])
    assert math.isnan(rows[0].test_ci95)
    assert "0.500 ± n/a" in markdown_table(rows)


def test_ranks_scores_and_aggregate() -> None:
    results = [
        # workload a (chance 0.25): cosine best, constant and random-4 tie
        *[_result("cosine", "a", s, 0.85) for s in range(2)],
        *[_result("constant", "a", s, 0.55) for s in range(2)],
        *[_result("random-4", "a", s, 0.55, epochs=40) for s in range(2)],
        # workload b (chance 0.5): constant best, cosine worst
        *[_result("cosine", "b", s, 0.6) for s in range(2)],
        *[_result("constant", "b", s, 0.9) for s in range(2)],
        *[_result("random-4", "b", s, 0.7, epochs=40) for s in range(2)],
    ]
    rows = summarize(results, chance={"a": 0.25, "b": 0.5})
    by = {(r.workload, r.method): r for r in rows}
    # methods in the canonical order within each workload
    assert [r.method for r in rows if r.workload == "a"] == ["random-4", "constant", "cosine"]
    assert by["a", "cosine"].rank == 1 and by["a", "constant"].rank == by["a", "random-4"].rank == 2.5
    assert by["b", "constant"].rank == 1 and by["b", "random-4"].rank == 2 and by["b", "cosine"].rank == 3
    assert by["a", "cosine"].score == pytest.approx(1.0)
    assert by["a", "constant"].score == pytest.approx((0.55 - 0.25) / (0.85 - 0.25))
    assert by["b", "cosine"].score == pytest.approx((0.6 - 0.5) / (0.9 - 0.5))
    assert by["a", "random-4"].epochs == 40
    agg = {a.method: a for a in aggregate(rows)}
    assert agg["cosine"].mean_rank == pytest.approx(2.0) and agg["constant"].mean_rank == pytest.approx(1.75)
    assert agg["cosine"].mean_score == pytest.approx((1.0 + 0.25) / 2)
    assert agg["random-4"].workloads == 2 and agg["random-4"].mean_epochs == 40
    table = markdown_table(rows, title="t")
    assert table.startswith("# t\n") and "chance = 1 / number of classes" in table
    assert "| a | cosine | 2 | 10 | 1.00 | 0.850 | 0.850 ± 0.000 | 1 | 1.00 |" in table
    assert "| constant | 2 | 0.750 | 1.75 | 10 |" in table and "| cosine | 2 | 0.625 | 2.00 | 10 |" in table


def test_policy_rows_on_training_workloads_are_marked() -> None:
    results = [
        _result("policy", "seen", 0, 0.9),
        _result("open-loop", "seen", 0, 0.8),
        _result("constant", "seen", 0, 0.7),
        _result("policy", "new", 0, 0.6),
        _result("constant", "new", 0, 0.5),
    ]
    rows = summarize(results, trained_on=["seen"])
    marked = {(r.workload, r.method) for r in rows if r.trained_on}
    assert marked == {("seen", "policy"), ("seen", "open-loop")}
    table = markdown_table(rows)
    assert "| seen | policy † |" in table and "| seen | open-loop † |" in table and "| new | policy |" in table
    assert "**Not held out:** the policy was trained on seen" in table
    assert "| policy † | 2 |" in table  # the aggregate says so too
    # the per-run flag written by the policy method marks the same way
    flagged = [_result("policy", "seen", 0, 0.9, details={"trained_on": True}), _result("constant", "seen", 0, 0.7)]
    assert [r.trained_on for r in summarize(flagged)] == [False, True]  # constant, policy
    assert "†" not in markdown_table(summarize(results))


def test_open_loop_schedule_is_the_geometric_mean_over_seeds() -> None:
    def run(seed: int, steps: list[tuple[float, int]]) -> MethodResult:
        hist = [{"epoch": i + 1, "lr": lr, "batch_size": bs, "val_acc": 0.5} for i, (lr, bs) in enumerate(steps)]
        return _result("policy", "w", seed, 0.5, details={"history": hist})

    schedule = policy_schedule([run(0, [(1e-3, 16), (1e-2, 64)]), run(1, [(1e-1, 64)])], epochs=3)
    # the second run diverged after one epoch: its last entry stands for the rest
    assert [lr for lr, _ in schedule] == pytest.approx([1e-2, math.sqrt(1e-3), math.sqrt(1e-3)])
    assert [bs for _, bs in schedule] == [32, 64, 64]


def test_table_numbers_are_the_rows_numbers() -> None:
    results = [
        *[_result("random-16", "w", s, a, epochs=160, seconds=12.5) for s, a in enumerate([0.8, 0.9, 1.0])],
        *[_result("policy", "w", s, a, val_acc=a - 0.01) for s, a in enumerate([0.7, 0.75, 0.8])],
    ]
    rows = summarize(results, chance={"w": 0.5})
    parsed = {}
    for line in markdown_table(rows).splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[0] == "w":
            parsed[cells[1]] = cells
    assert set(parsed) == {"random-16", "policy"}
    t = stats.t.ppf(0.975, 2)
    random16, policy = parsed["random-16"], parsed["policy"]
    assert random16[2:6] == ["3", "160", "12", "0.900"]
    assert random16[6] == f"0.900 ± {t * 0.1 / math.sqrt(3):.3f}" == "0.900 ± 0.248"
    assert random16[7:] == ["1", "1.00"]
    assert policy[2:6] == ["3", "10", "1.00", "0.740"]
    assert policy[6] == f"0.750 ± {t * 0.05 / math.sqrt(3):.3f}"
    assert policy[7:] == ["2", f"{(0.75 - 0.5) / (0.9 - 0.5):.2f}"]


def test_ci95_and_aggregate_without_scores() -> None:
    mean, half = ci95([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and half == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert math.isnan(ci95([0.5])[1])
    # every method at chance: no score, but ranks and epochs still aggregate
    rows = summarize([_result("constant", "w", 0, 0.5), _result("policy", "w", 0, 0.5)], chance={"w": 0.5})
    assert all(math.isnan(r.score) for r in rows) and [r.rank for r in rows] == [1.5, 1.5]
    agg = aggregate(rows)
    assert all(math.isnan(a.mean_score) and a.mean_rank == 1.5 and a.mean_epochs == 10 for a in agg)
    assert "| constant | 1 | n/a | 1.50 | 10 |" in markdown_table(rows)


def test_aggregate_by_family_in_the_table() -> None:
    results = [
        _result(m, w, 0, acc)
        for w, accs in (("a", (0.9, 0.6)), ("b", (0.8, 0.4)), ("c", (0.5, 0.7)))
        for m, acc in zip(("constant", "cosine"), accs)
    ]
    rows = summarize(results)
    families = {"a": "recurrent", "b": "recurrent", "c": "rmsprop"}
    by = {(f.family, f.method): f for f in aggregate_by_family(rows, families)}
    assert by[("recurrent", "constant")].workloads == 2 and by[("recurrent", "constant")].mean_rank == 1.0
    assert by[("recurrent", "cosine")].mean_score == pytest.approx((0.6 / 0.9 + 0.4 / 0.8) / 2)
    assert by[("rmsprop", "cosine")].mean_rank == 1.0 and by[("rmsprop", "constant")].mean_rank == 2.0
    table = markdown_table(rows, families=families)
    assert "| method | recurrent (2) | rmsprop (1) |" in table
    assert "| constant | 1.00 / 1.0 | 0.71 / 2.0 |" in table
    assert "By family" not in markdown_table(rows)  # no labels, no family table
