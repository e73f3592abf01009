"""The SB3 callbacks of a training run besides the monitor (:mod:`rlagent.policy.monitor`):
checkpoints every N env steps, the critic warm-up of a run started from a saved policy, and the
leave-one-out advantages of envs that share their draws (``TrainConfig.draw_group``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlagent.errors import SpecError
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


def share_draws(venv: VecEnv, seed: int, group: int) -> None:
    """Seed ``venv`` so that each run of ``group`` consecutive envs draws the same episodes.

    Env ``i`` gets seed ``seed + i // group`` at the next reset: the envs of a group then draw
    the same sequence of episode seeds, hence the same workloads, initial weights and data order
    (common random numbers). They still part ways as soon as the policy samples different
    actions. Call after the algorithm is built (building it seeds every env ``seed + i``).
    """
    if venv.num_envs % group:
        raise SpecError("draw_group", group, f"a divisor of the {venv.num_envs} envs")
    venv._seeds = [seed + i // group for i in range(venv.num_envs)]  # what VecEnv.seed() sets


Key = tuple[int, Any, int]
"""A decision of a group's shared episode: (group, episode seed, epochs trained before it)."""


class GroupAdvantage(BaseCallback):
    """Leave-one-out advantages over the envs that share each draw (:func:`share_draws`).

    After each rollout the buffer's GAE advantage ``A_i`` of a decision becomes
    ``A_i - mean(A_j)`` over the other envs of its group at the same epoch of the same episode
    (an RLOO-style baseline, Kool et al. 2019). The other envs' residuals do not depend on this
    env's action, so the estimate stays unbiased; what the envs share (how far this draw's model
    can still go, beyond what the critic reads from the observation) cancels, leaving the effect
    of the actions. Decisions whose partners fall in the previous rollout are paired with their
    stored advantages; those without a partner keep their own. The value targets (returns) are
    untouched. Episodes are told apart by ``episode_seed`` in the pool's ``reset_infos``.
    """

    def __init__(self, pool: VecEnv, group: int) -> None:
        super().__init__()
        self.pool = pool
        self.group = group
        self._episode: list[Any] = []
        self._epoch: list[int] = []
        self._keys: list[list[Key]] = []
        self._pending: dict[Key, list[float]] = {}
        self.paired = 0
        """Decisions given a leave-one-out advantage so far."""
        self.decisions = 0
        """Decisions seen so far."""

    def _seed_of(self, i: int) -> Any:
        return self.pool.reset_infos[i].get("episode_seed")

    def _on_training_start(self) -> None:
        self._episode = [self._seed_of(i) for i in range(self.pool.num_envs)]
        self._epoch = [0] * self.pool.num_envs

    def _on_rollout_start(self) -> None:
        self._keys = []

    def _on_step(self) -> bool:
        # Runs after the envs stepped and before the step enters the buffer: this row's keys
        # name the decisions just taken.
        self._keys.append([(i // self.group, self._episode[i], self._epoch[i]) for i in range(self.pool.num_envs)])
        for i, done in enumerate(self.locals["dones"]):
            if done:
                self._episode[i], self._epoch[i] = self._seed_of(i), 0
            else:
                self._epoch[i] += 1
        return True

    def _on_rollout_end(self) -> None:
        adv = self.model.rollout_buffer.advantages
        adv[...], self._pending, paired = leave_one_out(adv, self._keys, self._pending)
        self.paired += paired
        self.decisions += adv.size
        self.logger.record("train/paired_share", self.paired / self.decisions)


def leave_one_out(
    adv: np.ndarray, keys: list[list[Key]], pending: dict[Key, list[float]]
) -> tuple[np.ndarray, dict[Key, list[float]], int]:
    """Each advantage minus the mean of the others with its key (see :class:`GroupAdvantage`).

    Args:
        adv: A rollout's advantages, (steps, envs).
        keys: The decision key of every cell, as rows of ``adv``; a key whose episode seed
            (``key[1]``) is None is never paired.
        pending: Advantages of keys left unpaired by the previous rollout; they count among
            the others but are not changed.

    Returns:
        The new advantages, this rollout's unpaired advantages by key (the next ``pending``),
        and how many cells were paired.
    """
    members: dict[Key, list[tuple[int, int]]] = defaultdict(list)
    for row, row_keys in enumerate(keys):
        for env, key in enumerate(row_keys):
            if key[1] is not None:
                members[key].append((row, env))
    out = adv.copy()
    left: dict[Key, list[float]] = {}
    paired = 0
    for key, cells in members.items():
        values = [float(adv[c]) for c in cells] + pending.get(key, [])
        if len(values) < 2:
            left[key] = values
            continue
        total = sum(values)
        for c in cells:
            out[c] = adv[c] - (total - adv[c]) / (len(values) - 1)
        paired += len(cells)
    return out, left, paired
