"""Saving and loading trained policies without pickle.

``PPO.load``, ``ActorCriticPolicy.load`` and ``VecNormalize.load`` unpickle, so loading an
untrusted file with them runs arbitrary code. A saved rlagent policy is instead a directory of
two plain files:

* ``policy.safetensors`` -- the SB3 ``ActorCriticPolicy.state_dict()`` (tensors only);
* ``policy.json`` -- everything else: format version, feature names, observation and action
  spaces, the observation normaliser's statistics, the network architecture (from an
  allow-list), the weights file's SHA-256 and free training metadata.

Loading rebuilds the policy from the allow-listed architecture and copies the weights in with
``load_state_dict(strict=True)``; nothing from the files is ever executed or unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from rlagent.errors import RLAgentError
from rlagent.features import FEATURE_NAMES

__all__ = [
    "FORMAT_VERSION",
    "JSON_NAME",
    "WEIGHTS_NAME",
    "PolicyFileError",
    "SavedPolicy",
    "load_policy",
    "save_policy",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the policy directory layout written by :func:`save_policy`."""
JSON_NAME = "policy.json"
"""Name of the description file inside a policy directory."""
WEIGHTS_NAME = "policy.safetensors"
"""Name of the weights file inside a policy directory."""

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
_MAX_WIDTH = 4096
_MAX_LAYERS = 8
_MAX_JSON_BYTES = 16 * 1024 * 1024
_VERSIONED_PACKAGES = ("torch", "stable_baselines3", "gymnasium", "numpy", "safetensors")


class PolicyFileError(RLAgentError, ValueError):
    """A policy directory is missing, malformed, tampered with or does not fit."""


# --------------------------------------------------------------------------------------------
# Saved policy
# --------------------------------------------------------------------------------------------


class SavedPolicy:
    """A policy loaded from a policy directory, ready to act on raw observations.

    Attributes:
        metadata: The whole parsed ``policy.json``.
        feature_names: Names of the observation entries, in order.
        observation_space: The observation space the policy was trained on.
        action_space: The action space the policy acts in.
        policy: The rebuilt SB3 ``ActorCriticPolicy`` (CPU, eval mode).
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
    ) -> None:
        self.metadata = metadata
        self.feature_names = feature_names
        self.observation_space = observation_space
        self.action_space = action_space
        self.policy = policy
        self.normalizer = normalizer
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
            ValueError: If the observation does not have the policy's feature count.
        """
        obs = np.asarray(obs)
        n_features = len(self.feature_names)
        if obs.ndim not in (1, 2) or obs.shape[-1] != n_features:
            raise ValueError(
                f"expected an observation of shape ({n_features},) or (batch, {n_features}), got shape {obs.shape}"
            )
        actions, _ = self.policy.predict(self.normalize(obs), deterministic=deterministic)
        return actions

    def __repr__(self) -> str:
        arch = self.metadata.get("architecture", {})
        return (
            f"SavedPolicy(features={len(self.feature_names)}, action_space={self.action_space}, "
            f"net_arch={arch.get('net_arch')}, activation={arch.get('activation')!r}, "
            f"normalized={self.normalizer is not None})"
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
) -> Path:
    """Write a trained SB3 PPO policy to a policy directory, atomically.

    The directory is written next to ``path`` under a temporary name and then moved into place,
    so readers never see a half-written policy. An existing policy directory at ``path`` is
    replaced; parents are created.

    Args:
        path: The policy directory to write.
        model: A trained ``stable_baselines3.PPO`` (or any model whose ``policy`` is a plain
            ``ActorCriticPolicy`` with an MLP on a flat ``Box`` observation).
        normalizer: The ``VecNormalize`` the model was trained behind (its observation
            statistics are stored; reward normalisation is not), its ``obs_rms``
            ``RunningMeanStd``, or None if observations were not normalised.
        feature_names: Names of the observation entries, in order.
        metadata: Free, JSON-serialisable training details (spec, workloads, timesteps, seed,
            wall time, ...), stored under ``"training"``.
        clip_obs: Clipping of normalised observations; only used with a ``RunningMeanStd``.
        epsilon: Variance epsilon; only used with a ``RunningMeanStd``.

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
    obs_space = model.observation_space
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "feature_names": _check_feature_names(feature_names, obs_space),
        "observation_space": _encode_obs_space(obs_space),
        "action_space": _encode_action_space(model.action_space),
        "normalizer": _encode_normalizer(normalizer, obs_space, clip_obs, epsilon),
        "architecture": _architecture_of(policy),
        "weights_file": WEIGHTS_NAME,
        "sha256": "",
        "training": dict(metadata or {}),
        "versions": _package_versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    weights = safetensors.torch.save(tensors)
    doc["sha256"] = hashlib.sha256(weights).hexdigest()
    text = json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n"

    if target.exists() and not _is_replaceable(target):
        raise FileExistsError(f"{target} exists and is not a policy directory; not overwriting")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_synced(tmp / WEIGHTS_NAME, weights)
        _write_synced(tmp / JSON_NAME, text.encode("utf-8"))
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved policy to %s (sha256 %s)", target, doc["sha256"][:12])
    return target


def _check_feature_names(names: Sequence[str], obs_space: Any) -> list[str]:
    names = list(names)
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise PolicyFileError(f"feature_names must be distinct strings, got {names!r}")
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise PolicyFileError(f"only flat Box observation spaces can be saved, got {obs_space}")
    if obs_space.shape[0] != len(names):
        raise PolicyFileError(
            f"observation space has {obs_space.shape[0]} entries but {len(names)} feature names were given"
        )
    return names


def _encode_obs_space(space: spaces.Box) -> dict[str, Any]:
    return {
        "low": _encode_bounds(space.low),
        "high": _encode_bounds(space.high),
        "shape": list(space.shape),
    }


def _encode_action_space(space: Any) -> dict[str, Any]:
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec]}
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return {
            "type": "Box",
            "low": _encode_bounds(space.low),
            "high": _encode_bounds(space.high),
            "shape": list(space.shape),
        }
    raise PolicyFileError(f"only flat MultiDiscrete or Box action spaces can be saved, got {space}")


def _encode_bounds(values: np.ndarray) -> list[float | str]:
    out: list[float | str] = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        if math.isnan(v):
            raise PolicyFileError("space bounds must not be NaN")
        out.append(float(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf"))
    return out


def _encode_normalizer(
    normalizer: VecNormalize | RunningMeanStd | None,
    obs_space: spaces.Box,
    clip_obs: float,
    epsilon: float,
) -> dict[str, Any] | None:
    if normalizer is None:
        return None
    if isinstance(normalizer, VecNormalize):
        if not normalizer.norm_obs:
            return None
        rms, clip_obs, epsilon = normalizer.obs_rms, normalizer.clip_obs, normalizer.epsilon
    else:
        rms = normalizer
    if not isinstance(rms, RunningMeanStd):
        raise PolicyFileError(f"unsupported observation normaliser statistics: {type(rms)}")
    mean = np.asarray(rms.mean, dtype=np.float64)
    var = np.asarray(rms.var, dtype=np.float64)
    if mean.shape != obs_space.shape or var.shape != obs_space.shape:
        raise PolicyFileError(f"normaliser statistics have shape {mean.shape}, observations {obs_space.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        raise PolicyFileError("normaliser statistics contain NaN or infinity")
    return {
        "mean": mean.tolist(),
        "var": var.tolist(),
        "count": float(rms.count),
        "clip_obs": float(clip_obs),
        "epsilon": float(epsilon),
    }


def _architecture_of(policy: Any) -> dict[str, Any]:
    """Describe ``policy`` as an allow-listed architecture, or refuse."""
    if type(policy) is not ActorCriticPolicy:
        raise PolicyFileError(f"only MlpPolicy (ActorCriticPolicy) can be saved, got {type(policy).__name__}")
    if policy.features_extractor_class is not FlattenExtractor:
        raise PolicyFileError(
            f"only the default FlattenExtractor is supported, got {policy.features_extractor_class.__name__}"
        )
    if policy.use_sde or policy.squash_output:
        raise PolicyFileError("gSDE / squashed-output policies are not supported")
    names = {cls: name for name, cls in _ACTIVATIONS.items()}
    if policy.activation_fn not in names:
        raise PolicyFileError(f"activation {policy.activation_fn!r} is not allowed; allowed: {sorted(_ACTIVATIONS)}")
    net_arch = policy.net_arch
    if isinstance(net_arch, dict):
        net_arch = {"pi": net_arch.get("pi", []), "vf": net_arch.get("vf", [])}
    else:
        net_arch = {"pi": list(net_arch), "vf": list(net_arch)}
    arch = {"policy": "MlpPolicy", "net_arch": net_arch, "activation": names[policy.activation_fn]}
    _check_architecture(arch)
    return arch


def _package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    try:
        versions["rlagent"] = importlib.metadata.version("rlagent")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules.get("rlagent"), "__version__", None)
        if isinstance(version, str):
            versions["rlagent"] = version
    for name in _VERSIONED_PACKAGES:
        version = getattr(sys.modules.get(name), "__version__", None)
        if version is not None:
            versions[name] = str(version)
    return versions


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"policy metadata value of type {type(obj).__name__} is not JSON-serialisable")


def _is_replaceable(target: Path) -> bool:
    if not target.is_dir() or target.is_symlink():
        return False
    # A policy directory (it may also hold a model card, plots, logs) or an empty one.
    return (target / JSON_NAME).is_file() or not any(target.iterdir())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory to ``target``, replacing an old policy there."""
    if not target.exists():
        os.replace(tmp, target)
        return
    # Keep what else lives beside the policy (model card, training curve, logs).
    for extra in target.iterdir():
        if extra.name not in (JSON_NAME, WEIGHTS_NAME):
            copy = shutil.copytree if extra.is_dir() else shutil.copy2
            copy(extra, tmp / extra.name)
    # rename() cannot replace a non-empty directory: move the old one aside first.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
    doc = _read_json(json_path)
    _check_version(doc, json_path)

    feature_names = _parse_feature_names(doc)
    if expected_features is not None:
        _compare_features(feature_names, tuple(expected_features))
    obs_space = _parse_obs_space(_field(doc, "observation_space", dict), len(feature_names))
    action_space = _parse_action_space(_field(doc, "action_space", dict))
    normalizer = _parse_normalizer(doc.get("normalizer", ...), len(feature_names))
    arch = _field(doc, "architecture", dict)
    _check_architecture(arch)

    weights_file = doc.get("weights_file", WEIGHTS_NAME)
    if weights_file != WEIGHTS_NAME:
        raise PolicyFileError(
            f"{json_path}: weights_file must be {WEIGHTS_NAME!r}, found {weights_file!r}; "
            "only safetensors weights are loaded (pickled .zip/.pkl/.pt files never are)"
        )
    state = _read_weights(directory / WEIGHTS_NAME, _field(doc, "sha256", str))

    policy = _build_policy(obs_space, action_space, arch)
    _load_state(policy, state)
    logger.info("loaded policy from %s", directory)
    return SavedPolicy(
        metadata=doc,
        feature_names=feature_names,
        observation_space=obs_space,
        action_space=action_space,
        policy=policy,
        normalizer=normalizer,
    )


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


def _read_json(json_path: Path) -> dict[str, Any]:
    size = json_path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise PolicyFileError(f"{json_path} is {size} bytes, more than a policy file can be")
    try:
        doc = json.loads(json_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(f"{json_path} is not valid JSON (truncated or corrupt?): {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyFileError(f"{json_path} must hold a JSON object, found {type(doc).__name__}")
    return doc


def _check_version(doc: dict[str, Any], json_path: Path) -> None:
    found = doc.get("format_version")
    if type(found) is not int:
        raise PolicyFileError(f"{json_path}: format_version must be the integer {FORMAT_VERSION}, found {found!r}")
    if found != FORMAT_VERSION:
        hint = " (written by a newer rlagent?)" if found > FORMAT_VERSION else ""
        raise PolicyFileError(
            f"{json_path}: unsupported format_version: expected {FORMAT_VERSION}, found {found}{hint}"
        )


def _field(doc: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in doc:
        raise PolicyFileError(f"policy.json: missing field {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PolicyFileError(f"policy.json: field {key!r} must be a {kind.__name__}, found {value!r:.100}")
    return value


def _parse_feature_names(doc: dict[str, Any]) -> tuple[str, ...]:
    names = _field(doc, "feature_names", list)
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise PolicyFileError("policy.json: feature_names must be a list of distinct strings")
    return tuple(names)


def _compare_features(found: tuple[str, ...], expected: tuple[str, ...]) -> None:
    if found == expected:
        return
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"extra {extra}")
    if not parts:
        moved = [f"{n!r} at {found.index(n)} (expected {i})" for i, n in enumerate(expected) if found[i] != n]
        parts.append(f"reordered: {', '.join(moved)}")
    raise PolicyFileError(
        "feature list mismatch: the policy was trained on other observation features: " + "; ".join(parts)
    )


def _parse_floats(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, list):
        raise PolicyFileError(f"policy.json: {what} must be a list of numbers")
    out = []
    for v in value:
        is_inf = isinstance(v, str) and v in ("inf", "-inf")
        is_number = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
        if is_inf or is_number:
            out.append(float(v))
        else:
            raise PolicyFileError(f"policy.json: {what} holds a non-number: {v!r:.50}")
    return np.array(out, dtype=np.float64)


def _parse_shape(spec: Mapping[str, Any], what: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) != 1 or type(shape[0]) is not int or not 0 < shape[0] <= 1_000_000:
        raise PolicyFileError(f"policy.json: {what}.shape must be [n] with n > 0, got {shape!r}")
    return (shape[0],)


def _parse_box(spec: Mapping[str, Any], what: str) -> spaces.Box:
    shape = _parse_shape(spec, what)
    low = _parse_floats(spec.get("low"), f"{what}.low")
    high = _parse_floats(spec.get("high"), f"{what}.high")
    if low.shape != shape or high.shape != shape or np.any(low > high):
        raise PolicyFileError(f"policy.json: {what} low/high do not fit shape {list(shape)}")
    return spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


def _parse_obs_space(spec: dict[str, Any], n_features: int) -> spaces.Box:
    space = _parse_box(spec, "observation_space")
    if space.shape != (n_features,):
        raise PolicyFileError(f"policy.json: observation_space has shape {space.shape} but {n_features} features")
    return space


def _parse_action_space(spec: dict[str, Any]) -> spaces.MultiDiscrete | spaces.Box:
    kind = spec.get("type")
    if kind == "MultiDiscrete":
        nvec = spec.get("nvec")
        if not isinstance(nvec, list) or not nvec or not all(type(n) is int and 0 < n <= 1_000_000 for n in nvec):
            raise PolicyFileError(f"policy.json: action_space.nvec must be positive integers, got {nvec!r:.100}")
        return spaces.MultiDiscrete(nvec)
    if kind == "Box":
        return _parse_box(spec, "action_space")
    raise PolicyFileError(f"policy.json: action_space.type must be 'MultiDiscrete' or 'Box', found {kind!r:.50}")


def _parse_normalizer(spec: Any, n_features: int) -> dict[str, Any] | None:
    if spec is ...:
        raise PolicyFileError("policy.json: missing field 'normalizer' (null if none)")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise PolicyFileError("policy.json: normalizer must be null or an object")
    mean = _parse_floats(spec.get("mean"), "normalizer.mean")
    var = _parse_floats(spec.get("var"), "normalizer.var")
    if mean.shape != (n_features,) or var.shape != (n_features,):
        raise PolicyFileError(
            f"policy.json: normalizer mean/var must have {n_features} entries, found {mean.size}/{var.size}"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var >= 0)):
        raise PolicyFileError("policy.json: normalizer mean/var must be finite, var >= 0")
    scalars = {}
    for key in ("count", "clip_obs", "epsilon"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyFileError(f"policy.json: normalizer.{key} must be a number")
        if not (math.isfinite(value) and value > 0):
            raise PolicyFileError(f"policy.json: normalizer.{key} must be positive, got {value}")
        scalars[key] = float(value)
    return {"mean": mean.tolist(), "var": var.tolist(), **scalars}


def _check_architecture(arch: Mapping[str, Any]) -> None:
    """Refuse anything but ``MlpPolicy`` with small integer layers and tanh / relu."""
    allowed = (
        f"allowed: policy 'MlpPolicy', net_arch {{'pi': [...], 'vf': [...]}} of at most "
        f"{_MAX_LAYERS} layers of 1..{_MAX_WIDTH} units, activation one of {sorted(_ACTIVATIONS)}"
    )
    if set(arch) != {"policy", "net_arch", "activation"}:
        raise PolicyFileError(f"architecture not allow-listed: fields {sorted(arch)}; {allowed}")
    if arch["policy"] != "MlpPolicy":
        raise PolicyFileError(f"architecture not allow-listed: policy {arch['policy']!r:.50}; {allowed}")
    if not isinstance(arch["activation"], str) or arch["activation"] not in _ACTIVATIONS:
        raise PolicyFileError(f"architecture not allow-listed: activation {arch['activation']!r:.50}; {allowed}")
    net_arch = arch["net_arch"]
    if not isinstance(net_arch, dict) or set(net_arch) != {"pi", "vf"}:
        raise PolicyFileError(f"architecture not allow-listed: net_arch {net_arch!r:.100}; {allowed}")
    for key, layers in net_arch.items():
        if (
            not isinstance(layers, list)
            or len(layers) > _MAX_LAYERS
            or not all(type(n) is int and 0 < n <= _MAX_WIDTH for n in layers)
        ):
            raise PolicyFileError(f"architecture not allow-listed: net_arch[{key!r}] = {layers!r:.100}; {allowed}")


def _read_weights(weights_path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise PolicyFileError(f"missing file: {weights_path}")
    data = weights_path.read_bytes()  # hash and parse the same bytes
    found_sha = hashlib.sha256(data).hexdigest()
    if found_sha != expected_sha.lower():
        raise PolicyFileError(
            f"sha256 mismatch for {weights_path}: policy.json records {expected_sha[:16]}..., "
            f"file has {found_sha[:16]}... (weights swapped, modified or truncated)"
        )
    try:
        return safetensors.torch.load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise PolicyFileError(f"{weights_path} is not a valid safetensors file (corrupt or truncated): {exc}") from None


def _build_policy(obs_space: spaces.Box, action_space: spaces.Space[Any], arch: Mapping[str, Any]) -> ActorCriticPolicy:
    # The fresh weights are overwritten below; fork the RNG so building does not disturb
    # the caller's global torch random state.
    with torch.random.fork_rng(devices=[]):
        policy = ActorCriticPolicy(
            obs_space,
            action_space,
            lr_schedule=lambda _: 0.0,
            net_arch={"pi": list(arch["net_arch"]["pi"]), "vf": list(arch["net_arch"]["vf"])},
            activation_fn=_ACTIVATIONS[arch["activation"]],
        )
    return policy


def _load_state(policy: ActorCriticPolicy, state: Mapping[str, torch.Tensor]) -> None:
    want = policy.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise PolicyFileError(
            f"weights do not fit the architecture: missing keys {missing}, unexpected keys {unexpected}"
        )
    bad = [
        f"{k}: file {tuple(state[k].shape)} {state[k].dtype}, policy {tuple(v.shape)} {v.dtype}"
        for k, v in want.items()
        if state[k].shape != v.shape or state[k].dtype != v.dtype
    ]
    if bad:
        raise PolicyFileError(f"weights do not fit the architecture: {'; '.join(bad)}")
    policy.load_state_dict(state, strict=True)
    policy.to("cpu")
    policy.set_training_mode(False)
