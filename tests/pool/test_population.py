"""PopulationVecEnv: K HyperTune episodes in one process, each member a HyperTuneEnv's trajectory."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from rlagent import PopulationVecEnv
from rlagent.config import load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import EnvWorkerError, SpecError

_SYN = {"n_samples": 300, "n_features": 16, "n_informative": 4, "n_classes": 3}
MIXED: dict[str, Any] = {
    "name": "mixed",
    "seed": 0,
    "episode": {"epochs": 2, "lr_range": [1e-4, 0.3], "batch_size_range": [16, 64], "init_batch_size": 16},
    "workloads": {
        "train": ["m-mlp", "m-cnn", "m-gru"],
        "heldout": ["m-held"],
        "define": {
            "m-mlp": {"dataset": "synthetic", "model": "mlp", "dataset_args": _SYN, "model_args": {"hidden": [8]}},
            "m-cnn": {"dataset": "synthetic", "model": "cnn2d", "dataset_args": _SYN,
                      "model_args": {"image_shape": [1, 4, 4], "channels": [4]}},
            "m-gru": {"dataset": "synthetic", "model": "gru", "dataset_args": _SYN, "model_args": {"hidden": 4}},
            "m-held": {"dataset": "synthetic", "model": "mlp", "dataset_args": _SYN},
        },
    },
}  # fmt: skip
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc")
EXACT = ("workload", "epoch", "lr", "batch_size", "samples_seen", "steps", "diverged")


def _actions(k: int, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.stack([[rng.integers(0, 5), rng.integers(0, 3)] for _ in range(k)]) for _ in range(n)]


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("spec", "mode", "k", "device"),
    [
        ("tiny", "batched", 3, "cpu"),
        (MIXED, "batched", 6, "cpu"),
        (MIXED, "auto", 4, "cpu"),
        pytest.param(MIXED, "batched", 6, "cuda", marks=_CUDA),
        pytest.param("tiny", "auto", 8, "cuda", marks=_CUDA),
    ],
)
def test_member_trajectory_equals_hypertune_env(spec: Any, mode: str, k: int, device: str) -> None:
    actions = _actions(k, 7)
    actions[0][:] = [2, 1]  # one step where every member keeps its batch size (one batched group)
    pop = PopulationVecEnv(k, spec, mode=mode, device=device)
    pop.seed(11)
    first = pop.reset()
    first_infos = [dict(info) for info in pop.reset_infos]
    steps = [pop.step(a) for a in actions]
    if mode == "batched":
        assert any(way == "batched" for (_, _, way) in pop.planner.timings)
    for i in range(k):
        env = HyperTuneEnv(spec, device=device)
        obs, info = env.reset(seed=11 + i)
        np.testing.assert_allclose(first[i], obs, atol=1e-4)
        assert first_infos[i] == info
        for t, a in enumerate(actions):
            obs, reward, terminated, truncated, info = env.step(a[i])
            p_obs, p_rew, p_done, p_infos = steps[t]
            p_info = p_infos[i]
            assert p_done[i] == (terminated or truncated)
            assert p_rew[i] == pytest.approx(reward, abs=1e-4)
            assert {key: p_info[key] for key in EXACT} == {key: info[key] for key in EXACT}
            for key in METRICS:
                assert p_info[key] == pytest.approx(info[key], abs=1e-4), (i, t, key)
            if p_done[i]:
                np.testing.assert_allclose(p_info["terminal_observation"], obs, atol=1e-4)
                assert p_info["test_acc"] == pytest.approx(info["test_acc"], abs=1e-4)
                obs, _ = env.reset()  # SB3 auto-reset: the member draws its next workload itself
            np.testing.assert_allclose(p_obs[i], obs, atol=1e-4)
    pop.close()


def test_members_reset_independently_and_divergence_is_isolated() -> None:
    ref, pop = PopulationVecEnv(3, "tiny", mode="batched"), PopulationVecEnv(3, "tiny", mode="batched")
    for venv in (ref, pop):
        venv.seed(3)
        venv.reset()
    first = pop.reset_infos
    assert len({info["episode_seed"] for info in first}) == 3  # own seeds, own draws
    with torch.no_grad():
        next(pop.members[1].trainer.model.parameters()).fill_(float("inf"))
    keep = np.tile([2, 1], (3, 1))
    r_obs, r_rew, r_done, r_infos = ref.step(keep)
    obs, rew, done, infos = pop.step(keep)
    assert done.tolist() == [False, True, False]
    assert infos[1]["diverged"] and infos[1]["val_acc"] == pytest.approx(1 / 3)
    assert infos[1]["test_acc"] == pytest.approx(1 / 3) and "terminal_observation" in infos[1]
    assert pop.members[1].tracker.epoch == 0  # already reset to a fresh episode
    for i in (0, 2):
        np.testing.assert_array_equal(obs[i], r_obs[i])
        assert {k: infos[i][k] for k in METRICS} == {k: r_infos[i][k] for k in METRICS}
    obs, rew, done, infos = pop.step(keep)  # the others go on to the end of their episodes
    assert done.tolist() == [False, False, False]
    assert [info["epoch"] for info in infos] == [2, 1, 2]
    pop.close()
    ref.close()


def test_vecenv_contract() -> None:
    pop = PopulationVecEnv(2, "tiny")
    assert pop.num_envs == 2
    assert pop.observation_space == HyperTuneEnv("tiny").observation_space
    assert pop.action_space == HyperTuneEnv("tiny").action_space
    with pytest.raises(gym.error.ResetNeeded):
        pop.step(np.zeros((2, 2), dtype=np.int64))
    assert pop.seed(0) == [0, 1]
    obs = pop.reset()
    assert obs.shape == (2, *pop.observation_space.shape) and obs.dtype == np.float32
    for _ in range(4):
        obs, rew, done, infos = pop.step(np.stack([pop.action_space.sample() for _ in range(2)]))
        assert rew.shape == (2,) and done.shape == (2,) and len(infos) == 2
        assert all(pop.observation_space.contains(o) for o in obs)
    assert pop.get_attr("workload_name") == ["tiny-mlp", "tiny-mlp"]
    assert pop.env_method("placement", indices=[0])[0]["model_device"] == "cpu"
    assert pop.memory_per_member() > 0
    check_env(pop.members[0], skip_render_check=True)  # each member is the registered env itself
    norm = VecNormalize(pop, norm_reward=False)
    norm.reset()
    norm.step(np.zeros((2, 2), dtype=np.int64))
    pop.close()


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(SpecError, match="n_envs"):
        PopulationVecEnv(0, "tiny")
    with pytest.raises(SpecError, match="mode"):
        PopulationVecEnv(2, "tiny", mode="fast")
    with pytest.raises(SpecError, match="held out"):
        PopulationVecEnv(2, "tiny", workloads=["tiny-wide"])
    rollback = {
        **load_spec("tiny").to_dict(),
        "episode": {**load_spec("tiny").to_dict()["episode"], "action": "discrete-rollback"},
    }
    with pytest.raises(
        SpecError, match="episode.action: got 'discrete-rollback'; expected not discrete-rollback in a population"
    ):
        PopulationVecEnv(2, rollback)
    pop = PopulationVecEnv(1, "tiny")
    pop.reset()
    with pytest.raises(ValueError, match="action"):
        pop.step(np.array([[9, 0]]))


def test_tiny_ppo_learns_on_a_population() -> None:
    pop = PopulationVecEnv(2, "tiny")
    model = PPO("MlpPolicy", pop, n_steps=8, batch_size=8, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
    model.learn(total_timesteps=16)
    assert model.num_timesteps == 16
    pop.close()


@pytest.mark.slow  # starts two worker processes (torch imports: ~10-40 s on a busy machine)
def test_make_pool_with_population_one_worker_in_process_and_several_in_processes() -> None:
    from rlagent.config import load_spec
    from rlagent.features import FEATURE_NAMES
    from rlagent.pool import PopulationPool, make_pool

    spec = load_spec("tiny")
    single = make_pool(spec, n_envs=1, devices="cpu", population=3)
    assert isinstance(single, PopulationVecEnv) and single.num_envs == 3
    single.close()
    with pytest.raises(SpecError, match="population"):
        make_pool(spec, population=0)
    pool = make_pool(spec, n_envs=2, devices="cpu", population=2)
    try:
        assert isinstance(pool, PopulationPool) and pool.num_envs == 4
        pool.seed(5)
        obs = pool.reset()
        assert obs.shape == (4, len(FEATURE_NAMES)) and [i["episode_seed"] for i in pool.reset_infos] == [5, 6, 7, 8]
        ref = PopulationVecEnv(4, "tiny")
        ref.seed(5)
        np.testing.assert_allclose(ref.reset(), obs, atol=1e-6)
        keep = np.tile([2, 1], (4, 1))
        obs, rew, done, infos = pool.step(keep)
        r_obs, r_rew, _, r_infos = ref.step(keep)
        np.testing.assert_allclose(obs, r_obs, atol=1e-4)
        np.testing.assert_allclose(rew, r_rew, atol=1e-4)
        assert [i["val_acc"] for i in infos] == pytest.approx([i["val_acc"] for i in r_infos], abs=1e-4)
        assert pool.get_attr("workload_name", indices=[2, 1]) == ["tiny-mlp", "tiny-mlp"]
        assert [p["model_device"] for p in pool.env_method("placement", indices=[3, 0])] == ["cpu", "cpu"]
        with pytest.raises(EnvWorkerError, match="worker 0 .*raised during step"):
            pool.step(np.tile([9, 9], (4, 1)))
    finally:
        pool.close()


@pytest.mark.slow  # starts and restarts worker processes
def test_a_killed_population_worker_is_restarted_and_only_its_members_end() -> None:
    import os
    import signal

    from rlagent.config import load_spec
    from rlagent.pool import make_pool

    spec = load_spec("tiny")
    pool = make_pool(spec, n_envs=2, devices="cpu", population=2)
    try:
        pool.seed(0)
        pool.reset()
        keep = np.tile([2, 1], (4, 1))
        last_obs, *_ = pool.step(keep)
        os.kill(pool.workers.pids[1], signal.SIGKILL)
        obs, rewards, dones, infos = pool.step(keep)
        assert dones.tolist() == [False, False, True, True] and rewards[2:].tolist() == [0.0, 0.0]
        for j in (2, 3):
            assert infos[j]["worker_restarted"] is True and infos[j]["TimeLimit.truncated"] is True
            np.testing.assert_array_equal(infos[j]["terminal_observation"], last_obs[j])
            assert obs[j, 0] == 0.0  # progress: a fresh episode
        assert pool.restarts == [0, 1] and infos[0]["epoch"] == 2
        assert not pool.step(keep)[2][2:].any()  # the new members step on
    finally:
        pool.close()


def test_train_policy_with_a_population(tmp_path: Any) -> None:
    from rlagent.cli import build_parser
    from rlagent.policy.train import PPOSettings, TrainConfig, train_policy

    args = build_parser().parse_args(["train", "--population", "3", "--n-envs", "1"])
    assert args.population == 3
    config = TrainConfig(
        spec="tiny", timesteps=16, n_envs=1, devices="cpu", population=2, out=tmp_path / "pol",
        run_dir=tmp_path / "run", checkpoint_every=0, progress=False,
        ppo=PPOSettings(n_steps=8, batch_size=8, n_epochs=1, net_arch=(8,)),
    )  # fmt: skip
    result = train_policy(config)
    assert result.timesteps == 16 and [s.device for s in result.slots] == ["cpu"]
    with pytest.raises(SpecError, match="population"):
        TrainConfig(population=0)
