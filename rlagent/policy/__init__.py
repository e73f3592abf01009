"""Tuning policies: training them with PPO, saving and loading them safely, reusing them.

* :mod:`rlagent.policy.train` — PPO over an env pool, checkpoints and resume;
* :mod:`rlagent.policy.file` — the policy directory (safetensors + JSON, never unpickled);
* :mod:`rlagent.policy.reuse` — a saved policy on a named workload, on your own model, or in
  your own loop.
* :mod:`rlagent.policy.validate` / :mod:`rlagent.policy.select` — scoring policies on validation
  draws of their training distribution, and choosing among them (chosen on some draws, confirmed
  on fresh ones).
"""

from __future__ import annotations

from rlagent.policy.controller import Controller, resolve_policy
from rlagent.policy.file import PolicyFileError, SavedPolicy, load_policy, save_policy
from rlagent.policy.reuse import TuneResult, run_policy, train_with_policy, tune
from rlagent.policy.train import PPOSettings, TrainConfig, TrainResult, train_policy

__all__ = [
    "Controller",
    "PPOSettings",
    "PolicyFileError",
    "SavedPolicy",
    "TrainConfig",
    "TrainResult",
    "TuneResult",
    "load_policy",
    "resolve_policy",
    "run_policy",
    "save_policy",
    "train_policy",
    "train_with_policy",
    "tune",
]
