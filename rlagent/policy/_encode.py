"""Encoding a trained SB3 policy's spaces, normaliser and architecture for ``policy.json``.

:func:`rlagent.policy.file.save_policy` calls these; each refuses (``PolicyFileError``) what the
loader would refuse, so a policy that saves also loads.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import VecNormalize

from rlagent.errors import PolicyFileError
from rlagent.policy._checks import _ACTIVATIONS, RECURRENT_POLICY, _check_architecture

_VERSIONED_PACKAGES = ("torch", "stable_baselines3", "sb3_contrib", "gymnasium", "numpy", "safetensors")


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
    lstm = _lstm_of(policy)
    if type(policy) is not ActorCriticPolicy and lstm is None:
        raise PolicyFileError(
            "only MlpPolicy (ActorCriticPolicy) and MlpLstmPolicy (sb3-contrib's RecurrentActorCriticPolicy) "
            f"can be saved, got {type(policy).__name__}"
        )
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
    if lstm is not None:
        arch.update(policy=RECURRENT_POLICY, lstm_hidden_size=lstm)
    _check_architecture(arch)
    return arch


def _lstm_of(policy: Any) -> int | None:
    """The LSTM size of an sb3-contrib ``RecurrentActorCriticPolicy`` that the format can rebuild
    (one layer, separate actor and critic LSTMs, PyTorch's LSTM defaults); None for another class."""
    if type(policy).__name__ != "RecurrentActorCriticPolicy":
        return None
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    if type(policy) is not RecurrentActorCriticPolicy:
        return None
    lstm = policy.lstm_actor
    plain = lstm.num_layers == 1 and lstm.bias and not lstm.bidirectional and not lstm.proj_size
    if policy.shared_lstm or not policy.enable_critic_lstm or not plain:
        raise PolicyFileError(
            "only a recurrent policy with one plain LSTM layer each for the actor and the critic can be saved "
            "(sb3-contrib's defaults: n_lstm_layers=1, shared_lstm=False, enable_critic_lstm=True, no lstm_kwargs)"
        )
    return int(lstm.hidden_size)


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
