"""Train a tuning policy: stable-baselines3 PPO over a pool of HyperTune envs.

PPO is used as-is; rlagent adds, through SB3's documented extension points, a progress/metrics
callback, atomic checkpoints that never pickle, and a saved policy in the safe format of
:mod:`rlagent.policy.file`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlagent._io import atomic_dir, optional_import, write_json_atomic
from rlagent.config import EnvSpec, load_spec
from rlagent.errors import RLAgentError, SpecError
from rlagent.policy.file import load_policy, save_policy
from rlagent.pool import make_pool
from rlagent.pool.devices import WorkerSlot

logger = logging.getLogger(__name__)

ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
CHECKPOINT_FORMAT = 1


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
    policies/default/README.md)."""
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

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"ppo.{name}", value, "an integer >= 1")
        if self.activation not in ACTIVATIONS:
            raise SpecError("ppo.activation", self.activation, f"one of {sorted(ACTIVATIONS)}")
        if not 0 < self.gamma <= 1:
            raise SpecError("ppo.gamma", self.gamma, "a number in (0, 1]")


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

    def __post_init__(self) -> None:
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise SpecError("timesteps", self.timesteps, "an integer >= 1")
        if self.n_envs is not None and (not isinstance(self.n_envs, int) or self.n_envs < 1):
            raise SpecError("n_envs", self.n_envs, "an integer >= 1")
        if self.checkpoint_every < 0:
            raise SpecError("checkpoint_every", self.checkpoint_every, "an integer >= 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise SpecError("max_minutes", self.max_minutes, "a number > 0")


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
        self._chosen: list[tuple[float, float]] = []

    def _on_training_start(self) -> None:
        self._start_steps = self.num_timesteps
        self._t0 = time.perf_counter()
        self._mark = self._t0
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", dynamic_ncols=True)
        if self.log_path is not None and not self.log_path.exists():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("timesteps,workload,return,final_val_acc,best_val_acc,epochs,diverged,restarted\n")

    def _on_rollout_start(self) -> None:
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


class CheckpointEvery(BaseCallback):
    """Writes a checkpoint every ``every`` env steps (atomically; see :func:`save_checkpoint`)."""

    def __init__(self, every: int, directory: Path, venv: VecNormalize | None, config: TrainConfig) -> None:
        super().__init__()
        self.every = every
        self.directory = directory
        self.venv = venv
        self.config = config
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            save_checkpoint(self.directory / f"step-{self.num_timesteps:09d}", self.model, self.venv, self.config)
            self._next += self.every
        return True


# ---------------------------------------------------------------------------------------------
# Checkpoints: the policy in the safe policy format plus the PPO optimiser state in safetensors.


def _config_json(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_checkpoint(path: Path, model: PPO, venv: VecNormalize | None, config: TrainConfig) -> Path:
    """Write everything needed to resume into ``path`` (a directory), atomically."""
    with atomic_dir(path) as tmp:
        save_policy(tmp / "policy", model, normalizer=venv, metadata={"checkpoint": True})
        opt_state = model.policy.optimizer.state_dict()
        tensors = {
            f"state.{idx}.{key}": value.detach().cpu().contiguous()
            for idx, entries in opt_state["state"].items()
            for key, value in entries.items()
        }
        safetensors.torch.save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "format_version": CHECKPOINT_FORMAT,
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "param_groups": opt_state["param_groups"],
            "config": _config_json(config),
        }
        write_json_atomic(tmp / "state.json", state, indent=2)
    logger.info("checkpoint at %d steps: %s", model.num_timesteps, path)
    return path


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside it."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    found = sorted(c for c in p.glob("step-*") if (c / "state.json").is_file()) if p.is_dir() else []
    if not found:
        raise RLAgentError(f"resume: {p} is not a checkpoint and holds none (expected step-*/state.json)")
    return found[-1]


def load_checkpoint(path: Path, model: PPO, venv: VecNormalize | None) -> int:
    """Restore policy, optimiser, normaliser and step count from a checkpoint; returns the steps."""
    state = json.loads((path / "state.json").read_text())
    if state.get("format_version") != CHECKPOINT_FORMAT:
        raise RLAgentError(
            f"resume: {path} has checkpoint format {state.get('format_version')}, expected {CHECKPOINT_FORMAT}"
        )
    saved = load_policy(path / "policy")
    try:
        model.policy.load_state_dict(saved.policy.state_dict(), strict=True)
    except RuntimeError as exc:
        raise RLAgentError(f"resume: {path} was trained with another network or action space ({exc})") from exc
    tensors = safetensors.torch.load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[str, Any] = {"state": {}, "param_groups": state["param_groups"]}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        opt_state["state"].setdefault(int(idx), {})[name] = value
    model.policy.optimizer.load_state_dict(opt_state)
    if venv is not None and saved.normalizer is not None:
        venv.obs_rms.mean = np.asarray(saved.normalizer["mean"], dtype=np.float64)
        venv.obs_rms.var = np.asarray(saved.normalizer["var"], dtype=np.float64)
        venv.obs_rms.count = float(saved.normalizer["count"])
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    return model.num_timesteps


# ---------------------------------------------------------------------------------------------


def build_ppo(venv: VecEnv, settings: PPOSettings, seed: int, tensorboard: str | Path | None) -> PPO:
    """PPO with rlagent's settings on ``venv`` (policy on CPU: it is tiny)."""
    return PPO(
        "MlpPolicy",
        venv,
        n_steps=settings.n_steps,
        batch_size=settings.batch_size,
        n_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate,
        gamma=settings.gamma,
        gae_lambda=settings.gae_lambda,
        ent_coef=settings.ent_coef,
        clip_range=settings.clip_range,
        policy_kwargs={"net_arch": list(settings.net_arch), "activation_fn": ACTIVATIONS[settings.activation]},
        tensorboard_log=str(tensorboard) if tensorboard else None,
        seed=seed,
        device="cpu",
        verbose=0,
    )


def train_policy(config: TrainConfig, *, venv: VecEnv | None = None) -> TrainResult:
    """Train a tuning policy with PPO and save it to ``config.out``.

    Args:
        config: What to train and how.
        venv: An already built pool of envs (e.g. the Ray backend); by default a local
            :class:`~rlagent.pool.EnvPool` is made from ``config``. It is closed at the end.

    Returns:
        Where the policy went and how fast training ran.
    """
    spec = load_spec(config.spec) if not isinstance(config.spec, EnvSpec) else config.spec
    seed = spec.seed if config.seed is None else config.seed
    out = Path(config.out)
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / f"{spec.name}__{out.name}__{seed}"
    if config.tensorboard:
        optional_import("tensorboard", extra="tensorboard", purpose="--tensorboard")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the policy is tiny; leave the cores to the env workers
    start = time.perf_counter()
    pool = (
        venv
        if venv is not None
        else make_pool(spec, n_envs=config.n_envs, devices=config.devices, step_timeout=config.step_timeout)
    )
    try:
        pool.seed(seed)
        norm = VecNormalize(pool, norm_obs=True, norm_reward=False) if config.ppo.normalize_obs else None
        model = build_ppo(norm or pool, config.ppo, seed, config.tensorboard)
        done = 0
        if config.resume:
            ckpt = latest_checkpoint(config.resume)
            done = load_checkpoint(ckpt, model, norm)
            logger.info("resumed from %s at %d steps", ckpt, done)
        max_seconds = 60.0 * config.max_minutes if config.max_minutes else None
        monitor = TrainingMonitor(config.timesteps, run_dir / "training_log.csv", config.progress, max_seconds)
        callbacks: list[BaseCallback] = [monitor]
        if config.checkpoint_every:
            callbacks.append(CheckpointEvery(config.checkpoint_every, run_dir / "checkpoints", norm, config))
        remaining = config.timesteps - done
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=not config.resume,
                tb_log_name=f"{spec.name}__{out.name}__{seed}",
            )
        if config.checkpoint_every:  # so that a finished or time-limited run can be continued
            save_checkpoint(run_dir / "checkpoints" / f"step-{model.num_timesteps:09d}", model, norm, config)
        wall = time.perf_counter() - start
        metadata = {
            "spec_name": spec.name,
            "spec": spec.to_dict(),
            "trained_on": list(spec.workloads.train_names),
            "held_out": list(spec.workloads.heldout),
            "timesteps": int(model.num_timesteps),
            "seed": seed,
            "wall_seconds": round(wall, 1),
            "n_envs": pool.num_envs,
            "devices": [s.device for s in getattr(pool, "slots", [])],
            "ppo": dataclasses.asdict(config.ppo),
            "env_steps_per_second": round(monitor.steps_per_second, 2),
            **config.metadata,
        }
        save_policy(out, model, normalizer=norm, metadata=metadata)
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
