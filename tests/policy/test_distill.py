"""Teaching a discrete policy to roll back by imitating it plus a rollback rule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from rlagent.config import load_spec
from rlagent.errors import RLAgentError, SpecError
from rlagent.policy.distill import RollbackRule, _teach_draw, distill_rollback, distill_seeds, distilled_record
from rlagent.policy.file import load_policy
from rlagent.policy.validate import validation_seeds


def _spec():
    spec = load_spec("tiny-procedural")  # 5 epochs, so that runs can fall below their best
    return dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=5, init_lr=0.3))


def test_the_teacher_is_the_policy_until_the_rule_fires_then_rolls_back_and_cuts(tiny_policy: Path) -> None:
    spec, rule = _spec(), RollbackRule(margin=0.01, cut=0.25)
    policy = load_policy(tiny_policy)
    fired = 0
    for seed in distill_seeds(spec, 4):
        states, actions = _teach_draw(str(tiny_policy), spec, seed, rule)
        assert len(states) == len(actions) == 5
        for obs, action in zip(states, actions):
            own = policy.predict(obs)
            if action[2]:
                fired += 1
                assert action[0] == 0 and action[1] == own[1]  # x1/4, the policy's batch-size choice
            else:
                assert action[:2].tolist() == own.tolist()
    assert fired > 0


def test_distilled_student_acts_as_the_teacher_and_records_its_fit(tiny_policy: Path, tmp_path: Path) -> None:
    spec, rule = _spec(), RollbackRule(margin=0.01)
    fit = distill_rollback(tiny_policy, spec, rule=rule, n_draws=6)
    assert fit.policy.action_space == spaces.MultiDiscrete([5, 3, 2])
    assert fit.states == 30 and 0 < fit.fired < 30
    # where the rule fires the student rolls back and cuts as taught; elsewhere this 64-step tiny
    # policy is near uniform, so its own choices are near ties and agree less often
    assert fit.agreement_fired >= 0.8 and fit.agreement >= 0.6
    record = distilled_record(load_policy(tiny_policy), spec, tiny_policy, rule, fit)
    fit.policy.save(tmp_path / "student", metadata=record)
    back = load_policy(tmp_path / "student")
    assert back.metadata["training"]["spec"]["episode"]["action"] == "discrete-rollback"
    assert back.metadata["training"]["distilled_from"]["fired"] == fit.fired
    json.dumps(back.metadata)
    # the teacher's draws are not validation draws
    assert not set(distill_seeds(spec, 6)) & set(validation_seeds(spec, 48))
    obs = np.zeros(len(back.feature_names), dtype=np.float32)
    assert back.predict(obs).shape == (3,)


def test_bad_rules_and_policies_are_refused(tiny_policy: Path, tiny_rollback_policy: Path) -> None:
    with pytest.raises(SpecError, match=r"margin: got 1.5; expected a number in \(0, 1\)"):
        RollbackRule(margin=1.5)
    with pytest.raises(SpecError, match=r"cut: got 0.3; expected one of \[0.25, 0.5, 1.0, 2.0, 4.0\]"):
        RollbackRule(cut=0.3)
    with pytest.raises(RLAgentError, match="must be a discrete feed-forward policy"):
        distill_rollback(tiny_rollback_policy, _spec(), n_draws=1)
    with pytest.raises(SpecError, match="workloads.train"):
        distill_rollback(tiny_policy, "tiny", n_draws=1)


def test_a_rule_that_never_fired_records_no_agreement_on_its_rollbacks(tiny_policy: Path) -> None:
    from rlagent.policy.distill import Distilled

    saved = load_policy(tiny_policy)
    fit = Distilled(saved, states=10, fired=0, agreement=1.0, agreement_fired=float("nan"))
    record = distilled_record(saved, _spec(), tiny_policy, RollbackRule(), fit)
    json.dumps(record, allow_nan=False)  # strict JSON, as policy.json is written
    assert record["distilled_from"]["agreement_fired"] is None and record["distilled_from"]["fired"] == 0
