"""Checkpoints of a PPO training run: written atomically, read whole before anything is restored.

A checkpoint ``step-NNNNNNNNN/`` holds the policy in the safe policy format
(:mod:`rlagent.policy.file`), the PPO optimiser state in ``optimizer.safetensors`` and
``state.json`` (step counts, optimiser hyperparameters, the run's config and spec). Resuming
reads a checkpoint completely (:func:`read_checkpoint`) before touching the model, and from a
folder of checkpoints takes the newest intact one, warning about each damaged one it skips.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from rlagent._io import atomic_dir, write_json_atomic
from rlagent.errors import RLAgentError
from rlagent.policy.file import SavedPolicy, load_policy, save_policy

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout."""
ADDED_CHOICE_PRIOR = 0.1
"""When a policy starts from one with fewer discrete choices (``discrete`` into
``discrete-rollback``), the probability its new head first gives the added choices together: low
enough to keep the old policy's behaviour, high enough for PPO to try them."""
STALE_PATTERNS = (".step-*.tmp-*", ".step-*.old-*")
"""Temporary folders :func:`rlagent._io.atomic_dir` leaves behind when a write is killed."""


def _config_json(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_checkpoint(
    path: Path, model: PPO, venv: VecNormalize | None, config: Any, spec: dict[str, Any] | None = None
) -> Path:
    """Write everything needed to resume into ``path`` (a directory), atomically.

    Args:
        path: The checkpoint directory.
        model: The PPO model being trained.
        venv: Its observation normaliser, if any.
        config: The run's ``TrainConfig`` (recorded).
        spec: The run's spec as plain data (``EnvSpec.to_dict()``), recorded so that a resume
            with another spec is noticed, and in the checkpoint's policy as in a finished run's, so
            that the policy runs with the ranges and from the start it was trained with
            (:func:`rlagent.policy.controller.trained_start`).
    """
    training: dict[str, Any] = {"checkpoint": True, "timesteps": int(model.num_timesteps)}
    if spec is not None:
        training.update(spec_name=spec.get("name"), spec=spec)
    with atomic_dir(path) as tmp:
        frame_stack = config.ppo.frame_stack
        save_policy(tmp / "policy", model, normalizer=venv, metadata=training, frame_stack=frame_stack)
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
            "spec": spec,
        }
        write_json_atomic(tmp / "state.json", state, indent=2)
    logger.info("checkpoint at %d steps: %s", model.num_timesteps, path)
    return path


def clean_stale(directory: Path) -> list[Path]:
    """Remove the temporary folders of killed checkpoint writes in ``directory``; returns them."""
    removed = []
    if directory.is_dir():
        for pattern in STALE_PATTERNS:
            for stale in directory.glob(pattern):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                    removed.append(stale)
    if removed:
        logger.warning("removed %d unfinished checkpoint folders: %s", len(removed), [p.name for p in removed])
    return removed


@dataclass
class Checkpoint:
    """A checkpoint read whole and checked, ready to restore."""

    path: Path
    state: dict[str, Any]
    """``state.json``."""
    policy: SavedPolicy
    optimizer: dict[str, torch.Tensor]
    """The optimiser's tensors by ``state.IDX.NAME``."""

    @property
    def spec(self) -> dict[str, Any] | None:
        """The spec the run was trained with (None for checkpoints written before it was recorded)."""
        spec = self.state.get("spec")
        return spec if isinstance(spec, dict) else None

    @property
    def spec_name(self) -> str:
        """The spec's name, or the ``--spec`` given to the run."""
        return str(self.spec["name"]) if self.spec else str(self.state.get("config", {}).get("spec"))


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and check every file of the checkpoint at ``path``.

    Raises:
        RLAgentError: Naming the checkpoint and what is wrong with it.
    """
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise RLAgentError(f"resume: {path}/state.json is unreadable ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT:
        found = state.get("format_version") if isinstance(state, dict) else state
        raise RLAgentError(f"resume: {path} has checkpoint format {found!r:.40}, expected {CHECKPOINT_FORMAT}")
    for key, kind in (("num_timesteps", int), ("n_updates", int), ("param_groups", list)):
        if not isinstance(state.get(key), kind):
            raise RLAgentError(f"resume: {path}/state.json: {key} must be a {kind.__name__}")
    policy = load_policy(path / "policy")  # PolicyFileError is an RLAgentError
    try:
        optimizer = safetensors.torch.load_file(str(path / "optimizer.safetensors"))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise RLAgentError(f"resume: {path}/optimizer.safetensors is unreadable ({exc})") from None
    for key in optimizer:
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise RLAgentError(f"resume: {path}/optimizer.safetensors holds an unexpected tensor {key!r:.60}")
    return Checkpoint(path, state, policy, optimizer)


def _candidates(p: Path, what: str = "resume") -> list[Path]:
    if (p / "state.json").is_file():
        return [p]
    found = sorted(c for c in p.glob("step-*") if (c / "state.json").is_file()) if p.is_dir() else []
    if not found:
        raise RLAgentError(f"{what}: {p} is not a checkpoint and holds none (expected step-*/state.json)")
    return found[::-1]


def list_checkpoints(path: str | Path) -> list[tuple[int, Path]]:
    """Every checkpoint at ``path`` (a checkpoint, or a folder of them), oldest first, as
    ``(env steps, folder)``; the steps are read from the folder's name ``step-NNNNNNNNN``."""
    return [(int(p.name.removeprefix("step-")), p) for p in _candidates(Path(path), "checkpoints")[::-1]]


def checkpoint_policies(
    path: str | Path, every: int = 0, first: int = 0, *, evenly: bool = False
) -> list[tuple[int, Path]]:
    """The policies inside the checkpoints at ``path`` (see :func:`list_checkpoints`) from step
    ``first`` on whose step is a multiple of ``every`` (0: all), plus the last one, oldest first,
    as ``(env steps, policy folder)``.

    A run's last checkpoint usually lies a few steps past a multiple of ``every`` (26,112 after
    26,000), so the two are nearly the same policy. ``evenly`` drops the earlier of them when the
    last is less than half of ``every`` past it, so that an average weighs the run's stretch evenly
    instead of counting its end twice.
    """
    found = [(s, p) for s, p in list_checkpoints(path) if s >= first]
    if not found:
        raise RLAgentError(f"checkpoints: {path} holds none from step {first} on")
    last = found[-1][0]
    chosen = [(s, p / "policy") for s, p in found if not every or s % every == 0 or s == last]
    if evenly and every and len(chosen) > 1 and last - chosen[-2][0] < every / 2:
        del chosen[-2]
    return chosen


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside it."""
    return _candidates(Path(path))[0]


def find_checkpoint(path: str | Path) -> Checkpoint:
    """The newest intact checkpoint at ``path`` (a checkpoint, or a folder of them).

    Damaged checkpoints (a corrupt optimiser file, a tampered policy, unreadable state) are
    skipped with a warning naming each; a checkpoint given directly is never skipped.

    Raises:
        RLAgentError: If there is no checkpoint, or none is intact.
    """
    candidates = _candidates(Path(path))
    errors = []
    for candidate in candidates:
        try:
            return read_checkpoint(candidate)
        except RLAgentError as exc:
            if len(candidates) == 1:
                raise
            logger.warning("resume: skipping damaged checkpoint %s: %s", candidate, exc)
            errors.append(f"{candidate.name}: {exc}")
    raise RLAgentError(f"resume: no intact checkpoint in {path}: " + "; ".join(errors))


CRITIC_PREFIXES = ("mlp_extractor.value_net.", "value_net.", "lstm_critic.")
"""State-dict keys of the value network (the critic) of SB3's ``ActorCriticPolicy`` and
sb3-contrib's ``RecurrentActorCriticPolicy``; the rest is the actor."""


def copy_policy(saved: SavedPolicy, model: PPO, venv: VecNormalize | None, *, what: str, critic: bool = True) -> None:
    """Copy a saved policy's weights and observation statistics into ``model`` and ``venv``.

    Args:
        saved: The policy to copy (read whole and checked).
        model: A PPO (or RecurrentPPO) built with the same network and spaces.
        venv: The ``VecNormalize`` the model trains behind, or None.
        critic: Copy the value network too; False keeps ``model``'s own (freshly initialised).
        what: What errors start with (the setting and the path it names).
    """
    state = saved.policy.state_dict()
    widen_action_head(state, saved.action_space, model.action_space)
    if not critic:
        state = {k: v for k, v in state.items() if not k.startswith(CRITIC_PREFIXES)}
    try:
        missing, unexpected = model.policy.load_state_dict(state, strict=critic)
    except RuntimeError as exc:
        raise RLAgentError(f"{what} was trained with another network or action space ({exc})") from exc
    if unexpected or any(not k.startswith(CRITIC_PREFIXES) for k in missing):
        raise RLAgentError(f"{what} has another network (missing {missing}, unexpected {unexpected})")
    normalizer = saved.normalizer
    if venv is not None and normalizer is not None:
        venv.obs_rms.mean = np.asarray(normalizer["mean"], dtype=np.float64)
        venv.obs_rms.var = np.asarray(normalizer["var"], dtype=np.float64)
        venv.obs_rms.count = float(normalizer["count"])


def widen_action_head(state: dict[str, torch.Tensor], space: Any, new: Any) -> None:
    """Fit a MultiDiscrete policy's action head (``state``, acting in ``space``) to the space
    ``new`` if ``new`` only adds dimensions after the saved ones (``[5, 3]`` into ``[5, 3, 2]``);
    else leave ``state`` as is.

    The added logits start with zero weights and biases that give the first choice of each added
    dimension (do nothing) probability ``1 - ADDED_CHOICE_PRIOR``, so the widened policy acts as
    the saved one did until PPO learns otherwise.
    """
    if not (isinstance(space, spaces.MultiDiscrete) and isinstance(new, spaces.MultiDiscrete)):
        return
    old_nvec, new_nvec = [int(n) for n in space.nvec], [int(n) for n in new.nvec]
    if len(new_nvec) <= len(old_nvec) or new_nvec[: len(old_nvec)] != old_nvec:
        return
    weight, bias = state["action_net.weight"], state["action_net.bias"]
    extra_bias = []
    for n in new_nvec[len(old_nvec) :]:
        others = float(np.log(ADDED_CHOICE_PRIOR / ((n - 1) * (1 - ADDED_CHOICE_PRIOR))))
        extra_bias += [0.0] + [others] * (n - 1)
    state["action_net.weight"] = torch.cat([weight, weight.new_zeros(len(extra_bias), weight.shape[1])])
    state["action_net.bias"] = torch.cat([bias, bias.new_tensor(extra_bias)])


def restore_checkpoint(ckpt: Checkpoint, model: PPO, venv: VecNormalize | None) -> int:
    """Restore policy, optimiser, normaliser and step count from a read checkpoint; returns the steps."""
    copy_policy(ckpt.policy, model, venv, what=f"resume: {ckpt.path}")
    opt_state: dict[str, Any] = {"state": {}, "param_groups": ckpt.state["param_groups"]}
    for key, value in ckpt.optimizer.items():
        _, idx, name = key.split(".", 2)
        opt_state["state"].setdefault(int(idx), {})[name] = value
    try:
        model.policy.optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise RLAgentError(f"resume: {ckpt.path} holds an optimiser state of another network ({exc})") from exc
    model.num_timesteps = int(ckpt.state["num_timesteps"])
    model._n_updates = int(ckpt.state["n_updates"])
    return model.num_timesteps


def load_checkpoint(path: Path, model: PPO, venv: VecNormalize | None) -> int:
    """Read the checkpoint at ``path`` and restore it into ``model``; returns the steps."""
    return restore_checkpoint(read_checkpoint(path), model, venv)


def resume_seed(seed: int, steps_done: int) -> int:
    """Seed of PPO and the envs for a run that resumes after ``steps_done`` steps (``seed`` at 0).

    A resumed run seeded like a fresh one would replay the episodes (workload draws, data
    splits, initial weights) and the action noise it started with; hashing the step count in
    gives the continuation episodes of its own, and is the same on every resume at that step.
    """
    if steps_done == 0:
        return seed
    return int(np.random.SeedSequence([abs(int(seed)), int(steps_done)]).generate_state(1, dtype=np.uint32)[0])
