"""Train a tuning policy: stable-baselines3 PPO over a pool of HyperTune envs.

PPO is used as-is; rlagent adds, through SB3's documented extension points, a progress/metrics
callback, atomic checkpoints that never pickle and a critic warm-up (:mod:`rlagent.policy.callbacks`),
and a saved policy in the safe format of :mod:`rlagent.policy.file`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize

from rlagent._io import optional_import
from rlagent.errors import ClusterLostError, SpecError, is_number
from rlagent.policy._checks import _ACTIVATIONS, _MAX_LAYERS, _MAX_LSTM, _MAX_WIDTH
from rlagent.policy.callbacks import CheckpointEvery, CriticWarmup, GroupAdvantage, share_draws
from rlagent.policy.checkpoints import (
    CHECKPOINT_FORMAT,
    copy_policy,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_checkpoint,
    resume_seed,
    save_checkpoint,
)
from rlagent.policy.controller import action_kind
from rlagent.policy.file import MAX_FRAME_STACK, SavedPolicy, save_policy
from rlagent.policy.monitor import TrainingMonitor
from rlagent.policy.preflight import check_training
from rlagent.pool import make_pool
from rlagent.pool.devices import WorkerSlot

logger = logging.getLogger(__name__)

ACTIVATIONS = _ACTIVATIONS
MAX_LSTM = _MAX_LSTM
__all__ = [
    "CHECKPOINT_FORMAT",
    "PPOSettings",
    "TrainConfig",
    "TrainResult",
    "build_ppo",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resume_seed",
    "save_checkpoint",
    "train_policy",
]


@dataclass(frozen=True)
class PPOSettings:
    """PPO's own hyperparameters (stable-baselines3 names)."""

    n_steps: int = 64
    """Env steps per env between updates."""
    batch_size: int = 64
    """Minibatch size of the PPO update."""
    n_epochs: int = 10
    """Passes over each rollout."""
    learning_rate: float = 1e-3
    """Adam learning rate of the policy and value networks (1e-3 beat SB3's 3e-4 here: see
    policies/auc/README.md); with ``learning_rate_end``, the rate at the run's first step."""
    learning_rate_end: float | None = None
    """If set, the learning rate falls linearly from ``learning_rate`` at step 0 to this at the
    run's last step (``timesteps``), as SB3's ``LinearSchedule``; a resumed run is at the point of
    the schedule its step count gives. None: constant."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ."""
    ent_coef: float = 0.01
    """Entropy bonus; keeps exploring LR/batch-size moves."""
    clip_range: float = 0.2
    """PPO clipping."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layers of both the policy and the value network."""
    activation: str = "tanh"
    """``tanh`` or ``relu``."""
    normalize_obs: bool = True
    """Running mean/var observation normalisation (saved with the policy)."""
    frame_stack: int = 1
    """Observations of the last this many epochs the networks see side by side (SB3's
    ``VecFrameStack`` over the normalised ones; zeros before a run's first); 1: the current one."""
    lstm_hidden_size: int = 0
    """If > 0, train sb3-contrib's ``RecurrentPPO``: an LSTM of this many units (one layer, one
    for the policy and one for the value network) reads the observations before the networks and
    carries a state through each run; 0: plain PPO."""

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"ppo.{name}", value, "an integer >= 1")
        layers = self.net_arch
        if (
            not isinstance(layers, (tuple, list))
            or len(layers) > _MAX_LAYERS
            or not all(type(n) is int and 0 < n <= _MAX_WIDTH for n in layers)
        ):
            raise SpecError("ppo.net_arch", layers, f"at most {_MAX_LAYERS} layer widths, integers in 1..{_MAX_WIDTH}")
        if type(self.frame_stack) is not int or not 1 <= self.frame_stack <= MAX_FRAME_STACK:
            raise SpecError("ppo.frame_stack", self.frame_stack, f"an integer in 1..{MAX_FRAME_STACK}")
        if type(self.lstm_hidden_size) is not int or not 0 <= self.lstm_hidden_size <= MAX_LSTM:
            raise SpecError("ppo.lstm_hidden_size", self.lstm_hidden_size, f"an integer in 0..{MAX_LSTM} (0: no LSTM)")
        if self.activation not in ACTIVATIONS:
            raise SpecError("ppo.activation", self.activation, f"one of {sorted(ACTIVATIONS)}")
        if not 0 < self.gamma <= 1:
            raise SpecError("ppo.gamma", self.gamma, "a number in (0, 1]")
        if not (is_number(self.learning_rate) and 0 < self.learning_rate < math.inf):
            raise SpecError("ppo.learning_rate", self.learning_rate, "a finite number > 0")
        end = self.learning_rate_end
        if end is not None and not (is_number(end) and 0 <= end < math.inf):
            raise SpecError("ppo.learning_rate_end", end, "a finite number >= 0, or None (constant)")

    def learning_rate_schedule(self) -> float | LinearSchedule:
        """SB3's ``learning_rate`` argument: the constant rate, or the linear schedule."""
        if self.learning_rate_end is None:
            return self.learning_rate
        return LinearSchedule(self.learning_rate, self.learning_rate_end, end_fraction=1.0)


@dataclass(frozen=True)
class TrainConfig:
    """One training run of a tuning policy."""

    spec: str | Path = "default"
    """Spec file or shipped spec name; episodes draw from its training workloads only."""
    timesteps: int = 20_000
    """Total env steps (epochs trained across all envs)."""
    n_envs: int | None = None
    """Parallel envs; None: one per CUDA device, else one per CPU core."""
    devices: str | Sequence[str] = "auto"
    """``auto``, or a list like ``cuda:0,cuda:1`` / ``cpu`` assigned round-robin."""
    seed: int | None = None
    """Seed of PPO and of the envs; None uses the spec's seed."""
    out: str | Path = "policies/custom"
    """Directory of the saved policy."""
    run_dir: str | Path | None = None
    """Where checkpoints and logs go; None: ``runs/{spec}__{out name}__{seed}``."""
    resume: str | Path | None = None
    """A checkpoint directory (or a folder of them: the latest is used) to continue from."""
    init_from: str | Path | None = None
    """A saved policy directory whose weights and observation statistics start this run
    (fine-tuning it, e.g. on another spec or reward); PPO's optimiser, step count and learning
    rate schedule start afresh. The network settings must match the policy's. Not with ``resume``."""
    init_critic: bool = True
    """With ``init_from``, copy the value network too; False starts a fresh one, for a run whose
    returns differ from the saved policy's (another reward or γ: its critic predicts the wrong thing)."""
    critic_warmup: int = 0
    """With ``init_from``: for this many env steps at the start only the value network learns; the
    actor's weights and the observation statistics stay as saved, so the first policy updates
    follow advantages from a critic fitted to the saved policy's own returns, not a fresh one's noise.
    A run resumed from a checkpoint inside the warm-up trains everything from there."""
    tensorboard: str | Path | None = None
    """TensorBoard log directory, or None."""
    checkpoint_every: int = 2_000
    """Write a checkpoint every this many env steps (0: never)."""
    ppo: PPOSettings = field(default_factory=PPOSettings)
    """PPO's own settings."""
    progress: bool = True
    """Show a progress bar."""
    step_timeout: float = 600.0
    """Seconds an env step may take before its worker is declared hung and restarted."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra fields for the saved policy's training record (e.g. the command line)."""
    max_minutes: float | None = None
    """Stop (and save as usual) after this much wall time, even before ``timesteps``."""
    allow_spec_change: bool = False
    """Resume a checkpoint trained with another spec (both are recorded); refused otherwise."""
    population: int | None = None
    """If set, each worker owns a population of this many envs trained together (batched where
    it pays; see :class:`rlagent.PopulationVecEnv`): ``n_envs`` workers × ``population`` envs."""
    draw_group: int = 1
    """Envs that share each draw: groups of this many consecutive envs run the same episodes
    (workload, weights, data order), and each decision's advantage is taken relative to the
    group's others at the same epoch (:class:`rlagent.policy.callbacks.GroupAdvantage`). 1: every
    env draws its own episodes and advantages are PPO's. Must divide ``n_envs``."""

    def __post_init__(self) -> None:
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise SpecError("timesteps", self.timesteps, "an integer >= 1")
        if self.n_envs is not None and (not isinstance(self.n_envs, int) or self.n_envs < 1):
            raise SpecError("n_envs", self.n_envs, "an integer >= 1")
        if self.checkpoint_every < 0:
            raise SpecError("checkpoint_every", self.checkpoint_every, "an integer >= 0")
        if self.population is not None and (not isinstance(self.population, int) or self.population < 1):
            raise SpecError("population", self.population, "an integer >= 1, or None")
        if type(self.draw_group) is not int or self.draw_group < 1:
            raise SpecError("draw_group", self.draw_group, "an integer >= 1")
        if self.draw_group > 1 and self.population is not None:
            raise SpecError("draw_group", self.draw_group, "1 with population (its members are seeded apart)")
        if self.draw_group > 1 and self.n_envs is not None and self.n_envs % self.draw_group:
            raise SpecError("draw_group", self.draw_group, f"a divisor of n_envs={self.n_envs}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise SpecError("max_minutes", self.max_minutes, "a number > 0")
        if self.init_from is not None and self.resume:
            raise SpecError("init_from", str(self.init_from), "not given with resume (a checkpoint holds the weights)")
        if not self.init_critic and self.init_from is None:
            raise SpecError("init_critic (--fresh-critic)", self.init_critic, "True unless init_from is given")
        if not isinstance(self.critic_warmup, int) or not 0 <= self.critic_warmup < self.timesteps:
            raise SpecError("critic_warmup", self.critic_warmup, f"an integer in [0, timesteps={self.timesteps})")
        if self.critic_warmup and self.init_from is None:
            raise SpecError("critic_warmup", self.critic_warmup, "0 unless init_from is given")


@dataclass
class TrainResult:
    """What a training run produced and how fast it went."""

    policy_dir: Path
    run_dir: Path
    """Checkpoints and ``training_log.csv``."""
    timesteps: int
    wall_seconds: float
    env_steps_per_second: float
    update_share: float
    """Share of wall time spent in PPO updates (the rest: stepping envs, i.e. training networks)."""
    episodes: int
    mean_final_val_acc: float
    """Mean final validation accuracy over the last 50 training episodes."""
    slots: list[WorkerSlot]


def build_ppo(venv: VecEnv, settings: PPOSettings, seed: int, tensorboard: str | Path | None) -> PPO:
    """PPO with rlagent's settings on ``venv`` (policy on CPU: it is tiny); sb3-contrib's
    ``RecurrentPPO`` (a subclass of SB3's on-policy algorithm, not of ``PPO``) when
    ``settings.lstm_hidden_size`` > 0."""
    policy_kwargs: dict[str, Any] = {
        "net_arch": list(settings.net_arch),
        "activation_fn": ACTIVATIONS[settings.activation],
    }
    algorithm: Any = PPO
    if settings.lstm_hidden_size:
        from sb3_contrib import RecurrentPPO

        algorithm = RecurrentPPO
        policy_kwargs["lstm_hidden_size"] = settings.lstm_hidden_size
    return algorithm(
        "MlpLstmPolicy" if settings.lstm_hidden_size else "MlpPolicy",
        venv,
        n_steps=settings.n_steps,
        batch_size=settings.batch_size,
        n_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate_schedule(),
        gamma=settings.gamma,
        gae_lambda=settings.gae_lambda,
        ent_coef=settings.ent_coef,
        clip_range=settings.clip_range,
        policy_kwargs=policy_kwargs,
        tensorboard_log=str(tensorboard) if tensorboard else None,
        seed=seed,
        device="cpu",
        verbose=0,
    )


def _checkpoint_lost_run(
    exc: ClusterLostError, model: PPO, norm: VecNormalize | None, config: TrainConfig, run_dir: Path,
    monitor: TrainingMonitor, spec_record: dict[str, Any],
) -> ClusterLostError:  # fmt: skip
    """Checkpoint a run whose Ray cluster cannot host its envs any more; the error to raise.

    The checkpoint keeps the policy of the last PPO update and its step count: the steps of the
    unfinished rollout are lost and run again on resume.
    """
    model.num_timesteps = monitor.updated_steps
    path = save_checkpoint(
        run_dir / "checkpoints" / f"step-{model.num_timesteps:09d}", model, norm, config, spec_record
    )
    logger.warning("the Ray cluster lost a node; checkpoint at %d steps: %s", model.num_timesteps, path)
    return ClusterLostError(
        f"{exc}; wrote checkpoint {path}: once the cluster has a node with those resources, "
        f"rerun the same command with --resume {path}",
        index=exc.index,
        node=exc.node,
        resources=exc.resources,
        checkpoint=str(path),
    )


def _init_record(saved: SavedPolicy, config: TrainConfig) -> dict[str, Any]:
    """What the saved policy record says of the policy a run started from."""
    training = saved.metadata.get("training", {})
    return {
        "policy": str(config.init_from),
        "sha256": saved.metadata.get("sha256"),
        "critic": "copied" if config.init_critic else "fresh",
        "critic_warmup": config.critic_warmup,
        "spec_name": training.get("spec_name"),
        "timesteps": training.get("timesteps"),
        "reward": training.get("spec", {}).get("reward"),
        "gamma": training.get("ppo", {}).get("gamma"),
        "action_kind": action_kind(saved),  # "discrete" into a discrete-rollback run: its head was widened
    }


def train_policy(config: TrainConfig, *, venv: VecEnv | None = None) -> TrainResult:
    """Train a tuning policy with PPO and save it to ``config.out``.

    Args:
        config: What to train and how.
        venv: An already built pool of envs (e.g. the Ray backend); by default a local
            :class:`~rlagent.pool.EnvPool` is made from ``config``. It is closed at the end.

    Returns:
        Where the policy went and how fast training ran.

    Raises:
        ClusterLostError: The Ray cluster lost a node and cannot host an env's actor again; a
            checkpoint was written first (its path is in the message and ``.checkpoint``).
    """
    if config.tensorboard:
        optional_import("tensorboard", extra="tensorboard", purpose="--tensorboard")
    checked = check_training(config, check_devices_=venv is None)  # before any env step
    spec, seed, out, run_dir = checked.spec, checked.seed, checked.out, checked.run_dir
    spec_record = spec.to_dict()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the policy is tiny; leave the cores to the env workers
    start = time.perf_counter()
    pool = (
        venv
        if venv is not None
        else make_pool(
            spec,
            n_envs=config.n_envs,
            devices=config.devices,
            step_timeout=config.step_timeout,
            population=config.population,
        )  # fmt: skip
    )
    try:
        steps_before = int(checked.checkpoint.state["num_timesteps"]) if checked.checkpoint is not None else 0
        run_seed = resume_seed(seed, steps_before)
        pool.seed(run_seed)
        norm = VecNormalize(pool, norm_obs=True, norm_reward=False) if config.ppo.normalize_obs else None
        observed: VecEnv = norm or pool
        if config.ppo.frame_stack > 1:
            observed = VecFrameStack(observed, n_stack=config.ppo.frame_stack)
        model = build_ppo(observed, config.ppo, run_seed, config.tensorboard)
        if config.draw_group > 1:
            share_draws(pool, run_seed, config.draw_group)
        done = 0
        resumed: dict[str, Any] = {}
        if checked.init is not None:
            copy_policy(checked.init, model, norm, critic=config.init_critic, what=f"init_from: {config.init_from}")
            resumed = {"initialised_from": _init_record(checked.init, config)}
            logger.info("started from policy %s (critic %s)", config.init_from, resumed["initialised_from"]["critic"])
        if checked.checkpoint is not None:
            ckpt = checked.checkpoint
            done = restore_checkpoint(ckpt, model, norm)
            logger.info("resumed from %s at %d steps", ckpt.path, done)
            resumed = {
                "resumed_from": {
                    "checkpoint": str(ckpt.path), "spec_name": ckpt.spec_name, "spec": ckpt.spec, "at_step": done,
                    "seed": run_seed,
                }
            }  # fmt: skip
        max_seconds = 60.0 * config.max_minutes if config.max_minutes else None
        monitor = TrainingMonitor(config.timesteps, run_dir / "training_log.csv", config.progress, max_seconds)
        callbacks: list[BaseCallback] = [monitor]
        if config.critic_warmup:
            callbacks.append(CriticWarmup(config.critic_warmup, norm))
        if config.draw_group > 1:
            callbacks.append(GroupAdvantage(pool, config.draw_group))
        if config.checkpoint_every:
            callbacks.append(
                CheckpointEvery(config.checkpoint_every, run_dir / "checkpoints", norm, config, spec_record)
            )
        remaining = config.timesteps - done
        if remaining > 0:
            try:
                model.learn(
                    total_timesteps=remaining,
                    callback=CallbackList(callbacks),
                    reset_num_timesteps=not config.resume,
                    tb_log_name=f"{spec.name}__{out.name}__{seed}",
                )
            except ClusterLostError as exc:
                raise _checkpoint_lost_run(exc, model, norm, config, run_dir, monitor, spec_record) from exc
        if config.checkpoint_every:  # so that a finished or time-limited run can be continued
            ckpt_dir = run_dir / "checkpoints" / f"step-{model.num_timesteps:09d}"
            save_checkpoint(ckpt_dir, model, norm, config, spec_record)
        wall = time.perf_counter() - start
        metadata = {
            "spec_name": spec.name,
            "spec": spec_record,
            "trained_on": list(spec.workloads.train_names),
            "held_out": list(spec.workloads.heldout),
            "timesteps": int(model.num_timesteps),
            "seed": seed,
            "wall_seconds": round(wall, 1),
            "n_envs": pool.num_envs,
            "population": config.population,
            "draw_group": config.draw_group,
            "devices": [s.device for s in getattr(pool, "slots", [])],
            "ppo": dataclasses.asdict(config.ppo),
            "env_steps_per_second": round(monitor.steps_per_second, 2),
            **resumed,
            **config.metadata,
        }
        save_policy(out, model, normalizer=norm, metadata=metadata, frame_stack=config.ppo.frame_stack)
        busy = monitor.update_seconds + monitor.rollout_seconds
        return TrainResult(
            policy_dir=out,
            run_dir=run_dir,
            timesteps=int(model.num_timesteps),
            wall_seconds=wall,
            env_steps_per_second=monitor.steps_per_second,
            update_share=monitor.update_seconds / busy if busy else 0.0,
            episodes=monitor.episodes,
            mean_final_val_acc=float(np.mean(monitor.final_accs)) if monitor.final_accs else math.nan,
            slots=list(getattr(pool, "slots", [])),
        )
    finally:
        pool.close()
        torch.set_num_threads(threads)
