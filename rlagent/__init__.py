"""rlagent: a reinforcement-learning agent that learns hyperparameter-tuning policies."""

from __future__ import annotations

import gymnasium

from rlagent.config import EnvSpec, EpisodeSpec, RewardSpec, WorkloadSet, load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import FEATURE_NAMES
from rlagent.procedural import ProceduralSpec, Task, sample_task
from rlagent.workloads import BUILTIN_WORKLOADS, WorkloadSpec

# Registered before the imports below, which pull in stable-baselines3.

__version__ = "0.1.0"

ENV_ID = "rlagent/HyperTune-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="rlagent.env:HyperTuneEnv")

from rlagent.bench import BenchConfig, BenchReport, run_benchmark  # noqa: E402
from rlagent.policy import (  # noqa: E402
    Controller,
    PolicyFileError,
    PPOSettings,
    SavedPolicy,
    TrainConfig,
    TrainResult,
    TuneResult,
    load_policy,
    run_policy,
    save_policy,
    train_policy,
    train_with_policy,
    tune,
)
from rlagent.pool import EnvPool, EnvWorkerError, PopulationVecEnv, make_pool  # noqa: E402

__all__ = [
    "BUILTIN_WORKLOADS",
    "ENV_ID",
    "FEATURE_NAMES",
    "BenchConfig",
    "BenchReport",
    "Controller",
    "EnvPool",
    "EnvSpec",
    "EnvWorkerError",
    "EpisodeSpec",
    "HyperTuneEnv",
    "PPOSettings",
    "PolicyFileError",
    "PopulationVecEnv",
    "ProceduralSpec",
    "RLAgentError",
    "RewardSpec",
    "SavedPolicy",
    "SpecError",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TuneResult",
    "WorkloadSet",
    "WorkloadSpec",
    "__version__",
    "load_policy",
    "load_spec",
    "make_pool",
    "run_benchmark",
    "run_policy",
    "sample_task",
    "save_policy",
    "train_policy",
    "train_with_policy",
    "tune",
]
