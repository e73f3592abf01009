"""``rlagent bench --backend ray`` on a real two-node Ray cluster that loses its worker node.

A head and a worker node, 1 CPU each (``tests/_ray_cluster.py``). The benchmark (the constant
baseline on the tiny spec's held-out workload, 4 seeds) runs once undisturbed and once while
the worker node is killed in the middle of a task: that task runs again on the head node, the
trials finished before are not trained again, and every result but wall time is the same.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from rlagent.bench.runner import BenchConfig, BenchReport, run_benchmark
from tests._ray_cluster import cluster_test, connect, two_node_cluster, wait_for

pytestmark = cluster_test

SEEDS = 4
EPOCHS = 500
"""About 5 s a task on an idle core (10 ms an epoch): the node is removed while one runs, well
before it can finish (30 epochs took 0.2–0.5 s, and the task could finish before the raylet died)."""


def _config(results: Path) -> BenchConfig:
    return BenchConfig(
        spec="tiny", workloads=["tiny-wide"], seeds=SEEDS, methods=["constant"], epochs=EPOCHS, results_dir=results,
        n_workers=2, devices="cpu", progress=False, backend="ray",
    )  # fmt: skip


def _attempts(results: Path, task: str) -> list[dict[str, Any]]:
    path = results / "work" / task / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _running_on(results: Path, node_id: str) -> str | None:
    """A task whose latest attempt runs on the node and has not written its trial file."""
    for task_dir in sorted((results / "work").glob("*")) if (results / "work").is_dir() else []:
        attempts = _attempts(results, task_dir.name)
        if (
            attempts
            and attempts[-1]["node_id"] == node_id
            and not (results / "trials" / f"{task_dir.name}.json").exists()
        ):
            return task_dir.name
    return None


def _no_seconds(report: BenchReport) -> tuple[str, list[dict[str, Any]]]:
    """The table without its wall-seconds column, and every result without its wall time."""
    table = re.sub(r"^(\|[^|]*\|[^|]*\|[^|]*\|[^|]*\|)[^|]*\|", r"\1 |", report.table, flags=re.M)
    results = [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in report.results]
    return table, results


def test_trials_of_a_lost_node_run_again_elsewhere_and_finished_ones_are_kept(tmp_path: Path) -> None:
    with two_node_cluster() as cluster:
        head, worker = cluster.head_node.node_id, next(iter(cluster.worker_nodes)).node_id
        connect(cluster)
        calm = run_benchmark(_config(tmp_path / "calm"))
        assert {
            a["node_id"] for t in (tmp_path / "calm" / "work").iterdir() for a in _attempts(tmp_path / "calm", t.name)
        } == {head, worker}  # tasks ran on both nodes

        hit = tmp_path / "hit"
        events: dict[str, Any] = {}

        def disturb() -> None:
            wait_for(lambda: _running_on(hit, worker) is not None, 300, "a task on the worker node", poll=0.05)
            events["task"] = _running_on(hit, worker)
            events["started"] = _attempts(hit, events["task"])[-1]["time"]
            events["finished"] = {p.name: p.stat().st_mtime_ns for p in (hit / "trials").glob("*.json")}
            cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
            events["removed"] = time.time()

        thread = threading.Thread(target=disturb, daemon=True)
        thread.start()
        report = run_benchmark(_config(hit))
        thread.join(timeout=60)

    assert "removed" in events, "the worker node was not removed during the benchmark"
    assert events["removed"] - events["started"] < 2.0, "the node was removed late in the task"
    # the interrupted task ran again, on the head node, and finished
    attempts = _attempts(hit, events["task"])
    assert [a["node_id"] for a in attempts] == [worker, head]
    assert (hit / "trials" / f"{events['task']}.json").is_file()
    # trials finished before the loss were not run again
    for name, mtime in events["finished"].items():
        assert (hit / "trials" / name).stat().st_mtime_ns == mtime
        assert len(_attempts(hit, name.removesuffix(".json"))) == 1
    assert report.trials_run == SEEDS and report.trials_reused == 0
    assert _no_seconds(report) == _no_seconds(calm)
