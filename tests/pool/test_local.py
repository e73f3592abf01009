"""Tests for rlagent.pool: real worker processes that raise, die, hang and get restarted.

Env factories come from tests/_pool_envs.py because forkserver/spawn children import them by
name. Timeouts are small so that the whole file stays fast.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from rlagent.pool.devices import WorkerSlot, plan_workers
from rlagent.pool.local import EnvPool, EnvWorkerError
from tests._pool_envs import make_broken_env, make_toy_env


@pytest.fixture(scope="module", autouse=True)
def _preload_forkserver() -> None:
    # Workers spend most of their start-up importing torch; a forkserver that has already
    # imported it forks them in milliseconds. Only takes effect if no test has started the
    # forkserver yet, and changes nothing but speed.
    mp.get_context("forkserver").set_forkserver_preload(["rlagent.pool", "tests._pool_envs"])


def _pool(n_envs: int = 2, **kwargs: Any) -> EnvPool:
    env_kwargs = kwargs.pop("env_kwargs", {})
    slots = plan_workers(n_envs, "cpu", cpu_count=2, cuda_count=0)
    fns = [functools.partial(make_toy_env, **env_kwargs) for _ in slots]
    kwargs.setdefault("step_timeout", 30.0)
    kwargs.setdefault("close_timeout", 2.0)
    return EnvPool(fns, slots, **kwargs)


@pytest.fixture
def pool() -> Iterator[EnvPool]:
    p = _pool(2, max_restarts=2)
    yield p
    p.close()


def _actions(pool: EnvPool) -> np.ndarray:
    return np.zeros((pool.num_envs, 1), dtype=np.float32)


def _kill(pool: EnvPool, i: int) -> None:
    pid = pool.pids[i]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def test_vec_env_api(pool: EnvPool) -> None:
    assert pool.num_envs == 2
    assert pool.observation_space.shape == (3,)
    assert pool.action_space.shape == (1,)
    assert pool.slots == (WorkerSlot("cpu", 1), WorkerSlot("cpu", 1))
    assert pool.restarts == [0, 0]
    assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
    assert pool.env_method("pid") == pool.pids
    # The slot is applied inside the worker.
    assert pool.env_method("torch_threads") == [1, 1]
    assert pool.get_attr("device") == ["cpu", "cpu"]
    pool.set_attr("episode_len", 2, indices=[1])
    assert pool.get_attr("episode_len") == [5, 2]
    assert pool.has_attr("workload_name") and not pool.has_attr("no_such_attr")
    with pytest.raises(AttributeError, match="no_such_attr"):
        pool.get_attr("no_such_attr")
    assert pool.env_is_wrapped(TimeLimit) == [False, False]

    pool.set_options({"level": 3})
    obs = pool.reset()
    assert obs.shape == (2, 3) and obs.dtype == np.float32
    assert pool.reset_infos[0]["options"] == {"level": 3}
    obs, rewards, dones, infos = pool.step(np.array([[0.5], [-0.25]], dtype=np.float32))
    np.testing.assert_allclose(rewards, [-0.5, -0.25])
    assert dones.tolist() == [False, False]
    obs, _, dones, infos = pool.step(_actions(pool))
    # Env 1 has episode_len 2: it ends, reports its last obs and is auto-reset.
    assert dones.tolist() == [False, True]
    assert infos[1]["TimeLimit.truncated"] is True
    assert infos[1]["terminal_observation"][0] == pytest.approx(1.0)
    assert obs[1, 0] == 0.0 and obs[0, 0] == pytest.approx(0.4)

    # reset() cancels a pending step; its replies are dropped, not mistaken for the reset's.
    pool.step_async(_actions(pool))
    obs = pool.reset()
    assert obs[:, 0].tolist() == [0.0, 0.0]
    obs, _, dones, _ = pool.step(_actions(pool))
    assert obs[:, 0].tolist() == pytest.approx([0.2, 0.5]) and not dones.any()


def test_same_seeds_give_same_observations() -> None:
    def rollout(pool: EnvPool, seed: int) -> np.ndarray:
        pool.seed(seed)
        frames = [pool.reset()]
        frames += [pool.step(_actions(pool))[0] for _ in range(6)]
        return np.stack(frames)

    a = _pool(2)
    b = _pool(2, start_method="spawn")
    try:
        first = rollout(a, 7)
        np.testing.assert_array_equal(first, rollout(b, 7))
        np.testing.assert_array_equal(first, rollout(a, 7))
        assert not np.array_equal(first, rollout(b, 8))
        assert not np.array_equal(first[:, 0], first[:, 1])  # each env gets its own seed
    finally:
        a.close()
        b.close()


def test_env_exception_surfaces_with_traceback_device_and_workload() -> None:
    pool = _pool(2, env_kwargs={"raise_at_step": 2, "workload_name": "mlp-on-mnist1d"})
    try:
        pool.reset()
        pool.step(_actions(pool))
        with pytest.raises(EnvWorkerError) as info:
            pool.step(_actions(pool))
        err = info.value
        assert isinstance(err, RuntimeError)
        assert err.index == 0 and err.device == "cpu" and err.workload == "mlp-on-mnist1d"
        assert err.remote_traceback is not None and "ValueError: boom at step 2" in err.remote_traceback
        message = str(err)
        for text in ("ValueError: boom at step 2", "_pool_envs.py", "device=cpu", "mlp-on-mnist1d"):
            assert text in message
        copy = pickle.loads(pickle.dumps(err))
        assert (copy.index, copy.workload, str(copy)) == (0, "mlp-on-mnist1d", message)
        # The workers survive their env's exception: the pool can be reset and used again.
        pool.reset()
        assert pool.step(_actions(pool))[2].tolist() == [False, False]
        assert pool.restarts == [0, 0]
    finally:
        pool.close()


def test_factory_exception_surfaces_at_construction() -> None:
    slots = [WorkerSlot("cpu", 1)]
    with pytest.raises(EnvWorkerError, match=r"(?s)building|build.*cannot build env on cpu"):
        EnvPool([make_broken_env], slots, close_timeout=2.0)


def test_killed_worker_is_restarted_and_training_goes_on(pool: EnvPool, caplog: pytest.LogCaptureFixture) -> None:
    pool.seed(3)
    pool.reset()
    last_obs, *_ = pool.step(_actions(pool))
    old_pid = pool.pids[1]

    _kill(pool, 1)
    with caplog.at_level(logging.WARNING, logger="rlagent.pool"):
        obs, rewards, dones, infos = pool.step(_actions(pool))
    assert "killed by SIGKILL" in caplog.text and "restart 1 of 2" in caplog.text
    assert dones.tolist() == [False, True]
    assert infos[1]["worker_restarted"] is True
    assert infos[1]["TimeLimit.truncated"] is True
    np.testing.assert_array_equal(infos[1]["terminal_observation"], last_obs[1])
    assert "worker_restarted" not in infos[0]
    assert obs[1, 0] == 0.0 and rewards[1] == 0.0  # fresh reset obs
    assert pool.restarts == [0, 1]
    assert pool.pids[1] not in (None, old_pid)

    # More steps work, on both envs.
    for t in range(3, 5):
        obs, _, dones, _ = pool.step(_actions(pool))
        assert dones.tolist() == [False, False]
        assert obs[0, 0] == pytest.approx(t / 5)

    # A worker killed between steps is restarted by the next command, which is retried; the
    # next step reports the lost episode.
    last_obs = obs
    _kill(pool, 0)
    time.sleep(0.2)
    assert pool.get_attr("workload_name") == ["toy-workload", "toy-workload"]
    obs, _, dones, infos = pool.step(_actions(pool))
    assert dones.tolist() == [True, False]
    assert infos[0]["worker_restarted"] is True
    np.testing.assert_array_equal(infos[0]["terminal_observation"], last_obs[0])
    assert pool.restarts == [1, 1]

    # max_restarts=2: the third death of worker 1 is an error, and close is still quick.
    _kill(pool, 1)
    pool.step(_actions(pool))
    _kill(pool, 1)
    with pytest.raises(EnvWorkerError, match="max_restarts=2") as info:
        pool.step(_actions(pool))
    assert info.value.index == 1 and info.value.remote_traceback is None
    start = time.monotonic()
    pool.close()
    pool.close()
    assert time.monotonic() - start < 5.0
    with pytest.raises(RuntimeError, match="closed"):
        pool.reset()


def test_garbage_collected_pool_stops_its_workers() -> None:
    pool = _pool(1)
    pid = pool.pids[0]
    assert pid is not None
    del pool
    gc.collect()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"worker {pid} still runs after its pool was garbage collected")


def test_hung_worker_hits_step_timeout_and_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    pool = _pool(2, env_kwargs={"sleep_at_step": 2, "sleep_s": 60.0}, step_timeout=2.0, close_timeout=1.0)
    try:
        pool.set_attr("sleep_at_step", None, indices=[1])
        pool.reset()
        pool.step(_actions(pool))
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="rlagent.pool"):
            obs, _, dones, infos = pool.step(_actions(pool))
        assert 1.9 < time.monotonic() - start < 20.0
        assert "no reply within step_timeout=2 s" in caplog.text
        assert dones.tolist() == [True, False]
        assert infos[0]["worker_restarted"] is True
        assert obs[0, 0] == 0.0 and obs[1, 0] == pytest.approx(0.4)
        assert pool.restarts == [1, 0]
        _, _, dones, _ = pool.step(_actions(pool))
        assert dones.tolist() == [False, False]

        # The fresh worker hangs again on its 2nd step; close() must not wait for it.
        pool.step_async(_actions(pool))
        time.sleep(0.5)
        start = time.monotonic()
        pool.close()
        assert time.monotonic() - start < 5.0
    finally:
        pool.close()


class _KillWorker(BaseCallback):
    """Kills one pool worker with SIGKILL at a given rollout step."""

    def __init__(self, pool: EnvPool, index: int, at_call: int) -> None:
        super().__init__()
        self.pool = pool
        self.index = index
        self.at_call = at_call
        self.restarted_seen = 0

    def _on_step(self) -> bool:
        if self.n_calls == self.at_call:
            _kill(self.pool, self.index)
        self.restarted_seen += sum(bool(i.get("worker_restarted")) for i in self.locals["infos"])
        return True


def test_ppo_learn_survives_a_killed_worker() -> None:
    pool = _pool(2)
    try:
        model = PPO(
            "MlpPolicy",
            pool,
            n_steps=8,
            batch_size=8,
            n_epochs=1,
            policy_kwargs={"net_arch": [8]},
            seed=0,
            device="cpu",
        )
        callback = _KillWorker(pool, index=0, at_call=3)
        model.learn(total_timesteps=32, callback=callback)
        assert model.num_timesteps >= 32
        assert pool.restarts == [1, 0]
        assert callback.restarted_seen == 1

        # close() is quick even with a step pending on a dead worker.
        _kill(pool, 1)
        pool.step_async(_actions(pool))
        start = time.monotonic()
        pool.close()
        assert time.monotonic() - start < 5.0 and pool.closed
    finally:
        pool.close()


def test_bad_arguments_are_rejected() -> None:
    slots = [WorkerSlot("cpu", 1)]
    with pytest.raises(ValueError, match="fork is unsafe"):
        EnvPool([make_toy_env], slots, start_method="fork")
    with pytest.raises(ValueError, match="same length"):
        EnvPool([make_toy_env, make_toy_env], slots)
    with pytest.raises(ValueError, match="step_timeout"):
        EnvPool([make_toy_env], slots, step_timeout=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_workers_are_pinned_to_their_device() -> None:
    torch.zeros(1, device="cuda")  # CUDA already initialised in the parent must not matter
    n_gpus = torch.cuda.device_count()
    slots = plan_workers(2 * n_gpus, "auto")
    pool = EnvPool([make_toy_env] * len(slots), slots, step_timeout=60.0, close_timeout=2.0)
    try:
        expected = [(s.cuda_index, s.cuda_index) for s in slots]
        assert pool.env_method("cuda_placement") == expected
        pool.reset()
        _kill(pool, len(slots) - 1)
        _, _, dones, infos = pool.step(_actions(pool))
        assert dones[-1] and infos[-1]["worker_restarted"]
        assert pool.env_method("cuda_placement") == expected
    finally:
        pool.close()
