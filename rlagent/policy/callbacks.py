"""The SB3 callbacks of a training run besides the monitor (:mod:`rlagent.policy.monitor`):
checkpoints every N env steps, and the critic warm-up of a run started from a saved policy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from rlagent.policy.checkpoints import CRITIC_PREFIXES, save_checkpoint

logger = logging.getLogger(__name__)


class CriticWarmup(BaseCallback):
    """Trains only the value network until ``steps`` env steps: the actor's parameters get no
    gradient and the observation normaliser stops updating, so the rollouts come from the start
    policy exactly as saved. From the first rollout that ends at or past ``steps`` on, all learns."""

    def __init__(self, steps: int, venv: VecNormalize | None) -> None:
        super().__init__()
        self.steps = steps
        self.venv = venv
        self.frozen = False
        if venv is not None:  # now: ``learn`` resets the envs before any callback hook runs
            venv.training = False

    def _actor(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.model.policy.named_parameters() if not name.startswith(CRITIC_PREFIXES)]

    def _set(self, frozen: bool) -> None:
        for param in self._actor():
            param.requires_grad_(not frozen)
        if self.venv is not None:
            self.venv.training = not frozen
        self.frozen = frozen

    def _on_training_start(self) -> None:
        self._set(self.num_timesteps < self.steps)
        if self.frozen:
            logger.info("critic warm-up: only the value network learns for the first %d env steps", self.steps)

    def _on_rollout_end(self) -> None:
        if self.frozen and self.num_timesteps >= self.steps:
            self._set(False)
            logger.info("critic warm-up over at %d env steps: the actor learns from here", self.num_timesteps)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.frozen:
            self._set(False)


class CheckpointEvery(BaseCallback):
    """Writes a checkpoint every ``every`` env steps (atomically; see :func:`save_checkpoint`)."""

    def __init__(
        self,
        every: int,
        directory: Path,
        venv: VecNormalize | None,
        config: Any,
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.every = every
        self.directory = directory
        self.venv = venv
        self.config = config
        self.spec = spec
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            path = self.directory / f"step-{self.num_timesteps:09d}"
            save_checkpoint(path, self.model, self.venv, self.config, self.spec)
            self._next += self.every
        return True
