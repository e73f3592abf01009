"""Tiny envs for tests/test_pool.py.

They live in an importable module (not in the test file) because the pool's worker processes
are started with forkserver/spawn and must import the env class by name.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlagent.pool.devices import WorkerSlot


class ToyEnv(gym.Env[np.ndarray, np.ndarray]):
    """A Box-observation env that can be told to raise or hang at a given step.

    The observation is ``[t / episode_len, u0, u1]`` with ``u`` drawn from ``self.np_random``,
    so two envs reset with the same seed return the same observations. The reward is
    ``-|action|``; an episode is truncated after ``episode_len`` steps.

    Args:
        slot: The worker slot the pool passes in (recorded as ``device``).
        episode_len: Steps per episode.
        raise_at_step: Raise ``ValueError`` on this step (counted since construction).
        sleep_at_step: Sleep ``sleep_s`` seconds on this step (counted since construction).
        sleep_s: How long a sleeping step lasts.
        workload_name: Reported in errors, like the real env's workload.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        slot: WorkerSlot | None = None,
        *,
        episode_len: int = 5,
        raise_at_step: int | None = None,
        sleep_at_step: int | None = None,
        sleep_s: float = 60.0,
        workload_name: str = "toy-workload",
    ) -> None:
        self.device = slot.device if slot is not None else "cpu"
        self.episode_len = episode_len
        self.raise_at_step = raise_at_step
        self.sleep_at_step = sleep_at_step
        self.sleep_s = sleep_s
        self.workload_name = workload_name
        self.observation_space = spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.total_steps = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        u = self.np_random.random(2)
        return np.array([self._t / self.episode_len, u[0], u[1]], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {"options": options}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.total_steps += 1
        if self.total_steps == self.raise_at_step:
            raise ValueError(f"boom at step {self.total_steps}")
        if self.total_steps == self.sleep_at_step:
            time.sleep(self.sleep_s)
        self._t += 1
        reward = -float(np.abs(action).sum())
        return self._obs(), reward, False, self._t >= self.episode_len, {"t": self._t}

    def torch_threads(self) -> int:
        """Torch intra-op threads in this process (to check the worker's slot was applied)."""
        import torch

        return torch.get_num_threads()

    def cuda_placement(self) -> tuple[int, int]:
        """(current CUDA device, device of a tensor made on ``self.device``) in this worker."""
        import torch

        x = torch.ones(4, device=self.device)
        return torch.cuda.current_device(), x.device.index

    def pid(self) -> int:
        """Process id of the worker running this env."""
        import os

        return os.getpid()


def make_toy_env(slot: WorkerSlot, **kwargs: Any) -> gym.Env:
    """Factory for the pool: builds a ``ToyEnv`` on the slot's device."""
    return ToyEnv(slot, **kwargs)


def make_broken_env(slot: WorkerSlot) -> gym.Env:
    """Factory that fails while building the env."""
    raise RuntimeError(f"cannot build env on {slot.device}")
