"""Tests for rlagent.pool.ray: env actors on a real local Ray that raise, die, hang and come back.

One small Ray cluster (2 CPUs, no dashboard) is shared by the whole module and shut down at its
end. Every test closes its pools, so the two CPUs are free for the next test's actors. Toy envs
come from tests/_pool_envs.py (Ray workers import them by name). Skipped without Ray, except
the test of the message that names the extra to install.
"""

from __future__ import annotations

import functools
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor

from rlagent.config import load_spec
from rlagent.errors import RLAgentError, SpecError
from rlagent.policy.file import load_policy
from rlagent.policy.train import PPOSettings, TrainConfig, train_policy
from rlagent.pool.devices import WorkerSlot, plan_workers
from rlagent.pool.local import EnvWorkerError
from rlagent.pool.ray import RayEnvPool, make_ray_pool
from tests._markers import requires_ray
from tests._pool_envs import make_broken_env, make_toy_env

KEEP = np.array([[2, 1], [2, 1]])  # HyperTune "keep" action (LR x1, batch size x1) for 2 envs


def _toy_pool(n_envs: int = 2, **kwargs: Any) -> RayEnvPool:
    env_kwargs = kwargs.pop("env_kwargs", {})
    slots = plan_workers(n_envs, "cpu", cpu_count=2, cuda_count=0)
    kwargs.setdefault("step_timeout", 30.0)
    kwargs.setdefault("start_timeout", 60.0)
    kwargs.setdefault("close_timeout", 2.0)
    return RayEnvPool([functools.partial(make_toy_env, **env_kwargs) for _ in slots], slots, **kwargs)


def _actions(pool: RayEnvPool) -> np.ndarray:
    return np.zeros((pool.num_envs, 1), dtype=np.float32)


def _kill(ray: Any, actor: Any) -> None:
    """``ray.kill`` the actor and wait until it is dead (the kill itself is asynchronous)."""
    ray.kill(actor)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a call sent before the kill lands may still be answered
        try:
            ray.get(actor.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    pytest.fail("the killed actor kept answering for 30 s")


@requires_ray
def test_tiny_spec_steps_and_auto_resets(ray_cluster: Any) -> None:
    pool = make_ray_pool(load_spec("tiny"), n_envs=2, devices="cpu")
    try:
        assert pool.num_envs == 2 and not pool.shutdown_ray  # Ray was running: left as found
        assert pool.slots == (WorkerSlot("cpu", 1), WorkerSlot("cpu", 1))
        assert all(p is not None and "pid" in p for p in pool.placements)
        assert pool.env_is_wrapped(Monitor) == [True, True]
        pool.seed(5)
        first = pool.reset()
        assert pool.get_attr("workload_name") == ["tiny-mlp", "tiny-mlp"]
        pool.seed(5)
        np.testing.assert_array_equal(pool.reset(), first)
        for epoch in range(1, 4):  # the tiny spec has 3 epochs per episode
            obs, rewards, dones, infos = pool.step(KEEP)
            assert obs.shape == first.shape and rewards.dtype == np.float32
            assert [info["epoch"] for info in infos] == ([epoch] * 2 if epoch < 3 else [3, 3])
        assert dones.tolist() == [True, True]
        for info in infos:
            assert info["TimeLimit.truncated"] is False and "episode" in info
            assert info["terminal_observation"].shape == first.shape[1:]
        obs, _, dones, infos = pool.step(KEEP)  # the auto-reset envs go on
        assert not dones.any() and [info["epoch"] for info in infos] == [1, 1]
    finally:
        pool.close()


@requires_ray
def test_vec_env_api(ray_cluster: Any) -> None:
    pool = _toy_pool(2)
    try:
        assert pool.observation_space.shape == (3,) and pool.action_space.shape == (1,)
        assert pool.env_method("torch_threads") == [1, 1]  # the slot is applied in the actor
        pids = pool.env_method("pid")
        assert len(set(pids)) == 2 and all(str(pid) in p for pid, p in zip(pids, pool.placements))
        pool.set_attr("episode_len", 2, indices=[1])
        assert pool.get_attr("episode_len") == [5, 2]
        assert pool.has_attr("workload_name") and not pool.has_attr("no_such_attr")
        with pytest.raises(AttributeError, match="no_such_attr"):
            pool.get_attr("no_such_attr")

        pool.seed(7)
        pool.set_options({"level": 3})
        obs = pool.reset()
        assert obs.dtype == np.float32 and pool.reset_infos[0]["options"] == {"level": 3}
        assert obs[0, 1] != obs[1, 1]  # each env gets its own seed
        pool.seed(7)
        np.testing.assert_array_equal(pool.reset(), obs)
        obs, rewards, dones, _ = pool.step(np.array([[0.5], [-0.25]], dtype=np.float32))
        np.testing.assert_allclose(rewards, [-0.5, -0.25])
        obs, _, dones, infos = pool.step(_actions(pool))
        assert dones.tolist() == [False, True]
        assert infos[1]["TimeLimit.truncated"] is True
        assert infos[1]["terminal_observation"][0] == pytest.approx(1.0)
        assert obs[1, 0] == 0.0 and obs[0, 0] == pytest.approx(0.4)

        # reset() cancels a pending step.
        pool.step_async(_actions(pool))
        assert pool.reset()[:, 0].tolist() == [0.0, 0.0]
        assert pool.step(_actions(pool))[0][:, 0].tolist() == pytest.approx([0.2, 0.5])
    finally:
        pool.close()


@requires_ray
def test_env_exception_surfaces_with_remote_traceback(ray_cluster: Any) -> None:
    pool = _toy_pool(2, env_kwargs={"raise_at_step": 2, "workload_name": "mlp-on-mnist1d"})
    try:
        pool.reset()
        pool.step(_actions(pool))
        with pytest.raises(EnvWorkerError) as info:
            pool.step(_actions(pool))
        err = info.value
        assert err.index == 0 and err.device == "cpu" and err.workload == "mlp-on-mnist1d"
        assert err.remote_traceback is not None and "ValueError: boom at step 2" in err.remote_traceback
        for text in ("_pool_envs.py", "in step", "device=cpu", "mlp-on-mnist1d", "raised during step"):
            assert text in str(err)
        assert str(pickle.loads(pickle.dumps(err))) == str(err)
        # The actors survive their env's exception.
        pool.reset()
        assert pool.step(_actions(pool))[2].tolist() == [False, False]
        assert pool.restarts == [0, 0]
    finally:
        pool.close()


@requires_ray
def test_factory_exception_surfaces_at_construction(ray_cluster: Any) -> None:
    with pytest.raises(EnvWorkerError, match=r"(?s)during build.*RuntimeError: cannot build env on cpu"):
        RayEnvPool([make_broken_env], [WorkerSlot("cpu", 1)], start_timeout=60.0, close_timeout=2.0)


@requires_ray
def test_killed_actor_is_recreated_and_stepping_goes_on(ray_cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Env 1 sleeps in its second step, so that the kill surely lands while the step runs.
    fns = [make_toy_env, functools.partial(make_toy_env, sleep_at_step=2)]
    pool = RayEnvPool(fns, [WorkerSlot("cpu", 1)] * 2, max_restarts=2, step_timeout=30.0, close_timeout=2.0)
    try:
        pool.seed(3)
        pool.reset()
        last_obs, *_ = pool.step(_actions(pool))
        old = pool.actors[1]
        pool.step_async(_actions(pool))
        ray_cluster.kill(old)
        with caplog.at_level(logging.WARNING, logger="rlagent.pool.ray"):
            obs, rewards, dones, infos = pool.step_wait()
        assert dones.tolist() == [False, True] and rewards[1] == 0.0
        assert infos[1]["worker_restarted"] is True and infos[1]["TimeLimit.truncated"] is True
        np.testing.assert_array_equal(infos[1]["terminal_observation"], last_obs[1])
        assert obs[1, 0] == 0.0 and pool.restarts == [0, 1] and pool.actors[1] is not old
        assert "ActorDiedError" in caplog.text and "ray.kill" in caplog.text
        assert not pool.step(_actions(pool))[2].any()

        # Killed between steps: the next call recreates it, the next step reports it.
        _kill(ray_cluster, pool.actors[1])
        assert pool.get_attr("episode_len") == [5, 5]
        _, _, dones, infos = pool.step(_actions(pool))
        assert dones.tolist() == [False, True] and infos[1]["worker_restarted"] is True
        assert pool.restarts == [0, 2]
    finally:
        # close() after a death returns at once.
        ray_cluster.kill(pool.actors[0])
        start = time.monotonic()
        pool.close()
        assert time.monotonic() - start < 5.0
        pool.close()  # idempotent


@requires_ray
def test_hung_actor_hits_step_timeout_and_is_recreated(ray_cluster: Any) -> None:
    pool = _toy_pool(1, env_kwargs={"sleep_at_step": 2}, step_timeout=1.0)
    try:
        pool.reset()
        pool.step(_actions(pool))
        start = time.monotonic()
        _, _, dones, infos = pool.step(_actions(pool))
        assert time.monotonic() - start < 30.0
        assert dones.tolist() == [True] and infos[0]["worker_restarted"] is True
        assert pool.restarts == [1]
    finally:
        pool.close()


@requires_ray
def test_death_past_max_restarts_raises(ray_cluster: Any) -> None:
    pool = _toy_pool(1, max_restarts=0)
    try:
        pool.reset()
        _kill(ray_cluster, pool.actors[0])
        with pytest.raises(EnvWorkerError, match="max_restarts=0 used up") as info:
            pool.step(_actions(pool))
        assert info.value.remote_traceback is None
        with pytest.raises(EnvWorkerError, match="is not running"):  # and on every later call
            pool.step(_actions(pool))
    finally:
        pool.close()


@requires_ray
def test_unschedulable_actor_fails_within_start_timeout(ray_cluster: Any) -> None:
    # The test cluster has no GPU: an actor asking for one is never scheduled.
    start = time.monotonic()
    with pytest.raises(EnvWorkerError, match=r"start_timeout=1 s.*num_gpus=1"):
        RayEnvPool([make_toy_env], [WorkerSlot("cuda:1", 1)], start_timeout=1.0, close_timeout=1.0)
    assert time.monotonic() - start < 10.0


@requires_ray
def test_ppo_trains_on_ray_actors(ray_cluster: Any, tmp_path: Path) -> None:
    config = TrainConfig(
        spec="tiny",
        timesteps=64,
        n_envs=2,
        out=tmp_path / "pol",
        run_dir=tmp_path / "run",
        checkpoint_every=0,
        progress=False,
        ppo=PPOSettings(n_steps=16, batch_size=32, net_arch=(8,)),
    )
    pool = make_ray_pool(load_spec("tiny"), n_envs=2, devices="cpu")
    result = train_policy(config, venv=pool)
    assert pool.closed and result.timesteps == 64 and result.episodes > 0
    saved = load_policy(result.policy_dir)
    assert saved.metadata["training"]["n_envs"] == 2 and saved.metadata["training"]["devices"] == ["cpu", "cpu"]
    obs = np.zeros((1, *saved.observation_space.shape), dtype=np.float32)
    assert saved.predict(obs).shape == (1, 2)


@requires_ray
def test_each_ray_actor_owns_a_population_and_is_recreated_with_it(ray_cluster: Any) -> None:
    from stable_baselines3 import PPO

    pool = make_ray_pool(load_spec("tiny"), n_envs=2, devices="cpu", population=2)
    try:
        assert pool.num_envs == 4 and [s.device for s in pool.slots] == ["cpu", "cpu"]
        pool.seed(1)
        pool.reset()
        assert [i["episode_seed"] for i in pool.reset_infos] == [1, 2, 3, 4]
        keep = np.tile([2, 1], (4, 1))
        last_obs, *_ = pool.step(keep)
        _kill(ray_cluster, pool.workers.actors[1])
        obs, rewards, dones, infos = pool.step(keep)
        assert dones.tolist() == [False, False, True, True] and pool.restarts == [0, 1]
        assert all(infos[j]["worker_restarted"] for j in (2, 3))
        np.testing.assert_array_equal(infos[3]["terminal_observation"], last_obs[3])
        model = PPO("MlpPolicy", pool, n_steps=8, batch_size=16, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
        model.learn(total_timesteps=32)
        assert model.num_timesteps == 32
    finally:
        pool.close()
    assert pool.closed


@requires_ray
def test_make_ray_pool_refuses_held_out_workloads() -> None:
    with pytest.raises(SpecError, match="held out"):
        make_ray_pool(load_spec("tiny"), workloads=["tiny-wide"])


def test_without_ray_the_extra_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rlagent.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RLAgentError, match=r"pip install 'rlagent\[ray\]'"):
        make_ray_pool(load_spec("tiny"))
    assert main(["train", "--backend", "ray", "--spec", "tiny", "--timesteps", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'rlagent[ray]'" in err
