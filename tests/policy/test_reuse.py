"""Reusing a saved policy: on a workload, on a user's own model, in a user's own loop."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from rlagent.cli import main
from rlagent.config import load_spec
from rlagent.datasets import Split
from rlagent.env import HyperTuneEnv
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import OBS_HIGH, OBS_LOW
from rlagent.policy.file import PolicyFileError, save_policy
from rlagent.policy.reuse import Controller, resolve_policy, run_policy, train_with_policy, trained_start, tune
from rlagent.policy.train import PPOSettings, TrainConfig, train_policy
from rlagent.training import Trainer
from rlagent.workloads import make_run


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

    first = run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=3, lr=0.2, batch_size=64)["history"][0]
    assert first["lr"] in [pytest.approx(min(0.3, 0.2 * f)) for f in LR_FACTORS]  # the policy's first move from 0.2
    assert first["batch_size"] in [min(128, int(64 * f)) for f in BS_FACTORS]


@pytest.fixture(scope="module")
def stacked_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PPO policy that sees the last 3 observations (``frame_stack = 3``)."""
    tmp = tmp_path_factory.mktemp("stacked_policy")
    config = TrainConfig(
        spec="tiny", timesteps=64, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False, ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,), frame_stack=3),
    )  # fmt: skip
    return train_policy(config, venv=DummyVecEnv([lambda: Monitor(HyperTuneEnv("tiny"))])).policy_dir


@pytest.fixture(scope="module")
def recurrent_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real RecurrentPPO policy (an LSTM of 4 units carries a state through each run)."""
    tmp = tmp_path_factory.mktemp("recurrent_policy")
    config = TrainConfig(
        spec="tiny", timesteps=64, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False,
        ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,), lstm_hidden_size=4),
    )  # fmt: skip
    return train_policy(config, venv=DummyVecEnv([lambda: Monitor(HyperTuneEnv("tiny"))])).policy_dir


@pytest.fixture(scope="module")
def wide_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PPO policy in the ``discrete-wide`` action set (LR ×1/16 .. ×16)."""
    tmp = tmp_path_factory.mktemp("wide_policy")
    tiny = load_spec("tiny")
    spec = dataclasses.replace(tiny, episode=dataclasses.replace(tiny.episode, action="discrete-wide"))
    config = TrainConfig(
        spec=spec, timesteps=64, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False, ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,)),
    )  # fmt: skip
    return train_policy(config, venv=DummyVecEnv([lambda: Monitor(HyperTuneEnv(spec))])).policy_dir


@pytest.mark.parametrize("policy_fixture", ["tiny_policy", "stacked_policy", "recurrent_policy", "wide_policy"])
def test_controller_in_a_hand_written_loop_matches_the_env(policy_fixture: str, request: pytest.FixtureRequest) -> None:
    """Same run, same policy: a user's loop with the Controller makes the env's decisions (for a
    frame-stacking and a recurrent policy too: both keep the run's history; and in the wide action
    set, which the policy's action space gives)."""
    tiny_policy = request.getfixturevalue(policy_fixture)
    spec = load_spec("tiny")
    via_env = run_policy(tiny_policy, "tiny-wide", spec=spec, seed=5)

    wl = spec.workload("tiny-wide")
    run = make_run(wl, 5)
    ctl = Controller(tiny_policy, num_classes=run.data.num_classes, epochs=wl.epochs, lr=1e-3, batch_size=16)
    trainer = Trainer(run.model, run.data.train, lr=ctl.lr, batch_size=ctl.batch_size, generator=run.generator)
    first = trainer.evaluate(run.data.val)
    trainer.lr, trainer.batch_size = ctl.start(val_loss=first.loss, val_acc=first.acc)
    for epoch in via_env["history"]:
        assert (trainer.lr, trainer.batch_size) == (epoch["lr"], epoch["batch_size"])
        stats = trainer.train_epoch()
        val = trainer.evaluate(run.data.val)
        assert val.acc == epoch["val_acc"]
        trainer.lr, trainer.batch_size = ctl.observe(
            train_loss=stats.train_loss,
            train_acc=stats.train_acc,
            val_loss=val.loss,
            val_acc=val.acc,
            loss_noise=stats.loss_noise,
            noise=stats.noise,
        )
    assert len(ctl.history) == wl.epochs


def _users_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _users_model() -> nn.Module:
    """A seeded init, without touching the global RNG: unseeded, the init came from whatever the
    tests before had drawn, and one such init (after test_validate and test_train) left this
    64-step policy's run stuck at 0.2 validation accuracy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def test_train_with_policy_trains_a_users_own_model(tiny_policy: Path) -> None:
    x, y = _users_data()
    model = _users_model()
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


def test_tune_is_the_deprecated_name_of_train_with_policy(tiny_policy: Path) -> None:
    x, y = _users_data()
    model = _users_model()
    twin = copy.deepcopy(model)
    with pytest.warns(DeprecationWarning, match="use rlagent.train_with_policy"):
        old = tune(model, (x[:300], y[:300]), (x[300:], y[300:]), epochs=2, policy=tiny_policy)
    new = train_with_policy(twin, (x[:300], y[:300]), (x[300:], y[300:]), epochs=2, policy=tiny_policy)
    drop_seconds = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert drop_seconds(old.history) == drop_seconds(new.history)


def test_controller_refuses_bad_input(tiny_policy: Path) -> None:
    with pytest.raises(SpecError, match="epochs"):
        Controller(tiny_policy, num_classes=3, epochs=0)
    with pytest.raises(SpecError, match="num_classes"):
        Controller(tiny_policy, num_classes=1, epochs=3)
    ctl = Controller(tiny_policy, num_classes=3, epochs=3)
    ctl.start(val_loss=1.1, val_acc=0.3)
    with pytest.raises(RLAgentError, match="not finite"):
        ctl.observe(train_loss=float("nan"), train_acc=0.3, val_loss=1.0, val_acc=0.3)


def test_unknown_policy_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RLAgentError, match="neither a policy directory nor a shipped policy"):
        resolve_policy(tmp_path / "missing")


def test_a_policy_in_an_action_space_rlagent_has_no_kind_for_is_refused(tmp_path: Path) -> None:
    obs_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
    policy = ActorCriticPolicy(obs_space, spaces.MultiDiscrete([5, 5]), lambda _: 0.0, net_arch=[4])
    model = types.SimpleNamespace(policy=policy, observation_space=obs_space, action_space=policy.action_space)
    path = save_policy(tmp_path / "pol", model, normalizer=None)
    with pytest.raises(PolicyFileError, match=r"acts in MultiDiscrete\(\[5 5\]\); .*\(discrete-wide\)"):
        resolve_policy(path)


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
    x, y = _users_data()
    train, val = (x[:300], y[:300]), (x[300:], y[300:])
    probed = train_with_policy(_users_model(), train, val, epochs=2, policy=tiny_policy, lr="probe")
    assert probed.probe_lr is not None
    start = min(max(probed.probe_lr / 10, 1e-4), 0.3)
    given = train_with_policy(_users_model(), train, val, epochs=2, policy=tiny_policy, lr=start)
    assert given.probe_lr is None
    drop_seconds = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert drop_seconds(probed.history) == drop_seconds(given.history)
    with pytest.raises(SpecError, match=r"lr.*'probe'"):
        train_with_policy(_users_model(), train, val, epochs=2, policy=tiny_policy, lr="fast")


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
    assert run_policy(probe_policy, "tiny-wide", spec="tiny", seed=2, lr=1e-3)["probe_lr"] is None
    assert run_policy(tiny_policy, "tiny-wide", spec="tiny", seed=2)["probe_lr"] is None
    x, y = _users_data()
    train, val = (x[:300], y[:300]), (x[300:], y[300:])
    assert train_with_policy(_users_model(), train, val, epochs=1, policy=probe_policy).probe_lr is not None
    assert train_with_policy(_users_model(), train, val, epochs=1, policy=tiny_policy).probe_lr is None


def test_controller_of_a_probe_trained_policy_warns_when_started_without_probe_or_lr(
    tiny_policy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = resolve_policy(tiny_policy)
    training = copy.deepcopy(saved.metadata["training"])
    training["spec"]["episode"]["init_lr"] = "probe"
    probe_policy = saved.save(tmp_path / "probe-pol", metadata=training)
    spec = load_spec("tiny")
    wl = spec.workload("tiny-wide")

    def started(policy: Path, probe: bool = False, **kwargs: Any) -> list[str]:
        caplog.clear()
        run = make_run(wl, 5)
        ctl = Controller(policy, num_classes=run.data.num_classes, epochs=wl.epochs, **kwargs)
        if probe:
            ctl.probe(Trainer(run.model, run.data.train, lr=ctl.lr, batch_size=ctl.batch_size, generator=run.generator))
        with caplog.at_level(logging.WARNING, logger="rlagent.policy.reuse"):
            ctl.start(val_loss=1.0, val_acc=0.5)
        return [r.getMessage() for r in caplog.records]

    (message,) = started(probe_policy)
    assert "trained from LR-probe starts; call probe(trainer) before start(), or pass lr=" in message
    assert "lr=0.001" in message
    assert started(probe_policy, lr=1e-3) == []  # an LR given: the user chose the start
    assert started(probe_policy, probe=True) == []
    assert started(tiny_policy) == []  # trained from the draws' own starts


def test_controller_probe_model_probes_a_users_model_and_data_untouched(tiny_policy: Path) -> None:
    x, y = _users_data()
    model = _users_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctl = Controller(tiny_policy, num_classes=2, epochs=3, batch_size=16)
    lr = ctl.probe_model(model, (x[:300], y[:300]), seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert lr == ctl.lr and ctl.probe_result is not None and ctl.batch_size == 16
    by_hand = Controller(tiny_policy, num_classes=2, epochs=3, batch_size=16)
    trainer = Trainer(
        _users_model(), Split(x[:300], y[:300]), lr=1e-3, batch_size=16,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    trainer.model.load_state_dict(before)
    assert by_hand.probe(trainer, seed=3) == lr
    with pytest.raises(SpecError, match=r"optimizer: got 'lion'"):
        Controller(tiny_policy, num_classes=2, epochs=3).probe_model(model, (x, y), optimizer="lion")
    with pytest.raises(SpecError, match=r"train_data"):
        Controller(tiny_policy, num_classes=2, epochs=3).probe_model(model, (x[:0], y[:0]))


def test_controller_probe_only_before_the_first_epoch(tiny_policy: Path) -> None:
    spec = load_spec("tiny")
    wl = spec.workload("tiny-wide")
    run = make_run(wl, 5)
    ctl = Controller(tiny_policy, num_classes=run.data.num_classes, epochs=wl.epochs, lr=1e-3, batch_size=16)
    trainer = Trainer(run.model, run.data.train, lr=ctl.lr, batch_size=ctl.batch_size, generator=run.generator)
    lr = ctl.probe(trainer, seed=1)
    assert lr == trainer.lr == ctl.lr != 1e-3 and ctl.probe_result is not None
    first = trainer.evaluate(run.data.val)
    ctl.start(val_loss=first.loss, val_acc=first.acc)
    ctl.observe(train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5)
    with pytest.raises(RuntimeError, match="before the first epoch"):
        ctl.probe(trainer)
