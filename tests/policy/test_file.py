"""Tests for rlagent.policy.file: round trips and refusal of bad or hostile files."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import safetensors.torch
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecNormalize

from rlagent.features import FEATURE_NAMES, OBS_HIGH, OBS_LOW
from rlagent.policy._integrity import DIGEST_FIELD, json_digest
from rlagent.policy.file import (
    JSON_NAME,
    WEIGHTS_NAME,
    PolicyActor,
    PolicyFileError,
    SavedPolicy,
    load_policy,
    save_policy,
)

N_FEATURES = len(FEATURE_NAMES)


class _ToyEnv(gym.Env[np.ndarray, np.ndarray]):
    """Observations shaped like rlagent's; reward for matching the action to the first feature."""

    def __init__(self, continuous: bool = False) -> None:
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.action_space = (
            spaces.Box(-1.0, 1.0, (2,), dtype=np.float32) if continuous else spaces.MultiDiscrete([5, 3])
        )
        self._t = 0
        self._obs = np.zeros(N_FEATURES, dtype=np.float32)

    def _draw(self) -> np.ndarray:
        return self.np_random.uniform(OBS_LOW, OBS_HIGH).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._obs = self._draw()
        return self._obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        target = self._obs[0]
        reward = -float(abs(float(np.asarray(action, dtype=np.float64).ravel()[0]) - 4 * target))
        self._t += 1
        self._obs = self._draw()
        return self._obs, reward, False, self._t >= 8, {}


def _train(continuous: bool, **policy_kwargs: Any) -> tuple[PPO, VecNormalize]:
    venv = VecNormalize(DummyVecEnv([lambda: _ToyEnv(continuous)]), norm_reward=True)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=16,
        batch_size=16,
        n_epochs=2,
        policy_kwargs={"net_arch": [8], **policy_kwargs},
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=160)
    return model, venv


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[PPO, VecNormalize]]:
    """One tiny trained model per action-space kind, shared by the module's tests."""
    return {"discrete": _train(False), "continuous": _train(True)}


@pytest.fixture
def saved(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> Path:
    """A freshly saved MultiDiscrete policy directory."""
    model, venv = trained["discrete"]
    return save_policy(tmp_path / "policies" / "toy", model, normalizer=venv)


def _random_obs(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(OBS_LOW, OBS_HIGH, (n, N_FEATURES)).astype(np.float32)


def _edit_json(directory: Path, edit: Callable[[dict[str, Any]], None], *, reseal: bool = True) -> None:
    """Edit policy.json; ``reseal`` records the edited content's digest (to get past that check)."""
    path = directory / JSON_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    if reseal:
        doc[DIGEST_FIELD] = json_digest(doc)
    path.write_text(json.dumps(doc))


def _set_sha(directory: Path) -> None:
    """Make policy.json record the current weights file's hash (to get past the sha check)."""
    sha = hashlib.sha256((directory / WEIGHTS_NAME).read_bytes()).hexdigest()
    _edit_json(directory, lambda doc: doc.__setitem__("sha256", sha))


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_round_trip_gives_identical_actions(
    tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]], kind: str
) -> None:
    model, venv = trained[kind]
    path = save_policy(tmp_path / kind, model, normalizer=venv, metadata={"seed": 0, "timesteps": 160})
    loaded = load_policy(path)
    assert isinstance(loaded, SavedPolicy)
    assert not loaded.policy.training
    assert loaded.action_space == model.action_space
    assert loaded.observation_space == model.observation_space

    obs = _random_obs(300)
    np.testing.assert_array_equal(loaded.normalize(obs), venv.normalize_obs(obs))
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(loaded.predict(obs), expected)
    for row in obs[:20]:  # single observations come back without a batch axis
        single, _ = model.predict(venv.normalize_obs(row), deterministic=True)
        np.testing.assert_array_equal(loaded.predict(row), single)


def test_frame_stacked_policy_acts_as_it_did_in_training(tmp_path: Path) -> None:
    norm = VecNormalize(DummyVecEnv([lambda: _ToyEnv()]), norm_reward=True)
    stack = VecFrameStack(norm, n_stack=3)
    model = PPO("MlpPolicy", stack, n_steps=16, batch_size=16, n_epochs=2, policy_kwargs={"net_arch": [8]}, seed=0)
    model.learn(total_timesteps=160)
    path = save_policy(tmp_path / "stacked", model, normalizer=norm, frame_stack=3)

    doc = json.loads((path / JSON_NAME).read_text())
    assert (doc["format_version"], doc["frame_stack"]) == (4, 3)
    loaded = load_policy(path)
    assert loaded.frame_stack == 3
    assert loaded.observation_space == norm.observation_space  # one frame, as the env returns it
    assert loaded.policy.observation_space.shape == (3 * N_FEATURES,)
    assert len(loaded.normalizer["mean"]) == N_FEATURES
    with pytest.raises(ValueError, match=r"last 3 observations.*actor\(\)"):
        loaded.predict(_random_obs(1)[0])

    # A fresh actor per episode, fed the raw observations, acts as the trained model on the
    # stacked normalised ones (zeros before the first), over whole episodes.
    norm.training = False
    obs = stack.reset()
    for _episode in range(3):
        act = loaded.actor()
        assert isinstance(act, PolicyActor)
        for _step in range(8):
            expected, _ = model.predict(obs, deterministic=True)
            np.testing.assert_array_equal(act(norm.get_original_obs()[0]), expected[0])
            obs, _, done, _ = stack.step(expected)
            if done[0]:
                break
        assert done[0], "the toy episode lasts 8 steps"
    with pytest.raises(ValueError, match=r"one observation of shape \(22,\)"):
        loaded.actor()(_random_obs(2))

    # Saving the loaded policy again keeps the stack; a 1-frame save stays format 3.
    again = load_policy(loaded.save(tmp_path / "again"))
    assert again.frame_stack == 3
    for key, value in loaded.policy.state_dict().items():
        assert torch.equal(again.policy.state_dict()[key], value), key
    with pytest.raises(PolicyFileError, match=r"shape \(66,\) is not 2 stacked copies"):
        save_policy(tmp_path / "other", model, normalizer=norm, frame_stack=2)
    with pytest.raises(PolicyFileError, match="a multiple of 4, got"):
        save_policy(tmp_path / "other", model, normalizer=norm, frame_stack=4)
    with pytest.raises(PolicyFileError, match="frame_stack must be an integer in 1..16"):
        save_policy(tmp_path / "other", model, normalizer=norm, frame_stack=0)


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (lambda d: d.pop("frame_stack"), "frame_stack must be an integer in 2..16 in format 4, found None"),
        (lambda d: d.__setitem__("frame_stack", 1), "found 1"),
        (lambda d: d.__setitem__("frame_stack", 17), "found 17"),
        (lambda d: d.__setitem__("frame_stack", "3"), "found '3'"),
        (lambda d: d.__setitem__("format_version", 3), "format 3 has no frame_stack"),
    ],
)
def test_bad_frame_stack_fields_are_refused(tmp_path: Path, edit: Callable[[dict], None], text: str) -> None:
    norm = VecNormalize(DummyVecEnv([lambda: _ToyEnv()]))
    model = PPO("MlpPolicy", VecFrameStack(norm, n_stack=2), n_steps=16, policy_kwargs={"net_arch": [8]}, seed=0)
    path = save_policy(tmp_path / "stacked", model, normalizer=norm, frame_stack=2)
    _edit_json(path, edit)
    with pytest.raises(PolicyFileError, match="frame_stack") as info:
        load_policy(path)
    assert text in str(info.value)


def test_policy_json_path_and_metadata(saved: Path) -> None:
    loaded = load_policy(saved / JSON_NAME)
    meta = loaded.metadata
    assert meta["format_version"] == 3
    assert loaded.feature_names == FEATURE_NAMES
    assert meta["architecture"] == {
        "policy": "MlpPolicy",
        "net_arch": {"pi": [8], "vf": [8]},
        "activation": "tanh",
    }
    assert meta["action_space"] == {"type": "MultiDiscrete", "nvec": [5, 3]}
    assert meta["normalizer"]["clip_obs"] == 10.0
    assert {"torch", "stable_baselines3", "gymnasium", "numpy"} <= set(meta["versions"])
    assert meta["created"].endswith("+00:00")
    assert len(meta["sha256"]) == 64


def test_other_architecture_and_running_mean_std(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> None:
    _, venv = trained["discrete"]
    model = PPO(
        "MlpPolicy",
        DummyVecEnv([_ToyEnv]),
        policy_kwargs={"net_arch": {"pi": [8, 4], "vf": [6]}, "activation_fn": torch.nn.ReLU},
        seed=3,
        device="cpu",
    )
    path = save_policy(tmp_path / "p", model, normalizer=venv.obs_rms, metadata={"a": np.int64(1)})
    loaded = load_policy(path)
    assert loaded.metadata["architecture"]["activation"] == "relu"
    assert loaded.metadata["training"] == {"a": 1}
    obs = _random_obs(100)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(loaded.predict(obs), expected)


def test_without_normalizer(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> None:
    model, _ = trained["discrete"]
    loaded = load_policy(save_policy(tmp_path / "p", model, normalizer=None))
    obs = _random_obs(50)
    assert loaded.metadata["normalizer"] is None
    np.testing.assert_array_equal(loaded.predict(obs), model.predict(obs, deterministic=True)[0])


def test_loading_leaves_global_torch_rng_alone(saved: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_policy(saved)
    assert torch.equal(torch.rand(3), expected)


def test_predict_rejects_wrong_shape(saved: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        load_policy(saved).predict(np.zeros(N_FEATURES + 1, dtype=np.float32))


# -------------------------------------------------------------------------------- saving


def test_save_overwrites_atomically(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> None:
    model, venv = trained["continuous"]
    first = save_policy(tmp_path / "p", trained["discrete"][0], normalizer=None)
    second = save_policy(first, model, normalizer=venv)
    assert load_policy(second).metadata["action_space"]["type"] == "Box"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temp dirs left behind
    assert sorted(p.name for p in second.iterdir()) == [JSON_NAME, WEIGHTS_NAME]


def test_save_refuses_to_overwrite_other_things(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_policy(tmp_path / "p", trained["discrete"][0], normalizer=None)
    assert (tmp_path / "p" / "notes.txt").read_text() == "keep me"


def test_save_keeps_model_card_beside_the_policy(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> None:
    first = save_policy(tmp_path / "p", trained["discrete"][0], normalizer=None)
    (first / "README.md").write_text("card")
    (first / "curves").mkdir()
    (first / "curves" / "a.csv").write_text("1,2")
    save_policy(first, trained["continuous"][0], normalizer=trained["continuous"][1])
    assert (first / "README.md").read_text() == "card"
    assert (first / "curves" / "a.csv").read_text() == "1,2"
    assert load_policy(first).metadata["action_space"]["type"] == "Box"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_save_refuses_unlisted_activation(tmp_path: Path) -> None:
    model = PPO(
        "MlpPolicy",
        DummyVecEnv([_ToyEnv]),
        policy_kwargs={"net_arch": [8], "activation_fn": torch.nn.ELU},
        device="cpu",
    )
    with pytest.raises(PolicyFileError, match="activation"):
        save_policy(tmp_path / "p", model, normalizer=None)
    assert not (tmp_path / "p").exists()


def test_save_refuses_wrong_feature_count(tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]]) -> None:
    with pytest.raises(PolicyFileError, match="feature names"):
        save_policy(tmp_path / "p", trained["discrete"][0], normalizer=None, feature_names=["a", "b"])


# ------------------------------------------------------------------------------- refusals


def test_pickled_weights_are_never_unpickled(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    (saved / WEIGHTS_NAME).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PolicyFileError, match="sha256 mismatch"):
        load_policy(saved)
    _set_sha(saved)  # even with a matching hash the file is parsed as safetensors only
    with pytest.raises(PolicyFileError, match="not a valid safetensors file"):
        load_policy(saved)
    torch.save({"w": _Payload(marker)}, saved / WEIGHTS_NAME)  # torch's zip-of-pickle format
    _set_sha(saved)
    with pytest.raises(PolicyFileError, match="not a valid safetensors file"):
        load_policy(saved)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["policy.pkl", "model.zip", "../elsewhere/policy.safetensors"])
def test_json_pointing_at_other_weights_is_refused(saved: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "PWNED"
    (saved / Path(name).name).write_bytes(pickle.dumps(_Payload(marker)))
    _edit_json(saved, lambda doc: doc.__setitem__("weights_file", name))
    with pytest.raises(PolicyFileError, match="only safetensors weights are loaded"):
        load_policy(saved)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["policy.pkl", "model.zip"])
def test_pickle_files_given_directly_are_refused(
    tmp_path: Path, trained: dict[str, tuple[PPO, VecNormalize]], name: str
) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    if name.endswith(".zip"):
        trained["discrete"][0].save(path)  # SB3's own (pickling) format
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PolicyFileError, match="never loaded"):
        load_policy(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("expected", "words"),
    [
        (FEATURE_NAMES[:-1], ["extra", "'last_bs_action'"]),
        ((*FEATURE_NAMES, "grad_norm"), ["missing", "'grad_norm'"]),
        ((*FEATURE_NAMES[:-1], "grad_norm"), ["missing ['grad_norm']", "extra ['last_bs_action']"]),
        ((FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:]), ["reordered", "'lr_pos' at 1"]),
    ],
)
def test_feature_mismatch_names_the_difference(saved: Path, expected: tuple[str, ...], words: list[str]) -> None:
    with pytest.raises(PolicyFileError, match="feature list mismatch") as info:
        load_policy(saved, expected_features=expected)
    for word in words:
        assert word in str(info.value)
    load_policy(saved, expected_features=None)  # the check can be skipped explicitly


@pytest.mark.parametrize(
    ("version", "text"),
    [
        (6, "expected 3, 4 or 5, found 6 (written by a newer rlagent?)"),
        ("3", "found '3'"),
        (1, "format 1 had no integrity check"),
        (2, "retrain the policy"),
    ],
)
def test_wrong_format_version(saved: Path, version: object, text: str) -> None:
    _edit_json(saved, lambda doc: doc.__setitem__("format_version", version))
    with pytest.raises(PolicyFileError, match="format_version") as info:
        load_policy(saved)
    assert text in str(info.value)


def test_truncated_weights(saved: Path) -> None:
    weights = saved / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PolicyFileError, match="sha256 mismatch"):
        load_policy(saved)
    _set_sha(saved)
    with pytest.raises(PolicyFileError, match="corrupt or truncated"):
        load_policy(saved)


def test_truncated_json(saved: Path) -> None:
    path = saved / JSON_NAME
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PolicyFileError, match="not valid JSON"):
        load_policy(saved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda a: a.__setitem__("activation", "os.system"),
        lambda a: a.__setitem__("policy", "CnnPolicy"),
        lambda a: a.__setitem__("net_arch", {"pi": [10**6], "vf": [8]}),
        lambda a: a.__setitem__("net_arch", {"pi": [8] * 9, "vf": [8]}),
        lambda a: a.__setitem__("net_arch", {"pi": [8.0], "vf": [8]}),
        lambda a: a.__setitem__("net_arch", [8]),
        lambda a: a.__setitem__("class", "builtins.eval"),
    ],
)
def test_architecture_outside_allow_list(saved: Path, edit: Callable[[dict], None]) -> None:
    _edit_json(saved, lambda doc: edit(doc["architecture"]))
    with pytest.raises(PolicyFileError, match="not allow-listed"):
        load_policy(saved)


def test_tampered_weights(saved: Path) -> None:
    weights = saved / WEIGHTS_NAME
    state = safetensors.torch.load(weights.read_bytes())
    key = next(iter(state))
    state[key] = state[key] + 1.0
    safetensors.torch.save_file(state, weights)
    with pytest.raises(PolicyFileError, match="sha256 mismatch"):
        load_policy(saved)


def test_weights_not_fitting_architecture(saved: Path) -> None:
    _edit_json(saved, lambda doc: doc["architecture"].__setitem__("net_arch", {"pi": [16], "vf": [8]}))
    with pytest.raises(PolicyFileError, match="do not fit the architecture.*policy_net"):
        load_policy(saved)
    _edit_json(saved, lambda doc: doc["architecture"].__setitem__("net_arch", {"pi": [8, 8], "vf": [8]}))
    with pytest.raises(PolicyFileError, match="missing keys"):
        load_policy(saved)


def test_missing_files(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(PolicyFileError, match="missing file"):
        load_policy(saved)
    (saved / JSON_NAME).unlink()
    with pytest.raises(PolicyFileError, match="missing file"):
        load_policy(saved)


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (lambda d: d.pop("sha256"), "sha256"),
        (lambda d: d.__setitem__("action_space", {"type": "Dict"}), "action_space.type"),
        (lambda d: d["observation_space"].__setitem__("shape", [3]), "observation_space"),
        (lambda d: d["normalizer"].__setitem__("var", [-1.0] * N_FEATURES), "var >= 0"),
        (lambda d: d["normalizer"].__setitem__("mean", [0.0]), "normalizer mean/var"),
        (lambda d: d.__setitem__("no_final_raise", "yes"), "no_final_raise must be true or false"),
        (lambda d: d.__setitem__("no_final_raise", 1), "no_final_raise must be true or false"),
    ],
)
def test_malformed_fields(saved: Path, edit: Callable[[dict], None], text: str) -> None:
    _edit_json(saved, edit)
    with pytest.raises(PolicyFileError, match=text):
        load_policy(saved)
