"""A population of HyperTune episodes in one process on one device, as one SB3 ``VecEnv``.

:class:`PopulationVecEnv` holds K :class:`rlagent.env.HyperTuneEnv` members (each with its own
workload draw, seed, learning rate and batch size) and steps them together: the K training
epochs of a step are taken by :func:`rlagent.batched.train_epochs`, which trains members that
share an architecture and batch size as one batched ``torch.func`` computation where that is
faster on the device, and member by member otherwise. Everything else of a step — the action's
LR and batch-size change (``HParams``), the validation pass, the divergence rule of
``run_epoch``, the features, the reward, the info and the auto-reset — is each member env's own
code, so a member's trajectory is the trajectory of a ``HyperTuneEnv`` with the same seed and
actions (to float rounding of the batched arithmetic, ~1e-7 per step).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from rlagent.batched import MODES, BatchPlanner, train_epochs
from rlagent.config import EnvSpec, load_spec, spec_from_dict
from rlagent.env import ROLLBACK, HyperTuneEnv, decode_action
from rlagent.errors import SpecError, is_int
from rlagent.pool.devices import WorkerSlot
from rlagent.pool.factory import training_workloads
from rlagent.training import EpochStats, Trainer
from rlagent.workloads import Source

__all__ = ["PopulationVecEnv"]

logger = logging.getLogger(__name__)


class _TrainedTrainer:
    """A member's trainer whose next epoch :func:`train_epochs` has already trained.

    Handed to the member env for one ``step``: ``run_epoch`` sets the LR and batch size (the
    values the epoch was trained with) and calls ``train_epoch``, which returns the stored
    statistics; everything else (``evaluate``, ``model``, ...) is the real trainer's.
    """

    def __init__(self, trainer: Trainer, stats: EpochStats) -> None:
        object.__setattr__(self, "trainer", trainer)
        object.__setattr__(self, "stats", stats)

    def train_epoch(self) -> EpochStats:
        return self.stats

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trainer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.trainer, name, value)


class PopulationVecEnv(DummyVecEnv):
    """K independent HyperTune episodes, trained together in this process on one device.

    An SB3 ``VecEnv`` with the observations, rewards, dones and infos of K
    ``Monitor(HyperTuneEnv)``: SB3 auto-reset (``infos[i]["terminal_observation"]``, a new
    workload drawn by that member), seeds from ``seed()`` (member ``i`` gets ``seed + i``), and
    a member that diverges ends only its own episode. Usable as ``PPO("MlpPolicy", env=...)``.

    Args:
        n_envs: Number of members K.
        spec: An :class:`EnvSpec`, a spec file, a shipped spec name, or a dict in the file's layout.
        device: Torch device every member's run lives on.
        num_threads: Torch threads for this process (None leaves torch's setting).
        workloads: Workload names to draw episodes from (default: the spec's training set;
            held-out ones are refused, as in every pool).
        mode: ``auto`` (on a CPU batched where measured faster, on CUDA every group of
            ``min_batch`` or more; see :class:`rlagent.batched.BatchPlanner`),
            ``batched`` (wherever possible) or ``sequential`` (never).
        min_batch: Smallest group that ``auto`` tries to batch.

    Attributes:
        planner: The batched-vs-sequential decisions and their timings.
        members: The member envs (unwrapped), in order.

    Raises:
        SpecError: Bad ``n_envs``, ``mode``, ``num_threads`` or workloads.
    """

    def __init__(
        self,
        n_envs: int,
        spec: EnvSpec | str | Path | Mapping[str, Any] = "default",
        *,
        device: str | torch.device = "cpu",
        num_threads: int | None = None,
        workloads: Sequence[str] | None = None,
        mode: str = "auto",
        min_batch: int = 4,
    ) -> None:
        if not is_int(n_envs) or n_envs < 1:
            raise SpecError("n_envs", n_envs, "an integer >= 1")
        if mode not in MODES:
            raise SpecError("mode", mode, f"one of {list(MODES)}")
        if not is_int(min_batch) or min_batch < 1:
            raise SpecError("min_batch", min_batch, "an integer >= 1")
        if isinstance(spec, Mapping):
            spec = spec_from_dict(spec)
        elif not isinstance(spec, EnvSpec):
            spec = load_spec(spec)
        if spec.episode.action == ROLLBACK:  # a member's rollback would restore after its batched epoch
            raise SpecError(
                "episode.action", spec.episode.action, "not discrete-rollback in a population (use the process pool)"
            )
        names = training_workloads(spec, workloads)
        sources: dict[str, Source] = {}  # one copy of each dataset for all members
        members = [
            HyperTuneEnv(spec, device=device, num_threads=num_threads, workloads=names, sources=sources)
            for _ in range(n_envs)
        ]
        self.env_spec = spec
        self.device = torch.device(device)
        self.planner = BatchPlanner(mode, min_members=min_batch, device=self.device)
        self.members: list[HyperTuneEnv] = members
        self.slots = (WorkerSlot(str(self.device), torch.get_num_threads()),)
        """The one place this population runs (as a pool's ``slots``)."""
        super().__init__([lambda env=env: Monitor(env) for env in members])

    def step_wait(self) -> VecEnvStepReturn:
        """Train every member's epoch (batched where it pays), then step each member env with it."""
        for i, member in enumerate(self.members):
            if member.trainer is None or member.hparams is None:
                raise gym.error.ResetNeeded(f"member {i}: call reset() before step()")
            lr_factor, bs_factor = decode_action(self.actions[i], member.action_kind)
            hp = member.hparams.scaled(lr_factor, bs_factor)  # what the member's step will apply
            member.trainer.lr, member.trainer.batch_size = hp.lr, hp.batch_size
        trainers = [m.trainer for m in self.members]
        stats = train_epochs(trainers, self.planner)
        for member, trainer, s in zip(self.members, trainers, stats):
            member.trainer = _TrainedTrainer(trainer, s)  # type: ignore[assignment]
        try:
            return super().step_wait()
        finally:
            for member, trainer in zip(self.members, trainers):
                if isinstance(member.trainer, _TrainedTrainer):  # not replaced by an auto-reset
                    member.trainer = trainer

    def memory_per_member(self) -> float:
        """Bytes of model parameters, buffers, optimiser state and data splits per member (mean)."""
        seen: set[int] = set()
        total = 0

        def add(t: torch.Tensor) -> None:
            nonlocal total
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

        for m in self.members:
            if m.trainer is None or m.data is None:
                continue
            for t in [*m.trainer.model.parameters(), *m.trainer.model.buffers()]:
                add(t)
            for state in m.trainer.optimizer.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        add(v)
            for split in (m.data.train, m.data.val, m.data.test):
                add(split.x)
                add(split.y)
        return total / len(self.members)
