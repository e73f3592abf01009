"""Tests for rlagent.policy.select: choose on some validation draws, confirm on fresh ones."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlagent.config import load_spec
from rlagent.errors import SpecError
from rlagent.policy.file import load_policy
from rlagent.policy.select import INCUMBENT, Selection, paired, select_policy, start_as_run, start_label
from rlagent.policy.validate import (
    DrawResult,
    ValidationReport,
    start_suffix,
    validate_policy,
    validation_seeds,
)

SPEC = "tiny-procedural"
STARTS = (None, {"lr": 0.01, "batch_size": 16})


@pytest.fixture(scope="module")
def reckless(tiny_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy with its LR head biased to always take ×4: a real policy that acts differently."""
    saved = load_policy(tiny_policy)
    with torch.no_grad():
        saved.policy.action_net.bias[:5] = torch.tensor([0.0, 0.0, 0.0, 0.0, 50.0])
    path = saved.save(tmp_path_factory.mktemp("reckless") / "policy")
    assert (load_policy(path).predict(np.zeros(len(saved.feature_names)))[0]) == 4
    return path


def test_validation_seeds_of_a_later_range_continue_the_same_stream() -> None:
    spec = load_spec(SPEC)
    assert validation_seeds(spec, 3, first=2) == validation_seeds(spec, 5)[2:]
    assert set(validation_seeds(spec, 2, first=2)).isdisjoint(validation_seeds(spec, 2))
    with pytest.raises(SpecError, match="first_draw"):
        validation_seeds(spec, 2, first=-1)


def test_the_better_policy_is_chosen_and_confirmed_on_fresh_draws(
    tiny_policy: Path, reckless: Path, tmp_path: Path
) -> None:
    spec = load_spec(SPEC)
    expected = {
        name: [validate_policy(path, spec, n_draws=2, start=s).mean_val_acc for s in STARTS]
        for name, path in (("tiny", tiny_policy), ("reckless", reckless))
    }
    assert np.mean(expected["tiny"]) != np.mean(expected["reckless"]), "the two policies must differ to test a choice"
    better, worse = sorted(expected, key=lambda n: np.mean(expected[n]), reverse=True)
    paths = {"tiny": tiny_policy, "reckless": reckless}

    # The better one as the incumbent: nothing beats it, so nothing is confirmed.
    kept = select_policy({worse: paths[worse]}, paths[better], spec, starts=STARTS, n_select=2, n_confirm=2)
    assert kept.chosen == INCUMBENT and kept.confirmation == () and not kept.replace
    assert list(kept.scores[INCUMBENT]) == pytest.approx(expected[better])
    assert kept.verdict().startswith("keep the incumbent: no candidate")
    # Its dithering: LR moves reversed by the next move, over every start's draws.
    runs = [validate_policy(paths[worse], spec, n_draws=2, start=s) for s in STARTS]
    moves = sum(d.lr_moves for r in runs for d in r.draws)
    assert moves > 0 and kept.reversals[worse] == sum(d.lr_reversals for r in runs for d in r.draws) / moves
    assert f"| {kept.reversals[worse]:.0%} |" in kept.to_markdown() and "LR moves reversed" in kept.to_markdown()

    # The better one as a candidate: chosen, then scored against the incumbent on draws 2-3 only.
    chosen = select_policy(
        {worse + "-copy": paths[worse], better: paths[better]}, paths[worse], spec,
        starts=STARTS, n_select=2, n_confirm=2, store=tmp_path,
    )  # fmt: skip
    assert chosen.chosen == better
    assert list(chosen.scores[better]) == pytest.approx(expected[better])
    assert chosen.scores[worse + "-copy"] == chosen.scores[INCUMBENT]  # the same policy under two names
    for start, pair in zip(STARTS, chosen.confirmation, strict=True):
        fresh = {n: validate_policy(paths[n], spec, n_draws=2, first_draw=2, start=start) for n in (better, worse)}
        assert [d.seed for d in fresh[better].draws] == validation_seeds(spec, 2, first=2)
        diffs = [b.val_acc - w.val_acc for b, w in zip(fresh[better].draws, fresh[worse].draws, strict=True)]
        assert pair.start == start_label(start) and pair.draws == 2
        assert pair.difference == pytest.approx(np.mean(diffs)) and pair.wins == sum(d > 0 for d in diffs)
    assert chosen.replace == all(p.difference > 0 for p in chosen.confirmation)
    assert ("replace the incumbent" in chosen.verdict()) == chosen.replace
    assert f"**{better}**" in chosen.to_markdown() and "draws 2-3" in chosen.to_markdown()
    assert json.loads(json.dumps(chosen.to_dict()))["chosen"] == better

    # Every report is stored per policy, start and draw range, and read back on the next call.
    digest = {n: load_policy(paths[n]).metadata["json_sha256"][:12] for n in paths}
    assert sorted(p.name for p in (tmp_path / better).iterdir()) == [
        f"{digest[better]}__{name}"
        for name in (
            "draws-0-1.json",
            "draws-0-1__start-0.01-16.json",
            "draws-2-3.json",
            "draws-2-3__start-0.01-16.json",
        )
    ]
    # Confirmation from a later draw skips the draws between (e.g. an earlier confirmation's).
    later = select_policy(
        {better: paths[better]}, paths[worse], spec, starts=STARTS, n_select=2, n_confirm=1, confirm_from=5,
        store=tmp_path,
    )  # fmt: skip
    assert (tmp_path / better / f"{digest[better]}__draws-5-5.json").exists() and "draws 5-5" in later.to_markdown()
    assert later.to_dict()["confirm_from"] == 5
    # The choice on later draws (past those an incumbent was chosen on); the confirmation may then
    # come before them.
    on_4_5 = {
        name: [validate_policy(path, spec, n_draws=2, first_draw=4, start=s).mean_val_acc for s in STARTS]
        for name, path in paths.items()
    }
    top, low = sorted(on_4_5, key=lambda n: np.mean(on_4_5[n]), reverse=True)
    assert np.mean(on_4_5[top]) > np.mean(on_4_5[low]), "the two policies must differ on draws 4-5"
    moved = select_policy(
        {top: paths[top]}, paths[low], spec, starts=STARTS, n_select=2, n_confirm=2, select_from=4,
        confirm_from=2, store=tmp_path,
    )  # fmt: skip
    assert list(moved.scores[top]) == pytest.approx(on_4_5[top])
    assert list(moved.scores[INCUMBENT]) == pytest.approx(on_4_5[low])
    assert moved.chosen == top and [p.draws for p in moved.confirmation] == [2] * len(STARTS)
    assert "draws 4-5" in moved.to_markdown() and "fresh draws 2-3" in moved.to_markdown()
    assert moved.to_dict()["select_from"] == 4 and moved.to_dict()["confirm_from"] == 2

    stored = tmp_path / INCUMBENT / f"{digest[worse]}__draws-0-1__start-0.01-16.json"
    edited = json.loads(stored.read_text())
    for draw in edited["draws"]:
        draw["val_acc"] = 1.0
    stored.write_text(json.dumps(edited))
    again = select_policy(
        {worse + "-copy": paths[worse], better: paths[better]}, paths[worse], spec,
        starts=STARTS, n_select=2, n_confirm=2, store=tmp_path,
    )  # fmt: skip
    assert again.scores[INCUMBENT][1] == 1.0 and again.scores[better] == chosen.scores[better]

    # A name given to another policy does not read back the first one's reports.
    renamed = select_policy(
        {better: paths[worse]}, paths[better], spec, starts=STARTS, n_select=2, n_confirm=2, store=tmp_path
    )
    assert list(renamed.scores[better]) == pytest.approx(expected[worse])
    assert list(renamed.scores[INCUMBENT]) == pytest.approx(expected[better])  # not the edited file


def test_a_policy_trained_from_probe_starts_runs_the_own_starts_from_the_probe_and_given_lrs_as_given(
    tiny_policy: Path, tmp_path: Path
) -> None:
    saved = load_policy(tiny_policy)
    training = copy.deepcopy(saved.metadata["training"])
    training["spec"]["episode"]["init_lr"] = "probe"
    probed = saved.save(tmp_path / "probe-pol", metadata=training)
    assert start_as_run(probed, None) == {"lr": "probe"}
    assert start_as_run(probed, {"lr": 0.01, "batch_size": 16}) == {"lr": 0.01, "batch_size": 16}
    assert start_as_run(tiny_policy, {"lr": 0.01, "batch_size": 16}) == {"lr": 0.01, "batch_size": 16}
    sel = select_policy(
        {"p": probed}, tiny_policy, SPEC, starts=STARTS, n_select=2, n_confirm=1, store=tmp_path / "sel"
    )  # fmt: skip
    expected = [validate_policy(probed, SPEC, n_draws=2, start=s).mean_val_acc for s in ({"lr": "probe"}, STARTS[1])]
    assert list(sel.scores["p"]) == pytest.approx(expected)
    assert list(sel.scores[INCUMBENT]) == pytest.approx(
        [validate_policy(tiny_policy, SPEC, n_draws=2, start=s).mean_val_acc for s in STARTS]
    )
    names = sorted(f.name.split("__", 1)[1] for f in (tmp_path / "sel" / "p").iterdir())
    assert [n for n in names if n.startswith("draws-0-1")] == [
        "draws-0-1__start-0.01-16.json",
        "draws-0-1__start-probe-own.json",
    ]


def test_a_start_may_draw_from_its_own_spec(tiny_policy: Path, reckless: Path, tmp_path: Path) -> None:
    """``{"spec": ...}`` in a start scores that start on the other spec's draws (a mixed recipe's
    second part), stored apart from the same start on the main spec."""
    hot = tmp_path / "tiny-hot.toml"
    hot.write_text(
        f'extends = "{SPEC}"\nname = "tiny-hot"\n[workloads.train]\nlr_scale_range = [4.0, 8.0]\nprobe_sees_lr_scale = false\n'
    )
    starts = (None, {"spec": str(hot)})
    sel = select_policy(
        {"r": reckless}, tiny_policy, SPEC, starts=starts, n_select=2, n_confirm=1, store=tmp_path / "s"
    )
    assert sel.starts == ("own start", "own start on tiny-hot")
    for name, path in ((INCUMBENT, tiny_policy), ("r", reckless)):
        expected = [validate_policy(path, s, n_draws=2).mean_val_acc for s in (SPEC, load_spec(hot))]
        assert list(sel.scores[name]) == pytest.approx(expected)
    assert sel.scores[INCUMBENT][0] != sel.scores[INCUMBENT][1]  # the hidden scale changes the runs
    names = sorted(f.name.split("__", 1)[1] for f in (tmp_path / "s" / INCUMBENT).iterdir())
    assert [n for n in names if n.startswith("draws-0-1")] == ["draws-0-1.json", "draws-0-1__spec-tiny-hot.json"]
    assert start_as_run(tiny_policy, {"spec": "x", "lr": 0.1}) == {"lr": 0.1, "spec": "x"}
    with pytest.raises(SpecError, match="nope"):
        select_policy({"r": reckless}, tiny_policy, SPEC, starts=(None, {"spec": "nope"}), n_select=1, n_confirm=1)
    with pytest.raises(SpecError, match="start.spec"):
        select_policy({"r": reckless}, tiny_policy, SPEC, starts=({"spec": 3},), n_select=1, n_confirm=1)


def test_select_policy_script_reads_starts_with_their_spec(tiny_policy: Path, tmp_path: Path) -> None:
    script = Path(__file__).parents[2] / "scripts" / "select_policy.py"
    base = [sys.executable, str(script), f"cand={tiny_policy}", "--incumbent", str(tiny_policy), "--spec", SPEC,
            "--select-draws", "1", "--confirm-draws", "1", "--n-workers", "1", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.run([*base, "--start", "own", "--start", f"0.01,16,check@{SPEC}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"| policy | own start | LR 0.01 / batch 16, checked on {SPEC} | mean |" in run.stdout
    bad = subprocess.run([*base, "--start", "own@"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--start" in bad.stderr and "Traceback" not in bad.stderr


def test_paired_differences_and_their_error() -> None:
    pair = paired("own start", _report([0.8, 0.6, 0.9]), _report([0.7, 0.7, 0.7]))
    assert pair.difference == pytest.approx(0.2 / 3) and pair.wins == 2 and pair.draws == 3
    assert pair.stderr == pytest.approx(np.std([0.1, -0.1, 0.2], ddof=1) / np.sqrt(3))
    assert paired("x", _report([0.8]), _report([0.7])).stderr == 0.0
    with pytest.raises(ValueError, match="same draws"):
        paired("x", _report([0.8], first=0), _report([0.7], first=1))
    a, b = _report([0.8, 0.6]), _report([0.7, 0.7])
    for d, constant in zip(a.draws + b.draws, (0.5, 0.4, 0.6, 0.6)):
        d.constant_val_acc = constant
    held = paired("x", a, b, key="constant_val_acc")  # the constant starts' scores, paired the same way
    assert held.candidate == pytest.approx(0.45) and held.incumbent == pytest.approx(0.6)
    assert held.difference == pytest.approx(-0.15) and held.wins == 0
    with pytest.raises(SpecError, match="key.*'epochs'"):
        paired("x", a, b, key="epochs")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"candidates": {}}, "candidates"),
        ({"candidates": {INCUMBENT: "p"}}, "candidate name"),
        ({"candidates": {"a/b": "p"}}, "candidate name"),
        ({"n_select": 0}, "n_select"),
        ({"n_confirm": 1.5}, "n_confirm"),
        ({"confirm_from": 1}, r"confirm_from: got 1; expected an integer >= 24 \(after the selection draws 0-23\)$"),
        ({"select_from": -1}, "select_from: got -1; expected an integer >= 0"),
        (
            {"select_from": 96, "confirm_from": 100, "n_confirm": 24},
            r">= 120 \(after the selection draws 96-119\) or <= 72 \(ending before them\)$",
        ),
        ({"select_from": 96, "confirm_from": 80, "n_confirm": 24}, "confirm_from: got 80"),
        ({"starts": ()}, "starts"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, field: str) -> None:
    args = {"candidates": {"a": "p"}, "incumbent": "q", "spec": SPEC, **kwargs}
    with pytest.raises(SpecError, match=field):
        select_policy(**args)


def test_start_labels_and_the_verdict_of_a_candidate_behind_on_one_start() -> None:
    assert start_label(None) == "own start" and start_label({"batch_size": 16, "lr": 0.1}) == "LR 0.1 / batch 16"
    assert start_label({"lr": "probe", "batch_size": 16}) == "LR probe / batch 16"
    assert start_label({"lr": 0.1, "batch_size": 16, "start_check": True, "spec": "envs/hot.toml"}) == (
        "LR 0.1 / batch 16, checked on hot"
    )
    assert [start_suffix(s) for s in (None, {"lr": 0.1, "batch_size": 16}, {"lr": "probe"})] == [
        "", "__start-0.1-16", "__start-probe-own",
    ]  # fmt: skip
    ahead = paired("own start", _report([0.9, 0.8]), _report([0.8, 0.7]))
    behind = paired("LR 0.1 / batch 16", _report([0.5, 0.5]), _report([0.6, 0.5]))
    sel = Selection(("own start", "LR 0.1 / batch 16"), {INCUMBENT: (0.7, 0.6), "c": (0.8, 0.6)}, "c",
                    (ahead, behind), 24, 24)  # fmt: skip
    assert not sel.replace and sel.verdict().endswith("from LR 0.1 / batch 16")
    assert Selection(sel.starts, sel.scores, "c", (ahead,), 24, 24).replace
    # a start where every draw ends alike is skipped; a start that differs by little is not
    alike = paired("LR 0.1 / batch 16", _report([0.5, 0.6]), _report([0.5, 0.6]))
    assert alike.identical and alike.same == 2 and alike.difference == 0
    skipped = Selection(sel.starts, sel.scores, "c", (ahead, alike), 24, 24)
    assert skipped.replace and skipped.verdict().endswith("(alike from LR 0.1 / batch 16)")
    cancelled = paired("LR 0.1 / batch 16", _report([0.6, 0.5]), _report([0.5, 0.6]))
    assert not cancelled.identical and not Selection(sel.starts, sel.scores, "c", (ahead, cancelled), 24, 24).replace
    only_alike = Selection(sel.starts, sel.scores, "c", (alike,), 24, 24)
    assert not only_alike.replace and "alike from every start" in only_alike.verdict()
    later = Selection(sel.starts, sel.scores, INCUMBENT, (), 24, 24, select_from=96)
    assert later.first_confirm == 120 and later.verdict().endswith("on draws 96-119")


def _report(values: list[float], first: int = 0) -> ValidationReport:
    """A report of hand-set accuracies on draws with seeds first, first + 1, ..."""
    return ValidationReport([DrawResult(first + i, "w", 2, v, 0.5, False, 0, 0) for i, v in enumerate(values)])
