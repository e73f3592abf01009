"""Envs that share their draws, and the leave-one-out advantages over them."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv

from rlagent.config import load_spec
from rlagent.errors import SpecError
from rlagent.policy.callbacks import GroupAdvantage, leave_one_out, share_draws
from rlagent.policy.train import PPOSettings, TrainConfig, build_ppo, train_policy
from rlagent.pool import EnvFactory
from rlagent.pool.devices import WorkerSlot

TINY_PPO = PPOSettings(n_steps=8, batch_size=16, n_epochs=1, net_arch=(8,))


def test_each_advantage_loses_the_mean_of_the_others_with_its_key() -> None:
    adv = np.array([[1.0, 3.0, 10.0], [2.0, 5.0, 7.0]])
    keys = [[(0, 9, 0), (0, 9, 0), (0, 9, 0)], [(0, 9, 1), (0, 9, 1), (1, 4, 1)]]
    out, left, paired = leave_one_out(adv, keys, {})
    np.testing.assert_allclose(out[0], [1 - 6.5, 3 - 5.5, 10 - 2.0])  # a group of three
    np.testing.assert_allclose(out[1, :2], [2 - 5, 5 - 2])  # a pair
    assert out[1, 2] == 7.0 and left == {(1, 4, 1): [7.0]} and paired == 5  # alone: kept, passed on
    np.testing.assert_array_equal(adv, [[1.0, 3.0, 10.0], [2.0, 5.0, 7.0]])  # input untouched


def test_a_partner_from_the_previous_rollout_pairs_and_unknown_episodes_never_do() -> None:
    adv = np.array([[4.0, 6.0]])
    out, left, paired = leave_one_out(adv, [[(0, 9, 3), (0, None, 3)]], {(0, 9, 3): [1.0], (0, 8, 0): [2.0]})
    assert out.tolist() == [[3.0, 6.0]] and paired == 1
    assert left == {}  # the stale (0, 8, 0) is dropped; the None-seed cell is never kept


class _Before(BaseCallback):
    """Copies the rollout's advantages and returns before the group callback changes them."""

    def __init__(self) -> None:
        super().__init__()
        self.advantages: list[np.ndarray] = []
        self.returns: list[np.ndarray] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.advantages.append(self.model.rollout_buffer.advantages.copy())
        self.returns.append(self.model.rollout_buffer.returns.copy())


def test_a_pair_runs_the_same_draws_and_each_is_credited_against_the_other() -> None:
    spec = load_spec("tiny-procedural")
    venv = DummyVecEnv([lambda: EnvFactory(spec, ())(WorkerSlot("cpu", 1))] * 2)
    model = build_ppo(venv, TINY_PPO, seed=3, tensorboard=None)
    share_draws(venv, 3, 2)
    before, group = _Before(), GroupAdvantage(venv, 2)
    after: list[np.ndarray] = []

    class _After(_Before):
        def _on_rollout_end(self) -> None:
            after.append(self.model.rollout_buffer.advantages.copy())
            assert np.array_equal(self.model.rollout_buffer.returns, before.returns[-1])  # value targets kept

    model.learn(total_timesteps=32, callback=CallbackList([before, group, _After()]))
    seeds = [info["episode_seed"] for info in venv.reset_infos]
    assert seeds[0] == seeds[1]  # the same draw, still paired after 8 episodes each
    assert group.decisions == 32 and group.paired == 32  # 2-epoch episodes, in lockstep
    for b, a in zip(before.advantages, after):
        assert not np.allclose(b[:, 0], b[:, 1])  # the two runs' actions differed somewhere
        np.testing.assert_allclose(a[:, 0], b[:, 0] - b[:, 1], atol=1e-6)
        np.testing.assert_allclose(a[:, 1], -a[:, 0], atol=1e-6)
    with pytest.raises(SpecError, match=r"draw_group: got 3; expected a divisor of the 2 envs"):
        share_draws(venv, 3, 3)
    venv.close()


def _log_workloads(run_dir: Path) -> Counter:
    with (run_dir / "training_log.csv").open() as f:
        return Counter(row[1] for row in csv.reader(f) if row and row[0].isdigit())


def test_training_with_a_draw_group_runs_every_draw_once_per_member(tmp_path: Path) -> None:
    common = dict(spec="tiny-procedural", timesteps=32, n_envs=2, devices="cpu", seed=5, ppo=TINY_PPO)
    common.update(checkpoint_every=0, progress=False)
    train_policy(TrainConfig(draw_group=2, out=tmp_path / "p2", run_dir=tmp_path / "r2", **common))
    train_policy(TrainConfig(out=tmp_path / "p1", run_dir=tmp_path / "r1", **common))
    paired, single = _log_workloads(tmp_path / "r2"), _log_workloads(tmp_path / "r1")
    assert len(paired) >= 6 and set(paired.values()) == {2}
    assert len(single) >= 12 and set(single.values()) == {1}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"draw_group": 0}, r"draw_group: got 0; expected an integer >= 1"),
        ({"draw_group": 2.0}, "draw_group"),
        ({"draw_group": 3, "n_envs": 2}, r"draw_group: got 3; expected a divisor of n_envs=2"),
        ({"draw_group": 2, "population": 2}, r"draw_group: got 2; expected 1 with population"),
    ],
)
def test_a_bad_draw_group_is_refused_naming_it(kw: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        TrainConfig(**kw)
