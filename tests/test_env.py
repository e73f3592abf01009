"""Tests for rlagent.env: API conformance, determinism, divergence, observations, info, rewards."""

from __future__ import annotations

import dataclasses
import random
import tomllib
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlagent
from rlagent import ENV_ID, FEATURE_NAMES, HyperTuneEnv, SpecError
from rlagent.config import EnvSpec, load_spec, resolve_spec_path, spec_from_dict
from rlagent.env import (
    BS_FACTORS,
    LR_FACTORS,
    TEMPERATURE_FACTORS,
    action_kind_of,
    action_space,
    decode_action,
    hold_action,
    rolls_back,
    without_lr_raise,
)
from rlagent.policy.validate import lr_reversals

ENV_IDS = [i for i in gym.registry if i.startswith("rlagent/")]
ACTION_KINDS = ("discrete", "continuous", "discrete-wide", "discrete-rollback", "discrete-coupled")
RESET_KEYS = {"workload", "heldout", "epoch", "lr", "batch_size", "val_loss", "val_acc", "episode_seed"}
STEP_KEYS = {
    "workload", "heldout", "epoch", "lr", "batch_size", "train_loss", "train_acc", "val_loss", "val_acc",
    "best_val_acc", "samples_seen", "steps", "diverged",
}  # fmt: skip
FINAL_KEYS = {"test_loss", "test_acc"}


def _tiny(action: str = "discrete", **reward: Any) -> EnvSpec:
    """The shipped tiny spec with another action kind and/or reward settings."""
    spec = load_spec("tiny")
    return dataclasses.replace(
        spec,
        episode=dataclasses.replace(spec.episode, action=action),
        reward=dataclasses.replace(spec.reward, **reward),
    )


def _tiny_dict() -> dict[str, Any]:
    """The shipped tiny spec as a plain dict, to be edited by a test."""
    return tomllib.loads(resolve_spec_path("tiny").read_text())


def _divergent_dict(**episode: Any) -> dict[str, Any]:
    """SGD on a tiny task with an LR range that allows absurd learning rates."""
    return {
        "workloads": {
            "train": ["sgd-tiny"],
            "define": {
                "sgd-tiny": {
                    "dataset": "synthetic",
                    "model": "mlp",
                    "optimizer": "sgd",
                    "dataset_args": {"n_samples": 300, "n_features": 8, "n_informative": 4, "n_classes": 3},
                    "model_args": {"hidden": [16]},
                }
            },
        },
        "episode": {"epochs": 3, "lr_range": [1e-4, 1e6], "init_lr": 1e5, "init_batch_size": 16, **episode},
    }


def _actions(kind: str) -> list[np.ndarray]:
    """A fixed action sequence that moves both hyperparameters."""
    if kind == "discrete":
        return [np.array(a) for a in ([4, 2], [0, 0], [2, 1], [3, 2])]
    if kind == "discrete-wide":
        return [np.array(a) for a in ([6, 2], [0, 0], [3, 1], [1, 2])]
    if kind == "discrete-rollback":
        return [np.array(a) for a in ([4, 2, 0], [0, 0, 1], [2, 1, 1], [3, 2, 0])]
    if kind == "discrete-coupled":
        return [np.array(a) for a in ([4, 1], [0, 1], [2, 0], [1, 0])]
    return [np.array(a, dtype=np.float32) for a in ([1.0, 1.0], [-0.7, -1.0], [0.0, 0.0], [0.3, 0.5])]


def _episode(env: HyperTuneEnv, seed: int | None, options: dict[str, Any] | None = None) -> dict[str, list]:
    """Run one episode with the fixed actions; returns observations, rewards and infos."""
    obs, info = env.reset(seed=seed, options=options)
    out: dict[str, list] = {"obs": [obs], "rewards": [], "infos": [info]}
    for action in _actions(env.action_kind):
        obs, reward, terminated, truncated, info = env.step(action)
        out["obs"].append(obs)
        out["rewards"].append(reward)
        out["infos"].append(info)
        assert not truncated
        if terminated:
            break
    assert terminated
    return out


def _same(a: dict[str, list], b: dict[str, list]) -> bool:
    return (
        len(a["obs"]) == len(b["obs"])
        and all(np.array_equal(x, y) for x, y in zip(a["obs"], b["obs"]))
        and a["rewards"] == b["rewards"]
    )


def test_env_is_registered() -> None:
    assert ENV_ID in ENV_IDS
    assert isinstance(gym.make(ENV_ID, spec="tiny").unwrapped, HyperTuneEnv)


@pytest.mark.parametrize("kind", ACTION_KINDS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id: str, kind: str) -> None:
    spec: str | EnvSpec = "tiny" if kind == "discrete" else _tiny(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(gym.make(env_id, spec=spec).unwrapped)
        sb3_check_env(gym.make(env_id, spec=spec).unwrapped)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


@pytest.mark.parametrize("kind", ACTION_KINDS)
def test_same_seed_same_episode_other_seed_differs(kind: str) -> None:
    first = _episode(HyperTuneEnv(_tiny(kind)), seed=3)
    again = _episode(HyperTuneEnv(_tiny(kind)), seed=3)
    other = _episode(HyperTuneEnv(_tiny(kind)), seed=4)
    assert _same(first, again)
    assert first["infos"] == again["infos"]
    assert not _same(first, other)


def test_reset_without_seed_continues_the_seeded_stream() -> None:
    env_a, env_b = HyperTuneEnv("tiny"), HyperTuneEnv("tiny")
    env_a.reset(seed=7)
    env_b.reset(seed=7)
    assert _same(_episode(env_a, seed=None), _episode(env_b, seed=None))


def test_interleaved_envs_match_envs_run_alone() -> None:
    alone = [_episode(HyperTuneEnv("tiny"), seed=s) for s in (1, 2)]
    envs = [HyperTuneEnv("tiny"), HyperTuneEnv("tiny")]
    runs = []
    for env, seed in zip(envs, (1, 2)):
        obs, _ = env.reset(seed=seed)
        runs.append({"obs": [obs], "rewards": []})
    for action in _actions("discrete")[:3]:  # tiny: 3 epochs
        for env, run in zip(envs, runs):
            obs, reward, *_ = env.step(action)
            run["obs"].append(obs)
            run["rewards"].append(reward)
    assert _same(runs[0], alone[0])
    assert _same(runs[1], alone[1])


def test_global_rngs_untouched() -> None:
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002
    env = HyperTuneEnv("tiny")
    _episode(env, seed=0)
    _episode(env, seed=None, options={"workload": "tiny-wide", "lr": "sample", "batch_size": "sample"})
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


@pytest.mark.parametrize(
    ("episode", "options", "action"),
    [
        ({}, None, [2, 1]),  # init_lr 1e5
        ({"init_lr": 1e-3}, {"lr": 1e5}, [2, 1]),
        ({"init_lr": 1e3, "action": "continuous"}, None, [1.0, 0.0]),  # LR x4 per step until it blows up
    ],
)
def test_divergence_ends_episode_cleanly(episode: dict[str, Any], options: dict | None, action: list) -> None:
    env = HyperTuneEnv(_divergent_dict(**episode))
    obs, info = env.reset(seed=0, options=options)
    chance = 1.0 / env.data.num_classes
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(np.array(action, dtype=env.action_space.dtype))
        assert np.isfinite(obs).all() and env.observation_space.contains(obs)
    assert info["diverged"] is True
    assert info["epoch"] < 3  # ended early, not by the budget
    assert not truncated
    assert reward == pytest.approx(chance)
    assert info["val_acc"] == info["test_acc"] == chance
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.array(action, dtype=env.action_space.dtype))
    obs, _ = env.reset(seed=1, options={"lr": 1e-3})  # the env is usable again
    _, _, _, _, info = env.step(np.array(action, dtype=env.action_space.dtype) * 0)
    assert info["diverged"] is False


def test_step_before_reset_raises() -> None:
    with pytest.raises(gym.error.ResetNeeded):
        HyperTuneEnv("tiny").step(np.array([2, 1]))


@pytest.mark.parametrize("kind", ACTION_KINDS)
def test_observations_finite_and_inside_box(kind: str) -> None:
    env = HyperTuneEnv(_tiny(kind))
    assert env.observation_space.shape == (len(FEATURE_NAMES),)
    env.action_space.seed(0)
    extremes = (
        [env.action_space.low, env.action_space.high]
        if kind == "continuous"
        else [np.zeros_like(env.action_space.nvec), env.action_space.nvec - 1]
    )
    for episode in range(4):
        obs, _ = env.reset(seed=episode)
        assert obs.dtype == np.float32 and np.isfinite(obs).all() and env.observation_space.contains(obs)
        terminated = False
        while not terminated:
            action = env.action_space.sample() if episode < 2 else np.asarray(extremes[episode - 2])
            obs, _, terminated, _, _ = env.step(action.astype(env.action_space.dtype))
            assert obs.dtype == np.float32 and np.isfinite(obs).all() and env.observation_space.contains(obs)


def test_info_keys_and_test_acc_only_at_the_end() -> None:
    env = HyperTuneEnv("tiny")
    obs, info = env.reset(seed=0)
    assert set(info) == RESET_KEYS
    assert info["epoch"] == 0 and info["heldout"] is False and info["workload"] == "tiny-mlp"
    samples = 0
    for epoch in (1, 2, 3):
        obs, reward, terminated, _, info = env.step(np.array([2, 1]))
        samples += len(env.data.train)
        assert info["epoch"] == epoch and info["samples_seen"] == samples
        assert info["diverged"] is False
        if epoch < 3:
            assert set(info) == STEP_KEYS and not terminated
        else:
            assert set(info) == STEP_KEYS | FINAL_KEYS and terminated
            assert 0.0 <= info["test_acc"] <= 1.0
    assert env.epoch_time > 0.0


def test_heldout_flag() -> None:
    env = HyperTuneEnv("tiny")
    _, info = env.reset(seed=0, options={"workload": "tiny-wide"})
    assert info["heldout"] is True and info["workload"] == "tiny-wide"
    assert env.step(np.array([2, 1]))[4]["heldout"] is True
    _, info = env.reset(seed=0)
    assert info["heldout"] is False


def test_workloads_argument_restricts_draws() -> None:
    env = HyperTuneEnv("tiny", workloads=["tiny-wide"])
    assert {env.reset(seed=s)[1]["workload"] for s in range(3)} == {"tiny-wide"}
    with pytest.raises(SpecError, match="nope"):
        HyperTuneEnv("tiny", workloads=["nope"])


def test_reward_val_acc_is_validation_accuracy() -> None:
    run = _episode(HyperTuneEnv("tiny"), seed=0)
    assert run["rewards"] == [i["val_acc"] for i in run["infos"][1:]]


def test_reward_best_improvement_sums_to_final_best_minus_initial() -> None:
    run = _episode(HyperTuneEnv(_tiny(mode="best_improvement")), seed=0)
    initial = run["infos"][0]["val_acc"]
    best = max([initial] + [i["val_acc"] for i in run["infos"][1:]])
    assert all(r >= 0.0 for r in run["rewards"])
    assert run["infos"][-1]["best_val_acc"] == best
    assert sum(run["rewards"]) == pytest.approx(best - initial)


def test_reward_val_acc_change_pays_out_the_final_accuracy_epoch_by_epoch() -> None:
    run = _episode(HyperTuneEnv(_tiny(mode="val_acc_change")), seed=0)
    accs = [i["val_acc"] for i in run["infos"]]
    assert run["rewards"] == pytest.approx(np.diff(accs).tolist())
    assert sum(run["rewards"]) == pytest.approx(accs[-1] - accs[0])
    assert len(set(run["rewards"])) > 1  # not a constant: the run moved


def test_reward_final_is_zero_until_the_last_step() -> None:
    run = _episode(HyperTuneEnv(_tiny(mode="final")), seed=0)
    assert run["rewards"][:-1] == [0.0] * (len(run["rewards"]) - 1)
    assert run["rewards"][-1] == run["infos"][-1]["val_acc"]


def test_cost_weight_subtracts_steps() -> None:
    plain = _episode(HyperTuneEnv("tiny"), seed=0)
    costly = _episode(HyperTuneEnv(_tiny(cost_weight=0.5)), seed=0)
    steps = [i["steps"] for i in costly["infos"][1:]]
    per_epoch = np.diff([0, *steps])
    expected = [r - 0.5 * s / 100.0 for r, s in zip(plain["rewards"], per_epoch)]
    assert costly["rewards"] == pytest.approx(expected)
    assert all(c < p for c, p in zip(costly["rewards"], plain["rewards"]))


def _rewards_and_lrs(spec: EnvSpec, actions: list[list[int]], options: dict[str, Any]) -> tuple[list[float], list]:
    env = HyperTuneEnv(dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=len(actions))))
    _, info = env.reset(seed=0, options=options)
    rewards, lrs = [], [info["lr"]]
    for action in actions:
        _, reward, _, _, info = env.step(np.array(action))
        rewards.append(float(reward))
        lrs.append(info["lr"])
    return rewards, lrs


@pytest.mark.parametrize(
    ("lr", "actions", "charged"),
    [
        # ×2, ×½ (reverses), ×½, hold, ×2 (after a hold: no), ×¼ (reverses)
        (1e-3, [[3, 1], [1, 1], [1, 1], [2, 1], [3, 1], [0, 1]], [0, 1, 0, 0, 0, 1]),
        # at the top of the LR range: ×4 is clipped to no move, so the ×¼ after it reverses nothing
        (0.3, [[4, 1], [0, 1], [4, 1], [4, 1]], [0, 0, 1, 0]),
    ],
)
def test_reversal_cost_charges_each_lr_move_that_undoes_the_last(lr: float, actions: list, charged: list) -> None:
    plain, lrs = _rewards_and_lrs(_tiny(), actions, {"lr": lr})
    costly, same_lrs = _rewards_and_lrs(_tiny(reversal_cost=0.25), actions, {"lr": lr})
    assert same_lrs == lrs  # the cost changes the reward, never the run
    assert costly == pytest.approx([p - 0.25 * c for p, c in zip(plain, charged)])
    assert lr_reversals(lrs)[1] == sum(charged)  # the env charges what validation reports count


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"lr": 0.0}, r"reset options\.lr.*0\.0"),
        ({"lr": -1e-3}, r"reset options\.lr.*-0\.001"),
        ({"lr": "fast"}, r"reset options\.lr.*'fast'"),
        ({"batch_size": 0}, r"reset options\.batch_size.*0"),
        ({"batch_size": 8.5}, r"reset options\.batch_size.*8\.5"),
        ({"lr": 0.1, "start_check": "yes"}, r"reset options\.start_check.*'yes'"),
        ({"lr": "probe", "probe_divisor": 0.5}, r"reset options\.probe_divisor.*0\.5.*>= 1"),
        ({"lr": "probe", "probe_divisor": "ten"}, r"reset options\.probe_divisor.*'ten'"),
        ({"workload": "nope"}, r"workload.*'nope'"),
    ],
)
def test_bad_reset_options_raise(options: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        HyperTuneEnv("tiny").reset(seed=0, options=options)


def test_reset_options_are_clipped_to_ranges() -> None:
    env = HyperTuneEnv("tiny")
    _, info = env.reset(seed=0, options={"lr": 10.0, "batch_size": 100_000})
    assert info["lr"] == 0.3  # tiny: lr_range [1e-4, 0.3]
    assert info["batch_size"] == 128  # tiny: batch_size_range [8, 128]
    _, info = env.reset(seed=0, options={"lr": "sample", "batch_size": "sample"})
    assert 1e-4 <= info["lr"] <= 0.3 and info["batch_size"] in (8, 16, 32, 64, 128)


def test_env_accepts_spec_dict_and_path(tmp_path) -> None:
    data = _tiny_dict()
    data["episode"]["epochs"] = 2
    env = HyperTuneEnv(data)
    assert env.env_spec.episode.epochs == 2
    assert len(_episode(env, seed=0)["rewards"]) == 2
    path = tmp_path / "mine.toml"
    path.write_text(resolve_spec_path("tiny").read_text())
    assert HyperTuneEnv(path).env_spec.name == "tiny"


# ---------------------------------------------------------------------------------------------
# Action handling


def test_decode_discrete_action() -> None:
    for i, lr_f in enumerate(LR_FACTORS):
        for j, bs_f in enumerate(BS_FACTORS):
            assert decode_action(np.array([i, j]), "discrete") == (lr_f, bs_f)


@pytest.mark.parametrize("action", [[5, 1], [-1, 1], [2, 3], [2, -1]])
def test_invalid_discrete_action_raises(action: list[int]) -> None:
    with pytest.raises(ValueError, match=r"action: got \[.*\]; expected \[0\.\.4, 0\.\.2\]"):
        decode_action(np.array(action), "discrete")


@pytest.mark.parametrize("kind", ACTION_KINDS)
def test_action_of_wrong_shape_raises(kind: str) -> None:
    size = 3 if kind == "discrete-rollback" else 2
    with pytest.raises(ValueError, match=rf"got shape \(4,\); expected \({size},\)"):
        decode_action(np.zeros(4), kind)


def test_invalid_action_raises_in_step() -> None:
    env = HyperTuneEnv("tiny")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([7, 0]))


def test_wide_discrete_actions_add_a_sixteenfold_step_and_name_their_range() -> None:
    assert action_space("discrete-wide") == spaces.MultiDiscrete([7, 3])
    assert decode_action(np.array([0, 1]), "discrete-wide") == (1 / 16, 1.0)
    assert decode_action(np.array([6, 2]), "discrete-wide") == (16.0, 2.0)
    assert decode_action(np.array([4, 0]), "discrete-wide") == (2.0, 0.5)
    assert decode_action(hold_action("discrete-wide"), "discrete-wide") == (1.0, 1.0)
    assert decode_action(hold_action("discrete"), "discrete") == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"expected \[0..6, 0..2\]"):
        decode_action(np.array([7, 0]), "discrete-wide")
    assert [action_kind_of(action_space(k)) for k in ACTION_KINDS] == list(ACTION_KINDS)
    assert action_kind_of(spaces.MultiDiscrete([5, 5])) is None
    data = _tiny_dict()
    data["episode"]["action"] = "discrete-wide"
    env = HyperTuneEnv(data)
    env.reset(seed=0, options={"lr": 1e-2})
    _, _, _, _, info = env.step(np.array([0, 1]))
    assert info["lr"] == pytest.approx(1e-2 / 16)


@pytest.mark.parametrize(
    ("action", "factors"),
    [
        ([2, 0], (1.0, 1.0)),  # hold
        ([2, 1], (1.0, 1.0)),  # hold either way
        ([0, 0], (0.25, 1.0)),  # LR ÷ batch x1/4, all on the LR
        ([0, 1], (0.5, 2.0)),  # ... the batch doubles, the LR halves
        ([1, 0], (0.5, 1.0)),
        ([1, 1], (1.0, 2.0)),  # a x1/2 cut taken by the batch alone
        ([3, 1], (1.0, 0.5)),
        ([4, 0], (4.0, 1.0)),
        ([4, 1], (2.0, 0.5)),
    ],
)
def test_coupled_actions_move_lr_over_batch_size_by_their_factor(action: list[int], factors: tuple) -> None:
    lr_factor, bs_factor = decode_action(np.array(action), "discrete-coupled")
    assert (lr_factor, bs_factor) == factors
    assert lr_factor / bs_factor == TEMPERATURE_FACTORS[action[0]]


def test_coupled_actions_in_the_env_name_their_range_and_move_both_hyperparameters() -> None:
    assert action_space("discrete-coupled") == spaces.MultiDiscrete([5, 2])
    assert decode_action(hold_action("discrete-coupled"), "discrete-coupled") == (1.0, 1.0)
    for bad in ([5, 0], [0, 2], [-1, 0]):
        with pytest.raises(ValueError, match=r"expected \[0..4, 0..1\]"):
            decode_action(np.array(bad), "discrete-coupled")
    env = HyperTuneEnv(_tiny("discrete-coupled"))
    env.reset(seed=0, options={"lr": 1e-2, "batch_size": 32})
    _, _, _, _, info = env.step(np.array([0, 1]))  # LR / batch x1/4: LR x1/2, batch x2
    assert (info["lr"], info["batch_size"]) == (pytest.approx(5e-3), 64)
    _, _, _, _, info = env.step(np.array([4, 1]))  # x4: LR x2, batch x1/2
    assert (info["lr"], info["batch_size"]) == (pytest.approx(1e-2), 32)


def test_decode_continuous_action_clips() -> None:
    assert decode_action(np.array([0.0, 0.0]), "continuous") == (1.0, 1.0)
    assert decode_action(np.array([1.0, -1.0]), "continuous") == (4.0, 0.5)
    assert decode_action(np.array([5.0, -9.0]), "continuous") == (4.0, 0.5)
    assert decode_action(np.array([-0.5, 0.5]), "continuous") == pytest.approx((0.5, 2**0.5))


def test_batch_size_in_step_never_exceeds_training_set() -> None:
    data = _tiny_dict()
    data["episode"]["batch_size_range"] = [8, 4096]
    env = HyperTuneEnv(data)
    env.reset(seed=0, options={"batch_size": 128})
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([2, 2]))
    assert info["batch_size"] == len(env.data.train)


def test_package_exports() -> None:
    for name in rlagent.__all__:
        assert hasattr(rlagent, name)


def test_probe_start_sets_the_first_lr_and_leaves_the_run_as_it_was() -> None:
    """``lr="probe"``: the episode is the one started at the probe's LR, plus the probe's samples."""
    env = HyperTuneEnv("tiny")
    _, info = env.reset(seed=4, options={"lr": "probe", "batch_size": 16})
    assert info["lr"] == pytest.approx(min(max(info["probe_lr"] / 10, 1e-4), 0.3))
    assert info["probe_samples"] > 0
    _, again = env.reset(seed=4, options={"lr": "probe", "batch_size": 16})
    assert again == info
    probed = [env.step(np.array([2, 1]))[4] for _ in range(2)]
    twin = HyperTuneEnv("tiny")
    twin.reset(seed=4, options={"lr": info["lr"], "batch_size": 16})
    plain = [twin.step(np.array([2, 1]))[4] for _ in range(2)]
    for a, b in zip(probed, plain):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == b["train_loss"]
        assert a["samples_seen"] == b["samples_seen"] + info["probe_samples"]
    _, lower = env.reset(seed=4, options={"lr": "probe", "batch_size": 16, "probe_divisor": 30})
    assert lower["probe_lr"] == info["probe_lr"]  # the same probe, a start three times lower
    assert lower["lr"] == pytest.approx(min(max(info["probe_lr"] / 30, 1e-4), 0.3))
    assert lower["lr"] < info["lr"]


def test_start_check_replaces_only_a_start_past_the_probes_minimum() -> None:
    """``start_check``: LR 0.3 (above the probe's minimum-loss LR) becomes the probe's start, the
    run then the one started there; the bottom of the range is kept as given, probe charged."""
    env = HyperTuneEnv("tiny")
    _, probed = env.reset(seed=0, options={"workload": "tiny-wide", "lr": "probe", "batch_size": 16})
    _, hot = env.reset(seed=0, options={"workload": "tiny-wide", "lr": 0.3, "batch_size": 16, "start_check": True})
    assert hot["start_replaced"] and hot["probe_lr"] == probed["probe_lr"] < 0.3
    assert hot["lr"] == probed["lr"] and hot["probe_samples"] == probed["probe_samples"]
    checked = env.step(np.array([2, 1]))[4]
    env.reset(seed=0, options={"workload": "tiny-wide", "lr": "probe", "batch_size": 16})
    assert env.step(np.array([2, 1]))[4] == checked
    _, low = env.reset(seed=0, options={"workload": "tiny-wide", "lr": 1e-4, "batch_size": 16, "start_check": True})
    assert low["start_replaced"] is False and low["lr"] == 1e-4
    kept = env.step(np.array([2, 1]))[4]
    _, plain = env.reset(seed=0, options={"workload": "tiny-wide", "lr": 1e-4, "batch_size": 16})
    assert "start_replaced" not in plain and "probe_lr" not in plain
    unchecked = env.step(np.array([2, 1]))[4]
    assert kept["val_acc"] == unchecked["val_acc"] and kept["train_loss"] == unchecked["train_loss"]
    assert kept["samples_seen"] == unchecked["samples_seen"] + low["probe_samples"]


def test_a_probe_blind_draw_starts_the_hidden_scale_off_the_probe() -> None:
    """With ``probe_sees_lr_scale = false`` the probe of a hot draw points where it would on the
    same draw unscaled, while the run itself steps at the hidden scale."""
    train = {"sampler": "procedural", "lr_scale_range": [3.0, 5.0]}
    seen = HyperTuneEnv(spec_from_dict({"episode": {"init_lr": "probe"}, "workloads": {"train": train}}))
    train = {**train, "probe_sees_lr_scale": False}
    blind = HyperTuneEnv(spec_from_dict({"episode": {"init_lr": "probe"}, "workloads": {"train": train}}))
    plain_train = {"sampler": "procedural"}
    plain = HyperTuneEnv(spec_from_dict({"episode": {"init_lr": "probe"}, "workloads": {"train": plain_train}}))
    _, p = plain.reset(seed=3)
    _, s = seen.reset(seed=3)
    _, b = blind.reset(seed=3)
    assert b["probe_lr"] == p["probe_lr"] and b["lr"] == p["lr"]
    assert s["probe_lr"] != p["probe_lr"]
    scale = blind.workload.lr_scale
    assert 3.0 <= scale <= 5.0 and blind.trainer.step_lr == pytest.approx(scale * b["lr"])


def test_a_hidden_lr_shift_moves_the_step_rate_mid_run_and_nothing_the_agent_sees() -> None:
    spec = load_spec("tiny")
    name = spec.workloads.train[0]
    shifted_wl = dataclasses.replace(spec.workload(name), lr_shift=(2, 4.0))
    shifted_spec = dataclasses.replace(
        spec, workloads=dataclasses.replace(spec.workloads, define={**spec.workloads.define, name: shifted_wl})
    )
    plain, shifted = HyperTuneEnv(spec), HyperTuneEnv(shifted_spec)
    obs_p, _ = plain.reset(seed=0, options={"workload": name})
    obs_s, _ = shifted.reset(seed=0, options={"workload": name})
    np.testing.assert_array_equal(obs_p, obs_s)
    for epoch in range(1, 4):
        obs_p, _, _, _, info_p = plain.step(np.array([2, 1]))
        obs_s, _, _, _, info_s = shifted.step(np.array([2, 1]))
        assert info_s["lr"] == info_p["lr"]  # the LR the agent set and sees
        assert shifted.trainer.step_lr == pytest.approx(info_s["lr"] * (4.0 if epoch >= 2 else 1.0))
        if epoch <= 2:  # the first two epochs ran at the same rate
            np.testing.assert_array_equal(obs_p, obs_s)
    assert info_s["val_loss"] != info_p["val_loss"]  # the third did not


def test_spec_init_lr_may_be_probe() -> None:
    spec = load_spec("tiny")
    probed = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, init_lr="probe"))
    _, info = HyperTuneEnv(probed).reset(seed=0)
    assert "probe_lr" in info
    with pytest.raises(SpecError, match=r"episode\.init_lr.*'probe'"):
        dataclasses.replace(spec.episode, init_lr="fast")


def test_a_probe_spec_probes_procedural_draws_at_their_own_batch_size() -> None:
    """A procedural draw brings its own start; ``init_lr = "probe"`` replaces its LR, not its batch."""
    spec = load_spec("tiny-procedural")
    probed = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, init_lr="probe"))
    _, own = HyperTuneEnv(spec).reset(seed=3)
    _, info = HyperTuneEnv(probed).reset(seed=3)
    assert "probe_lr" not in own and info["probe_lr"] > 0
    assert info["workload"] == own["workload"] and info["batch_size"] == own["batch_size"]
    assert info["lr"] == pytest.approx(min(max(info["probe_lr"] / 10, 1e-4), 0.3))
    _, given = HyperTuneEnv(probed).reset(seed=3, options={"lr": 0.01})  # a reset option still wins
    assert given["lr"] == 0.01 and "probe_lr" not in given


def test_probe_fraction_splits_draws_between_the_probe_and_their_own_start() -> None:
    """``probe_fraction``: a share of the draws, fixed by the episode seed, starts from the probe;
    the others keep the draw's own LR and batch size, and the draw itself is the same either way."""
    spec = load_spec("tiny-procedural")
    mixed = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, init_lr="probe", probe_fraction=0.5))
    seeds = range(12)
    probed = [mixed.episode.probes(s) for s in seeds]
    assert 0 < sum(probed) < len(probed)
    assert probed == [mixed.episode.probes(s) for s in seeds]  # fixed by the seed
    for seed in (probed.index(True), probed.index(False)):
        _, own = HyperTuneEnv(spec).reset(seed=seed)
        _, info = HyperTuneEnv(mixed).reset(seed=seed)
        assert info["workload"] == own["workload"] and info["batch_size"] == own["batch_size"]
        if probed[seed]:
            assert info["lr"] == pytest.approx(min(max(info["probe_lr"] / 10, 1e-4), 0.3))
        else:
            assert "probe_lr" not in info and info["lr"] == own["lr"]
    share = np.mean([mixed.episode.probes(s) for s in range(2000)])
    assert share == pytest.approx(0.5, abs=0.05)
    everywhere = dataclasses.replace(mixed.episode, probe_fraction=1.0)
    nowhere = dataclasses.replace(mixed.episode, probe_fraction=0.0)
    assert all(everywhere.probes(s) for s in seeds) and not any(nowhere.probes(s) for s in seeds)


# The rollback action


def _rollback_env(epochs: int = 6) -> HyperTuneEnv:
    spec = _tiny("discrete-rollback")
    return HyperTuneEnv(dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=epochs)))


def test_rollback_actions_add_a_third_choice_and_name_its_range() -> None:
    assert action_space("discrete-rollback") == spaces.MultiDiscrete([5, 3, 2])
    assert decode_action(np.array([0, 2, 1]), "discrete-rollback") == (0.25, 2.0)
    assert rolls_back(np.array([0, 2, 1]), "discrete-rollback")
    assert not rolls_back(np.array([0, 2, 0]), "discrete-rollback") and not rolls_back(np.array([0, 2]), "discrete")
    assert decode_action(hold_action("discrete-rollback"), "discrete-rollback") == (1.0, 1.0)
    assert not rolls_back(hold_action("discrete-rollback"), "discrete-rollback")
    with pytest.raises(ValueError, match=r"got \[2, 1, 2\]; expected \[0..4, 0..2, 0..1\]"):
        decode_action(np.array([2, 1, 2]), "discrete-rollback")


def test_without_rollbacks_the_run_is_the_discrete_run() -> None:
    plain, rollback = HyperTuneEnv(_tiny("discrete")), HyperTuneEnv(_tiny("discrete-rollback"))
    moves = ([4, 2], [0, 0], [3, 1])
    a = [plain.reset(seed=3)[0]] + [plain.step(np.array(m))[0] for m in moves]
    b = [rollback.reset(seed=3)[0]] + [rollback.step(np.array([*m, 0]))[0] for m in moves]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def _spied(env: HyperTuneEnv) -> list[dict[str, torch.Tensor]]:
    """Record the model and optimiser state each epoch starts from (the real epoch still runs)."""
    starts: list[dict[str, torch.Tensor]] = []
    trainer, train_epoch = env.trainer, env.trainer.train_epoch

    def spy():
        moments = {f"opt.{k}": v.clone() for k, v in trainer.optimizer.state_dict()["state"].get(0, {}).items()}
        starts.append({**{k: v.clone() for k, v in trainer.model.state_dict().items()}, **moments})
        return train_epoch()

    trainer.train_epoch = spy
    return starts


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rollback_trains_the_next_epoch_from_the_best_epochs_weights_at_its_lr_moved() -> None:
    env = _rollback_env()
    _, info = env.reset(seed=0, options={"lr": 0.01})
    starts, accs, lrs = _spied(env), [info["val_acc"]], [info["lr"]]
    for _ in range(5):  # double the LR every epoch: Adam at 0.16 and up makes the tiny run wobble
        _, _, _, _, info = env.step(np.array([3, 1, 0]))
        accs.append(info["val_acc"])
        lrs.append(info["lr"])
        assert info["rolled_back_to"] is None
    best = int(np.argmax(accs))  # the first epoch with the best validation accuracy
    assert best < 5 and lrs[best] != lrs[5]  # the test needs a last epoch below the best (true for this seed)
    assert env.tracker.best_lr == lrs[best]
    last = {k: v.clone() for k, v in env.trainer.model.state_dict().items()}  # after epoch 5
    _, _, terminated, _, info = env.step(np.array([1, 1, 1]))  # roll back and halve the LR
    assert terminated and info["rolled_back_to"] == best and info["epoch"] == 6
    assert info["lr"] == pytest.approx(lrs[best] / 2)  # the best epoch's LR halved, not the last one's
    # starts[i] is the state after epoch i: the sixth epoch started from the best one's, optimiser included
    assert _same_state(starts[5], starts[best])
    assert not _same_state({k: starts[5][k] for k in last}, last)


def test_a_rollback_at_the_best_epoch_changes_nothing() -> None:
    runs = []
    for roll in (0, 1):
        env = _rollback_env(epochs=2)
        env.reset(seed=0)
        _, _, _, _, first = env.step(np.array([3, 1, 0]))  # the first epoch beats the untrained model
        _, reward, _, _, info = env.step(np.array([2, 1, roll]))
        assert info["rolled_back_to"] is None
        runs.append((first["val_acc"], reward, info["val_acc"], info["test_acc"]))
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("kind", "action", "held"),
    [
        ("discrete", [4, 0], [2, 0]),  # x4, batch x1/2: the raise held, the batch cut kept
        ("discrete", [3, 2], [2, 2]),
        ("discrete", [0, 2], [0, 2]),  # a cut passes
        ("discrete", [2, 1], [2, 1]),
        ("discrete-wide", [6, 1], [3, 1]),  # x16
        ("discrete-rollback", [3, 1, 1], [2, 1, 1]),  # the rollback kept
        ("discrete-coupled", [4, 0], [2, 0]),  # x4 on the LR: held
        ("discrete-coupled", [4, 1], [3, 1]),  # LR x2, batch x1/2: the batch halving kept
        ("discrete-coupled", [3, 1], [3, 1]),  # batch x1/2 alone: no LR raise
        ("discrete-coupled", [0, 1], [0, 1]),
        ("continuous", [0.5, -0.3], [0.0, -0.3]),
        ("continuous", [-0.5, 0.3], [-0.5, 0.3]),
    ],
)
def test_without_lr_raise_holds_only_an_lr_raise(kind: str, action: list[float], held: list[float]) -> None:
    given = np.array(action, dtype=np.float32 if kind == "continuous" else np.int64)
    out = without_lr_raise(given, kind)
    assert out.tolist() == pytest.approx(held) and given.tolist() == pytest.approx(action)  # a copy
    lr_factor, bs_factor = decode_action(out, kind)
    assert lr_factor <= 1.0 and bs_factor == decode_action(given, kind)[1]


def test_a_cosine_envelope_scales_the_step_rate_and_nothing_the_agent_sees() -> None:
    """``episode.schedule = "cosine"``: epoch e trains at the chosen LR × the envelope's value for e;
    the chosen LR is what the agent sees (``info["lr"]``, the LR features); holding it follows the cosine."""
    from rlagent.hparams import Envelope

    spec = load_spec("tiny")
    name = spec.workloads.train[0]
    shaped_spec = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, schedule="cosine"))
    plain, shaped = HyperTuneEnv(spec), HyperTuneEnv(shaped_spec)
    obs_p, _ = plain.reset(seed=0, options={"workload": name})
    obs_s, _ = shaped.reset(seed=0, options={"workload": name})
    np.testing.assert_array_equal(obs_p, obs_s)
    envelope = Envelope("cosine", shaped.workload.epochs, 0.01)
    hold = hold_action("discrete")
    for epoch in range(shaped.workload.epochs):
        assert shaped.trainer.step_lr == pytest.approx(shaped.hparams.lr * shaped.workload.lr_scale * envelope(epoch))
        obs_p, _, _, _, info_p = plain.step(hold)
        obs_s, _, done, _, info_s = shaped.step(hold)
        assert info_s["lr"] == info_p["lr"] and "lr_envelope" not in info_p
        assert info_s["lr_envelope"] == envelope(epoch)
        lr_features = [FEATURE_NAMES.index(f) for f in ("lr_pos", "lr_rel_start", "last_lr_action")]
        np.testing.assert_array_equal(obs_s[lr_features], obs_p[lr_features])
    assert done and envelope(epoch) == pytest.approx(0.01)
    assert info_s["val_loss"] != info_p["val_loss"]  # the later epochs ran cooler
    gym_check_env(gym.make(ENV_ID, spec=shaped_spec).unwrapped)
