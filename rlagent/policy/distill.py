"""Teach a ``discrete`` policy to roll back: imitate it plus a rollback rule, before PPO refines it.

PPO alone does not learn when the ``discrete-rollback`` choice pays. A collapse is about 1% of a
training distribution's epochs, and a widened head (:func:`rlagent.policy.checkpoints.widen_action_head`)
tries the new choice at random, mostly where it pays nothing: after 8,192 fine-tuning steps its
most likely action rolled back 26–57 times per 24 validation runs, at the wrong times (session 41,
``policies/default/README.md``). And a rollback alone is not enough: rolled back to its best
weights at the LR that collapsed it, a run collapses again.

So the teacher here is the saved policy itself, except on epochs where the run's validation
accuracy is more than ``margin`` below its best so far: there it rolls back to the best epoch and
cuts the LR by ``cut`` (:class:`RollbackRule`). Its runs on draws of the training distribution,
from a seed stream of their own (apart from PPO's and validation's), give states and actions. The
student is the saved policy with its head widened; its actor is fitted to the teacher by
cross-entropy: where the rule is silent, to the saved policy's own probabilities (so it acts as
before there) and to rarely rolling back; where the rule fires, to the rollback and the cut. Its
value network is left as it was, for PPO to go on from (``--init-from``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlagent.config import EnvSpec, load_spec
from rlagent.env import LR_FACTORS, ROLLBACK, HyperTuneEnv, action_space
from rlagent.errors import RLAgentError, SpecError, is_number
from rlagent.policy._checks import build_policy
from rlagent.policy.checkpoints import widen_action_head
from rlagent.policy.controller import action_kind
from rlagent.policy.file import SavedPolicy, load_policy
from rlagent.policy.validate import map_draws, seed_stream

logger = logging.getLogger(__name__)

_DISTILL_STREAM = 0xD157
"""Mixed into the spec's seed to give the teacher's draws a seed stream of their own."""
QUIET = 0.02
"""The rollback probability the student is fitted to where the rule is silent (1 - QUIET where it
fires): not 0, so that PPO still tries the choice."""


@dataclass(frozen=True)
class RollbackRule:
    """Roll back and cut the LR when the run's validation accuracy has fallen below its best."""

    margin: float = 0.1
    """Fires when the last validation accuracy is more than this below the best so far."""
    cut: float = 0.25
    """The LR factor taken when it fires (one of :data:`rlagent.env.LR_FACTORS`)."""

    def __post_init__(self) -> None:
        if not (is_number(self.margin) and 0.0 < self.margin < 1.0):
            raise SpecError("margin", self.margin, "a number in (0, 1)")
        if self.cut not in LR_FACTORS:
            raise SpecError("cut", self.cut, f"one of {list(LR_FACTORS)}")


@dataclass
class Distilled:
    """The student and what it was fitted on."""

    policy: SavedPolicy
    states: int
    """Epochs the teacher acted on."""
    fired: int
    """Of those, the ones where the rule rolled back."""
    agreement: float
    """Share of the states where the student's most likely action is the teacher's."""
    agreement_fired: float
    """The same over the states where the rule fired (nan if none)."""


def distill_seeds(spec: EnvSpec, n: int) -> list[int]:
    """Episode seeds of the teacher's ``n`` draws: fixed for a spec, apart from PPO's and validation's."""
    return seed_stream(spec, _DISTILL_STREAM, n)


def _teach_draw(policy_dir: str, spec: EnvSpec, seed: int, rule: RollbackRule) -> tuple[np.ndarray, np.ndarray]:
    """One draw run by the teacher: its raw observations and its actions (rollback choice last)."""
    torch.set_num_threads(1)
    actor = load_policy(policy_dir).actor(deterministic=True)
    env = HyperTuneEnv(replace(spec, episode=replace(spec.episode, action=ROLLBACK)))
    obs, info = env.reset(seed=seed)
    last, states, actions, done = info["val_acc"], [], [], False
    while not done:
        own = np.asarray(actor(obs)).reshape(-1)
        fires = env.tracker.best_val_acc - last > rule.margin
        action = np.array([LR_FACTORS.index(rule.cut), own[1], 1] if fires else [own[0], own[1], 0])
        states.append(obs)
        actions.append(action)
        obs, _, done, _, info = env.step(action)
        last = info["val_acc"]
    return np.asarray(states, dtype=np.float32), np.asarray(actions, dtype=np.int64)


def distill_rollback(
    policy: str | Path,
    spec: EnvSpec | str | Path,
    *,
    rule: RollbackRule = RollbackRule(),
    n_draws: int = 96,
    n_workers: int = 1,
    steps: int = 400,
    lr: float = 3e-3,
) -> Distilled:
    """Fit ``policy`` (a ``discrete`` MLP policy directory) with a rollback choice to its runs on
    ``n_draws`` draws of ``spec``'s sampler under ``rule``; see the module docstring.

    Returns:
        The student (act, save or fine-tune it) and its fit.

    Raises:
        RLAgentError: If the policy is not a ``discrete`` feed-forward one, or the spec has no sampler.
    """
    spec = spec if isinstance(spec, EnvSpec) else load_spec(spec)
    if spec.workloads.sampler is None:
        raise SpecError("workloads.train", list(spec.workloads.train_names), "a procedural sampler to draw from")
    saved = load_policy(policy)
    if action_kind(saved) != "discrete" or saved.frame_stack != 1 or saved.recurrent:
        raise RLAgentError(f"distill: {policy} must be a discrete feed-forward policy without frame stacking")
    draws = map_draws(_teach_draw, [(str(policy), spec, s, rule) for s in distill_seeds(spec, n_draws)], n_workers)
    obs = np.concatenate([d[0] for d in draws])
    actions = torch.as_tensor(np.concatenate([d[1] for d in draws]))
    x = torch.as_tensor(saved.normalize(obs))
    fired = actions[:, 2] == 1

    new_space = action_space(ROLLBACK)
    state = saved.policy.state_dict()
    widen_action_head(state, saved.action_space, new_space)
    student = build_policy(saved.observation_space, new_space, saved.metadata["architecture"])
    student.load_state_dict(state)
    with torch.no_grad():  # where the rule is silent: the saved policy's own LR and batch-size choices
        own = [d.probs for d in saved.policy.get_distribution(x).distribution]
    lr_target = torch.where(fired[:, None], torch.nn.functional.one_hot(actions[:, 0], len(LR_FACTORS)).float(), own[0])
    roll = fired.float() * (1 - 2 * QUIET) + QUIET
    targets = [lr_target, own[1], torch.stack([1 - roll, roll], dim=1)]
    params = [*student.mlp_extractor.policy_net.parameters(), *student.action_net.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(len(x), (min(len(x), 512),), generator=generator)
        dists = student.get_distribution(x[batch]).distribution
        loss = sum(-(t[batch] * d.logits).sum(1).mean() for t, d in zip(targets, dists))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    with torch.no_grad():
        chosen = torch.stack([d.probs.argmax(1) for d in student.get_distribution(x).distribution], dim=1)
    teacher = torch.stack([lr_target.argmax(1), own[1].argmax(1), fired.long()], dim=1)
    agree = (chosen == teacher).all(1)
    result = SavedPolicy(
        metadata={**saved.metadata, "action_space": {"type": "MultiDiscrete", "nvec": [int(n) for n in new_space.nvec]}},
        feature_names=saved.feature_names, observation_space=saved.observation_space, action_space=new_space,
        policy=student, normalizer=saved.normalizer,
    )  # fmt: skip
    logger.info("distilled %d states (%d rolled back): agreement %.3f", len(x), int(fired.sum()), agree.float().mean())
    return Distilled(
        result, len(x), int(fired.sum()), float(agree.float().mean()),
        float(agree[fired].float().mean()) if fired.any() else float("nan"),
    )  # fmt: skip


def distilled_record(
    saved: SavedPolicy, spec: EnvSpec, policy: str | Path, rule: RollbackRule, fit: Distilled
) -> dict[str, Any]:
    """The ``training`` record of a distilled policy: the saved one's, with the rollback spec and the fit."""
    training = dict(saved.metadata.get("training", {}))
    spec_record = spec.to_dict()
    spec_record["episode"] = {**spec_record.get("episode", {}), "action": ROLLBACK}
    training.update(
        spec=spec_record, spec_name=spec.name,
        distilled_from={
            "policy": str(policy), "sha256": saved.metadata.get("sha256"), "margin": rule.margin, "cut": rule.cut,
            "states": fit.states, "fired": fit.fired, "agreement": round(fit.agreement, 4),
            "agreement_fired": None if math.isnan(fit.agreement_fired) else round(fit.agreement_fired, 4),
        },
    )  # fmt: skip
    return training


__all__ = ["QUIET", "Distilled", "RollbackRule", "distill_rollback", "distill_seeds", "distilled_record"]
