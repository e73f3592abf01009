"""rlagent: a reinforcement-learning agent that learns hyperparameter-tuning policies."""

from __future__ import annotations

import gymnasium

from rlagent.config import EnvSpec, EpisodeSpec, RewardSpec, WorkloadSet, load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import FEATURE_NAMES
from rlagent.workloads import BUILTIN_WORKLOADS, WorkloadSpec

# Registered before the imports below, which pull in stable-baselines3.

__version__ = "0.1.0"

ENV_ID = "rlagent/HyperTune-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="rlagent.env:HyperTuneEnv")

from rlagent.agent import PPOSettings, TrainConfig, TrainResult, train_policy  # noqa: E402
from rlagent.benchmark import BenchConfig, BenchReport, run_benchmark  # noqa: E402
from rlagent.policy_file import PolicyFileError, SavedPolicy, load_policy, save_policy  # noqa: E402
from rlagent.pool import EnvPool, EnvWorkerError  # noqa: E402
from rlagent.reuse import Controller, TuneResult, run_policy, tune  # noqa: E402

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
    "RLAgentError",
    "RewardSpec",
    "SavedPolicy",
    "SpecError",
    "TrainConfig",
    "TrainResult",
    "TuneResult",
    "WorkloadSet",
    "WorkloadSpec",
    "__version__",
    "load_policy",
    "load_spec",
    "run_benchmark",
    "run_policy",
    "save_policy",
    "train_policy",
    "tune",
]
