"""Teach a ``discrete`` policy to roll back: the policy plus a rollback detector fitted to a rule.

PPO alone does not learn when the ``discrete-rollback`` choice pays. A collapse is about 1% of a
training distribution's epochs, and a widened head (:func:`rlagent.policy.checkpoints.widen_action_head`)
tries the new choice at random, mostly where it pays nothing: after 8,192 fine-tuning steps its
most likely action rolled back 211 times in 120 validation runs, at the wrong times (session 41,
``policies/hot-final/README.md``).

So the teacher here is the saved policy itself, which on epochs where the run's validation
accuracy is more than ``margin`` below its best so far also rolls back (:class:`RollbackRule`):
to the best epoch's weights and LR, which the policy's own LR factor then moves
(:mod:`rlagent.rollback`). Its runs on draws of the training distribution, from a seed stream of
their own (apart from PPO's and validation's), give states and rollback labels.

The student is the saved policy with ``SIDE_UNITS`` units added to each hidden layer of its actor.
The added units read the observation (and the layer before), and feed only the added rollback
logits; the saved units never read them, and the saved LR and batch-size logits are kept (up to
float rounding: a wider matrix product may sum in another order, about 1e-8 on some CPUs). So
the student's LR and batch-size choices are the saved policy's on every input
(session 41's student, fitted as a whole, changed 2% of them and lost a run by it), and only the
added weights are fitted, by cross-entropy, to the teacher's rollbacks. Its value network is left
as it was. ``spread`` adds copies of the teacher's states with the rule's two inputs redrawn across
their range (:func:`spread_states`), for a detector that follows the rule beyond the falls the
teacher's runs happened to have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from rlagent.config import EnvSpec, load_spec
from rlagent.env import ROLLBACK, HyperTuneEnv, action_space
from rlagent.errors import RLAgentError, SpecError, is_int, is_number
from rlagent.features import FEATURE_NAMES
from rlagent.policy._checks import build_policy
from rlagent.policy.checkpoints import widen_action_head
from rlagent.policy.controller import action_kind, policy_episode
from rlagent.policy.file import SavedPolicy, load_policy
from rlagent.policy.validate import map_draws, seed_stream

logger = logging.getLogger(__name__)

_DISTILL_STREAM = 0xD157
"""Mixed into the spec's seed to give the teacher's draws a seed stream of their own."""
QUIET = 0.02
"""The rollback probability the student is fitted to where the rule is silent (1 - QUIET where it
fires): not 0, so that PPO still tries the choice."""
SIDE_UNITS = 16
"""Units the student adds to each hidden layer of the saved actor, for the rollback choice alone."""


@dataclass(frozen=True)
class RollbackRule:
    """Roll back when the run's validation accuracy has fallen more than ``margin`` below its best."""

    margin: float = 0.1
    """Fires when the last validation accuracy is more than this below the best so far."""

    def __post_init__(self) -> None:
        if not (is_number(self.margin) and 0.0 < self.margin < 1.0):
            raise SpecError("margin", self.margin, "a number in (0, 1)")


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
    kept: bool
    """Whether the student's LR and batch-size choices are the saved policy's on every state, with
    their logits equal up to float rounding (:func:`same_head`)."""
    spread: int = 0
    """Copies of the teacher's states with the rule's inputs redrawn (:func:`spread_states`)."""
    agreement_spread: float = float("nan")
    """Share of those copies where the student's rollback choice is the rule's (nan without them)."""


def distill_seeds(spec: EnvSpec, n: int) -> list[int]:
    """Episode seeds of the teacher's ``n`` draws: fixed for a spec, apart from PPO's and validation's."""
    return seed_stream(spec, _DISTILL_STREAM, n)


def _teach_draw(policy_dir: str, spec: EnvSpec, seed: int, rule: RollbackRule) -> tuple[np.ndarray, np.ndarray, int]:
    """One draw run by the teacher: its raw observations, its actions (rollback choice last) and
    the draw's number of classes."""
    torch.set_num_threads(1)
    actor = load_policy(policy_dir).actor(deterministic=True)
    env = HyperTuneEnv(replace(spec, episode=replace(spec.episode, action=ROLLBACK)))
    obs, info = env.reset(seed=seed)
    last, states, actions, done = info["val_acc"], [], [], False
    while not done:
        own = np.asarray(actor(obs)).reshape(-1)
        fires = env.tracker.best_val_acc - last > rule.margin
        action = np.array([own[0], own[1], int(fires)])
        states.append(obs)
        actions.append(action)
        obs, _, done, _, info = env.step(action)
        last = info["val_acc"]
    return np.asarray(states, dtype=np.float32), np.asarray(actions, dtype=np.int64), env.tracker.num_classes


def spread_states(
    states: np.ndarray, classes: np.ndarray, rule: RollbackRule, copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` copies of the teacher's raw observations with the rule's two inputs, the last and
    the best validation accuracy, redrawn across their range (best uniform from chance to 1, last
    uniform from chance to best), and the rule's rollback label for each.

    The teacher's own rollbacks are nearly all falls from a high accuracy, so a detector fitted to
    them alone need not fire on a fall from near chance that the rule would catch; these copies
    teach it the rule on the whole range of its inputs. The other features are left as they were.
    """
    if copies == 0:
        return np.zeros((0, states.shape[1]), dtype=np.float32), np.zeros(0, dtype=bool)
    val, best_i = FEATURE_NAMES.index("val_acc"), FEATURE_NAMES.index("best_val_acc")
    chance = 1.0 / classes.astype(np.float64)
    out, labels = [], []
    for _ in range(copies):
        best = rng.uniform(chance, 1.0)
        last = rng.uniform(chance, best)
        x = states.copy()
        x[:, val] = (last - chance) / (1.0 - chance)
        x[:, best_i] = (best - chance) / (1.0 - chance)
        out.append(x)
        labels.append(best - last > rule.margin)
    return np.concatenate(out).astype(np.float32), np.concatenate(labels)


def distill_rollback(
    policy: str | Path,
    spec: EnvSpec | str | Path,
    *,
    rule: RollbackRule = RollbackRule(),
    n_draws: int = 96,
    n_workers: int = 1,
    spread: int = 0,
    steps: int = 1000,
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
    spec = replace(spec, episode=policy_episode(saved, spec.episode))  # its LR envelope, if it has one
    if not (is_int(spread) and spread >= 0):
        raise SpecError("spread", spread, "an integer >= 0")
    draws = map_draws(_teach_draw, [(str(policy), spec, s, rule) for s in distill_seeds(spec, n_draws)], n_workers)
    obs = np.concatenate([d[0] for d in draws])
    actions = torch.as_tensor(np.concatenate([d[1] for d in draws]))
    x = torch.as_tensor(saved.normalize(obs))
    fired = actions[:, 2] == 1
    classes = np.concatenate([np.full(len(d[0]), d[2]) for d in draws])
    extra, extra_fired = spread_states(obs, classes, rule, spread, np.random.default_rng(0))
    x_fit = torch.cat([x, torch.as_tensor(saved.normalize(extra))])
    fired_fit = torch.cat([fired, torch.as_tensor(extra_fired)])

    new_space = action_space(ROLLBACK)
    student, masks = side_widened(saved, new_space, SIDE_UNITS)
    n_old = sum(int(n) for n in saved.action_space.nvec)
    params = [p for p in student.parameters() if masks.get(p) is not None]
    optimizer = torch.optim.Adam(params, lr=lr)
    target = fired_fit.float() * (1 - 2 * QUIET) + QUIET
    # fired and silent states weigh half the loss each: the rule fires on about 1% of the teacher's
    weight = torch.where(fired_fit, 0.5 / max(1, int(fired_fit.sum())), 0.5 / max(1, int((~fired_fit).sum())))
    for _ in range(steps):
        log_p = torch.log_softmax(_logits(student, x_fit)[:, n_old:], dim=1)
        loss = -(weight * (target * log_p[:, 1] + (1 - target) * log_p[:, 0])).sum()
        optimizer.zero_grad()
        loss.backward()
        for p in params:
            p.grad.mul_(masks[p])  # the saved policy's weights stay as they were
        optimizer.step()
    student.eval()
    with torch.no_grad():
        new_logits = _logits(student, x_fit)
        kept = same_head(_logits(saved.policy, x), _logits(student, x)[:, :n_old], saved.action_space.nvec)
        rolls = new_logits[:, n_old:].argmax(1) == 1
    agree, on_spread = rolls[: len(x)] == fired, rolls[len(x) :] == fired_fit[len(x) :]
    result = SavedPolicy(
        metadata={
            **saved.metadata, "architecture": _widened(saved.metadata["architecture"], SIDE_UNITS),
            "action_space": {"type": "MultiDiscrete", "nvec": [int(n) for n in new_space.nvec]},
        },
        feature_names=saved.feature_names, observation_space=saved.observation_space, action_space=new_space,
        policy=student, normalizer=saved.normalizer,
    )  # fmt: skip
    logger.info("distilled %d states (%d rolled back): agreement %.3f", len(x), int(fired.sum()), agree.float().mean())
    return Distilled(
        result, len(x), int(fired.sum()), float(agree.float().mean()),
        float(agree[fired].float().mean()) if fired.any() else float("nan"), kept, spread,
        float(on_spread.float().mean()) if spread else float("nan"),
    )  # fmt: skip


LOGIT_ATOL = 1e-5
"""Largest difference :func:`same_head` allows between two logits: float rounding, not a change."""


def same_head(old: torch.Tensor, new: torch.Tensor, nvec: Sequence[int]) -> bool:
    """Whether two MultiDiscrete heads' logits (rows: states; columns: the dimensions' logits side by
    side, sizes ``nvec``) make the same choice in every dimension on every state and differ by at
    most ``LOGIT_ATOL``. The student's saved logits are computed by wider matrix products than the
    saved policy's, which some CPUs' kernels sum in another order (differences of about 1e-8), so
    bitwise equality would depend on the host."""
    if old.shape != new.shape or not torch.allclose(old, new, rtol=0.0, atol=LOGIT_ATOL):
        return False
    sizes = [int(n) for n in nvec]
    return all(torch.equal(a.argmax(1), b.argmax(1)) for a, b in zip(old.split(sizes, 1), new.split(sizes, 1)))


def _logits(policy: ActorCriticPolicy, x: torch.Tensor) -> torch.Tensor:
    """The action logits of a feed-forward policy on normalised observations."""
    return policy.action_net(policy.mlp_extractor.forward_actor(x))


def _widened(arch: dict[str, Any], units: int) -> dict[str, Any]:
    """An architecture record with ``units`` more units in each hidden layer of the actor."""
    return {**arch, "net_arch": {**arch["net_arch"], "pi": [n + units for n in arch["net_arch"]["pi"]]}}


def side_widened(
    saved: SavedPolicy, space: spaces.MultiDiscrete, units: int
) -> tuple[ActorCriticPolicy, dict[torch.nn.Parameter, torch.Tensor]]:
    """``saved``'s policy acting in ``space`` (its own MultiDiscrete space with dimensions added
    after it), with ``units`` more units in each hidden layer of the actor that feed only the
    added logits; see the module docstring.

    Returns:
        The student, and for each of its parameters that may be fitted a 0/1 mask of the entries
        that may change (the added ones).
    """
    state = saved.policy.state_dict()
    widen_action_head(state, saved.action_space, space)
    pi = list(saved.metadata["architecture"]["net_arch"]["pi"])
    student = build_policy(saved.observation_space, space, _widened(saved.metadata["architecture"], units))
    n_old = sum(int(n) for n in saved.action_space.nvec)
    generator = torch.Generator().manual_seed(0)
    names = [f"mlp_extractor.policy_net.{2 * i}" for i in range(len(pi))] + ["action_net"]
    new_state, masks = dict(state), {}
    params = dict(student.named_parameters())
    for name in names:
        old_w, old_b = state[f"{name}.weight"], state[f"{name}.bias"]
        rows, cols = params[f"{name}.weight"].shape
        keep_rows = old_w.shape[0] if name != "action_net" else n_old  # the saved outputs
        w = torch.randn(rows, cols, generator=generator) * (0.5 / math.sqrt(cols))
        w[: old_w.shape[0], : old_w.shape[1]] = old_w
        w[:keep_rows, old_w.shape[1] :] = 0.0  # saved outputs never read the added inputs
        b = torch.zeros(rows)
        b[: old_b.shape[0]] = old_b
        if name == "action_net":  # the added logits start as the widened head's: zero weights
            w[keep_rows:] = 0.0
        mask_w = torch.zeros(rows, cols)
        mask_w[keep_rows:] = 1.0
        mask_b = torch.zeros(rows)
        mask_b[keep_rows:] = 1.0
        new_state[f"{name}.weight"], new_state[f"{name}.bias"] = w, b
        masks[params[f"{name}.weight"]], masks[params[f"{name}.bias"]] = mask_w, mask_b
    student.load_state_dict(new_state)
    return student, masks


def distilled_record(
    saved: SavedPolicy, spec: EnvSpec, policy: str | Path, rule: RollbackRule, fit: Distilled
) -> dict[str, Any]:
    """The ``training`` record of a distilled policy: the saved one's, with the rollback spec and the fit."""
    training = dict(saved.metadata.get("training", {}))
    spec_record = replace(spec, episode=policy_episode(saved, spec.episode)).to_dict()
    spec_record["episode"] = {**spec_record.get("episode", {}), "action": ROLLBACK}
    training.update(
        spec=spec_record, spec_name=spec.name,
        distilled_from={
            "policy": str(policy), "sha256": saved.metadata.get("sha256"), "margin": rule.margin,
            "side_units": SIDE_UNITS, "lr_batch_size_kept": fit.kept, "spread": fit.spread,
            "agreement_spread": None if math.isnan(fit.agreement_spread) else round(fit.agreement_spread, 4),
            "states": fit.states, "fired": fit.fired, "agreement": round(fit.agreement, 4),
            "agreement_fired": None if math.isnan(fit.agreement_fired) else round(fit.agreement_fired, 4),
        },
    )  # fmt: skip
    return training


__all__ = [
    "QUIET",
    "SIDE_UNITS",
    "Distilled",
    "RollbackRule",
    "distill_rollback",
    "distill_seeds",
    "distilled_record",
    "side_widened",
    "spread_states",
]
