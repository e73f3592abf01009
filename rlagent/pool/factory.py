"""What every pool runs: one monitored ``HyperTuneEnv`` per worker, on training workloads only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor

from rlagent.config import EnvSpec
from rlagent.env import HyperTuneEnv
from rlagent.errors import SpecError
from rlagent.pool.devices import WorkerSlot

__all__ = ["EnvFactory", "training_workloads"]


@dataclass(frozen=True)
class EnvFactory:
    """Builds one monitored HyperTune env inside a pool worker (picklable)."""

    spec: EnvSpec
    workloads: tuple[str, ...]

    def __call__(self, slot: WorkerSlot) -> gym.Env:
        env = HyperTuneEnv(self.spec, device=slot.device, num_threads=slot.num_threads, workloads=self.workloads)
        return Monitor(env)


def training_workloads(spec: EnvSpec, workloads: Sequence[str] | None) -> tuple[str, ...]:
    """``workloads`` (default: the spec's training set), refusing held-out ones: pools are for training."""
    names = tuple(workloads) if workloads is not None else spec.workloads.train_names
    leaked = sorted(set(names) & set(spec.workloads.heldout))
    if leaked:
        raise SpecError("workloads", leaked, "training workloads only (these are held out)")
    return names
