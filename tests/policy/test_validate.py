"""Tests for rlagent.policy.validate: scoring a policy on validation draws of its training distribution."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlagent.config import load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import SpecError
from rlagent.policy.file import load_policy
from rlagent.policy.validate import (
    ValidationReport,
    compare_training_seeds,
    hide_mask,
    lr_reversals,
    parse_start,
    policy_digest,
    start_suffix,
    validate_policy,
    validation_seeds,
)
from tests._processes import HAS_PROC, process_tree, sigterm_when, still_alive


def test_validation_seeds_are_fixed_per_spec_and_distinct() -> None:
    spec = load_spec("tiny-procedural")
    seeds = validation_seeds(spec, 16)
    assert seeds == validation_seeds(spec, 16) and len(set(seeds)) == 16
    assert validation_seeds(spec, 4) == seeds[:4]
    other = dataclasses.replace(spec, seed=1)
    assert validation_seeds(other, 4) != seeds[:4]
    with pytest.raises(SpecError, match="n_draws"):
        validation_seeds(spec, 0)


def test_hide_names_unknown_features() -> None:
    assert hide_mask(("progress",)).tolist() == [0]
    with pytest.raises(SpecError, match="hide") as info:
        hide_mask(("progress", "colour"))
    assert "colour" in str(info.value)


def test_a_spec_without_a_sampler_is_refused(tiny_policy: Path) -> None:
    with pytest.raises(SpecError, match="workloads.train"):
        validate_policy(tiny_policy, "tiny", n_draws=1)


def test_validation_replays_the_policy_and_the_constant_start(tiny_policy: Path) -> None:
    spec = load_spec("tiny-procedural")
    report = validate_policy(tiny_policy, spec, n_draws=3)
    assert [d.seed for d in report.draws] == validation_seeds(spec, 3)
    policy, env = load_policy(tiny_policy), HyperTuneEnv(spec)
    for draw in report.draws:
        for act, expected in (
            (lambda o: policy.predict(o), draw.val_acc),
            (lambda o: np.array([2, 1]), draw.constant_val_acc),
        ):
            obs, info = env.reset(seed=draw.seed)
            lrs, done = [info["lr"]], False
            while not done:
                obs, _, done, _, info = env.step(act(obs))
                lrs.append(info["lr"])
            assert info["val_acc"] == pytest.approx(expected) and info["workload"] == draw.workload
            if expected is draw.val_acc:  # the policy's LRs give the draw's moves and reversals
                assert (draw.lr_moves, draw.lr_reversals) == lr_reversals(lrs)
    # Each policy acts in its own action set, whatever the spec names: same draws, same results.
    continuous = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, action="continuous"))
    assert validate_policy(tiny_policy, continuous, n_draws=3).draws == report.draws
    summary = report.summary()
    assert summary["draws"] == 3
    moves = sum(d.lr_moves for d in report.draws)
    share = sum(d.lr_reversals for d in report.draws) / moves if moves else 0.0
    assert summary["lr_reversal_share"] == pytest.approx(share, abs=1e-3)
    assert summary["mean_gain_over_constant"] == pytest.approx(
        np.mean([d.val_acc - d.constant_val_acc for d in report.draws]), abs=1e-4
    )


def test_lr_reversals_count_moves_the_next_move_goes_back_on() -> None:
    assert lr_reversals([1e-3, 2e-3, 1e-3, 2e-3, 1e-3]) == (3, 3)  # x2, x1/2, x2, x1/2: dithering
    assert lr_reversals([1e-3, 4e-3, 4e-3, 1e-3]) == (1, 0)  # a hold between two moves breaks the pair
    assert lr_reversals([1e-3, 4e-3, 2e-3, 1e-3]) == (2, 1)  # x4 then x1/2: reversed; then x1/2 again: not
    assert lr_reversals([1e-3, 2e-3, 4e-3]) == (1, 0) and lr_reversals([1e-3]) == (0, 0)
    assert lr_reversals([0.3, 0.3 * (1 + 1e-12), 0.3]) == (0, 0)  # rounding is no move


def test_validation_from_a_fixed_start_starts_every_run_there(tiny_policy: Path) -> None:
    spec = load_spec("tiny-procedural")
    start = {"lr": 0.05, "batch_size": 16}
    report = validate_policy(tiny_policy, spec, n_draws=2, start=start)
    env = HyperTuneEnv(spec)
    for draw in report.draws:
        obs, info = env.reset(seed=draw.seed, options=start)
        assert (info["lr"], info["batch_size"]) == (0.05, 16)
        done = False
        while not done:
            obs, _, done, _, info = env.step(np.array([2, 1]))
        assert info["lr"] == 0.05 and info["batch_size"] == 16
        assert info["val_acc"] == pytest.approx(draw.constant_val_acc)
    plain = validate_policy(tiny_policy, spec, n_draws=2)
    assert [d.constant_val_acc for d in plain.draws] != [d.constant_val_acc for d in report.draws]
    with pytest.raises(SpecError, match="start") as info:
        validate_policy(tiny_policy, spec, n_draws=1, start={"momentum": 0.9})
    assert "momentum" in str(info.value)


def test_a_saved_report_is_read_back_only_while_it_stands_for_the_policy(tiny_policy: Path, tmp_path: Path) -> None:
    spec = load_spec("tiny-procedural")
    policy = tmp_path / "policy"
    shutil.copytree(tiny_policy, policy)
    report = validate_policy(policy, spec, n_draws=2)
    report.save(tmp_path / "validation.json")
    back = ValidationReport.load_current(tmp_path / "validation.json", policy, validation_seeds(spec, 2))
    assert back is not None and back.draws == report.draws and back.summary() == report.summary()
    assert ValidationReport.load_current(tmp_path / "validation.json", policy, validation_seeds(spec, 3)) is None
    assert ValidationReport.load_current(tmp_path / "missing.json", policy, validation_seeds(spec, 2)) is None
    for damaged in ("{not json", '[{"seed": 1}]', "3"):
        (tmp_path / "damaged.json").write_text(damaged)
        assert ValidationReport.load_current(tmp_path / "damaged.json", policy, validation_seeds(spec, 2)) is None
    stored = validate_policy(policy, spec, n_draws=2, store=tmp_path / "store.json")  # runs, then saves
    assert stored.draws == report.draws
    saved = json.loads((tmp_path / "store.json").read_text())
    saved["draws"][0]["val_acc"] = 0.5  # proof that the next call reads the file instead of running the draws
    (tmp_path / "store.json").write_text(json.dumps(saved))
    assert validate_policy(policy, spec, n_draws=2, store=tmp_path / "store.json").draws[0].val_acc == 0.5
    later = (tmp_path / "validation.json").stat().st_mtime + 10
    os.utime(policy / "policy.json", (later, later))  # retrained after the report was written
    assert ValidationReport.load_current(tmp_path / "validation.json", policy, validation_seeds(spec, 2)) is None
    # a report that validate_policy stored records the policy's digest: it stands for the policy
    # whatever the file times (policy.json is now the newer file), and not for another policy
    assert json.loads((tmp_path / "store.json").read_text())["policy"] == policy_digest(policy)
    assert ValidationReport.load_current(tmp_path / "store.json", policy, validation_seeds(spec, 2)) is not None
    other = tmp_path / "other"
    shutil.copytree(policy, other)
    doc = json.loads((other / "policy.json").read_text())
    doc["json_sha256"] = "0" * 64
    (other / "policy.json").write_text(json.dumps(doc))
    assert ValidationReport.load_current(tmp_path / "store.json", other, validation_seeds(spec, 2)) is None


def test_parse_start_reads_lr_and_batch_size_or_names_the_bad_text() -> None:
    assert parse_start("0.1,16") == {"lr": 0.1, "batch_size": 16}
    assert parse_start("0.1,16,check") == {"lr": 0.1, "batch_size": 16, "start_check": True}
    assert start_suffix(parse_start("1e-4,512")) == "__start-0.0001-512" and start_suffix(None) == ""
    assert start_suffix(parse_start("0.1,16,check")) == "__start-0.1-16-check"
    assert start_suffix({"lr": "probe", "probe_divisor": 30.0}) == "__start-probe-own-div30"
    for bad in ("0.1", "0.1,16,2", "0.1,16,check,1", "x,16", "0.1,1.5", "0,16", "nan,16", "inf,16", "0.1,0"):
        with pytest.raises(SpecError, match="start") as info:
            parse_start(bad)
        assert repr(bad) in str(info.value) and "LR,BS" in str(info.value)


def test_compare_training_seeds_uses_the_spread_across_seeds() -> None:
    out = compare_training_seeds([0.70, 0.74, 0.72], [0.69, 0.71])
    assert out["difference"] == pytest.approx(0.72 - 0.70)
    assert out["stderr"] == pytest.approx(np.sqrt(0.02**2 / 3 + (0.01**2 * 2) / 2))
    assert out["seeds"] == (3, 2)
    one = compare_training_seeds([0.8], [0.7, 0.75])
    assert one["difference"] == pytest.approx(0.075) and one["stderr"] is None


@pytest.mark.parametrize(
    ("candidate", "baseline", "words"),
    [([], [0.7], ["candidate", "at least one"]), ([0.7], [float("nan")], ["baseline", "nan"]), ([0.7], ["x"], ["'x'"])],
)
def test_compare_training_seeds_refuses_bad_scores(candidate: list, baseline: list, words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        compare_training_seeds(candidate, baseline)
    for word in words:
        assert word in str(info.value)


def test_start_ablation_pairs_each_probe_divisor_with_the_reference(tiny_policy: Path, tmp_path: Path) -> None:
    """The script runs the policy from the probe's LR ÷ each divisor; ÷10 is the reference, and
    a run from ÷30 is the env's episode with that reset option (read back from its report)."""
    script = Path(__file__).parents[2] / "scripts" / "start_ablation.py"
    base = [sys.executable, str(script), str(tiny_policy), "--spec", "tiny-procedural", "--draws", "2",
            "--n-workers", "1", "--out-dir", str(tmp_path)]  # fmt: skip
    run = subprocess.run([*base, "--divisor", "30"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| tiny-procedural |")]
    assert [row.split("|")[2].strip() for row in rows] == ["10", "30"] and "| — |" in rows[0]
    stored = json.loads((tmp_path / "tiny-procedural__draws-0-1__div30.json").read_text())["draws"]
    env = HyperTuneEnv("tiny-procedural")
    _, info = env.reset(seed=stored[0]["seed"], options={"lr": "probe", "probe_divisor": 30})
    assert info["lr"] == pytest.approx(max(info["probe_lr"] / 30, 1e-4))
    done = False
    while not done:  # the start held constant: the report's constant run
        _, _, done, _, info = env.step(np.array([2, 1]))
    assert stored[0]["constant_val_acc"] == info["val_acc"]
    bad = subprocess.run([*base, "--divisor", "0.5"], capture_output=True, text=True)
    assert bad.returncode == 1 and "probe_divisor" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not HAS_PROC, reason="reads the process tree from /proc")
def test_sigterm_stops_a_selection_and_its_draw_workers(tiny_policy: Path, tmp_path: Path) -> None:
    """``kill`` of a running selection ends it with one line and takes its pool's workers with it
    (a concurrent.futures pool left them running their draws)."""
    script = Path(__file__).parents[2] / "scripts" / "select_policy.py"
    command = [
        sys.executable, str(script), f"cand={tiny_policy}", "--incumbent", str(tiny_policy),
        "--spec", "tiny-procedural", "--select-draws", "400", "--n-workers", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    # ready once the pool's workers run: the forkserver's children, or the script's own (spawn)
    code, err, tree = sigterm_when(
        command, lambda proc: sum(d >= 1 for d in process_tree(proc.pid).values()) >= 3, settle=1.0
    )
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("select_policy.py: interrupted")
    left = still_alive(tree, timeout=30)
    assert not left, f"still running after SIGTERM: {sorted(left)}"


def test_validation_counts_a_rollback_policys_rollbacks(tiny_rollback_policy: Path, tmp_path: Path) -> None:
    saved = load_policy(tiny_rollback_policy)
    with torch.no_grad():
        saved.policy.action_net.bias[-1] = 50.0  # asks to roll back before every epoch
    eager = saved.save(tmp_path / "eager")
    spec, start = load_spec("tiny-procedural"), {"lr": 0.3}
    spec = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=5))
    report = validate_policy(eager, spec, n_draws=3, start=start)
    expected = 0
    rollback_spec = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, action="discrete-rollback"))
    env, policy = HyperTuneEnv(rollback_spec), load_policy(eager)
    for draw in report.draws:  # a rollback happens before each epoch whose previous epoch was not the best
        obs, info = env.reset(seed=draw.seed, options=start)
        accs, done = [info["val_acc"]], False
        while not done:
            expected += int(np.argmax(accs)) != len(accs) - 1  # the first best epoch is not the last
            obs, _, done, _, info = env.step(policy.predict(obs))
            accs.append(info["val_acc"])
    assert sum(d.rollbacks for d in report.draws) == report.summary()["rollbacks"] == expected > 0
    assert validate_policy(tiny_rollback_policy, spec, n_draws=3).summary()["rollbacks"] == 0  # rarely asked
