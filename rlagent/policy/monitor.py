"""What a policy's training shows while it runs: progress, a per-episode CSV log, TensorBoard scalars.

:class:`TrainingMonitor` is an SB3 callback; it also times rollouts (the envs training their
networks) against PPO updates, and stops training at a wall-time limit (``--max-minutes``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["TrainingMonitor"]


class TrainingMonitor(BaseCallback):
    """Progress bar, per-episode log (CSV) and TensorBoard scalars; times rollouts vs updates."""

    def __init__(self, total: int, log_path: Path | None, progress: bool, max_seconds: float | None = None) -> None:
        super().__init__()
        self.total = total
        self.max_seconds = max_seconds
        self.log_path = log_path
        self.progress = progress
        self.returns: deque[float] = deque(maxlen=50)
        self.final_accs: deque[float] = deque(maxlen=50)
        self.episodes = 0
        self.update_seconds = 0.0
        self.rollout_seconds = 0.0
        self._mark = 0.0
        self._bar: Any = None
        self._start_steps = 0
        self.updated_steps = 0
        """Env steps as of the last PPO update: the steps a checkpoint written mid-rollout keeps."""
        self._chosen: list[tuple[float, float]] = []

    def _on_training_start(self) -> None:
        self._start_steps = self.num_timesteps
        self._t0 = time.perf_counter()
        self._mark = self._t0
        if self.progress:
            self._bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", dynamic_ncols=True)
        if self.log_path is not None and not self.log_path.exists():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("timesteps,workload,return,final_val_acc,best_val_acc,epochs,diverged,restarted\n")

    def _on_rollout_start(self) -> None:
        self.updated_steps = self.num_timesteps
        now = time.perf_counter()
        if self.num_timesteps > self._start_steps:
            self.update_seconds += now - self._mark
        self._mark = now

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        self.rollout_seconds += now - self._mark
        self._mark = now
        if self._chosen:
            lrs, bss = zip(*self._chosen)
            self.logger.record("rlagent/lr_chosen_log10", float(np.mean(np.log10(lrs))))
            self.logger.record("rlagent/batch_size_chosen_log2", float(np.mean(np.log2(bss))))
            self._chosen.clear()
        if self.returns:
            self.logger.record("rlagent/episode_return", float(np.mean(self.returns)))
            self.logger.record("rlagent/final_val_acc", float(np.mean(self.final_accs)))
        self.logger.record("rlagent/env_steps_per_s", self.steps_per_second)

    @property
    def steps_per_second(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return (self.num_timesteps - self._start_steps) / elapsed if elapsed > 0 else 0.0

    def _on_step(self) -> bool:
        rows = []
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            if "lr" in info:
                self._chosen.append((info["lr"], info["batch_size"]))
            if not done:
                continue
            restarted = bool(info.get("worker_restarted"))
            if "episode" in info:
                self.episodes += 1
                self.returns.append(float(info["episode"]["r"]))
                self.final_accs.append(float(info.get("val_acc", math.nan)))
            rows.append(
                f"{self.num_timesteps},{info.get('workload', '')},{info.get('episode', {}).get('r', math.nan):.5f},"
                f"{info.get('val_acc', math.nan):.5f},{info.get('best_val_acc', math.nan):.5f},"
                f"{info.get('epoch', 0)},{int(bool(info.get('diverged')))},{int(restarted)}\n"
            )
        if rows and self.log_path is not None:
            with self.log_path.open("a") as f:
                f.writelines(rows)
        if self._bar is not None:
            self._bar.update(self.num_timesteps - self._bar.n)
            if self.returns:
                self._bar.set_postfix(
                    steps_s=f"{self.steps_per_second:.1f}",
                    ep_return=f"{np.mean(self.returns):.2f}",
                    final_val_acc=f"{np.mean(self.final_accs):.3f}",
                    refresh=False,
                )
        if self.max_seconds is not None and time.perf_counter() - self._t0 > self.max_seconds:
            logger.info("time limit reached after %d steps; stopping", self.num_timesteps)
            return False
        return True

    def _on_training_end(self) -> None:
        self.update_seconds += time.perf_counter() - self._mark  # the last update
        if self._bar is not None:
            self._bar.close()
