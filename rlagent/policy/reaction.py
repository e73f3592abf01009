"""Does a policy react to the run? The twin test, on validation draws with a hidden mid-run LR shift.

A spec whose sampler shifts each draw's hidden LR scale mid-run (``lr_shift_range``, e.g.
``default-shift-final``) gives every validation draw a **twin**: the same draw without the shift.
The shift is drawn last, so model, data, seeds, start and hidden scale are the twin's. The policy
runs closed-loop on both; then the twin's actions are replayed, open-loop, on the shifted draw.

On the shifted draw, closed-loop minus replay is what the policy's reaction to the shift earned:
both runs are the same until the shift (the observations, hence the actions, are equal), and
after it the replay does what the policy would have done had nothing changed. A policy that ignores
the run scores 0 on every draw; a useful reaction scores above 0 on average, on the draws that
turn hotter (factor > 1: the right move is down) and on those that turn colder. No schedule
fixed in advance can follow a shift whose epoch and size differ from draw to draw, so this is the
in-distribution counterpart of the benchmark's open-loop replay.

Like :mod:`rlagent.policy.validate`, it uses only validation draws (their own seed stream),
never the held-out suite or a test split.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from rlagent.config import EnvSpec, load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import SpecError
from rlagent.policy.controller import policy_episode
from rlagent.policy.file import load_policy
from rlagent.policy.validate import check_start, map_draws, validation_seeds
from rlagent.workloads import WorkloadSpec

logger = logging.getLogger(__name__)


@dataclass
class TwinResult:
    """One validation draw with a mid-run shift, and its twin without it."""

    seed: int
    workload: str
    shift: tuple[int, float]
    """``(epoch, factor)`` of the draw's hidden shift (``WorkloadSpec.lr_shift``)."""
    val_acc: float
    """Final validation accuracy of the policy on the shifted draw (closed loop)."""
    replay_val_acc: float
    """Final validation accuracy of the twin's actions replayed on the shifted draw (open loop)."""
    twin_val_acc: float
    """Final validation accuracy of the policy on the twin (no shift)."""
    same_actions: bool
    """Whether the policy took the same actions on both: it did not react at all."""

    @property
    def reaction_gain(self) -> float:
        return self.val_acc - self.replay_val_acc


@dataclass
class ReactionReport:
    """The twin test over validation draws: what reacting to a hidden mid-run shift earned."""

    draws: list[TwinResult] = field(default_factory=list)

    def _gains(self, hotter: bool | None = None) -> list[float]:
        return [d.reaction_gain for d in self.draws if hotter is None or (d.shift[1] > 1) == hotter]

    @property
    def mean_gain(self) -> float:
        """Mean over draws of closed-loop minus the twin's replayed actions, on the shifted draw."""
        return statistics.fmean(self._gains())

    def summary(self) -> dict[str, Any]:
        gains = self._gains()
        stderr = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        out: dict[str, Any] = {
            "draws": len(self.draws),
            "mean_val_acc": round(statistics.fmean(d.val_acc for d in self.draws), 4),
            "mean_replay_val_acc": round(statistics.fmean(d.replay_val_acc for d in self.draws), 4),
            "reaction_gain": round(statistics.fmean(gains), 4),
            "stderr": round(stderr, 4),
            "won": sum(g > 0 for g in gains),
            "lost": sum(g < 0 for g in gains),
            "same_actions": sum(d.same_actions for d in self.draws),
        }
        for name, hotter in (("hotter", True), ("colder", False)):
            part = self._gains(hotter)
            out[f"{name}_draws"] = len(part)
            out[f"{name}_gain"] = round(statistics.fmean(part), 4) if part else None
        return out

    def save(self, path: str | Path) -> None:
        """Write the draws as a JSON list (one object of :class:`TwinResult` fields per draw)."""
        Path(path).write_text(json.dumps([asdict(d) for d in self.draws], indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ReactionReport:
        """Read a report written by :meth:`save`."""
        rows = json.loads(Path(path).read_text())
        return cls([TwinResult(**{**r, "shift": tuple(r["shift"])}) for r in rows])


def without_shift(spec: EnvSpec) -> EnvSpec:
    """The spec whose draws are the twins of ``spec``'s: the same draws with no mid-run shift."""
    sampler = spec.workloads.sampler
    if sampler is None or sampler.lr_shift_range == (1.0, 1.0):
        shown = None if sampler is None else list(sampler.lr_shift_range)
        raise SpecError(
            "workloads.train.lr_shift_range", shown, "a range other than [1, 1] (the twin test needs a shift)"
        )
    return replace(spec, workloads=replace(spec.workloads, train=replace(sampler, lr_shift_range=(1.0, 1.0))))


def _run(
    env: HyperTuneEnv, seed: int, act: Callable[[np.ndarray], np.ndarray], start: dict[str, Any]
) -> tuple[float, list[np.ndarray], dict[str, Any]]:
    obs, _ = env.reset(seed=seed, options=start)
    actions: list[np.ndarray] = []
    done, info = False, {}
    while not done:
        action = np.asarray(act(obs))
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return float(info["val_acc"]), actions, info


def _twin_draw(policy_dir: str, spec: EnvSpec, seed: int, start: dict[str, Any]) -> TwinResult:
    torch.set_num_threads(1)
    policy = load_policy(policy_dir)
    spec = replace(spec, episode=policy_episode(policy, spec.episode))
    shifted, twin = HyperTuneEnv(spec), HyperTuneEnv(without_shift(spec))
    # A fresh actor per run: a frame-stacking or recurrent one carries state through a run.
    val_acc, acted, _ = _run(shifted, seed, policy.actor(deterministic=True), start)
    twin_acc, twin_acted, _ = _run(twin, seed, policy.actor(deterministic=True), start)
    workload = cast(WorkloadSpec, shifted.workload)
    queue = iter(twin_acted)
    # The twin's run may outlast a shifted run that diverged; a shifted run that outlasts a
    # diverged twin holds its last action (there is none to replay).
    replay_acc, _, _ = _run(shifted, seed, lambda _obs: next(queue, twin_acted[-1]), start)
    same = len(acted) == len(twin_acted) and all(np.array_equal(a, b) for a, b in zip(acted, twin_acted))
    shift = cast(tuple[int, float], workload.lr_shift)
    return TwinResult(seed, workload.name, shift, val_acc, replay_acc, twin_acc, same)


def reaction_test(
    policy: str | Path,
    spec: EnvSpec | str | Path = "default-shift-final",
    *,
    n_draws: int = 24,
    first_draw: int = 0,
    n_workers: int = 1,
    start: Mapping[str, Any] | None = None,
) -> ReactionReport:
    """Run the twin test (module docstring) on ``n_draws`` validation draws of ``spec``.

    Args:
        policy: Saved policy directory.
        spec: A spec whose procedural sampler has a mid-run shift (``lr_shift_range``).
        n_draws: Number of draws (episode seeds from :func:`rlagent.policy.validate.validation_seeds`).
        first_draw: Index of the first of them in the validation stream.
        n_workers: Processes running draws side by side, one torch thread each.
        start: Reset options of every run (``lr``, ``batch_size``, ``start_check``), as in
            :func:`rlagent.policy.validate.validate_policy`; default: each draw's own start.

    Raises:
        SpecError: Naming ``workloads.train.lr_shift_range`` if the spec has no shift, or
            ``start`` if it holds other keys.
    """
    spec = spec if isinstance(spec, EnvSpec) else load_spec(spec)
    without_shift(spec)  # refuse a spec with no shift before any draw runs
    start = check_start(start)
    seeds = validation_seeds(spec, n_draws, first_draw)
    draws = map_draws(_twin_draw, [(str(policy), spec, s, start) for s in seeds], n_workers)
    for d in draws:
        logger.info(
            "draw %d %s shift x%g after epoch %d: policy %.3f, twin's actions %.3f",
            d.seed, d.workload, d.shift[1], d.shift[0], d.val_acc, d.replay_val_acc,
        )  # fmt: skip
    return ReactionReport(draws)
