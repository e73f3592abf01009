"""Reusing a saved policy: on a workload, on a user's own model, in a user's own loop."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from rlagent.cli import main
from rlagent.config import load_spec
from rlagent.errors import SpecError
from rlagent.policy.file import load_policy
from rlagent.policy.reuse import resolve_policy, run_policy, train_with_policy, trained_start, tune
from tests.policy._user_data import users_data, users_model


def test_run_policy_on_a_held_out_workload(tiny_policy: Path) -> None:
    result = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=3)
    assert result["heldout"] and not result["trained_on"]
    assert result["epochs"] == 3 == len(result["history"])
    assert 0.0 <= result["test_acc"] <= 1.0
    again = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=3)
    assert again["history"] == [
        {**h, "seconds": a["seconds"]} for h, a in zip(result["history"], again["history"])
    ]  # deterministic apart from wall time
    assert run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=3, epochs=2)["epochs"] == 2


def test_run_policy_from_another_start(tiny_policy: Path) -> None:
    from rlagent.env import BS_FACTORS, LR_FACTORS

    run = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=3, lr=0.2, batch_size=64, start_check=False)
    first = run["history"][0]
    assert first["lr"] in [pytest.approx(min(0.3, 0.2 * f)) for f in LR_FACTORS]  # the policy's first move from 0.2
    assert first["batch_size"] in [min(128, int(64 * f)) for f in BS_FACTORS]
    assert run["probe_lr"] is None and run["start_replaced"] is None


def test_run_policy_checks_a_given_start_against_the_probe(tiny_policy: Path) -> None:
    """By default a given LR above the probe's minimum-loss LR starts where the probe points,
    so the run is the probe-started one; a low LR is kept and the run is the unchecked one."""
    probed = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=0, lr="probe", batch_size=64)
    hot = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=0, lr=0.3, batch_size=64)
    assert hot["start_replaced"] and hot["probe_lr"] == probed["probe_lr"] < 0.3
    assert [h["val_acc"] for h in hot["history"]] == [h["val_acc"] for h in probed["history"]]
    low = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=0, lr=1e-4, batch_size=64)
    unchecked = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=0, lr=1e-4, batch_size=64, start_check=False)
    assert low["start_replaced"] is False and low["probe_epochs"] > 0 == unchecked["probe_epochs"]
    assert [h["val_acc"] for h in low["history"]] == [h["val_acc"] for h in unchecked["history"]]
    with pytest.raises(SpecError, match="start_check.*'yes'"):
        run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=0, lr=0.3, start_check="yes")


def test_train_with_policy_trains_a_users_own_model(tiny_policy: Path) -> None:
    x, y = users_data()
    model = users_model()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_with_policy(
        model,
        (x[:300], y[:300]),
        torch.utils.data.TensorDataset(x[300:350], y[300:350]),
        epochs=4,
        policy=tiny_policy,
        test_data=(x[350:], y[350:]),
    )
    assert result.model is model
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert all(1e-4 <= h["lr"] <= 0.3 and 8 <= h["batch_size"] <= 128 for h in result.history)
    assert result.history[-1]["val_acc"] > 0.6
    assert result.test_acc is not None and not result.diverged


def test_train_with_a_cosine_policy_steps_the_users_optimiser_under_its_envelope(tiny_cosine_policy: Path) -> None:
    """A policy trained under an LR envelope scales the LR it chooses for a user's model too: the
    history says by how much, and the user's own optimiser steps at that rate."""
    from rlagent.hparams import Envelope

    x, y = users_data()
    model = users_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = train_with_policy(
        model, (x[:300], y[:300]), (x[300:], y[300:]), epochs=4, policy=tiny_cosine_policy, optimizer=optimizer, lr=1e-2
    )
    envelope = Envelope("cosine", 4, 0.05)
    assert [h["lr_envelope"] for h in result.history] == [envelope(e) for e in range(4)]
    # after the last epoch the optimiser is left at the last chosen LR times the envelope's end
    assert optimizer.param_groups[0]["lr"] == pytest.approx(result.history[-1]["lr"] * 0.05)


def test_tune_is_the_deprecated_name_of_train_with_policy(tiny_policy: Path) -> None:
    x, y = users_data()
    model = users_model()
    twin = copy.deepcopy(model)
    with pytest.warns(DeprecationWarning, match="use rlagent.train_with_policy"):
        old = tune(model, (x[:300], y[:300]), (x[300:], y[300:]), epochs=2, policy=tiny_policy)
    new = train_with_policy(twin, (x[:300], y[:300]), (x[300:], y[300:]), epochs=2, policy=tiny_policy)
    drop_seconds = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert drop_seconds(old.history) == drop_seconds(new.history)


def test_cli_run_policy_prints_and_writes_json(
    tiny_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run.json"
    code = main(
        ["run-policy", "--policy", str(tiny_policy), "--workload", "tiny-wide", "--spec", "tiny", "--out", str(out)]
    )
    assert code == 0
    assert "test acc" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["workload"] == "tiny-wide" and len(data["history"]) == 3


def test_cli_run_policy_takes_a_start_or_the_probe(
    tiny_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["run-policy", "--policy", str(tiny_policy), "--workload", "tiny-wide", "--spec", "tiny"]
    probed, given = tmp_path / "probed.json", tmp_path / "given.json"
    assert main([*base, "--lr", "probe", "--batch-size", "16", "--out", str(probed)]) == 0
    assert "the probe's minimum-loss LR" in capsys.readouterr().out
    run = json.loads(probed.read_text())
    assert run["probe_lr"] > 0 and run["probe_epochs"] > 0
    low, high = load_spec("tiny").workload("tiny-wide").lr_range
    start = min(max(run["probe_lr"] / 10, low), high)
    assert main([*base, "--lr", repr(start), "--batch-size", "16", "--out", str(given)]) == 0
    assert [h["val_acc"] for h in json.loads(given.read_text())["history"]] == [h["val_acc"] for h in run["history"]]
    assert main([*base, "--lr", "0.3", "--batch-size", "16", "--out", str(given)]) == 0  # checked: the probe's run
    assert "--lr 0.3 is above it: started at the probe's LR" in capsys.readouterr().out
    assert [h["val_acc"] for h in json.loads(given.read_text())["history"]] == [h["val_acc"] for h in run["history"]]
    assert main([*base, "--lr", "0.3", "--batch-size", "16", "--no-start-check", "--out", str(given)]) == 0
    kept = json.loads(given.read_text())
    assert kept["start_replaced"] is None and kept["probe_lr"] is None and "above it" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--lr", "fast"])
    assert exit_.value.code == 2 and "expected a number > 0 or 'probe'" in capsys.readouterr().err
    assert main([*base, "--lr", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr" in err and "Traceback" not in err


def test_cli_run_policy_bad_workload_is_one_line(tiny_policy: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run-policy", "--policy", str(tiny_policy), "--workload", "nope", "--spec", "tiny"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope" in err and "Traceback" not in err


def test_cli_tune_is_the_deprecated_name_of_run_policy(tiny_policy: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--policy", str(tiny_policy), "--workload", "nope", "--spec", "tiny"]
    assert main(["tune", *args]) == 2
    deprecation, error = capsys.readouterr().err.splitlines()
    assert deprecation == "rlagent tune is deprecated and will be removed in the next release; use rlagent run-policy"
    assert main(["run-policy", *args]) == 2
    assert capsys.readouterr().err.splitlines() == [error.replace("rlagent tune:", "rlagent run-policy:")]


def test_train_with_policy_can_start_from_a_probe(tiny_policy: Path) -> None:
    x, y = users_data()
    train, val = (x[:300], y[:300]), (x[300:], y[300:])
    probed = train_with_policy(users_model(), train, val, epochs=2, policy=tiny_policy, lr="probe")
    assert probed.probe_lr is not None
    start = min(max(probed.probe_lr / 10, 1e-4), 0.3)
    given = train_with_policy(users_model(), train, val, epochs=2, policy=tiny_policy, lr=start)
    assert given.probe_lr == probed.probe_lr and given.start_replaced is False  # checked, and kept
    drop_seconds = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert drop_seconds(probed.history) == drop_seconds(given.history)
    wide = {"epochs": 2, "policy": tiny_policy, "lr_range": (1e-4, 3.0)}  # room above this probe's minimum
    probed = train_with_policy(users_model(), train, val, lr="probe", **wide)
    hot = train_with_policy(users_model(), train, val, lr=3.0, **wide)
    assert hot.start_replaced and drop_seconds(hot.history) == drop_seconds(probed.history)
    kept = train_with_policy(users_model(), train, val, lr=3.0, start_check=False, **wide)
    assert kept.probe_lr is None and kept.start_replaced is None
    assert drop_seconds(kept.history) != drop_seconds(hot.history)
    with pytest.raises(SpecError, match="start_check"):
        train_with_policy(users_model(), train, val, epochs=2, policy=tiny_policy, lr=0.3, start_check=1)
    with pytest.raises(SpecError, match=r"lr.*'probe'"):
        train_with_policy(users_model(), train, val, epochs=2, policy=tiny_policy, lr="fast")


def test_a_policy_trained_from_probe_starts_runs_from_the_probe_unless_given_an_lr(
    tiny_policy: Path, tmp_path: Path
) -> None:
    saved = resolve_policy(tiny_policy)
    assert trained_start(saved) is None
    training = copy.deepcopy(saved.metadata["training"])
    training["spec"]["episode"]["init_lr"] = "probe"
    probe_policy = saved.save(tmp_path / "probe-pol", metadata=training)
    assert trained_start(resolve_policy(probe_policy)) == "probe"
    run = run_policy(probe_policy, "tiny-wide", spec="tiny", seed=2)
    explicit = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=2, lr="probe")
    assert (
        run["probe_lr"] == explicit["probe_lr"] is not None and run["history"][0]["lr"] == explicit["history"][0]["lr"]
    )
    given = run_policy(probe_policy, "tiny-wide", spec="tiny", seed=2, lr=1e-3, start_check=False)
    assert given["probe_lr"] is None and given["history"][0]["lr"] != run["history"][0]["lr"]
    assert run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=2)["probe_lr"] is None
    x, y = users_data()
    train, val = (x[:300], y[:300]), (x[300:], y[300:])
    assert train_with_policy(users_model(), train, val, epochs=1, policy=probe_policy).probe_lr is not None
    assert train_with_policy(users_model(), train, val, epochs=1, policy=tiny_policy).probe_lr is None


def test_train_with_a_rollback_policy_rolls_the_users_model_back_to_its_best_epoch(tiny_rollback_policy: Path) -> None:
    saved = load_policy(tiny_rollback_policy)
    with torch.no_grad():
        saved.policy.action_net.bias[-1] = 50.0  # this copy asks to roll back after every epoch
    x, y = users_data()
    result = train_with_policy(
        users_model(), (x[:300], y[:300]), (x[300:350], y[300:350]), epochs=6, policy=saved, lr=0.3, start_check=False
    )
    with torch.no_grad():
        untrained = (users_model()(x[300:350]).argmax(1) == y[300:350]).float().mean().item()
    accs = [untrained] + [h["val_acc"] for h in result.history]  # accs[e]: after epoch e
    restored = [h["rolled_back_to"] for h in result.history]  # restored[e]: before epoch e + 1
    for e in range(6):  # the first epoch of 0..e with the best accuracy; none if it is e itself
        best = max(range(e + 1), key=lambda i: (accs[i], -i))
        assert restored[e] == (None if best == e else best)
    assert any(r is not None for r in restored)  # at LR 0.3 some epoch falls below the best (true here)
    run = run_policy(saved, "tiny-mlp", spec="tiny", seed=0, epochs=6, lr=0.3, start_check=False)
    accs = [h["val_acc"] for h in run["history"]]
    for e, h in enumerate(run["history"][1:], start=1):  # after epoch 1 the untrained model is never the best here
        best = max(range(e), key=lambda i: (accs[i], -i)) + 1
        assert h["rolled_back_to"] == (None if best == e else best)
