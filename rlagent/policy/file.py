"""Saving and loading trained policies without pickle.

``PPO.load``, ``ActorCriticPolicy.load`` and ``VecNormalize.load`` unpickle, so loading an
untrusted file with them runs arbitrary code. A saved rlagent policy is instead a directory of
two plain files:

* ``policy.safetensors`` -- the SB3 ``ActorCriticPolicy.state_dict()`` (tensors only; for a
  recurrent policy, sb3-contrib's ``RecurrentActorCriticPolicy``, LSTM weights included);
* ``policy.json`` -- everything else: format version, feature names, observation and action
  spaces, the observation normaliser's statistics, the network architecture (from an
  allow-list), the weights file's SHA-256, free training metadata and ``json_sha256``, the
  SHA-256 of the rest of the JSON, so that neither file can be edited unnoticed; optionally
  ``no_final_raise`` (an LR raise before a run's last epoch is held, :class:`PolicyActor`; an
  rlagent older than that field ignores it).

Loading rebuilds the policy from the allow-listed architecture and copies the weights in with
``load_state_dict(strict=True)``; nothing from the files is ever executed or unpickled. Reading
is bounded (``rlagent.policy._integrity``): the JSON's size and nesting are capped and the weights
file's size, header, shapes and dtypes are checked against the JSON's architecture before any
tensor or network is built. The checks of each field are in ``rlagent.policy._checks``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from rlagent._io import atomic_dir, json_default, replaceable_dir, write_atomic
from rlagent.errors import PolicyFileError
from rlagent.features import FEATURE_NAMES
from rlagent.policy._checks import (
    NO_FINAL_RAISE,
    RECURRENT_POLICY,
    _check_architecture,
    _compare_features,
    _field,
    _load_state,
    _parse_action_space,
    _parse_feature_names,
    _parse_normalizer,
    _parse_obs_space,
    _parse_training,
    build_policy,
    check_no_final_raise,
)
from rlagent.policy._encode import (
    _architecture_of,
    _check_feature_names,
    _encode_action_space,
    _encode_normalizer,
    _encode_obs_space,
    _package_versions,
)
from rlagent.policy._frames import MAX_FRAME_STACK, PolicyActor, frame_space, stacked_space
from rlagent.policy._integrity import (
    DIGEST_FIELD,
    check_json_digest,
    check_param_count,
    expected_shapes,
    json_digest,
    read_json,
    read_weights,
)

__all__ = [
    "FORMAT_VERSION",
    "JSON_NAME",
    "NO_FINAL_RAISE",
    "WEIGHTS_NAME",
    "PolicyActor",
    "PolicyFileError",
    "SavedPolicy",
    "load_policy",
    "save_policy",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 5
"""Newest version of the policy directory layout, read and written by this rlagent. A policy is
written in the oldest format that holds it, so older readers keep reading what they can. 5: the
architecture may be ``MlpLstmPolicy`` (sb3-contrib's ``RecurrentActorCriticPolicy``, with
``lstm_hidden_size``), and ``frame_stack`` is optional (default 1); written only for recurrent
policies. 4: format 3 plus ``frame_stack``, the number of consecutive observations the network
sees (required, 2 or more; written for a feed-forward policy that stacks more than one); 3: the
observation features of :data:`rlagent.features.FEATURE_NAMES` as of rlagent 0.3 (LR relative
to the run's start, loss relative to the start, loss and accuracy slopes, clipping-aware last
action); 2: ``policy.json`` is covered by its own ``json_sha256``; 1: no such check. Older files
are refused with a message saying why."""
ONE_FRAME_FORMAT = 3
"""The format of a feed-forward policy that sees one observation at a time (no ``frame_stack``)."""
STACK_FORMAT = 4
"""The format of a feed-forward policy that sees several observations (``frame_stack`` >= 2)."""
_FORMATS = (ONE_FRAME_FORMAT, STACK_FORMAT, FORMAT_VERSION)
_OLD_FORMATS = {
    1: "format 1 had no integrity check of policy.json and observed 18 older features",
    2: "format 2 policies observe the 18 features of rlagent 0.2; this rlagent computes 22 "
    "(see rlagent.features.FEATURE_NAMES): retrain the policy with `rlagent train`",
}
JSON_NAME = "policy.json"
"""Name of the description file inside a policy directory."""
WEIGHTS_NAME = "policy.safetensors"
"""Name of the weights file inside a policy directory."""


# --------------------------------------------------------------------------------------------
# Saved policy
# --------------------------------------------------------------------------------------------


class SavedPolicy:
    """A policy loaded from a policy directory, ready to act on raw observations.

    Attributes:
        metadata: The whole parsed ``policy.json``.
        feature_names: Names of the observation entries, in order.
        observation_space: The space of one observation, as the env returns it (one frame).
        action_space: The action space the policy acts in.
        frame_stack: How many consecutive observations the network sees side by side (1: the
            current one only); act with :meth:`actor`, which keeps them.
        recurrent: Whether the network carries an LSTM state from epoch to epoch of a run (act
            with :meth:`actor`, which keeps it).
        no_final_raise: Whether :meth:`actor` holds an LR raise asked for before a run's last epoch.
        policy: The rebuilt SB3 ``ActorCriticPolicy`` (CPU, eval mode; for a recurrent policy
            sb3-contrib's ``RecurrentActorCriticPolicy``).
        normalizer: The observation statistics (``mean``, ``var``, ``count``, ``clip_obs``,
            ``epsilon``) or None when observations were not normalised.
    """

    def __init__(
        self,
        *,
        metadata: dict[str, Any],
        feature_names: tuple[str, ...],
        observation_space: spaces.Box,
        action_space: spaces.MultiDiscrete | spaces.Box,
        policy: ActorCriticPolicy,
        normalizer: dict[str, Any] | None,
        frame_stack: int = 1,
    ) -> None:
        self.metadata = metadata
        self.frame_stack = frame_stack
        self.feature_names = feature_names
        self.observation_space = observation_space
        self.action_space = action_space
        self.policy = policy
        self.normalizer = normalizer
        self.recurrent = metadata.get("architecture", {}).get("policy") == RECURRENT_POLICY
        self.no_final_raise = metadata.get(NO_FINAL_RAISE) is True
        if normalizer is not None:
            self._mean = np.asarray(normalizer["mean"], dtype=np.float64)
            self._var = np.asarray(normalizer["var"], dtype=np.float64)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Normalise raw observations exactly as SB3's ``VecNormalize.normalize_obs`` does.

        Args:
            obs: One observation or a batch of them (last axis = features).

        Returns:
            ``clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)`` as float32, or the
            observations unchanged (as float32) when the policy has no normaliser.
        """
        obs = np.asarray(obs)
        if self.normalizer is None:
            return obs.astype(np.float32)
        eps = self.normalizer["epsilon"]
        clip = self.normalizer["clip_obs"]
        return np.clip((obs - self._mean) / np.sqrt(self._var + eps), -clip, clip).astype(np.float32)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Choose actions for raw (unnormalised) observations, like SB3's ``predict``.

        Args:
            obs: One observation of shape ``(n_features,)`` or a batch ``(n, n_features)``.
            deterministic: Take the most likely action instead of sampling.

        Returns:
            The action (or a batch of actions), shaped and clipped as ``PPO.predict`` does.

        Raises:
            ValueError: If the observation does not have the policy's feature count, or the
                policy stacks several observations or is recurrent (use :meth:`actor`, which
                keeps a run's history).
        """
        if self.frame_stack > 1 or self.recurrent:
            seen = "an LSTM state carried through" if self.recurrent else f"the last {self.frame_stack} observations of"
            raise ValueError(f"this policy sees {seen} a run: act with policy.actor() (one per run), which keeps it")
        obs = np.asarray(obs)
        n_features = len(self.feature_names)
        if obs.ndim not in (1, 2) or obs.shape[-1] != n_features:
            raise ValueError(
                f"expected an observation of shape ({n_features},) or (batch, {n_features}), got shape {obs.shape}"
            )
        actions, _ = self.policy.predict(self.normalize(obs), deterministic=deterministic)
        return actions

    def actor(self, deterministic: bool = True) -> PolicyActor:
        """A fresh :class:`PolicyActor` for one run (episode) of this policy."""
        return PolicyActor(self, deterministic=deterministic)

    def save(self, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write this policy (its weights as they are now, e.g. edited or averaged) and its
        normaliser to a new policy directory with :func:`save_policy`; ``metadata`` goes under
        ``"training"``."""
        rms, kwargs = None, {}
        if self.normalizer is not None:
            rms = RunningMeanStd(shape=self.observation_space.shape)
            rms.mean = np.asarray(self.normalizer["mean"], dtype=np.float64)
            rms.var = np.asarray(self.normalizer["var"], dtype=np.float64)
            rms.count = float(self.normalizer["count"])
            kwargs = {"clip_obs": self.normalizer["clip_obs"], "epsilon": self.normalizer["epsilon"]}
        model = types.SimpleNamespace(
            policy=self.policy, observation_space=self.policy.observation_space, action_space=self.action_space
        )
        return save_policy(
            path, model, normalizer=rms, feature_names=self.feature_names, metadata=metadata,
            frame_stack=self.frame_stack, no_final_raise=self.no_final_raise, **kwargs,
        )  # fmt: skip

    def __repr__(self) -> str:
        arch = self.metadata.get("architecture", {})
        return (
            f"SavedPolicy(features={len(self.feature_names)}, action_space={self.action_space}, "
            f"net_arch={arch.get('net_arch')}, activation={arch.get('activation')!r}, "
            f"lstm_hidden_size={arch.get('lstm_hidden_size', 0)}, frame_stack={self.frame_stack}, "
            f"normalized={self.normalizer is not None}, no_final_raise={self.no_final_raise})"
        )


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_policy(
    path: str | os.PathLike[str],
    model: Any,
    *,
    normalizer: VecNormalize | RunningMeanStd | None,
    feature_names: Sequence[str] = FEATURE_NAMES,
    metadata: Mapping[str, Any] | None = None,
    clip_obs: float = 10.0,
    epsilon: float = 1e-8,
    frame_stack: int = 1,
    no_final_raise: bool = False,
) -> Path:
    """Write a trained SB3 PPO policy to a policy directory, atomically.

    The directory is written next to ``path`` under a temporary name and then moved into place,
    so readers never see a half-written policy. An existing policy directory at ``path`` is
    replaced; parents are created.

    Args:
        path: The policy directory to write.
        model: A trained ``stable_baselines3.PPO`` (or any model whose ``policy`` is a plain
            ``ActorCriticPolicy`` with an MLP on a flat ``Box`` observation), or an sb3-contrib
            ``RecurrentPPO`` with ``MlpLstmPolicy`` (written as format 5).
        normalizer: The ``VecNormalize`` the model was trained behind (its observation
            statistics are stored; reward normalisation is not), its ``obs_rms``
            ``RunningMeanStd``, or None if observations were not normalised.
        feature_names: Names of the observation entries, in order.
        metadata: Free, JSON-serialisable training details (spec, workloads, timesteps, seed,
            wall time, ...), stored under ``"training"``.
        clip_obs: Clipping of normalised observations; only used with a ``RunningMeanStd``.
        epsilon: Variance epsilon; only used with a ``RunningMeanStd``.
        frame_stack: How many consecutive observations the model's input holds (SB3's
            ``VecFrameStack`` ``n_stack``); ``feature_names`` and the normaliser describe one.
        no_final_raise: Hold an LR raise asked for before a run's last epoch (``PolicyActor``).

    Returns:
        The policy directory.

    Raises:
        PolicyFileError: If the policy's architecture is not allow-listed or the spaces,
            features or normaliser do not fit together.
        FileExistsError: If ``path`` exists and is not a policy directory.
        TypeError: If ``metadata`` is not JSON-serialisable.
    """
    target = Path(path)
    policy = model.policy
    if type(frame_stack) is not int or not 1 <= frame_stack <= MAX_FRAME_STACK:
        raise PolicyFileError(f"frame_stack must be an integer in 1..{MAX_FRAME_STACK}, got {frame_stack!r:.50}")
    check_no_final_raise(no_final_raise, feature_names)
    obs_space = frame_space(model.observation_space, frame_stack)
    arch = _architecture_of(policy)
    recurrent = arch["policy"] == RECURRENT_POLICY
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION if recurrent else STACK_FORMAT if frame_stack > 1 else ONE_FRAME_FORMAT,
        **({"frame_stack": frame_stack} if frame_stack > 1 else {}),
        **({NO_FINAL_RAISE: True} if no_final_raise else {}),
        "feature_names": _check_feature_names(feature_names, obs_space),
        "observation_space": _encode_obs_space(obs_space),
        "action_space": _encode_action_space(model.action_space),
        "normalizer": _encode_normalizer(normalizer, obs_space, clip_obs, epsilon),
        "architecture": arch,
        "weights_file": WEIGHTS_NAME,
        "sha256": "",
        "training": dict(metadata or {}),
        "versions": _package_versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    weights = safetensors.torch.save(tensors)
    doc["sha256"] = hashlib.sha256(weights).hexdigest()
    doc = json.loads(json.dumps(doc, allow_nan=False, default=json_default))  # plain JSON, as it will be read
    doc[DIGEST_FIELD] = json_digest(doc)
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"

    if target.exists() and not replaceable_dir(target, JSON_NAME):  # a policy directory (with its card) or empty
        raise FileExistsError(f"{target} exists and is not a policy directory; not overwriting")
    with atomic_dir(target, keep_extras=(JSON_NAME, WEIGHTS_NAME)) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; a policy directory is meant to be shared
        write_atomic(tmp / WEIGHTS_NAME, weights)
        write_atomic(tmp / JSON_NAME, text)
    logger.info("saved policy to %s (sha256 %s)", target, doc["sha256"][:12])
    return target


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_policy(
    path: str | os.PathLike[str],
    *,
    expected_features: Sequence[str] | None = FEATURE_NAMES,
) -> SavedPolicy:
    """Load a policy directory written by :func:`save_policy`, without unpickling anything.

    Args:
        path: The policy directory, or the ``policy.json`` inside it.
        expected_features: The feature names the caller will feed, in order; the file must
            record exactly these. None skips the check.

    Returns:
        The rebuilt policy with its spaces, normaliser and metadata.

    Raises:
        PolicyFileError: If a file is missing, malformed, of another format version, records
            other features, names an architecture outside the allow-list, or if the weights
            are corrupt, tampered with or do not fit the architecture.
    """
    directory, json_path = _resolve(Path(path))
    doc = read_json(json_path)
    _check_version(doc, json_path)
    check_json_digest(doc, json_path)
    frame_stack = _parse_frame_stack(doc)

    feature_names = _parse_feature_names(doc)
    check_no_final_raise(doc.get(NO_FINAL_RAISE, False), feature_names, "policy.json: ")
    if expected_features is not None:
        _compare_features(feature_names, tuple(expected_features))
    obs_space = _parse_obs_space(_field(doc, "observation_space", dict), len(feature_names))
    action_space = _parse_action_space(_field(doc, "action_space", dict))
    normalizer = _parse_normalizer(doc.get("normalizer", ...), obs_space)
    _parse_training(doc)
    arch = _field(doc, "architecture", dict)
    _check_architecture(arch)
    if arch["policy"] == RECURRENT_POLICY and doc["format_version"] < FORMAT_VERSION:
        raise PolicyFileError(f"{json_path}: a {RECURRENT_POLICY} policy needs format {FORMAT_VERSION}")
    net_space = stacked_space(obs_space, frame_stack)
    shapes = expected_shapes(net_space.shape[0], action_space, arch["net_arch"], arch.get("lstm_hidden_size", 0))
    check_param_count(shapes)

    weights_file = doc.get("weights_file", WEIGHTS_NAME)
    if weights_file != WEIGHTS_NAME:
        raise PolicyFileError(
            f"{json_path}: weights_file must be {WEIGHTS_NAME!r}, found {weights_file!r:.100}; "
            "only safetensors weights are loaded (pickled .zip/.pkl/.pt files never are)"
        )
    state = read_weights(directory / WEIGHTS_NAME, _field(doc, "sha256", str), shapes)

    policy = build_policy(net_space, action_space, arch)
    _load_state(policy, state)
    logger.info("loaded policy from %s", directory)
    return SavedPolicy(
        metadata=doc,
        feature_names=feature_names,
        observation_space=obs_space,
        action_space=action_space,
        policy=policy,
        normalizer=normalizer,
        frame_stack=frame_stack,
    )


def _parse_frame_stack(doc: dict[str, Any]) -> int:
    version = doc["format_version"]
    if version == ONE_FRAME_FORMAT:
        if "frame_stack" in doc:
            raise PolicyFileError(
                f"policy.json: format {ONE_FRAME_FORMAT} has no frame_stack (formats {STACK_FORMAT} and up have)"
            )
        return 1
    if version == FORMAT_VERSION and "frame_stack" not in doc:
        return 1
    value = doc.get("frame_stack")
    if type(value) is not int or not 2 <= value <= MAX_FRAME_STACK:
        raise PolicyFileError(
            f"policy.json: frame_stack must be an integer in 2..{MAX_FRAME_STACK} in format {version}, found {value!r:.50}"
        )
    return value


def _resolve(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        directory, json_path = path, path / JSON_NAME
    elif path.name == JSON_NAME:
        directory, json_path = path.parent, path
    elif path.exists():
        raise PolicyFileError(
            f"{path} is not a policy directory or its {JSON_NAME}; pickled SB3 files (.zip/.pkl) are never loaded"
        )
    else:
        raise PolicyFileError(f"policy not found: {path} does not exist")
    if not json_path.is_file():
        raise PolicyFileError(f"missing file: {json_path}")
    return directory, json_path


def _check_version(doc: dict[str, Any], json_path: Path) -> None:
    found = doc.get("format_version")
    expected = f"{', '.join(map(str, _FORMATS[:-1]))} or {_FORMATS[-1]}"
    if type(found) is not int:
        raise PolicyFileError(f"{json_path}: format_version must be the integer {expected}, found {found!r:.50}")
    if found not in _FORMATS:
        hint = (
            " (written by a newer rlagent?)" if found > FORMAT_VERSION else f" ({_OLD_FORMATS.get(found, 'too old')})"
        )
        raise PolicyFileError(f"{json_path}: unsupported format_version: expected {expected}, found {found}{hint}")
