"""RayEnvPool and ``rlagent train --backend ray`` on a real two-node Ray cluster that loses a node.

A head and a worker node, 1 CPU each (``tests/_ray_cluster.py``), shared by the module; a test
that removes the worker node gets a fresh one back for the next test. The run is real PPO on the
tiny spec (2 envs, 8 env steps per update). The worker node is removed the way a crash removes
it (its raylet killed, ``allow_graceful=False``), once the run has written its first checkpoint.
"""

from __future__ import annotations

import csv
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlagent.cli import main
from rlagent.config import load_spec
from rlagent.policy.file import load_policy
from rlagent.policy.train import PPOSettings, TrainConfig, train_policy
from rlagent.pool.ray import make_ray_pool
from tests._ray_cluster import cluster_test, connect, ensure_worker, node_dead, two_node_cluster, wait_for

pytestmark = cluster_test

PPO = PPOSettings(n_steps=4, batch_size=8, n_epochs=2, net_arch=(8,))  # 2 envs x 4 steps per update
ROLLOUT = 8
START = 300.0  # generous bounds for a loaded 2-core machine: actors import torch on start


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with two_node_cluster() as c:
        yield c


@pytest.fixture
def worker(cluster: Any) -> Iterator[Any]:
    """The cluster's one worker node (a fresh one if an earlier test removed it)."""
    node = ensure_worker(cluster)
    yield node
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _config(tmp_path: Path, timesteps: int, checkpoint_every: int = 0) -> TrainConfig:
    return TrainConfig(
        spec="tiny", timesteps=timesteps, n_envs=2, devices="cpu", out=tmp_path / "policy", run_dir=tmp_path / "run",
        checkpoint_every=checkpoint_every, progress=False, ppo=PPO,
    )  # fmt: skip


def _remove_after_first_checkpoint(cluster: Any, node: Any, run_dir: Path, events: dict[str, Any]) -> threading.Thread:
    """In the background: once a checkpoint exists, kill the node's raylet; note when Ray lists it dead."""

    def disturb() -> None:
        wait_for(lambda: any((run_dir / "checkpoints").glob("step-*")), START, "the first checkpoint")
        events["removed"] = time.monotonic()
        cluster.remove_node(node, allow_graceful=False)
        try:
            wait_for(lambda: node_dead(node.node_id), START, "Ray to list the node dead", poll=0.2)
            events["dead"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            events["error"] = exc

    thread = threading.Thread(target=disturb, daemon=True)
    thread.start()
    return thread


def _log_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "training_log.csv").open() as f:
        return list(csv.DictReader(f))


def test_env_actors_spread_over_both_nodes_and_ppo_updates(cluster: Any, worker: Any, tmp_path: Path) -> None:
    connect(cluster)
    pool = make_ray_pool(load_spec("tiny"), n_envs=2, devices="cpu")
    # Ray's runtime context inside each actor: one env on each node
    assert sorted(pool.node_ids) == sorted([cluster.head_node.node_id, worker.node_id])
    assert all(f"id {node_id[:8]}" in where for node_id, where in zip(pool.node_ids, pool.placements))
    result = train_policy(_config(tmp_path, 3 * ROLLOUT), venv=pool)  # three PPO updates
    assert result.timesteps == 3 * ROLLOUT and pool.restarts == [0, 0]
    assert load_policy(result.policy_dir).metadata["training"]["timesteps"] == 3 * ROLLOUT
    assert pool.closed


def _pause_after_first_checkpoint(pool: Any, run_dir: Path) -> tuple[threading.Event, threading.Event]:
    """Hold the run's next env step once a checkpoint exists, until the test lets it go on.

    So the node is gone before the run's next step on any host: a fast one ran all its steps
    before Ray noticed a node removed while they went on. Returns (paused, go_on).
    """
    paused, go_on = threading.Event(), threading.Event()
    step_async = pool.step_async

    def held(actions: Any) -> None:
        if not go_on.is_set() and any((run_dir / "checkpoints").glob("step-*")):
            paused.set()
            go_on.wait(START)
        step_async(actions)

    pool.step_async = held  # the instance's attribute: the VecEnv wrappers above it call it
    return paused, go_on


def test_lost_node_with_a_replacement_costs_an_episode(cluster: Any, worker: Any, tmp_path: Path) -> None:
    connect(cluster)
    pool = make_ray_pool(load_spec("tiny"), n_envs=2, devices="cpu")
    lost = pool.node_ids.index(worker.node_id)
    paused, go_on = _pause_after_first_checkpoint(pool, tmp_path / "run")
    runs: dict[str, Any] = {}

    def train() -> None:  # in a thread: Ray starts a node only from the main thread
        try:
            runs["result"] = train_policy(_config(tmp_path, timesteps, checkpoint_every=ROLLOUT), venv=pool)
        except BaseException as exc:  # noqa: BLE001 - raised below
            runs["error"] = exc

    timesteps = 4 * ROLLOUT
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    wait_for(lambda: paused.is_set() or not thread.is_alive(), START, "the first checkpoint")
    assert thread.is_alive(), f"training ended before the node was removed: {runs.get('error')!r}"
    cluster.remove_node(worker, allow_graceful=False)
    added = cluster.add_node(num_cpus=1)
    wait_for(lambda: node_dead(worker.node_id), START, "Ray to list the node dead", poll=0.2)
    go_on.set()
    thread.join(timeout=2 * START)
    assert not thread.is_alive(), "training did not finish"
    if "error" in runs:
        raise runs["error"]
    result = runs["result"]
    # the lost env's actor was recreated on the new node; the other one never restarted
    assert pool.restarts[lost] == 1 and pool.restarts[1 - lost] == 0
    assert pool.node_ids[lost] == added.node_id
    # its episode ended truncated with worker_restarted (the log's "restarted" column), once
    restarted = [row for row in _log_rows(tmp_path / "run") if row["restarted"] == "1"]
    assert len(restarted) == 1 and restarted[0]["return"] == "nan"
    assert result.timesteps == timesteps
    assert load_policy(result.policy_dir).metadata["training"]["timesteps"] == timesteps


def test_lost_node_without_replacement_checkpoints_exits_and_resumes(
    cluster: Any, worker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Far more steps than can run before the lost node is noticed (a fast host ran 12 rollouts in
    # 2 s, before the removal took effect); the resume below finishes a short run instead.
    timesteps = 4000 * ROLLOUT
    argv = ["train", "--backend", "ray", "--address", cluster.address, "--spec", "tiny", "--timesteps", str(timesteps),
            "--n-envs", "2", "--devices", "cpu", "--out", str(tmp_path / "policy"), "--run-dir", str(tmp_path / "run"),
            "--checkpoint-every", str(ROLLOUT), "--n-steps", "4", "--batch-size", "8", "--ppo-epochs", "2",
            "--net-arch", "8", "--no-progress"]  # fmt: skip
    events: dict[str, Any] = {}
    thread = _remove_after_first_checkpoint(cluster, worker, tmp_path / "run", events)
    assert main(argv) == 2
    exited = time.monotonic()
    thread.join(timeout=10)
    assert "error" not in events and "dead" in events
    # bounded: at most 60 s after Ray listed the node dead (the pool gives it 30 s to come back)
    assert exited - events["dead"] <= 60, f"exited {exited - events['dead']:.0f} s after the node was listed dead"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlagent train:")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("rlagent train: error: env actor") and f"id {worker.node_id[:8]}" in line
    assert "lost its node" in line and "num_cpus=1, num_gpus=0" in line and "have CPU 1, GPU 0 in all" in line
    checkpoint = Path(re.search(r"--resume (\S+)$", line).group(1))
    state = json.loads((checkpoint / "state.json").read_text())
    # the policy of the last PPO update, with its step count: the unfinished rollout is redone
    assert state["num_timesteps"] % ROLLOUT == 0 and ROLLOUT <= state["num_timesteps"] < timesteps
    assert not (tmp_path / "policy").exists()

    ensure_worker(cluster)  # a healthy cluster again: the run goes on from the checkpoint
    finish = state["num_timesteps"] + 2 * ROLLOUT
    resume = [*argv, "--resume", str(checkpoint)]
    resume[resume.index("--timesteps") + 1] = str(finish)
    assert main(resume) == 0
    saved = load_policy(tmp_path / "policy")
    assert saved.metadata["training"]["timesteps"] == finish
