"""Teaching a discrete policy to roll back: itself plus a rollback detector fitted to a rule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlagent.config import load_spec
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import FEATURE_NAMES
from rlagent.policy.distill import (
    SIDE_UNITS,
    RollbackRule,
    _teach_draw,
    distill_rollback,
    distill_seeds,
    distilled_record,
    same_head,
    side_widened,
    spread_states,
)
from rlagent.policy.file import load_policy
from rlagent.policy.validate import validation_seeds


def _spec():
    spec = load_spec("tiny-procedural")  # 5 epochs, so that runs can fall below their best
    return dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=5, init_lr=0.3))


def test_the_teacher_is_the_policy_and_rolls_back_where_the_rule_fires(tiny_policy: Path) -> None:
    spec, rule = _spec(), RollbackRule(margin=0.01)
    policy = load_policy(tiny_policy)
    fired = 0
    for seed in distill_seeds(spec, 4):
        states, actions, _ = _teach_draw(str(tiny_policy), spec, seed, rule)
        assert len(states) == len(actions) == 5
        for obs, action in zip(states, actions):
            assert action[:2].tolist() == policy.predict(obs).tolist()  # the policy's own LR and batch-size choices
            fired += int(action[2])
    assert fired > 0


def test_the_student_keeps_the_policys_choices_and_learns_the_rollbacks(tiny_policy: Path, tmp_path: Path) -> None:
    spec, rule = _spec(), RollbackRule(margin=0.01)
    fit = distill_rollback(tiny_policy, spec, rule=rule, n_draws=6)
    assert fit.policy.action_space == spaces.MultiDiscrete([5, 3, 2])
    assert fit.states == 30 and 0 < fit.fired < 30
    assert fit.kept and fit.agreement_fired >= 0.8 and fit.agreement >= 0.8
    pi = load_policy(tiny_policy).metadata["architecture"]["net_arch"]["pi"]
    assert fit.policy.metadata["architecture"]["net_arch"]["pi"] == [n + SIDE_UNITS for n in pi]
    record = distilled_record(load_policy(tiny_policy), spec, tiny_policy, rule, fit)
    fit.policy.save(tmp_path / "student", metadata=record)
    back, saved = load_policy(tmp_path / "student"), load_policy(tiny_policy)
    assert back.metadata["training"]["spec"]["episode"]["action"] == "discrete-rollback"
    assert back.metadata["training"]["distilled_from"]["fired"] == fit.fired
    json.dumps(back.metadata)
    # on any observation, not only the teacher's, its LR and batch-size choices are the policy's
    rng = np.random.default_rng(0)
    for obs in rng.uniform(-3, 3, size=(200, len(back.feature_names))).astype(np.float32):
        assert back.predict(obs)[:2].tolist() == saved.predict(obs).tolist()
    # the teacher's draws are not validation draws
    assert not set(distill_seeds(spec, 6)) & set(validation_seeds(spec, 48))


def test_spread_copies_redraw_the_rules_inputs_and_carry_its_label(tiny_policy: Path) -> None:
    states, _, classes = _teach_draw(str(tiny_policy), _spec(), distill_seeds(_spec(), 1)[0], RollbackRule(0.2))
    rule, per_state = RollbackRule(margin=0.2), np.full(len(states), classes)
    x, fired = spread_states(states, per_state, rule, 50, np.random.default_rng(1))
    assert x.shape == (50 * len(states), states.shape[1]) and fired.shape == (len(x),)
    val, best = FEATURE_NAMES.index("val_acc"), FEATURE_NAMES.index("best_val_acc")
    chance = 1 / classes
    raw_val, raw_best = x[:, val] * (1 - chance) + chance, x[:, best] * (1 - chance) + chance
    assert np.all(raw_val <= raw_best + 1e-6) and np.all(raw_val >= chance - 1e-6)
    assert np.mean(fired == (raw_best - raw_val > 0.2)) > 0.999  # the rule's label (float32 rounding aside)
    assert 0.2 < fired.mean() < 0.8  # both labels, across the range
    others = [i for i in range(states.shape[1]) if i not in (val, best)]
    assert np.array_equal(x[: len(states)][:, others], states[:, others])  # the rest is the teacher's
    assert spread_states(states, per_state, rule, 0, np.random.default_rng(1))[0].shape == (0, states.shape[1])


def test_a_student_fitted_with_spread_copies_records_them(tiny_policy: Path) -> None:
    fit = distill_rollback(tiny_policy, _spec(), rule=RollbackRule(margin=0.05), n_draws=2, spread=4)
    assert fit.spread == 4 and fit.kept and fit.agreement_spread >= 0.8
    record = distilled_record(load_policy(tiny_policy), _spec(), tiny_policy, RollbackRule(margin=0.05), fit)
    assert record["distilled_from"]["spread"] == 4 and record["distilled_from"]["agreement_spread"] >= 0.8
    with pytest.raises(SpecError, match="spread: got -1"):
        distill_rollback(tiny_policy, _spec(), n_draws=1, spread=-1)


def test_only_the_added_units_are_fitted(tiny_policy: Path) -> None:
    saved = load_policy(tiny_policy)
    student, masks = side_widened(saved, spaces.MultiDiscrete([5, 3, 2]), 4)
    params = dict(student.named_parameters())
    old = saved.policy.state_dict()
    first, old_first = params["mlp_extractor.policy_net.0.weight"], old["mlp_extractor.policy_net.0.weight"]
    width = old_first.shape[0]
    assert first.shape == (width + 4, old_first.shape[1])
    assert torch.equal(first[:width], old_first) and masks[first][:width].sum() == 0 and masks[first][width:].all()
    head = params["action_net.weight"]
    assert head.shape == (10, width + 4)
    assert torch.all(head[:8, width:] == 0) and masks[head][:8].sum() == 0 and masks[head][8:].all()
    assert params["value_net.weight"] not in masks  # the critic is not fitted


def test_bad_rules_and_policies_are_refused(tiny_policy: Path, tiny_rollback_policy: Path) -> None:
    with pytest.raises(SpecError, match=r"margin: got 1.5; expected a number in \(0, 1\)"):
        RollbackRule(margin=1.5)
    with pytest.raises(RLAgentError, match="must be a discrete feed-forward policy"):
        distill_rollback(tiny_rollback_policy, _spec(), n_draws=1)
    with pytest.raises(SpecError, match="workloads.train"):
        distill_rollback(tiny_policy, "tiny", n_draws=1)


def test_a_rule_that_never_fired_records_no_agreement_on_its_rollbacks(tiny_policy: Path) -> None:
    from rlagent.policy.distill import Distilled

    saved = load_policy(tiny_policy)
    fit = Distilled(saved, states=10, fired=0, agreement=1.0, agreement_fired=float("nan"), kept=True)
    record = distilled_record(saved, _spec(), tiny_policy, RollbackRule(), fit)
    json.dumps(record, allow_nan=False)  # strict JSON, as policy.json is written
    assert record["distilled_from"]["agreement_fired"] is None and record["distilled_from"]["fired"] == 0


def test_a_head_is_the_same_up_to_rounding_but_not_with_another_choice_or_logit() -> None:
    old = torch.tensor([[0.1, 0.5, 0.2, 1.0, 0.9], [0.3, 0.2, 0.1, 0.0, 1e-6]])  # dims of 3 and 2 logits
    nvec = [3, 2]
    assert same_head(old, old + 1e-8, nvec)  # a wider matrix product's rounding
    assert not same_head(old, old + 1e-3, nvec)  # a changed logit, though every choice is the same
    flipped = old.clone()
    flipped[1, 4] = -1e-6  # within the tolerance, but the second state's second choice changes
    assert torch.allclose(old, flipped, rtol=0.0, atol=1e-5)
    assert not same_head(old, flipped, nvec)
    assert not same_head(old, old[:, :4], nvec)  # another head
