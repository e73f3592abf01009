"""Tests for rlagent.bench.runner: the summary maths, markdown, honesty marks, and a real resumable run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rlagent.bench.methods.base import MethodResult
from rlagent.bench.report import aggregate_by_family
from rlagent.bench.runner import (
    BenchConfig,
    TrialError,
    aggregate,
    markdown_table,
    policy_schedule,
    run_benchmark,
    summarize,
)
from rlagent.cli import main
from rlagent.errors import SpecError
from tests._user_workload import write_broken_spec

METHODS = ["policy", "open-loop", "constant", "random"]


def _result(method: str, workload: str, seed: int, test: float, **kw) -> MethodResult:
    base = dict(val_acc=test, epochs=10, seconds=1.0, details={})
    base.update(kw)
    return MethodResult(method=method, workload=workload, seed=seed, test_acc=test, **base)


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_ci_is_the_student_t_interval() -> None:
    accs = [0.61, 0.70, 0.64, 0.66]
    rows = summarize([_result("constant", "w", s, a) for s, a in enumerate(accs)])
    (row,) = rows
    low, high = stats.t.interval(0.95, len(accs) - 1, loc=np.mean(accs), scale=stats.sem(accs))
    assert row.n_seeds == 4 and row.test_acc == pytest.approx(np.mean(accs))
    assert row.test_ci95 == pytest.approx((high - low) / 2)
    assert row.test_std == pytest.approx(np.std(accs, ddof=1))


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


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seeds": 0}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"methods": ["nope"]}, "methods"),
        ({"methods": "policy"}, "methods"),
        ({"epochs": 0}, "epochs"),
        ({"n_workers": 0}, "n_workers"),
        ({"workloads": []}, "workloads"),
    ],
)
def test_config_errors_name_field_and_value(kwargs: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        BenchConfig(spec="tiny", **kwargs)
    assert info.value.field == field


def test_dependent_methods_bring_their_inputs() -> None:
    config = BenchConfig(spec="tiny", methods=["cosine", "open-loop", "constant"])
    assert config.task_methods() == ("random", "cosine", "policy", "open-loop", "constant")
    assert BenchConfig(seeds=3).seed_list == (0, 1, 2) and BenchConfig(seeds=[4, 7]).seed_list == (4, 7)


def test_unknown_workload_is_refused_before_training(tmp_path: Path) -> None:
    config = BenchConfig(spec="tiny", workloads=["nope"], methods=["constant"], results_dir=tmp_path, progress=False)
    with pytest.raises(SpecError, match="'nope'"):
        run_benchmark(config)


# ---------------------------------------------------------------------------------------------
# A real benchmark on the tiny spec


@pytest.fixture(scope="session")
def bench(tiny_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchConfig, object]:
    config = BenchConfig(
        spec="tiny", policy=tiny_policy, workloads=["tiny-wide", "tiny-mlp"], seeds=2, methods=METHODS, epochs=2,
        results_dir=tmp_path_factory.mktemp("bench") / "out", n_workers=2, devices="cpu", progress=False,
    )  # fmt: skip
    return config, run_benchmark(config)


def test_benchmark_writes_table_results_and_plots(bench: tuple[BenchConfig, object]) -> None:
    config, report = bench
    out = Path(config.results_dir)
    assert report.trials_run == 4 * 2 * 2 and report.trials_reused == 0
    assert (out / "table.md").read_text() == report.table
    for name in ("results.csv", "results.json"):
        assert (out / name).is_file()
    names = {p.name for p in report.plots}
    assert names == {
        "acc_vs_epochs__tiny-wide.png", "acc_vs_epochs__tiny-mlp.png",
        "policy_schedule__tiny-wide.png", "policy_schedule__tiny-mlp.png",
    }  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in report.plots)
    methods = {r.method for r in report.rows}
    assert {"policy", "open-loop", "constant"} <= methods and any(m.startswith("random-") for m in methods)
    for r in report.results:
        assert 0.0 <= r.test_acc <= 1.0 and 0.0 <= r.val_acc <= 1.0 and r.epochs >= 1
    policy_runs = [r for r in report.results if r.method == "policy"]
    assert all(len(r.details["history"]) == 2 for r in policy_runs)
    for r in report.results:  # open-loop replays the mean of the policy's schedules over both seeds
        if r.method == "open-loop":
            schedule = policy_schedule([p for p in policy_runs if p.workload == r.workload], epochs=2)
            assert np.allclose(r.details["schedule"], schedule)
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["results"]) == len(report.results) and doc["config"]["trained_on"] == ["tiny-mlp"]
    assert doc["config"]["chance"] == {"tiny-wide": pytest.approx(1 / 3), "tiny-mlp": pytest.approx(1 / 3)}
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("workload,method,seed,") and len(lines) == 1 + len(report.results)


def test_policy_on_its_training_workload_is_marked(bench: tuple[BenchConfig, object]) -> None:
    _, report = bench
    assert report.trained_on == ("tiny-mlp",)
    marked = {(r.workload, r.method) for r in report.rows if r.trained_on}
    assert marked == {("tiny-mlp", "policy"), ("tiny-mlp", "open-loop")}
    assert "| tiny-mlp | policy † |" in report.table and "| tiny-wide | policy |" in report.table
    assert "the policy was trained on tiny-mlp" in report.table


def test_rerun_trains_nothing_and_gives_the_same_table(bench: tuple[BenchConfig, object]) -> None:
    config, report = bench
    trials = sorted(Path(config.results_dir, "trials").glob("*.json"))
    assert len(trials) == 16
    mtimes = [p.stat().st_mtime_ns for p in trials]
    again = run_benchmark(config)
    assert again.trials_run == 0 and again.trials_reused == 16
    assert [p.stat().st_mtime_ns for p in trials] == mtimes
    assert again.table == report.table


def test_cli_resumes_a_partly_finished_benchmark(
    bench: tuple[BenchConfig, object], capsys: pytest.CaptureFixture[str]
) -> None:
    config, report = bench
    Path(config.results_dir, "trials", "constant__tiny-wide__seed1.json").unlink()
    argv = ["bench", "--spec", "tiny", "--policy", str(config.policy), "--workloads", "tiny-wide", "tiny-mlp",
            "--seeds", "2", "--methods", *METHODS, "--epochs", "2", "--results", str(config.results_dir),
            "--n-workers", "2", "--devices", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 tasks run, 15 reused" in out and "| tiny-wide | constant | 2 | 2 |" in out
    # same seed, same run: the re-run task reproduces its accuracies
    doc = json.loads(Path(config.results_dir, "results.json").read_text())
    assert [r["test_acc"] for r in doc["results"]] == [r.test_acc for r in report.results]


def test_cli_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--spec", "tiny", "--seeds", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlagent bench: error: seeds: got 0") and err.count("\n") == 1


def test_worker_failure_names_the_task_and_keeps_the_traceback(tmp_path: Path) -> None:
    spec = write_broken_spec(tmp_path)
    config = BenchConfig(
        spec=spec, workloads=["broken"], seeds=1, methods=["constant"], results_dir=tmp_path / "out",
        n_workers=1, devices="cpu", progress=False,
    )  # fmt: skip
    with pytest.raises(TrialError, match="constant__broken__seed0") as info:
        run_benchmark(config)
    assert "Traceback" in str(info.value) and "no_such_model" in info.value.remote_traceback
