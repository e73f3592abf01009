"""Tests for rlagent.policy.reaction: the twin test of whether a policy reacts to the run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlagent.config import EnvSpec, load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import SpecError
from rlagent.policy.file import load_policy
from rlagent.policy.reaction import ReactionReport, TwinResult, reaction_test, without_shift
from rlagent.policy.validate import validation_seeds

SHIFT_TOML = """extends = "tiny-procedural"
name = "tiny-shift"
[episode]
epochs = 3
[workloads.train]
lr_shift_range = [0.25, 4.0]
"""


@pytest.fixture(scope="module")
def shift_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny-shift.toml"
    path.write_text(SHIFT_TOML)
    return path


def _closed_loop(env: HyperTuneEnv, seed: int, act) -> tuple[float, list[np.ndarray]]:  # noqa: ANN001
    obs, _ = env.reset(seed=seed)
    actions, done, info = [], False, {}
    while not done:
        actions.append(act(obs))
        obs, _, done, _, info = env.step(actions[-1])
    return info["val_acc"], actions


def test_the_twin_is_the_same_draw_without_its_shift(shift_spec: Path) -> None:
    spec = load_spec(shift_spec)
    twin = without_shift(spec)
    assert twin.workloads.sampler.lr_shift_range == (1.0, 1.0)
    for seed in validation_seeds(spec, 4):
        shifted, plain = spec.draw(seed), twin.draw(seed)
        assert shifted.workload.lr_shift is not None and 1 <= shifted.workload.lr_shift[0] <= 2
        assert dataclasses.replace(shifted.workload, lr_shift=None, description=plain.workload.description) == (
            plain.workload
        )
    for name in ("tiny-procedural", "tiny"):  # no shift, no sampler
        with pytest.raises(SpecError, match=r"workloads\.train\.lr_shift_range.*needs a shift"):
            reaction_test("policies/default", name, n_draws=1)


def test_reaction_test_replays_the_twins_actions_on_the_shifted_draw(tiny_policy: Path, shift_spec: Path) -> None:
    spec: EnvSpec = load_spec(shift_spec)
    report = reaction_test(tiny_policy, spec, n_draws=3)
    policy = load_policy(tiny_policy)
    seeds = validation_seeds(spec, 3)
    assert [d.seed for d in report.draws] == seeds
    for draw in report.draws:
        shifted_env, twin_env = HyperTuneEnv(spec), HyperTuneEnv(without_shift(spec))
        val_acc, acted = _closed_loop(shifted_env, draw.seed, policy.actor(deterministic=True))
        twin_acc, twin_acted = _closed_loop(twin_env, draw.seed, policy.actor(deterministic=True))
        queue = iter(twin_acted)
        replay_acc, _ = _closed_loop(shifted_env, draw.seed, lambda _o, q=queue: next(q))
        assert (draw.val_acc, draw.twin_val_acc, draw.replay_val_acc) == (val_acc, twin_acc, replay_acc)
        assert draw.shift == shifted_env.workload.lr_shift and draw.workload == shifted_env.workload.name
        assert draw.same_actions == all(np.array_equal(a, b) for a, b in zip(acted, twin_acted))
        assert np.array_equal(acted[0], twin_acted[0])  # equal until the shift, after epoch 1 or 2
        if draw.same_actions:  # no reaction: the replay is the closed-loop run itself
            assert draw.reaction_gain == 0.0
    assert any(d.val_acc != d.twin_val_acc for d in report.draws)  # the shift changed runs
    summary = report.summary()
    assert summary["draws"] == 3 and summary["hotter_draws"] + summary["colder_draws"] == 3
    assert summary["reaction_gain"] == pytest.approx(np.mean([d.reaction_gain for d in report.draws]), abs=1e-4)
    assert summary["won"] + summary["lost"] <= 3
    parallel = reaction_test(tiny_policy, spec, n_draws=2, first_draw=1, n_workers=2)
    assert parallel.draws == report.draws[1:]


def test_report_summary_splits_hotter_and_colder_draws_and_round_trips(tmp_path: Path) -> None:
    report = ReactionReport(
        [
            TwinResult(1, "a", (3, 2.0), 0.8, 0.7, 0.9, False),
            TwinResult(2, "b", (4, 0.5), 0.6, 0.6, 0.6, True),
            TwinResult(3, "c", (5, 4.0), 0.5, 0.6, 0.7, False),
        ]
    )
    s = report.summary()
    assert (s["won"], s["lost"], s["same_actions"]) == (1, 1, 1)
    assert (s["hotter_draws"], s["hotter_gain"]) == (2, pytest.approx(0.0))
    assert (s["colder_draws"], s["colder_gain"]) == (1, 0.0)
    assert s["reaction_gain"] == pytest.approx(0.0) and s["stderr"] == pytest.approx(0.1 / np.sqrt(3), abs=1e-4)
    assert report.mean_gain == pytest.approx(0.0) and report.draws[0].reaction_gain == pytest.approx(0.1)
    report.save(tmp_path / "r.json")
    assert ReactionReport.load(tmp_path / "r.json").draws == report.draws


def test_reaction_test_refuses_an_unknown_start_key(tiny_policy: Path, shift_spec: Path) -> None:
    with pytest.raises(SpecError, match=r"start.*'speed'"):
        reaction_test(tiny_policy, shift_spec, n_draws=1, start={"speed": 1})


def test_reaction_script_prints_a_summary_and_refuses_a_spec_without_a_shift(
    tiny_policy: Path, shift_spec: Path, tmp_path: Path
) -> None:
    script = Path(__file__).parents[2] / "scripts" / "reaction_test.py"
    base = [sys.executable, str(script), f"tiny={tiny_policy}", "--draws", "1", "--n-workers", "1"]
    run = subprocess.run([*base, "--spec", str(shift_spec), "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert '"policy": "tiny"' in run.stdout and '"reaction_gain"' in run.stdout
    assert len(ReactionReport.load(tmp_path / "tiny.json").draws) == 1
    bad = subprocess.run([*base, "--spec", "tiny-procedural"], capture_output=True, text=True)
    assert bad.returncode == 1 and "lr_shift_range" in bad.stderr and "Traceback" not in bad.stderr
