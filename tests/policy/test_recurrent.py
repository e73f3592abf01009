"""Recurrent policies (sb3-contrib's RecurrentPPO) in the policy file format: format 5."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack, VecNormalize

from rlagent.policy._integrity import expected_shapes
from rlagent.policy.file import JSON_NAME, PolicyFileError, load_policy, save_policy
from tests.policy.test_file import N_FEATURES, _edit_json, _random_obs, _ToyEnv


def _recurrent(frame_stack: int = 1, **policy_kwargs: Any) -> tuple[RecurrentPPO, VecNormalize, VecEnv]:
    norm = VecNormalize(DummyVecEnv([lambda: _ToyEnv()]), norm_reward=True)
    venv: VecEnv = VecFrameStack(norm, n_stack=frame_stack) if frame_stack > 1 else norm
    kwargs = {"net_arch": [8], "lstm_hidden_size": 6, **policy_kwargs}
    model = RecurrentPPO("MlpLstmPolicy", venv, n_steps=32, batch_size=16, n_epochs=2, policy_kwargs=kwargs, seed=0)
    return model, norm, venv


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_recurrent_policy_acts_as_it_did_in_training(tmp_path: Path, frame_stack: int) -> None:
    model, norm, venv = _recurrent(frame_stack)
    model.learn(total_timesteps=96)
    path = save_policy(tmp_path / "lstm", model, normalizer=norm, frame_stack=frame_stack)

    doc = json.loads((path / JSON_NAME).read_text())
    assert doc["format_version"] == 5 and doc.get("frame_stack", 1) == frame_stack
    assert doc["architecture"] == {
        "policy": "MlpLstmPolicy",
        "net_arch": {"pi": [8], "vf": [8]},
        "activation": "tanh",
        "lstm_hidden_size": 6,
    }
    loaded = load_policy(path)
    assert loaded.recurrent and loaded.frame_stack == frame_stack
    assert isinstance(loaded.policy, RecurrentActorCriticPolicy)
    with pytest.raises(ValueError, match=r"LSTM state.*actor\(\)"):
        loaded.predict(_random_obs(1)[0])

    # A fresh actor per episode, fed the raw observations, acts as the trained model does with
    # its LSTM state carried and reset at the episode's start, over whole episodes.
    norm.training = False
    obs, state, start = venv.reset(), None, np.ones(1, dtype=bool)
    for _episode in range(3):
        act = loaded.actor()
        for _step in range(8):
            expected, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
            np.testing.assert_array_equal(act(norm.get_original_obs()[0]), expected[0])
            obs, _, done, _ = venv.step(expected)
            start = done
            if done[0]:
                break
        assert done[0], "the toy episode lasts 8 steps"

    # The state matters: the same observation after another history gets another LSTM input.
    act = loaded.actor()
    row = _random_obs(1)[0]
    act(row)
    hidden = act._state[0].copy()
    act(row)
    assert not np.allclose(act._state[0], hidden)

    again = load_policy(loaded.save(tmp_path / "again"))
    assert again.recurrent and again.metadata["format_version"] == 5
    for key, value in loaded.policy.state_dict().items():
        assert torch.equal(again.policy.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (lambda d: d.__setitem__("format_version", 3), "a MlpLstmPolicy policy needs format 5"),
        (lambda d: d["architecture"].pop("lstm_hidden_size"), "fields ['activation', 'net_arch', 'policy']"),
        (lambda d: d["architecture"].__setitem__("lstm_hidden_size", 0), "lstm_hidden_size 0"),
        (lambda d: d["architecture"].__setitem__("lstm_hidden_size", 7), "weights do not fit"),
        (lambda d: d["architecture"].__setitem__("policy", "MlpPolicy"), "fields ["),
        (lambda d: d.__setitem__("frame_stack", 1), "frame_stack must be an integer in 2..16 in format 5"),
    ],
)
def test_bad_recurrent_fields_are_refused(tmp_path: Path, edit: Callable[[dict], None], text: str) -> None:
    model, norm, _ = _recurrent()
    path = save_policy(tmp_path / "lstm", model, normalizer=norm)
    _edit_json(path, edit)
    with pytest.raises(PolicyFileError) as info:
        load_policy(path)
    assert text in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"shared_lstm": True, "enable_critic_lstm": False}, "shared_lstm=False"),
        ({"n_lstm_layers": 2}, "n_lstm_layers=1"),
    ],
)
def test_recurrent_policies_the_format_cannot_rebuild_are_not_saved(
    tmp_path: Path, kwargs: dict[str, Any], text: str
) -> None:
    model, norm, _ = _recurrent(**kwargs)
    with pytest.raises(PolicyFileError, match=text):
        save_policy(tmp_path / "lstm", model, normalizer=norm)
    assert not (tmp_path / "lstm").exists()


@pytest.mark.parametrize(
    ("net_arch", "action_space", "hidden"),
    [
        ({"pi": [8], "vf": [8]}, spaces.MultiDiscrete([5, 3]), 6),
        ({"pi": [], "vf": [4, 6]}, spaces.Box(-1, 1, (2,)), 32),
    ],
)
def test_expected_shapes_match_sb3_contrib(
    net_arch: dict[str, list[int]], action_space: spaces.Space[Any], hidden: int
) -> None:
    built = RecurrentActorCriticPolicy(
        spaces.Box(-1, 1, (N_FEATURES,)), action_space, lambda _: 0.0, net_arch=net_arch, lstm_hidden_size=hidden
    )
    want = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert expected_shapes(N_FEATURES, action_space, net_arch, hidden) == want
