"""Checkpoints of a PPO training run: the policy in the safe format of :mod:`rlagent.policy.file`
plus the PPO optimiser state in safetensors and the step counts in JSON; nothing is pickled.

A checkpoint is a directory ``step-NNNNNNNNN`` written atomically; ``--resume`` takes one, or a
folder of them (the newest is used).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from rlagent._io import atomic_dir, write_json_atomic
from rlagent.errors import RLAgentError
from rlagent.policy.file import load_policy, save_policy

__all__ = ["CHECKPOINT_FORMAT", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint files (``state.json``'s ``format_version``)."""


def _config_json(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_checkpoint(path: Path, model: PPO, venv: VecNormalize | None, config: Any) -> Path:
    """Write everything needed to resume into ``path`` (a directory), atomically.

    ``config`` is the run's ``rlagent.policy.train.TrainConfig`` (any dataclass), kept in
    ``state.json`` for the record.
    """
    with atomic_dir(path) as tmp:
        save_policy(tmp / "policy", model, normalizer=venv, metadata={"checkpoint": True})
        opt_state = model.policy.optimizer.state_dict()
        tensors = {
            f"state.{idx}.{key}": value.detach().cpu().contiguous()
            for idx, entries in opt_state["state"].items()
            for key, value in entries.items()
        }
        safetensors.torch.save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "format_version": CHECKPOINT_FORMAT,
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "param_groups": opt_state["param_groups"],
            "config": _config_json(config),
        }
        write_json_atomic(tmp / "state.json", state, indent=2)
    logger.info("checkpoint at %d steps: %s", model.num_timesteps, path)
    return path


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside it."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    found = sorted(c for c in p.glob("step-*") if (c / "state.json").is_file()) if p.is_dir() else []
    if not found:
        raise RLAgentError(f"resume: {p} is not a checkpoint and holds none (expected step-*/state.json)")
    return found[-1]


def load_checkpoint(path: Path, model: PPO, venv: VecNormalize | None) -> int:
    """Restore policy, optimiser, normaliser and step count from a checkpoint; returns the steps."""
    state = json.loads((path / "state.json").read_text())
    if state.get("format_version") != CHECKPOINT_FORMAT:
        raise RLAgentError(
            f"resume: {path} has checkpoint format {state.get('format_version')}, expected {CHECKPOINT_FORMAT}"
        )
    saved = load_policy(path / "policy")
    try:
        model.policy.load_state_dict(saved.policy.state_dict(), strict=True)
    except RuntimeError as exc:
        raise RLAgentError(f"resume: {path} was trained with another network or action space ({exc})") from exc
    tensors = safetensors.torch.load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[str, Any] = {"state": {}, "param_groups": state["param_groups"]}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        opt_state["state"].setdefault(int(idx), {})[name] = value
    model.policy.optimizer.load_state_dict(opt_state)
    if venv is not None and saved.normalizer is not None:
        venv.obs_rms.mean = np.asarray(saved.normalizer["mean"], dtype=np.float64)
        venv.obs_rms.var = np.asarray(saved.normalizer["var"], dtype=np.float64)
        venv.obs_rms.count = float(saved.normalizer["count"])
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    return model.num_timesteps
