"""Average the weights of several checkpoints of one PPO run into one policy.

Checkpoints of one run a few thousand steps apart score several points apart on validation
draws (policies/auc/README.md): PPO's iterate wanders around a region of good policies. The
mean of the weights of the last few checkpoints (stochastic weight averaging, Izmailov et al.
2018; Polyak averaging) sits nearer that region's centre than any one iterate, and is one more
candidate for :func:`rlagent.policy.select.select_policy` to choose on validation draws, not a
policy that is better by construction.

Only policies of one run should be averaged: same features, action space and architecture
(checked), and nearby in training (not checked: averaging two unrelated networks gives noise).
Observation statistics are not averaged: the average is saved with the newest policy's
normaliser, which has seen the most data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from rlagent.errors import SpecError
from rlagent.policy.file import PolicyFileError, load_policy

logger = logging.getLogger(__name__)


def average_policies(policies: Sequence[str | Path], out: str | Path) -> Path:
    """Save the element-wise mean of the weights of ``policies`` as a policy directory ``out``.

    Args:
        policies: Policy directories (or checkpoints' ``policy`` folders) of one run, oldest
            first; the last one's observation normaliser goes with the average.
        out: The policy directory to write (replaced if it is one).

    Returns:
        ``out``.

    Raises:
        SpecError: If fewer than two policies are given.
        PolicyFileError: If a policy does not load, or they differ in features, action space,
            architecture or normalisation.
    """
    if len(policies) < 2:
        raise SpecError("policies", [str(p) for p in policies], "at least two policy directories of one run")
    loaded = [load_policy(p) for p in policies]
    last = loaded[-1]
    for path, saved in zip(policies, loaded, strict=True):
        differs = [
            what
            for what, mine, theirs in (
                ("features", saved.feature_names, last.feature_names),
                ("action space", saved.action_space, last.action_space),
                ("frame stack", saved.frame_stack, last.frame_stack),
                ("architecture", saved.metadata.get("architecture"), last.metadata.get("architecture")),
                ("normalisation", saved.normalizer is None, last.normalizer is None),
            )
            if mine != theirs
        ]
        if differs:
            raise PolicyFileError(f"{path}: its {', '.join(differs)} differ from {policies[-1]}'s; cannot average")
    states = [saved.policy.state_dict() for saved in loaded]
    mean = {
        key: torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype) for key, value in states[-1].items()
    }
    last.policy.load_state_dict(mean)
    last_training = dict(last.metadata.get("training", {}))
    # The training spec stays where reuse reads it (its ranges and start), not under "last".
    spec = {key: last_training.pop(key) for key in ("spec_name", "spec") if key in last_training}
    metadata = {**spec, "averaged_from": [str(p) for p in policies], "last": last_training}
    target = last.save(out, metadata=metadata)
    logger.info("averaged %d policies into %s", len(policies), target)
    return target
