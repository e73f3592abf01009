"""A policy saved with ``no_final_raise``: an LR raise it asks for before a run's last epoch is held.

The policy here is the tiny trained one with its action head set to ask for LR ×4 at batch ×1
every epoch, so the guard is the only thing that can stop a raise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlagent.env import LR_FACTORS, HyperTuneEnv
from rlagent.errors import PolicyFileError
from rlagent.policy.controller import Controller
from rlagent.policy.file import NO_FINAL_RAISE, load_policy

SCRIPT = Path(__file__).parents[2] / "scripts" / "hold_final_raise.py"


@pytest.fixture(scope="module")
def raiser(tiny_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy with a head that always asks for LR ×4 and batch ×1."""
    saved = load_policy(tiny_policy)
    net = saved.policy.action_net
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.bias[LR_FACTORS.index(4.0)] = 10.0
        net.bias[len(LR_FACTORS) + 1] = 10.0
    return saved.save(tmp_path_factory.mktemp("raiser") / "policy")


def _lrs(policy: Path) -> tuple[list[float], int]:
    """The LRs of a tiny-spec run (start, then each epoch's) acted by ``policy``; raises held."""
    env, actor = HyperTuneEnv("tiny"), load_policy(policy).actor()
    obs, info = env.reset(seed=0)
    lrs, done = [info["lr"]], False
    while not done:
        obs, _, done, _, info = env.step(actor(obs))
        lrs.append(info["lr"])
    return lrs, actor.held_raises


def test_the_last_epoch_keeps_the_lr_before_it(raiser: Path, tmp_path: Path) -> None:
    lrs, held = _lrs(raiser)
    assert lrs == pytest.approx([1e-3, 4e-3, 1.6e-2, 6.4e-2]) and held == 0  # without: x4 every epoch
    run = subprocess.run([sys.executable, str(SCRIPT), "--policy", str(raiser), "--out", str(tmp_path / "held")],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["on"] is True
    guarded = load_policy(tmp_path / "held")
    assert guarded.no_final_raise and guarded.metadata[NO_FINAL_RAISE] is True
    lrs, held = _lrs(tmp_path / "held")
    assert lrs == pytest.approx([1e-3, 4e-3, 1.6e-2, 1.6e-2]) and held == 1  # every raise but the last
    # the network and normaliser are the policy's: the same actions everywhere else
    obs = np.random.default_rng(0).uniform(-1, 1, size=(50, len(guarded.feature_names))).astype(np.float32)
    assert np.array_equal(guarded.predict(obs), load_policy(raiser).predict(obs))
    # a copy saved again keeps it; --off takes it away
    assert load_policy(guarded.save(tmp_path / "again")).no_final_raise
    off = subprocess.run([sys.executable, str(SCRIPT), "--policy", str(tmp_path / "held"), "--out",
                          str(tmp_path / "off"), "--off"], capture_output=True, text=True)  # fmt: skip
    assert off.returncode == 0 and _lrs(tmp_path / "off")[0][-1] == pytest.approx(6.4e-2)


def test_the_controller_holds_it_too(raiser: Path, tmp_path: Path) -> None:
    saved = load_policy(raiser)
    saved.no_final_raise = True
    ctl = Controller(saved.save(tmp_path / "held"), num_classes=3, epochs=3, lr=1e-3, batch_size=16)
    lrs = [ctl.start(val_loss=1.1, val_acc=0.33)[0]]
    for _ in range(2):
        lrs.append(ctl.observe(train_loss=1.0, train_acc=0.4, val_loss=1.0, val_acc=0.4)[0])
    assert lrs == pytest.approx([4e-3, 1.6e-2, 1.6e-2])


def test_a_policy_without_the_progress_feature_cannot_have_it(raiser: Path, tmp_path: Path) -> None:
    saved = load_policy(raiser)
    saved.no_final_raise = True
    saved.feature_names = ("epoch_share", *saved.feature_names[1:])
    with pytest.raises(PolicyFileError, match="progress"):
        saved.save(tmp_path / "blind")
    bad = subprocess.run([sys.executable, str(SCRIPT), "--policy", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("hold_final_raise: error:") and "Traceback" not in bad.stderr
