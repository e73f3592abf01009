"""``rlagent/HyperTune-v0``: one step trains a network for one epoch at the LR and batch size chosen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rlagent.config import ACTIONS, EnvSpec, load_spec, spec_from_dict
from rlagent.errors import SpecError, is_number
from rlagent.features import FEATURE_NAMES, OBS_HIGH, OBS_LOW, RunTracker, move_sign
from rlagent.hparams import HParams
from rlagent.probe import START_DIVISOR, check_divisor, checked_start, probe_seed, start_from_probe
from rlagent.rollback import BestWeights, resume_hparams, rollback_due
from rlagent.training import Trainer, run_epoch
from rlagent.workloads import Data, Source, WorkloadSpec, make_run

LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Discrete action 0: the learning rate is multiplied by one of these."""
BS_FACTORS = (0.5, 1.0, 2.0)
"""Discrete action 1: the batch size is multiplied by one of these."""
WIDE_LR_FACTORS = (1 / 16, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0)
"""``discrete-wide`` action 0: as :data:`LR_FACTORS` plus ×1/16 and ×16, so one epoch can undo
a start that is far off."""
_LR_FACTORS_OF = {"discrete": LR_FACTORS, "discrete-wide": WIDE_LR_FACTORS, "discrete-rollback": LR_FACTORS}
ROLLBACK = "discrete-rollback"
"""The action kind with a third choice: 1 rolls the run back to its best epoch (:mod:`rlagent.rollback`)."""
COUPLED = "discrete-coupled"
"""The action kind of coupled moves: action 0 multiplies LR ÷ batch size (the SGD noise temperature,
Smith & Le 2018) by one of :data:`TEMPERATURE_FACTORS`; action 1 says which hyperparameter takes it
(:func:`coupled_factors`)."""
TEMPERATURE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""``discrete-coupled`` action 0: LR ÷ batch size is multiplied by one of these."""
RESET_OPTIONS = ("workload", "lr", "batch_size", "replica", "start_check", "probe_divisor")


def coupled_factors(temperature: float, via_batch: bool) -> tuple[float, float]:
    """The (LR, batch size) factors of a ``discrete-coupled`` move of LR ÷ batch size by
    ``temperature``: the LR alone takes it, or (``via_batch``) the batch size takes a factor of 2
    of it (×2 to cool, ×½ to heat) and the LR the rest. A hold is a hold either way.

    A ×¼ cut so becomes LR ×¼, or LR ×½ with batch ×2; a ×½ cut LR ×½, or batch ×2 alone: a
    batch-size raise is one way to take a cut, not a separate choice a policy can learn to drop.
    Both factors are clipped to their ranges as every action's are, so at the batch-size cap a cut
    via the batch moves only the LR's share.
    """
    if not via_batch or temperature == 1.0:
        return temperature, 1.0
    bs_factor = 2.0 if temperature < 1.0 else 0.5
    return temperature * bs_factor, bs_factor


def action_space(kind: str) -> spaces.Space:
    """The action space of an episode spec's ``action`` kind."""
    if kind == COUPLED:
        return spaces.MultiDiscrete([len(TEMPERATURE_FACTORS), 2])
    if kind in _LR_FACTORS_OF:
        return spaces.MultiDiscrete([len(_LR_FACTORS_OF[kind]), len(BS_FACTORS)] + [2] * (kind == ROLLBACK))
    return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)


def hold_action(kind: str) -> np.ndarray:
    """The action of ``kind`` that keeps the LR and the batch size as they are."""
    if kind == COUPLED:
        return np.array([TEMPERATURE_FACTORS.index(1.0), 0])
    if kind in _LR_FACTORS_OF:
        return np.array([_LR_FACTORS_OF[kind].index(1.0), BS_FACTORS.index(1.0)] + [0] * (kind == ROLLBACK))
    return np.zeros(2, dtype=np.float32)


def action_kind_of(space: spaces.Space) -> str | None:
    """The ``episode.action`` kind whose action space is ``space``; None if none is."""
    return next((kind for kind in ACTIONS if action_space(kind) == space), None)


def decode_action(action: Any, kind: str) -> tuple[float, float]:
    """Multiplicative (LR, batch size) changes requested by an action (see :func:`rolls_back`)."""
    a = np.asarray(action).reshape(-1)
    size = 3 if kind == ROLLBACK else 2
    if a.shape != (size,):
        raise ValueError(f"action: got shape {np.asarray(action).shape}; expected ({size},)")
    if kind == COUPLED:
        i, j = int(a[0]), int(a[1])
        if not (0 <= i < len(TEMPERATURE_FACTORS) and j in (0, 1)):
            raise ValueError(f"action: got {a.tolist()}; expected [0..{len(TEMPERATURE_FACTORS) - 1}, 0..1]")
        return coupled_factors(TEMPERATURE_FACTORS[i], bool(j))
    if kind in _LR_FACTORS_OF:
        lr_factors = _LR_FACTORS_OF[kind]
        i, j = int(a[0]), int(a[1])
        if not (0 <= i < len(lr_factors) and 0 <= j < len(BS_FACTORS) and (size == 2 or int(a[2]) in (0, 1))):
            expected = f"0..{len(lr_factors) - 1}, 0..{len(BS_FACTORS) - 1}" + ", 0..1" * (size == 3)
            raise ValueError(f"action: got {a.tolist()}; expected [{expected}]")
        return lr_factors[i], BS_FACTORS[j]
    c = np.clip(a.astype(np.float64), -1.0, 1.0)
    return float(4.0 ** c[0]), float(2.0 ** c[1])


def without_lr_raise(action: Any, kind: str) -> np.ndarray:
    """``action`` (of ``kind``, as a policy gives it) with an LR raise it asks for replaced by a hold;
    its batch-size and rollback choices are kept. Any other action comes back as a copy."""
    a = np.array(action, copy=True)
    flat = a.reshape(-1)
    if kind == COUPLED:  # a raise of the LR is a heating move: x2 via the batch keeps its batch halving
        if decode_action(flat, kind)[0] > 1.0:
            via_batch = int(flat[1]) == 1
            flat[0] = TEMPERATURE_FACTORS.index(2.0 if via_batch else 1.0)
    elif kind in _LR_FACTORS_OF:
        factors = _LR_FACTORS_OF[kind]
        if factors[int(flat[0])] > 1.0:
            flat[0] = factors.index(1.0)
    else:
        flat[0] = min(flat[0], 0.0)  # continuous: the LR factor is 4 ** a0
    return a


def rolls_back(action: Any, kind: str) -> bool:
    """Whether an action (checked by :func:`decode_action`) asks to roll the run back to its best epoch."""
    return kind == ROLLBACK and int(np.asarray(action).reshape(-1)[2]) == 1


class HyperTuneEnv(gym.Env[np.ndarray, np.ndarray]):
    """Tune the learning rate and batch size of a neural network, one epoch per step.

    ## Description
    An episode is one training run of a workload (dataset + model + optimiser) drawn from the
    spec's training workloads — picked among its names, or, for a procedural training set
    (:mod:`rlagent.procedural`), drawn afresh from the episode seed with its own epoch budget
    and initial LR and batch size. Each step, the agent changes the learning rate and batch size; the
    env then trains the network for exactly one epoch with them and evaluates it on the whole
    validation split. Optimiser state (Adam moments, momentum) is kept across changes.

    ## Action Space
    ``episode.action = "discrete"`` (default): ``MultiDiscrete([5, 3])`` — the LR is multiplied
    by ``LR_FACTORS[a0]`` = ×{¼, ½, 1, 2, 4} and the batch size by ``BS_FACTORS[a1]`` = ×{½, 1, 2}.
    ``"discrete-wide"``: ``MultiDiscrete([7, 3])`` — as ``discrete`` with ×1/16 and ×16 added to
    the LR's factors (:data:`WIDE_LR_FACTORS`). ``"discrete-coupled"``: ``MultiDiscrete([5, 2])``
    — LR ÷ batch size is multiplied by ×{¼, ½, 1, 2, 4} (:data:`TEMPERATURE_FACTORS`), taken by
    the LR alone (a1 = 0) or with the batch size taking ×2 of a cut or ×½ of a raise (a1 = 1;
    :func:`coupled_factors`). ``"discrete-rollback"``: ``MultiDiscrete([5, 3,
    2])`` — as ``discrete``, and a third choice of 1 first restores the model and optimiser state
    of the run's best epoch so far by validation accuracy, and the LR it trained at, which the LR
    factor then moves (:mod:`rlagent.rollback`; ``info``'s ``rolled_back_to`` names that epoch).
    ``"continuous"``: ``Box(-1, 1, (2,))`` — LR ×4^a0, batch size ×2^a1 (rounded). All are
    clipped to the spec's ranges (batch size also to the training-set size). With
    ``episode.schedule = "cosine"`` the epoch trains at the LR so chosen × a cosine envelope over
    the episode (:class:`rlagent.hparams.Envelope`), which the agent does not move: holding
    the LR follows the cosine.

    ## Observation Space
    ``Box(OBS_LOW, OBS_HIGH, (22,), float32)``: scale-free features of the run named in
    :data:`rlagent.features.FEATURE_NAMES` — progress, LR/batch-size position in their ranges,
    losses / log(classes), accuracies above chance, their changes, generalisation gap, minibatch
    loss noise, best validation accuracy and epochs since, gradient noise scale vs batch size,
    and the last action. Always finite and inside the bounds.

    ## Rewards
    ``reward.mode``: ``val_acc`` — validation accuracy after each epoch; ``val_acc_change`` —
    its change over the epoch (the final accuracy paid out epoch by epoch: with γ = 1 a return
    is the final accuracy minus the accuracy where it starts, potential-based shaping of
    ``final``); ``best_improvement`` — increase of the best validation accuracy (the episode's
    sum is final best − initial); ``final`` — validation accuracy after the last epoch, 0
    before. Each minus ``reward.cost_weight × cost`` (``cost_unit``: optimiser steps / 100, or
    wall seconds), and minus ``reward.reversal_cost`` on an epoch whose LR move reverses the
    previous epoch's (dithering). A diverged epoch counts as chance accuracy.

    ## Starting State
    A freshly initialised model (weights, data split and shuffling drawn from the episode
    seed) at ``episode.init_lr`` / ``episode.init_batch_size`` (fixed or sampled); the first
    observation comes from evaluating the untrained model on the validation split. With
    ``init_lr = "probe"`` (or the reset option ``"lr": "probe"``) a short LR range test on a copy
    of the run sets the first LR to its minimum-loss LR ÷ 10 (the reset option ``"probe_divisor"``
    sets another divisor >= 1; :mod:`rlagent.probe`; the run
    itself is untouched by it); ``info`` then holds ``probe_lr`` and ``probe_samples``, and
    those samples count in ``samples_seen``. With the reset option ``"start_check": True`` a
    numeric first LR is checked by the same probe (:func:`rlagent.probe.checked_start`): one above
    the probe's minimum-loss LR is replaced by the probe's start, any other kept; ``info`` then
    holds ``probe_lr``, ``probe_samples`` and ``start_replaced``.

    ## Episode End
    Terminated when the epoch budget is spent — the budget is part of the task and the agent
    observes ``progress``, so there is no future to bootstrap — or when the loss becomes
    non-finite (``info["diverged"] = True``). Never raises on divergence.

    ## Info
    ``workload``, ``heldout``, ``epoch``, ``lr``, ``batch_size``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``, ``best_val_acc``, ``samples_seen``, ``steps``, ``diverged``; with
    ``discrete-rollback`` also ``rolled_back_to`` (the epoch restored, or None); with a schedule
    other than ``constant`` also ``lr_envelope`` (the envelope's multiplier of the epoch: it
    trained at ``lr × lr_envelope``; ``lr`` is the chosen LR the agent sees); on the last step
    also ``test_loss`` / ``test_acc`` (for reporting only: the test split never reaches the
    observation or the reward). Info is deterministic under a seed (``check_env``
    compares it), so the epoch's wall time is kept out of it, in ``env.unwrapped.epoch_time``.

    ## Arguments
    ``gymnasium.make("rlagent/HyperTune-v0", spec="default", device="cpu", num_threads=None,
    workloads=None)``. ``spec``: an :class:`EnvSpec`, a spec file path, the name of a shipped
    spec, or a dict in the file's layout. ``device``: torch device the run lives on.
    ``num_threads``: torch threads for this process (None leaves torch's setting).
    ``workloads``: names to draw episodes from instead of the spec's training set (its names or
    its sampler).
    ``sources``: a cache of loaded datasets to share with other envs in the process (a
    population), keyed by :func:`rlagent.workloads.source_key`.
    ``reset(options={"workload": name, "lr": x, "batch_size": b})`` picks a workload
    (held-out ones included, e.g. for evaluation) and initial values for one episode;
    ``"replica": r`` (r >= 1) keeps the seed's data split but draws other initial weights and
    shuffling (:func:`rlagent.workloads.run_seeds`), e.g. for best-of-k runs on one task;
    ``"start_check": True`` checks the first LR against the LR probe (see Starting State).

    ## Version History
    * v0: Initial version; procedural training sets and more optimiser families added without
      changing the observation, action or reward of named workloads; an LR envelope under the
      agent's LR (``episode.schedule``) added, off by default.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        spec: EnvSpec | str | Path | Mapping[str, Any] | None = None,
        *,
        device: str | torch.device = "cpu",
        num_threads: int | None = None,
        workloads: Sequence[str] | None = None,
        sources: dict[str, Source] | None = None,
    ) -> None:
        if spec is None:
            spec = "default"
        if isinstance(spec, Mapping):
            spec = spec_from_dict(spec)
        elif not isinstance(spec, EnvSpec):
            spec = load_spec(spec)
        self.env_spec: EnvSpec = spec
        self.device = torch.device(device)
        if num_threads is not None:
            if num_threads < 1:
                raise SpecError("num_threads", num_threads, "an integer >= 1")
            torch.set_num_threads(num_threads)
        self.workload_names = tuple(workloads) if workloads is not None else spec.workloads.train_names
        """Named workloads episodes are drawn from; empty when the spec's sampler draws them."""
        if not self.workload_names and spec.workloads.sampler is None:
            raise SpecError("workloads", list(self.workload_names), "at least one workload name")
        for name in self.workload_names:
            spec.workload(name)  # raises on unknown names
        self.action_kind = spec.episode.action
        self.action_space = action_space(self.action_kind)
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(len(FEATURE_NAMES),), dtype=np.float32)
        self._sources: dict[str, Source] = {} if sources is None else sources
        self.workload: WorkloadSpec | None = None
        self.trainer: Trainer | None = None
        self.data: Data | None = None
        self.tracker: RunTracker | None = None
        self.hparams: HParams | None = None
        self._val_acc = 0.0  # validation accuracy after the last epoch (the untrained model's at reset)
        self._lr_sign = 0
        self._best: BestWeights | None = None  # the best epoch's state, for discrete-rollback
        self.epoch_time = 0.0
        """Wall time of the last step's epoch in seconds (not in info: info is deterministic)."""

    @property
    def workload_name(self) -> str | None:
        """Name of the current episode's workload (None before the first reset)."""
        return self.workload.name if self.workload else None

    def placement(self) -> dict[str, str | None]:
        """Where the current run lives: model parameters, data, and the process's current CUDA device."""
        model_device = next(self.trainer.model.parameters()).device if self.trainer else None
        data_device = self.data.train.x.device if self.data else None
        cuda = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_initialized() else None
        return {"model_device": str(model_device), "data_device": str(data_device), "cuda_current": cuda}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise SpecError("reset options", unknown, f"keys among {RESET_OPTIONS}")
        name = options.get("workload")
        if name is None and not self.workload_names:
            # A procedural training set: a fresh workload drawn from the episode seed. Its data
            # are not cached (each draw is new; regenerating takes at most a few seconds).
            episode_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
            task = self.env_spec.draw(episode_seed)
            wl, name, sources = task.workload, task.workload.name, {}
            # The draw brings its own start, unless the spec asks for the probe's LR (on all
            # draws, or on the share ``probe_fraction`` of them, chosen by the episode seed).
            lr = "probe" if self.env_spec.episode.probes(episode_seed) else task.init_lr
            options = {"lr": lr, "batch_size": task.init_batch_size, **options}
        else:
            if name is None:
                name = self.workload_names[int(self.np_random.integers(len(self.workload_names)))]
            wl, sources = self.env_spec.workload(name), self._sources
            episode_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        run = make_run(wl, episode_seed, device=self.device, sources=sources, replica=options.get("replica", 0))
        data = run.data
        hp, probe_start = self._initial_values(wl, len(data.train), options)
        self.trainer = Trainer(
            run.model, data.train, optimizer=wl.optimizer, optimizer_args=wl.optimizer_args,
            lr=hp.lr, batch_size=hp.batch_size, generator=run.generator, lr_scale=wl.lr_scale, lr_shift=wl.lr_shift,
            envelope=self.env_spec.episode.envelope(wl.epochs),
        )  # fmt: skip
        probe, replaced = None, None
        p_seed = probe_seed(episode_seed, options.get("replica", 0))
        divisor = check_divisor(options.get("probe_divisor", START_DIVISOR), "reset options.probe_divisor")
        probing = {"seed": p_seed, "lr_scale": wl.probe_lr_scale, "divisor": divisor}
        if probe_start:
            probe, hp = start_from_probe(self.trainer, hp, **probing)
        elif options.get("start_check", False):
            probe, hp, replaced = checked_start(self.trainer, hp, **probing)
        lr, bs = hp.lr, hp.batch_size
        self.hparams = hp
        self.workload, self.data = wl, data
        self.tracker = RunTracker(
            num_classes=data.num_classes, lr_range=wl.lr_range,
            batch_size_range=wl.batch_size_range, epochs=wl.epochs,
        )  # fmt: skip
        val = self.trainer.evaluate(data.val)
        self._best = BestWeights(self.trainer) if self.action_kind == ROLLBACK else None
        # The probe's minibatches are training compute: they count towards samples_seen.
        self._samples = probe.samples if probe else 0
        self._steps = 0
        self._done = False
        self._val_acc = val.acc
        self._lr_sign = 0  # sign of the last epoch's LR move (reward.reversal_cost)
        obs = self.tracker.start(val_loss=val.loss, val_acc=val.acc, lr=lr, batch_size=bs)
        info = {
            "workload": name,
            "heldout": name in self.env_spec.workloads.heldout,
            "epoch": 0,
            "lr": lr,
            "batch_size": bs,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "episode_seed": episode_seed,
        }
        if probe is not None:
            info["probe_lr"], info["probe_samples"] = probe.lr, probe.samples
        if replaced is not None:
            info["start_replaced"] = replaced
        return obs, info

    def _initial_values(self, wl: WorkloadSpec, n_train: int, options: Mapping[str, Any]) -> tuple[HParams, bool]:
        """The first epoch's LR and batch size, and whether a probe is to replace that LR."""
        ep = self.env_spec.episode
        ranges = HParams(1.0, 1, wl.lr_range, wl.batch_size_range, n_train)
        lr = options.get("lr", ep.init_lr)
        probe = isinstance(lr, str) and lr == "probe"
        if probe:
            lr = ranges.lr_range[0]  # until the probe has run
        elif lr == "sample":
            lr = ranges.sample_lr(self.np_random)
        bs = options.get("batch_size", ep.init_batch_size)
        if bs == "sample":
            bs = ranges.sample_batch_size(self.np_random)
        if not is_number(lr) or not lr > 0:
            raise SpecError("reset options.lr", lr, "a number > 0, 'sample' or 'probe'")
        if not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs < 1:
            raise SpecError("reset options.batch_size", bs, "an integer >= 1")
        if not isinstance(options.get("start_check", False), bool):
            raise SpecError("reset options.start_check", options["start_check"], "true or false")
        return ranges.with_values(float(lr), int(bs)), probe

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.trainer is None or self.tracker is None or self.data is None or self.workload is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._done:
            raise gym.error.ResetNeeded("the episode has ended; call reset()")
        wl, trainer, tracker = self.workload, self.trainer, self.tracker
        lr_f, bs_f = decode_action(action, self.action_kind)
        lr_before = self.hparams.lr
        rolling = self._best is not None and rollback_due(rolls_back(action, self.action_kind), tracker)
        self.hparams = resume_hparams(self.hparams, tracker, lr_f, bs_f, rolling)
        lr_sign = move_sign(lr_before, self.hparams.lr)
        reversed_move, self._lr_sign = lr_sign != 0 and lr_sign == -self._lr_sign, lr_sign
        best_before = tracker.best_val_acc
        rolled_back_to = self._best.restore(trainer) if self._best is not None and rolling else None
        epoch, obs = run_epoch(trainer, self.data.val, tracker, self.hparams)
        if self._best is not None:
            self._best.update(trainer, tracker, epoch.diverged)
        self._samples += epoch.stats.samples
        self._steps += epoch.stats.steps
        diverged = epoch.diverged
        terminated = diverged or tracker.epoch >= wl.epochs
        reward = self._reward(epoch.val_acc, best_before, terminated, epoch.stats.steps, epoch.stats.seconds)
        reward -= self.env_spec.reward.reversal_cost * reversed_move
        self._val_acc = epoch.val_acc
        self._done = terminated
        self.epoch_time = epoch.stats.seconds
        info: dict[str, Any] = {
            "workload": wl.name,
            "heldout": wl.name in self.env_spec.workloads.heldout,
            "epoch": tracker.epoch,
            "lr": epoch.lr,
            "batch_size": epoch.batch_size,
            "train_loss": epoch.train_loss,
            "train_acc": epoch.train_acc,
            "val_loss": epoch.val_loss,
            "val_acc": epoch.val_acc,
            "best_val_acc": tracker.best_val_acc,
            "samples_seen": self._samples,
            "steps": self._steps,
            "diverged": diverged,
        }
        if self._best is not None:
            info["rolled_back_to"] = rolled_back_to
        if trainer.envelope is not None:
            info["lr_envelope"] = trainer.envelope(tracker.epoch - 1)
        if terminated:
            if diverged:
                info["test_loss"], info["test_acc"] = float("nan"), 1.0 / self.data.num_classes
            else:
                test = trainer.evaluate(self.data.test)
                info["test_loss"], info["test_acc"] = test.loss, test.acc
        return obs, reward, terminated, False, info

    def _reward(self, val_acc: float, best_before: float, terminated: bool, steps: int, seconds: float) -> float:
        rs = self.env_spec.reward
        if rs.mode == "val_acc":
            reward = val_acc
        elif rs.mode == "val_acc_change":
            reward = val_acc - self._val_acc
        elif rs.mode == "best_improvement":
            reward = max(0.0, val_acc - best_before)
        else:
            reward = val_acc if terminated else 0.0
        if rs.cost_weight:
            cost = steps / 100.0 if rs.cost_unit == "steps" else seconds
            reward -= rs.cost_weight * cost
        return float(reward)
