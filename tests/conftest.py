"""Shared test setup: one torch thread, one tiny trained policy and one local Ray for the session.

The test models are tiny, so intra-op threads only add overhead, and on a small machine running
other work beside the tests they oversubscribe the cores (an MNIST-1D GRU epoch goes from ~0.5 s
to several seconds). One thread is also the setting the benchmark numbers are measured with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the ``cluster`` tests last: each shuts the session's local Ray down (a process can
    drive one Ray at a time) to connect to its own multi-node cluster."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)  # stable: order kept


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PPO policy trained for 64 steps on the tiny spec (one env in this process: a worker
    process would cost seconds of start-up). Tests of the pool-based training make their own."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlagent.env import HyperTuneEnv
    from rlagent.policy.train import PPOSettings, TrainConfig, train_policy

    tmp = tmp_path_factory.mktemp("tiny_policy")
    config = TrainConfig(
        spec="tiny", timesteps=64, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False, ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,)),
    )  # fmt: skip
    return train_policy(config, venv=DummyVecEnv([lambda: Monitor(HyperTuneEnv("tiny"))])).policy_dir


@pytest.fixture(scope="session")
def tiny_cosine_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PPO policy trained for 64 steps on the tiny spec under a cosine LR envelope to 0.05
    (``episode.schedule = "cosine"``)."""
    import dataclasses

    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlagent.config import load_spec
    from rlagent.env import HyperTuneEnv
    from rlagent.policy.train import PPOSettings, TrainConfig, train_policy

    tmp = tmp_path_factory.mktemp("tiny_cosine_policy")
    tiny = load_spec("tiny")
    spec = dataclasses.replace(tiny, episode=dataclasses.replace(tiny.episode, schedule="cosine", schedule_floor=0.05))
    config = TrainConfig(
        spec=spec, timesteps=64, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False, ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,)),
    )  # fmt: skip
    return train_policy(config, venv=DummyVecEnv([lambda: Monitor(HyperTuneEnv(spec))])).policy_dir


TINY_ROLLBACK = 'extends = "tiny"\nname = "tiny-rollback"\n\n[episode]\naction = "discrete-rollback"\n'
"""The tiny spec with the rollback action (``discrete-rollback``)."""


@pytest.fixture(scope="session")
def tiny_rollback_policy(tiny_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_policy`` fine-tuned for 32 steps with the rollback action added (its head widened)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlagent.env import HyperTuneEnv
    from rlagent.policy.train import PPOSettings, TrainConfig, train_policy

    tmp = tmp_path_factory.mktemp("tiny_rollback_policy")
    (tmp / "tiny-rollback.toml").write_text(TINY_ROLLBACK)
    config = TrainConfig(
        spec=tmp / "tiny-rollback.toml", timesteps=32, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False, ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,)),
        init_from=tiny_policy,
    )  # fmt: skip
    venv = DummyVecEnv([lambda: Monitor(HyperTuneEnv(tmp / "tiny-rollback.toml"))])
    return train_policy(config, venv=venv).policy_dir


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real local Ray (2 CPUs, no dashboard), started once and shut down at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        # "local": our own Ray, not a cluster another process left in /tmp/ray/ray_current_cluster
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    if started:
        ray.shutdown()
