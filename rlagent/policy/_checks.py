"""Checks of a policy directory's contents: every field of ``policy.json`` and the weights.

``policy.json`` is untrusted input, so each field is parsed into the type it must have (spaces,
normaliser statistics, an allow-listed architecture) or refused with a :class:`PolicyFileError`
naming the field; the weights must match the recorded SHA-256 and fit the architecture exactly.
:mod:`rlagent.policy.file` reads the files and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from rlagent.errors import PolicyFileError, is_number

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
_MAX_WIDTH = 4096
_MAX_LAYERS = 8
_MAX_ACTION_DIMS = 64
_MAX_LSTM = 256
RECURRENT_POLICY = "MlpLstmPolicy"
"""The architecture name of a policy with an LSTM before its networks (sb3-contrib's
``RecurrentActorCriticPolicy``: one layer, separate actor and critic LSTMs; policy format 5)."""
NO_FINAL_RAISE = "no_final_raise"
"""Optional ``policy.json`` field: true plays an LR raise asked for before a run's last epoch as a hold."""


def check_no_final_raise(value: Any, feature_names: Sequence[str], where: str = "") -> bool:
    """``no_final_raise`` as given (``where`` prefixes the message), refused unless True or False,
    and True only with a ``progress`` feature to tell a run's last epoch by."""
    if type(value) is not bool:
        raise PolicyFileError(f"{where}{NO_FINAL_RAISE} must be true or false, found {value!r:.50}")
    if value and "progress" not in feature_names:
        raise PolicyFileError(f"{where}{NO_FINAL_RAISE} needs the feature 'progress' to tell a run's last epoch")
    return value


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
        if is_inf or (is_number(v) and not math.isnan(v)):
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
        if (
            not isinstance(nvec, list)
            or not 0 < len(nvec) <= _MAX_ACTION_DIMS
            or not all(type(n) is int and 0 < n <= 1_000_000 for n in nvec)
        ):
            raise PolicyFileError(
                f"policy.json: action_space.nvec must be 1..{_MAX_ACTION_DIMS} integers in 1..1000000, got {nvec!r:.100}"
            )
        return spaces.MultiDiscrete(nvec)
    if kind == "Box":
        return _parse_box(spec, "action_space")
    raise PolicyFileError(f"policy.json: action_space.type must be 'MultiDiscrete' or 'Box', found {kind!r:.50}")


_NORMALIZER_BOUNDS = {"count": (0.0, 1e15), "clip_obs": (0.0, 1e4), "epsilon": (0.0, 1e-2)}
"""Open-closed intervals (low, high] of the normaliser's scalars (SB3: count 1e-4.., 10, 1e-8)."""


def _parse_normalizer(spec: Any, obs_space: spaces.Box) -> dict[str, Any] | None:
    n_features = obs_space.shape[0]
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
    # Statistics of observations inside the space: the mean lies in it, the variance is at most
    # its width squared (1 for narrow features: SB3 starts from var = 1).
    low, high = obs_space.low.astype(np.float64), obs_space.high.astype(np.float64)
    width = np.where(np.isfinite(high - low), high - low, np.inf)
    outside = [i for i in range(n_features) if not low[i] - 1e-6 <= mean[i] <= high[i] + 1e-6]
    too_wide = [i for i in range(n_features) if var[i] > max(1.0, width[i] ** 2) * (1 + 1e-6)]
    if outside or too_wide:
        raise PolicyFileError(
            f"policy.json: normalizer statistics do not fit the observation space: mean outside [low, high] "
            f"at {outside[:10]}, var above max(1, (high - low)^2) at {too_wide[:10]}"
        )
    scalars = {}
    for key, (lo, hi) in _NORMALIZER_BOUNDS.items():
        value = spec.get(key)
        if not is_number(value):
            raise PolicyFileError(f"policy.json: normalizer.{key} must be a number, found {value!r:.50}")
        if not (math.isfinite(value) and lo < value <= hi):
            raise PolicyFileError(f"policy.json: normalizer.{key} must be in ({lo:g}, {hi:g}], got {value!r}")
        scalars[key] = float(value)
    return {"mean": mean.tolist(), "var": var.tolist(), **scalars}


LR_BOUNDS = (1e-8, 10.0)
"""Learning rates a policy's recorded ``lr_range`` may span."""
BATCH_SIZE_BOUNDS = (1, 2**20)
"""Batch sizes a policy's recorded ``batch_size_range`` may span."""


def _check_recorded_range(value: Any, what: str, bounds: tuple[float, float], integer: bool) -> None:
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
        and bounds[0] <= value[0] < value[1] <= bounds[1]
    )
    if not ok:
        kind = "integers" if integer else "numbers"
        raise PolicyFileError(
            f"policy.json: {what} must be null or [low, high] of {kind} with {bounds[0]:g} <= low < high <= "
            f"{bounds[1]:g}, found {value!r:.80}"
        )


def _parse_training(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The free training record, with the parts rlagent reads (spec ranges, workloads) checked."""
    training = _field(doc, "training", dict)
    for key in ("trained_on", "held_out"):
        names = training.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PolicyFileError(f"policy.json: training.{key} must be a list of workload names, found {names!r:.80}")
    spec = training.get("spec", {})
    if not isinstance(spec, dict):
        raise PolicyFileError(f"policy.json: training.spec must be an object, found {spec!r:.80}")
    episode = spec.get("episode", {})
    if not isinstance(episode, dict):
        raise PolicyFileError(f"policy.json: training.spec.episode must be an object, found {episode!r:.80}")
    _check_recorded_range(episode.get("lr_range"), "training.spec.episode.lr_range", LR_BOUNDS, False)
    _check_recorded_range(
        episode.get("batch_size_range"), "training.spec.episode.batch_size_range", BATCH_SIZE_BOUNDS, True
    )
    return training


def _check_architecture(arch: Mapping[str, Any]) -> None:
    """Refuse anything but ``MlpPolicy`` / ``MlpLstmPolicy`` with small integer layers and tanh / relu."""
    allowed = (
        f"allowed: policy 'MlpPolicy' or {RECURRENT_POLICY!r} (with lstm_hidden_size 1..{_MAX_LSTM}), "
        f"net_arch {{'pi': [...], 'vf': [...]}} of at most {_MAX_LAYERS} layers of 1..{_MAX_WIDTH} units, "
        f"activation one of {sorted(_ACTIVATIONS)}"
    )
    recurrent = arch.get("policy") == RECURRENT_POLICY
    if set(arch) != {"policy", "net_arch", "activation"} | ({"lstm_hidden_size"} if recurrent else set()):
        raise PolicyFileError(f"architecture not allow-listed: fields {sorted(arch)}; {allowed}")
    if arch["policy"] not in ("MlpPolicy", RECURRENT_POLICY):
        raise PolicyFileError(f"architecture not allow-listed: policy {arch['policy']!r:.50}; {allowed}")
    if recurrent and not (type(arch["lstm_hidden_size"]) is int and 0 < arch["lstm_hidden_size"] <= _MAX_LSTM):
        raise PolicyFileError(
            f"architecture not allow-listed: lstm_hidden_size {arch['lstm_hidden_size']!r:.50}; {allowed}"
        )
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


def build_policy(obs_space: spaces.Box, action_space: spaces.Space[Any], arch: Mapping[str, Any]) -> ActorCriticPolicy:
    """A fresh SB3 policy of a checked architecture (its weights are to be overwritten)."""
    kwargs: dict[str, Any] = {
        "lr_schedule": lambda _: 0.0,
        "net_arch": {"pi": list(arch["net_arch"]["pi"]), "vf": list(arch["net_arch"]["vf"])},
        "activation_fn": _ACTIVATIONS[arch["activation"]],
        "ortho_init": False,  # the weights are replaced: skip the costly orthogonal init
    }
    # Fork the RNG so that building does not disturb the caller's global torch random state.
    with torch.random.fork_rng(devices=[]):
        if arch["policy"] == RECURRENT_POLICY:
            from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy  # imports every algorithm

            return RecurrentActorCriticPolicy(
                obs_space, action_space, lstm_hidden_size=arch["lstm_hidden_size"], **kwargs
            )
        return ActorCriticPolicy(obs_space, action_space, **kwargs)


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
