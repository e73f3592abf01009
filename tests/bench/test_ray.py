"""Tests for rlagent.bench.methods.ray_tune: the benchmark as Ray tasks and Ray Tune's PBT, PB2 and ASHA, on a real local Ray.

One small Ray cluster (2 CPUs, no dashboard) is shared by the module and shut down at its end.
The benchmark runs on the tiny spec (2 epochs, 1 seed, workload tiny-wide). Without Ray the tests
that need it are skipped; the ones about refusing Ray methods and naming the extra still run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from rlagent._io import write_json_atomic
from rlagent.bench.executors import TRIAL_FORMAT, Job, RayTaskExecutor, Task, run_job
from rlagent.bench.methods import base
from rlagent.bench.methods.base import TrialContext
from rlagent.bench.methods.ray_tune import ASHA_BUDGET_RUNS, RAY_METHODS, ray_pb2, ray_pbt
from rlagent.bench.runner import BenchConfig, BenchReport, TrialError, run_benchmark
from rlagent.cli import main
from rlagent.config import load_spec
from rlagent.errors import SpecError
from rlagent.pool.devices import WorkerSlot
from tests._markers import requires_ray
from tests._user_workload import write_broken_spec

EPOCHS = 2
METHODS = ["constant", "policy", "ray-asha"]


# ---------------------------------------------------------------------------------------------
# Without a cluster


def test_ray_methods_are_refused_with_the_local_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SpecError, match="backend 'ray'") as info:
        BenchConfig(spec="tiny", methods=["constant", "ray-asha"])
    assert info.value.field == "methods" and info.value.value == "ray-asha"
    assert main(["bench", "--spec", "tiny", "--methods", "ray-pbt", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlagent bench: error: methods: got 'ray-pbt'") and err.count("\n") == 1
    # with the ray backend they are methods like any other, and part of "all"
    assert set(RAY_METHODS) <= set(BenchConfig(spec="tiny", backend="ray").task_methods())
    assert not set(RAY_METHODS) & set(BenchConfig(spec="tiny").task_methods())


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"backend": "dask"}, "backend"), ({"address": "auto"}, "address")]
)  # fmt: skip
def test_backend_errors_name_field_and_value(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        BenchConfig(spec="tiny", **kwargs)
    assert info.value.field == field


def test_without_ray_the_cli_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    argv = ["bench", "--spec", "tiny", "--workloads", "tiny-wide", "--seeds", "1", "--methods", "constant",
            "--results", str(tmp_path), "--backend", "ray", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'rlagent[ray]'" in err
    assert not (tmp_path / "trials").exists()  # refused before any work


# ---------------------------------------------------------------------------------------------
# On a local Ray cluster


@pytest.fixture(scope="module")
def bench(
    ray_cluster: Any, tiny_policy: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BenchConfig, BenchReport]:
    config = BenchConfig(
        spec="tiny", policy=tiny_policy, workloads=["tiny-wide"], seeds=1, methods=METHODS, epochs=EPOCHS,
        results_dir=tmp_path_factory.mktemp("ray_bench") / "out", n_workers=2, devices="cpu", progress=False,
        backend="ray",
    )  # fmt: skip
    return config, run_benchmark(config)


@requires_ray
def test_benchmark_on_ray_has_a_row_per_method(bench: tuple[BenchConfig, BenchReport]) -> None:
    config, report = bench
    assert report.trials_run == 3 and report.trials_reused == 0
    assert [r.method for r in report.rows] == ["ray-asha", "constant", "policy"]
    assert "| tiny-wide | ray-asha | 1 |" in report.table and "| tiny-wide | constant | 1 | 2 |" in report.table
    (asha,) = [r for r in report.results if r.method == "ray-asha"]
    budget = ASHA_BUDGET_RUNS * EPOCHS
    # equal compute: trials stop once 16 runs' worth of epochs are spent (+ at most one epoch per running trial)
    assert budget <= asha.epochs <= budget + 2
    assert asha.details["n_complete"] >= 1 and asha.details["n_trials"] > asha.details["n_complete"]
    assert len(asha.details["history"]) == EPOCHS and asha.val_acc == asha.details["history"][-1]["val_acc"]
    assert 0.0 <= asha.test_acc <= 1.0
    assert Path(asha.details["experiment"]).is_dir()
    assert Path(asha.details["experiment"]).is_relative_to(Path(config.results_dir, "work").absolute())
    doc = json.loads(Path(config.results_dir, "results.json").read_text())
    assert doc["config"]["backend"] == "ray"


@requires_ray
def test_rerun_with_the_ray_backend_reuses_the_trial_files(
    bench: tuple[BenchConfig, BenchReport], capsys: pytest.CaptureFixture[str]
) -> None:
    config, report = bench
    trials = sorted(Path(config.results_dir, "trials").glob("*.json"))
    assert len(trials) == 3
    mtimes = [p.stat().st_mtime_ns for p in trials]
    argv = ["bench", "--spec", "tiny", "--policy", str(config.policy), "--workloads", "tiny-wide", "--seeds", "1",
            "--methods", *METHODS, "--epochs", str(EPOCHS), "--results", str(config.results_dir),
            "--backend", "ray", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 tasks run, 3 reused" in out
    assert [p.stat().st_mtime_ns for p in trials] == mtimes
    assert Path(config.results_dir, "table.md").read_text() == report.table


@requires_ray
def test_a_failing_ray_task_is_a_trial_error_with_its_traceback(ray_cluster: Any, tmp_path: Path) -> None:
    spec = write_broken_spec(tmp_path)
    config = BenchConfig(
        spec=spec, workloads=["broken"], seeds=1, methods=["constant"], results_dir=tmp_path / "out",
        n_workers=1, devices="cpu", progress=False, backend="ray",
    )  # fmt: skip
    with pytest.raises(TrialError, match="constant__broken__seed0") as info:
        run_benchmark(config)
    assert "Traceback" in info.value.remote_traceback and "no_such_model" in info.value.remote_traceback
    assert ray_cluster.is_initialized()  # not ours to shut down


@requires_ray
def test_ray_pbt_exploits_through_checkpoints(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec("tiny")
    workload = dataclasses.replace(spec.workload("tiny-wide"), epochs=3)
    ctx = TrialContext(spec=spec, workload=workload, seed=0, workdir=tmp_path)
    (result,) = ray_pbt(ctx, population=4, interval=1)
    details = result.details
    assert result.method == "ray-pbt-4" and result.epochs == 4 * 3  # population x E, as the in-process pbt
    assert details["n_complete"] == 4 and len(details["history"]) == 3
    assert result.val_acc == max(details["final_val_accs"]) and 0.0 <= result.test_acc <= 1.0
    # two perturbations: the bottom member took a top member's checkpoint and moved away from its config
    assert details["final"] != details["initial"]
    lo, hi = workload.lr_range
    assert all(lo <= lr <= hi for lr, _ in details["final"])
    assert list(Path(details["experiment"]).glob("*/checkpoint_*/state.pt"))


@requires_ray
def test_a_ray_task_whose_trial_file_is_finished_returns_it_instead_of_training(
    ray_cluster: Any, tmp_path: Path
) -> None:
    # What a retry after a lost node finds when the first attempt wrote its file but its result
    # never came back: the file's results, not a second training run (the workload does not
    # even exist, so training would fail).
    stored = [{"method": "constant", "test_acc": 0.5}]
    job = Job(
        Task("constant", "no-such-workload", 0), load_spec("tiny"), None, {}, "f1", tmp_path / "t.json", tmp_path / "w"
    )
    write_json_atomic(job.trial_file, {"format": TRIAL_FORMAT, "fingerprint": "f1", "results": stored})
    other = dataclasses.replace(job, fingerprint="f2")  # made with other settings: runs, and fails
    with RayTaskExecutor([WorkerSlot("cpu", 1)]) as executor:
        assert executor.submit(run_job, job).result(timeout=300) == stored
        with pytest.raises(TrialError, match="no-such-workload"):
            executor.submit(run_job, other).result(timeout=300)
    attempts = [json.loads(line) for line in (tmp_path / "w" / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0]["node_id"] == ray_cluster.get_runtime_context().get_node_id()


@requires_ray
@pytest.mark.slow
def test_ray_pb2_explores_with_its_gp_within_the_bounds(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec("tiny")
    workload = dataclasses.replace(spec.workload("tiny-wide"), epochs=3)
    ctx = TrialContext(spec=spec, workload=workload, seed=0, workdir=tmp_path)
    (result,) = ray_pb2(ctx, population=4, interval=1)
    details = result.details
    assert result.method == "ray-pb2-4" and result.epochs == 4 * 3  # population x E, as ray-pbt
    assert details["n_complete"] == 4 and len(details["history"]) == 3
    assert result.val_acc == max(details["final_val_accs"]) and 0.0 <= result.test_acc <= 1.0
    assert details["initial"] == [list(c) for c in base.sample_configs(ctx, 4, base.workload_hparams(ctx))]
    # the GP's picks: the bottom trials moved to other configurations, inside the ranges
    assert details["final"] != details["initial"]
    lo, hi = workload.lr_range
    assert all(lo <= lr <= hi and bs in (8, 16, 32, 64, 128) for lr, bs in details["final"])
    assert "PB2" in details["scheduler"]
