"""The Controller: a saved policy driving a user's own training loop, epoch by epoch
(:mod:`rlagent.policy.controller`), and the policy-file helpers beside it."""

from __future__ import annotations

import copy
import dataclasses
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

from rlagent.config import load_spec
from rlagent.datasets import Split
from rlagent.env import HyperTuneEnv
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import OBS_HIGH, OBS_LOW
from rlagent.hparams import Envelope, epoch_lr
from rlagent.policy.controller import Controller, policy_episode, resolve_policy, trained_envelope
from rlagent.policy.file import PolicyFileError, save_policy
from rlagent.policy.reuse import run_policy
from rlagent.policy.train import PPOSettings, TrainConfig, train_policy
from rlagent.training import Trainer
from rlagent.workloads import make_run
from tests.policy._user_data import users_data, users_model


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


def _policy_acting_in(kind: str, tmp: Path) -> Path:
    """A real PPO policy trained briefly on the tiny spec with another ``episode.action`` kind."""
    tiny = load_spec("tiny")
    spec = dataclasses.replace(tiny, episode=dataclasses.replace(tiny.episode, action=kind))
    config = TrainConfig(
        spec=spec, timesteps=64, n_envs=1, devices="cpu", out=tmp / "pol", run_dir=tmp / "run",
        checkpoint_every=0, progress=False, ppo=PPOSettings(n_steps=32, batch_size=32, net_arch=(8,)),
    )  # fmt: skip
    return train_policy(config, venv=DummyVecEnv([lambda: Monitor(HyperTuneEnv(spec))])).policy_dir


@pytest.fixture(scope="module")
def wide_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PPO policy in the ``discrete-wide`` action set (LR ×1/16 .. ×16)."""
    return _policy_acting_in("discrete-wide", tmp_path_factory.mktemp("wide_policy"))


@pytest.fixture(scope="module")
def coupled_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PPO policy in the ``discrete-coupled`` action set (LR ÷ batch size moves)."""
    return _policy_acting_in("discrete-coupled", tmp_path_factory.mktemp("coupled_policy"))


@pytest.mark.parametrize(
    "policy_fixture",
    ["tiny_policy", "stacked_policy", "recurrent_policy", "wide_policy", "coupled_policy", "tiny_cosine_policy"],
)
def test_controller_in_a_hand_written_loop_matches_the_env(policy_fixture: str, request: pytest.FixtureRequest) -> None:
    """Same run, same policy: a user's loop with the Controller makes the env's decisions (for a
    frame-stacking and a recurrent policy too: both keep the run's history; in the wide and the
    coupled action sets, which the policy's action space gives; and under the LR envelope a policy
    was trained with, which the Controller applies to the LR it returns)."""
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
        assert (trainer.lr, trainer.batch_size) == (epoch_lr(epoch), epoch["batch_size"])
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
    assert [h["lr"] for h in ctl.history] == [epoch_lr(h) for h in via_env["history"]]  # what each epoch trained at


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
        with caplog.at_level(logging.WARNING, logger="rlagent.policy.controller"):
            ctl.start(val_loss=1.0, val_acc=0.5)
        return [r.getMessage() for r in caplog.records]

    (message,) = started(probe_policy)
    assert "trained from LR-probe starts; call probe(trainer) before start(), or pass lr=" in message
    assert "lr=0.001" in message
    assert started(probe_policy, lr=1e-3) == []  # an LR given: the user chose the start
    assert started(probe_policy, probe=True) == []
    assert started(tiny_policy) == []  # trained from the draws' own starts


def test_controller_probe_model_probes_a_users_model_and_data_untouched(tiny_policy: Path) -> None:
    x, y = users_data()
    model = users_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctl = Controller(tiny_policy, num_classes=2, epochs=3, batch_size=16)
    lr = ctl.probe_model(model, (x[:300], y[:300]), seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert lr == ctl.lr and ctl.probe_result is not None and ctl.batch_size == 16
    by_hand = Controller(tiny_policy, num_classes=2, epochs=3, batch_size=16)
    trainer = Trainer(
        users_model(), Split(x[:300], y[:300]), lr=1e-3, batch_size=16,
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


def test_a_policy_file_says_which_lr_envelope_it_was_trained_under(tiny_policy: Path, tiny_cosine_policy: Path) -> None:
    cosine, plain = resolve_policy(tiny_cosine_policy), resolve_policy(tiny_policy)
    assert trained_envelope(cosine, 12) == Envelope("cosine", 12, 0.05)
    assert trained_envelope(plain, 12) is None
    episode = load_spec("tiny").episode
    assert (policy_episode(cosine, episode).schedule, policy_episode(cosine, episode).schedule_floor) == (
        "cosine",
        0.05,
    )
    assert policy_episode(plain, episode) == episode
    other = dataclasses.replace(episode, schedule="cosine", schedule_floor=0.2)  # the spec run on does not matter
    assert policy_episode(cosine, other).schedule_floor == 0.05 and policy_episode(plain, other) == episode
    ctl = Controller(cosine, num_classes=3, epochs=5, lr=1e-2)
    assert ctl.lr == pytest.approx(1e-2) and ctl.envelope == Envelope("cosine", 5, 0.05)
    with pytest.raises(PolicyFileError, match="training.spec.episode: Envelope.kind: got 'linear'"):
        trained_envelope({"training": {"spec": {"episode": {"schedule": "linear"}}}}, 5)
