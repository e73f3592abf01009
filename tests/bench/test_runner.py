"""Tests for rlagent.bench.runner: configuration, and a real resumable run with its outputs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlagent.bench.executors import Task, route_optuna_logs
from rlagent.bench.runner import (
    BenchConfig,
    TrialError,
    longest_first,
    policy_schedule,
    run_benchmark,
)
from rlagent.cli import main
from rlagent.config import load_spec
from rlagent.errors import SpecError
from tests._processes import HAS_PROC, sigterm_when, still_alive
from tests._user_workload import write_broken_spec

METHODS = ["policy", "open-loop", "constant", "random"]


# ---------------------------------------------------------------------------------------------
# Configuration


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


def test_tasks_start_longest_first() -> None:
    spec = load_spec("default")
    tasks = [
        Task(m, w, s) for w in ("mnist1d-cnn", "mnist1d-gru") for m in ("constant", "pbt", "random") for s in (0, 1)
    ]
    order = longest_first(tasks, spec)
    assert len(order) == len(tasks) and set(order) == set(tasks)
    assert [t.method for t in order] == ["random"] * 4 + ["pbt"] * 4 + ["constant"] * 4
    assert [t.workload for t in order[:4]] == ["mnist1d-cnn", "mnist1d-cnn", "mnist1d-gru", "mnist1d-gru"]  # stable


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
    for path in trials:  # each says which CPU kernels and torch ran it, so runs can be joined knowingly
        record = json.loads(path.read_text())
        assert (
            record["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and record["torch"] == torch.__version__
        )
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


def test_benchmark_workers_route_optuna_logs_through_logging(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    optuna = pytest.importorskip("optuna")
    route_optuna_logs()  # what every benchmark worker does when it starts
    try:
        caplog.set_level(logging.INFO, logger="optuna")
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).optimize(
            lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=1
        )
        assert "Trial 0 finished" not in capfd.readouterr().err  # not through Optuna's own handler
        assert "Trial 0 finished" in caplog.text  # but as a log record
    finally:
        optuna.logging.enable_default_handler()
        optuna.logging.disable_propagation()


@pytest.mark.skipif(not HAS_PROC, reason="reads the process tree from /proc")
def test_sigterm_stops_a_benchmark_at_once_and_keeps_its_finished_trials(tmp_path: Path) -> None:
    """``kill`` ends ``rlagent bench`` with one line: its queued tasks are cancelled and its
    running ones stopped (before, every task already handed to the pool ran to the end first),
    the trials already written stay, and a rerun reuses them."""
    results = tmp_path / "bench"
    command = [
        sys.executable, "-m", "rlagent.cli", "bench", "--spec", "tiny", "--methods", "constant",
        "--epochs", "30", "--seeds", "200", "--n-workers", "2", "--no-progress", "--results", str(results),
    ]  # fmt: skip
    code, err, tree = sigterm_when(command, lambda _proc: any(results.glob("trials/*.json")))
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "rlagent bench: interrupted"
    assert not still_alive(tree, timeout=30)
    written = sorted(results.glob("trials/*.json"))
    assert 1 <= len(written) < 50  # of 200 tasks, all handed to the pool at the start
    seeds = sorted(int(path.stem.rpartition("seed")[2]) for path in written)
    again = run_benchmark(
        BenchConfig(spec="tiny", methods=["constant"], seeds=seeds, epochs=30, results_dir=results, progress=False)
    )
    assert again.trials_run == 0 and again.trials_reused == len(written)


def test_swap_schedules_replays_each_seeds_schedule_on_every_seed(
    bench: tuple[BenchConfig, object], tmp_path: Path
) -> None:
    """The script's own-schedule replays end where the policy's runs did (the replay is faithful),
    and each row holds the policy, the swapped schedules, the open-loop replay and both bounds."""
    config, _ = bench
    script = Path(__file__).parents[2] / "scripts" / "swap_schedules.py"
    out = tmp_path / "swaps.json"
    run = subprocess.run(
        [sys.executable, str(script), str(config.results_dir), "--n-workers", "1", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "ends where its policy run did: True" in run.stdout
    rows = {line.split("|")[1].strip(): line for line in run.stdout.splitlines() if line.startswith("| tiny-")}
    assert set(rows) == {"tiny-wide", "tiny-mlp"} and all(len(r.split("|")) == 9 for r in rows.values())
    stored = json.loads(out.read_text())
    assert stored["seeds"] == [0, 1] and len(stored["replays"]["tiny-wide"]["0"]["by_schedule"]) == 2
    missing = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 1 and "results.json" in missing.stderr and "Traceback" not in missing.stderr
