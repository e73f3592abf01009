"""rlagent: a reinforcement-learning agent that learns hyperparameter-tuning policies."""

from __future__ import annotations

import gymnasium

from rlagent.config import EnvSpec, EpisodeSpec, RewardSpec, WorkloadSet, load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import FEATURE_NAMES
from rlagent.workloads import BUILTIN_WORKLOADS, WorkloadSpec

__version__ = "0.1.0"

ENV_ID = "rlagent/HyperTune-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="rlagent.env:HyperTuneEnv")

__all__ = [
    "BUILTIN_WORKLOADS",
    "ENV_ID",
    "FEATURE_NAMES",
    "EnvSpec",
    "EpisodeSpec",
    "HyperTuneEnv",
    "RLAgentError",
    "RewardSpec",
    "SpecError",
    "WorkloadSet",
    "WorkloadSpec",
    "__version__",
    "load_spec",
]
