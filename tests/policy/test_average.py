"""Tests for rlagent.policy.average: the weight average of checkpoints of one run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlagent.errors import SpecError
from rlagent.policy.average import average_policies
from rlagent.policy.file import PolicyFileError, load_policy


def _shifted(source: Path, out: Path, shift: float, *, mean_factor: float = 1.0, normalizer: bool = True) -> Path:
    """``source`` with every weight moved by ``shift`` and its observation mean scaled by ``mean_factor``."""
    saved = load_policy(source)
    with torch.no_grad():
        for tensor in saved.policy.state_dict().values():
            tensor += shift
    if normalizer:
        saved.normalizer = {**saved.normalizer, "mean": list(np.asarray(saved.normalizer["mean"]) * mean_factor)}
    else:
        saved.normalizer = None
    return saved.save(out, metadata={"checkpoint": True})


def saved_with(source: Path, training: dict, out: Path) -> Path:
    """``source`` re-saved with ``training`` as its training record."""
    return load_policy(source).save(out, metadata=training)


def test_the_average_holds_the_mean_weights_and_the_newest_normaliser(tiny_policy: Path, tmp_path: Path) -> None:
    a = _shifted(tiny_policy, tmp_path / "a", 0.0)
    b = _shifted(tiny_policy, tmp_path / "b", 0.3)
    c = _shifted(tiny_policy, tmp_path / "c", -0.6, mean_factor=0.5)
    out = average_policies([a, b, c], tmp_path / "avg")
    avg, ref = load_policy(out), load_policy(tiny_policy)
    for key, value in ref.policy.state_dict().items():
        torch.testing.assert_close(avg.policy.state_dict()[key], value - 0.1, rtol=0, atol=1e-6)
    assert avg.normalizer["mean"] == pytest.approx(list(np.asarray(ref.normalizer["mean"]) * 0.5))
    assert avg.feature_names == ref.feature_names
    training = json.loads((out / "policy.json").read_text())["training"]
    assert training["averaged_from"] == [str(a), str(b), str(c)] and training["last"] == {"checkpoint": True}
    # The last checkpoint's training spec stays where reuse reads the ranges and start from.
    spec = load_policy(tiny_policy).metadata["training"]["spec"]
    d = saved_with(c, {"checkpoint": True, "spec_name": "tiny", "spec": spec}, tmp_path / "c-spec")
    training = json.loads((average_policies([a, d], tmp_path / "avg2") / "policy.json").read_text())["training"]
    assert training["spec"] == spec and training["spec_name"] == "tiny" and training["last"] == {"checkpoint": True}
    obs = np.zeros(len(ref.feature_names), dtype=np.float32)
    assert avg.predict(obs).shape == ref.predict(obs).shape


def test_policies_that_cannot_be_averaged_are_refused(tiny_policy: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="policies"):
        average_policies([tiny_policy], tmp_path / "one")
    bare = _shifted(tiny_policy, tmp_path / "bare", 0.0, normalizer=False)
    with pytest.raises(PolicyFileError, match="normalisation") as info:
        average_policies([bare, tiny_policy], tmp_path / "mixed")
    assert str(bare) in str(info.value)
    assert not (tmp_path / "mixed").exists()
