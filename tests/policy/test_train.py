"""PPO training over the env pool: saving, checkpoints, resume, guards."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces as gym_spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from rlagent.config import load_spec
from rlagent.errors import RLAgentError, SpecError
from rlagent.features import FEATURE_NAMES
from rlagent.policy.checkpoints import (
    ADDED_CHOICE_PRIOR,
    CRITIC_PREFIXES,
    checkpoint_policies,
    copy_policy,
    read_checkpoint,
)
from rlagent.policy.file import load_policy
from rlagent.policy.train import (
    PPOSettings,
    TrainConfig,
    build_ppo,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resume_seed,
    train_policy,
)
from rlagent.pool import EnvFactory, make_pool
from rlagent.pool.devices import WorkerSlot

TINY_PPO = PPOSettings(n_steps=16, batch_size=16, net_arch=(8,))


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        spec="tiny",
        timesteps=64,
        n_envs=2,
        devices="cpu",
        out=tmp_path / "pol",
        run_dir=tmp_path / "run",
        checkpoint_every=32,
        progress=False,
        ppo=TINY_PPO,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("agent")
    return tmp, train_policy(_config(tmp))


def test_training_saves_a_loadable_policy_with_its_record(trained: tuple[Path, object]) -> None:
    tmp, result = trained
    assert result.timesteps >= 64
    saved = load_policy(tmp / "pol")
    assert saved.feature_names == FEATURE_NAMES
    record = saved.metadata["training"]
    assert record["trained_on"] == ["tiny-mlp"]
    assert record["held_out"] == ["tiny-wide"]
    assert record["timesteps"] == result.timesteps
    assert record["seed"] == 0 and record["n_envs"] == 2
    assert saved.normalizer is not None and saved.normalizer["count"] > 1
    assert 0.0 <= result.update_share <= 1.0 and result.env_steps_per_second > 0


def test_training_log_names_only_training_workloads(trained: tuple[Path, object]) -> None:
    tmp, result = trained
    rows = list(csv.DictReader((tmp / "run" / "training_log.csv").open()))
    assert len(rows) == result.episodes > 0
    assert {r["workload"] for r in rows} == {"tiny-mlp"}


def test_checkpoints_are_written_and_resume_restores_state(trained: tuple[Path, object]) -> None:
    tmp, result = trained
    ckpt = latest_checkpoint(tmp / "run" / "checkpoints")
    listed = list_checkpoints(tmp / "run" / "checkpoints")
    assert [step for step, _ in listed] == [32, result.timesteps] and listed[-1][1] == ckpt  # oldest first
    assert list_checkpoints(listed[0][1]) == [listed[0]]  # one checkpoint named directly
    folder = tmp / "run" / "checkpoints"
    assert checkpoint_policies(folder) == [(s, p / "policy") for s, p in listed]
    assert checkpoint_policies(folder, every=1000) == [(result.timesteps, ckpt / "policy")]  # the last always
    assert checkpoint_policies(folder, first=33) == [(result.timesteps, ckpt / "policy")]
    with pytest.raises(RLAgentError, match="from step"):
        checkpoint_policies(folder, first=result.timesteps + 1)

    state = json.loads((ckpt / "state.json").read_text())
    assert state["num_timesteps"] == result.timesteps
    assert not list((tmp / "run" / "checkpoints").glob(".*"))  # no temp dirs left behind

    spec = load_spec("tiny")
    venv = VecNormalize(DummyVecEnv([lambda: EnvFactory(spec, ("tiny-mlp",))(WorkerSlot("cpu", 1))]))
    model = build_ppo(venv, TINY_PPO, seed=1, tensorboard=None)
    steps = load_checkpoint(ckpt, model, venv)
    assert steps == model.num_timesteps == result.timesteps
    saved = load_policy(tmp / "pol")  # the final policy equals the last checkpoint
    for key, value in saved.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[key], value), key
    np.testing.assert_array_equal(venv.obs_rms.mean, np.asarray(saved.normalizer["mean"]))
    assert venv.obs_rms.count == saved.normalizer["count"]
    assert model.policy.optimizer.state_dict()["state"], "optimizer moments restored"
    venv.close()
    # A checkpoint's policy records the run's spec as the final one does: reuse reads its ranges and start.
    in_ckpt = load_policy(ckpt / "policy").metadata["training"]
    assert in_ckpt["spec"] == saved.metadata["training"]["spec"] and in_ckpt["spec_name"] == "tiny"
    assert in_ckpt["checkpoint"] is True and in_ckpt["timesteps"] == result.timesteps


def test_resume_continues_the_step_count(trained: tuple[Path, object], tmp_path: Path) -> None:
    tmp, first = trained
    result = train_policy(
        _config(tmp_path, timesteps=first.timesteps + 32, resume=tmp / "run" / "checkpoints", n_envs=1)
    )
    assert result.timesteps == first.timesteps + 32
    record = load_policy(tmp_path / "pol").metadata["training"]
    assert record["timesteps"] == first.timesteps + 32
    # the continuation draws episodes of its own, not the ones the run started with
    assert record["resumed_from"]["at_step"] == first.timesteps
    assert record["resumed_from"]["seed"] == resume_seed(0, first.timesteps) != 0


@pytest.mark.parametrize("critic", [True, False])
def test_copying_a_saved_policy_takes_its_actor_normaliser_and_optionally_its_critic(
    trained: tuple[Path, object], critic: bool
) -> None:
    tmp, _ = trained
    saved = load_policy(tmp / "pol")
    venv = VecNormalize(DummyVecEnv([lambda: EnvFactory(load_spec("tiny"), ("tiny-mlp",))(WorkerSlot("cpu", 1))]))
    model = build_ppo(venv, TINY_PPO, seed=5, tensorboard=None)
    fresh = {k: v.clone() for k, v in model.policy.state_dict().items()}
    critic_keys = [k for k in fresh if k.startswith(CRITIC_PREFIXES)]
    assert critic_keys and len(critic_keys) < len(fresh)  # the split names real parameters
    assert not any(torch.equal(fresh[k], saved.policy.state_dict()[k]) for k in critic_keys if k.endswith("weight"))

    copy_policy(saved, model, venv, critic=critic, what="init_from: pol")
    state = model.policy.state_dict()
    for key, value in saved.policy.state_dict().items():
        expected = fresh[key] if key in critic_keys and not critic else value
        assert torch.equal(state[key], expected), key
    np.testing.assert_array_equal(venv.obs_rms.mean, np.asarray(saved.normalizer["mean"]))
    assert venv.obs_rms.count == saved.normalizer["count"]
    assert not model.policy.optimizer.state_dict()["state"]  # the optimiser starts afresh
    venv.close()


def _fine_tune(trained: tuple[Path, object], tmp_path: Path, **kw: Any) -> tuple[Any, Any, Any]:
    """Fine-tune the module's trained policy (fresh critic, γ 1): (start policy, result, tuned policy)."""
    tmp, _ = trained
    start = load_policy(tmp / "pol")
    ppo = dataclasses.replace(TINY_PPO, gamma=1.0)
    result = train_policy(_config(tmp_path, n_envs=1, ppo=ppo, init_from=tmp / "pol", init_critic=False, **kw))
    return start, result, load_policy(tmp_path / "pol")


def test_a_run_started_from_a_saved_policy_fine_tunes_it_from_step_zero(
    trained: tuple[Path, object], tmp_path: Path
) -> None:
    first = trained[1]
    start, result, tuned = _fine_tune(trained, tmp_path, timesteps=32)
    assert result.timesteps == 32  # a new run: its own step count, not the saved policy's
    record = tuned.metadata["training"]["initialised_from"]
    assert record["sha256"] == start.metadata["sha256"] and record["critic"] == "fresh"
    assert record["timesteps"] == first.timesteps and record["gamma"] == 0.99 and record["reward"]["mode"] == "val_acc"
    changed = [k for k, v in start.policy.state_dict().items() if not torch.equal(tuned.policy.state_dict()[k], v)]
    assert changed, "the PPO update moved the weights"
    # the normaliser went on from the saved statistics
    assert tuned.normalizer["count"] > start.normalizer["count"]


def test_a_critic_warmup_keeps_the_start_actor_and_statistics_until_its_step_count(
    trained: tuple[Path, object], tmp_path: Path
) -> None:
    start, _, tuned = _fine_tune(trained, tmp_path, timesteps=48, critic_warmup=32, checkpoint_every=16)
    # rollouts of 16 steps; a checkpoint at step N is written before the rollout ending there is
    # trained on: step 16 holds the untrained run, step 32 the run after one critic-only update
    at_16, at_32 = (
        read_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{n:09d}").policy for n in (16, 32)
    )  # fmt: skip
    assert tuned.metadata["training"]["initialised_from"]["critic_warmup"] == 32
    start_state, before, warm, end = (p.policy.state_dict() for p in (start, at_16, at_32, tuned))
    actor = [k for k in start_state if not k.startswith(CRITIC_PREFIXES)]
    critic = [k for k in start_state if k.startswith(CRITIC_PREFIXES)]
    assert all(torch.equal(warm[k], start_state[k]) and torch.equal(before[k], start_state[k]) for k in actor)
    assert any(not torch.equal(warm[k], before[k]) for k in critic), "the critic learnt during the warm-up"
    assert at_32.normalizer["count"] == start.normalizer["count"]
    # past the warm-up, both learn and the statistics go on
    assert any(not torch.equal(end[k], start_state[k]) for k in actor)
    assert tuned.normalizer["count"] > start.normalizer["count"]


def test_a_critic_warmup_needs_a_start_policy_and_fewer_steps_than_the_run(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="critic_warmup: got 8; expected 0 unless init_from"):
        _config(tmp_path, critic_warmup=8)
    with pytest.raises(SpecError, match=r"critic_warmup: got 64; expected an integer in \[0, timesteps=64\)"):
        _config(tmp_path, critic_warmup=64, init_from=tmp_path / "pol")


def _stacked_2(saved: Any) -> bool:
    shape = saved.policy.observation_space.shape
    return saved.frame_stack == 2 and not saved.recurrent and shape == (2 * len(FEATURE_NAMES),)


def _lstm_4(saved: Any) -> bool:
    return (
        saved.recurrent
        and saved.metadata["format_version"] == 5
        and saved.metadata["architecture"]["lstm_hidden_size"] == 4
    )


@pytest.mark.parametrize(
    ("history", "is_trained_kind", "refusal"),
    [
        (
            {"frame_stack": 2},
            _stacked_2,
            "sees 2 stacked observations, this run frame_stack = 1; resume with --frame-stack 2",
        ),
        (
            {"lstm_hidden_size": 4},
            _lstm_4,
            "has an LSTM of 4 units .*, this run lstm_hidden_size = 0; resume with --lstm 4",
        ),
    ],
)
def test_a_policy_with_history_trains_checkpoints_and_resumes_only_with_the_same_history(
    tmp_path: Path, history: dict[str, int], is_trained_kind: Callable[[Any], bool], refusal: str
) -> None:
    """Frame stacking and RecurrentPPO: the saved policy, its checkpoints and a resume keep them."""
    ppo = PPOSettings(n_steps=16, batch_size=16, net_arch=(8,), **history)
    result = train_policy(_config(tmp_path, ppo=ppo))
    saved = load_policy(result.policy_dir)
    assert is_trained_kind(saved)
    assert all(saved.metadata["training"]["ppo"][key] == value for key, value in history.items())
    checkpoints = tmp_path / "run" / "checkpoints"
    assert is_trained_kind(load_policy(list_checkpoints(checkpoints)[0][1] / "policy"))

    with pytest.raises(RLAgentError, match=refusal):
        train_policy(
            _config(tmp_path, timesteps=96, resume=checkpoints, out=tmp_path / "pol1", run_dir=tmp_path / "run1")
        )
    resumed = train_policy(
        _config(tmp_path, timesteps=result.timesteps + 32, resume=checkpoints, n_envs=1, ppo=ppo,
                out=tmp_path / "pol2", run_dir=tmp_path / "run2")
    )  # fmt: skip
    assert resumed.timesteps == result.timesteps + 32 and is_trained_kind(load_policy(tmp_path / "pol2"))


def test_evenly_spaced_checkpoints_count_a_runs_end_once(tmp_path: Path) -> None:
    def checkpoint(step: int) -> None:  # only the name and state.json are read to list them
        (tmp_path / f"step-{step:09d}").mkdir()
        (tmp_path / f"step-{step:09d}" / "state.json").write_text("{}")

    for step in (2000, 4000, 6000, 6112):
        checkpoint(step)
    steps = [s for s, _ in checkpoint_policies(tmp_path, every=2000)]
    assert steps == [2000, 4000, 6000, 6112]  # every candidate, for selection
    assert [s for s, _ in checkpoint_policies(tmp_path, every=2000, evenly=True)] == [2000, 4000, 6112]
    checkpoint(7500)  # a last checkpoint well past the multiple keeps both
    assert [s for s, _ in checkpoint_policies(tmp_path, every=2000, evenly=True)] == [2000, 4000, 6000, 7500]
    assert [s for s, _ in checkpoint_policies(tmp_path, evenly=True)] == [2000, 4000, 6000, 6112, 7500]


def test_resume_seed_is_fixed_per_step_and_differs_between_steps() -> None:
    assert resume_seed(7, 0) == 7
    assert resume_seed(7, 64) == resume_seed(7, 64)
    assert len({resume_seed(7, n) for n in (64, 128, 192)} | {7}) == 4


def test_resume_from_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RLAgentError, match="not a checkpoint"):
        train_policy(_config(tmp_path, resume=tmp_path / "nowhere"))


def test_time_limit_stops_early_and_still_saves(tmp_path: Path) -> None:
    result = train_policy(_config(tmp_path, timesteps=100_000, max_minutes=0.05, n_envs=1))
    assert 0 < result.timesteps < 100_000
    assert load_policy(tmp_path / "pol").metadata["training"]["timesteps"] == result.timesteps


def test_tensorboard_scalars_are_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    train_policy(_config(tmp_path, tensorboard=tmp_path / "tb", n_envs=1, checkpoint_every=0))
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"rlagent/final_val_acc", "rlagent/lr_chosen_log10", "rlagent/env_steps_per_s"} <= tags


def test_a_training_pool_refuses_held_out_workloads() -> None:
    with pytest.raises(SpecError, match="held out"):
        make_pool(load_spec("tiny"), n_envs=1, devices="cpu", workloads=["tiny-wide"])


@pytest.mark.parametrize(
    ("field", "value"), [("timesteps", 0), ("n_envs", 0), ("checkpoint_every", -1), ("max_minutes", 0)]
)
def test_bad_training_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(SpecError, match=field):
        TrainConfig(**{field: value})


def test_a_start_policy_is_refused_with_resume_and_a_fresh_critic_without_one(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="init_from: .*not given with resume"):
        _config(tmp_path, init_from=tmp_path / "pol", resume=tmp_path / "run")
    with pytest.raises(SpecError, match=r"init_critic \(--fresh-critic\): got False; expected True unless init_from"):
        _config(tmp_path, init_critic=False)


def test_bad_ppo_settings_name_the_field() -> None:
    with pytest.raises(SpecError, match="ppo.activation"):
        PPOSettings(activation="sigmoid")
    with pytest.raises(SpecError, match="ppo.n_steps"):
        PPOSettings(n_steps=0)
    with pytest.raises(SpecError, match=r"ppo.learning_rate: got 0;"):
        PPOSettings(learning_rate=0)
    with pytest.raises(SpecError, match=r"ppo.learning_rate_end: got -0.1;.*>= 0"):
        PPOSettings(learning_rate_end=-0.1)
    with pytest.raises(SpecError, match="ppo.learning_rate_end"):
        PPOSettings(learning_rate_end=float("nan"))
    for bad in (0, 17, 2.0, True):
        with pytest.raises(SpecError, match="ppo.frame_stack"):
            PPOSettings(frame_stack=bad)
    for bad in (-1, 257, 4.0, True):
        with pytest.raises(SpecError, match=r"ppo.lstm_hidden_size.*0..256"):
            PPOSettings(lstm_hidden_size=bad)


def test_ppo_learning_rate_falls_linearly_over_the_run_and_resumes_on_schedule(tmp_path: Path) -> None:
    ppo = PPOSettings(n_steps=16, batch_size=16, net_arch=(8,), learning_rate=1e-3, learning_rate_end=2e-4)

    def scheduled(step: int) -> float:
        return 1e-3 - (1e-3 - 2e-4) * step / 96

    def adam_lr(run: str, step: int) -> float:
        state = json.loads((tmp_path / run / "checkpoints" / f"step-{step:09d}" / "state.json").read_text())
        return state["param_groups"][0]["lr"]

    # rollouts of 2 envs x 16 steps; SB3 sets the rate before each update from the progress after
    # its rollout, and the checkpoints at 48 and 80 are written in the middle of the next rollout
    train_policy(_config(tmp_path, timesteps=96, checkpoint_every=16, ppo=ppo))
    assert adam_lr("run", 16) == 1e-3  # no update yet
    assert adam_lr("run", 48) == pytest.approx(scheduled(32))
    assert adam_lr("run", 80) == pytest.approx(scheduled(64))
    assert adam_lr("run", 96) == pytest.approx(2e-4)  # written after the last update
    assert load_policy(tmp_path / "pol").metadata["training"]["ppo"]["learning_rate_end"] == 2e-4

    # resumed at step 32 for the same run, it continues the schedule rather than restarting it
    resumed = _config(
        tmp_path, timesteps=96, checkpoint_every=16, ppo=ppo, out=tmp_path / "pol2", run_dir=tmp_path / "run2",
        resume=tmp_path / "run" / "checkpoints" / "step-000000032",
    )  # fmt: skip
    train_policy(resumed)
    assert adam_lr("run2", 80) == pytest.approx(scheduled(64))


def test_a_discrete_policy_copied_into_a_rollback_run_keeps_its_choices_and_rarely_rolls_back(
    trained: tuple[Path, object], tmp_path: Path
) -> None:
    from tests.conftest import TINY_ROLLBACK

    tmp, _ = trained
    saved = load_policy(tmp / "pol")
    (tmp_path / "rb.toml").write_text(TINY_ROLLBACK)
    venv = VecNormalize(
        DummyVecEnv([lambda: EnvFactory(load_spec(tmp_path / "rb.toml"), ("tiny-mlp",))(WorkerSlot("cpu", 1))])
    )
    model = build_ppo(venv, TINY_PPO, seed=5, tensorboard=None)
    copy_policy(saved, model, venv, what="init_from: pol")
    state, old = model.policy.state_dict(), saved.policy.state_dict()
    assert state["action_net.weight"].shape[0] == old["action_net.weight"].shape[0] + 2
    assert (
        torch.equal(state["action_net.weight"][:8], old["action_net.weight"])
        and not state["action_net.weight"][8:].any()
    )
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(6, len(FEATURE_NAMES))), dtype=torch.float32)
    with torch.no_grad():
        new = model.policy.get_distribution(obs).distribution
        was = saved.policy.get_distribution(obs).distribution
    for before, after in zip(was, new[:2]):  # the LR and batch-size choices are the saved policy's
        torch.testing.assert_close(after.probs, before.probs)
    torch.testing.assert_close(new[2].probs[:, 1], torch.full((6,), ADDED_CHOICE_PRIOR))
    venv.close()


def test_a_run_with_the_rollback_action_fine_tunes_a_discrete_policy(tiny_rollback_policy: Path) -> None:
    tuned = load_policy(tiny_rollback_policy)
    assert tuned.action_space == gym_spaces.MultiDiscrete([5, 3, 2])
    assert tuned.metadata["training"]["initialised_from"]["action_kind"] == "discrete"
    assert tuned.metadata["training"]["spec"]["episode"]["action"] == "discrete-rollback"


def test_widening_leaves_a_head_alone_unless_the_new_space_only_adds_dimensions() -> None:
    from rlagent.policy.checkpoints import widen_action_head

    state = {"action_net.weight": torch.ones(8, 4), "action_net.bias": torch.zeros(8)}
    for new in (gym_spaces.MultiDiscrete([7, 3]), gym_spaces.MultiDiscrete([5, 3]), gym_spaces.Box(-1, 1, (2,))):
        kept = dict(state)
        widen_action_head(kept, gym_spaces.MultiDiscrete([5, 3]), new)
        assert (
            kept["action_net.weight"] is state["action_net.weight"]
            and kept["action_net.bias"] is state["action_net.bias"]
        )
    widen_action_head(state, gym_spaces.MultiDiscrete([5, 3]), gym_spaces.MultiDiscrete([5, 3, 3]))
    assert state["action_net.bias"].shape == (11,)
    probs = torch.softmax(state["action_net.bias"][8:], 0)  # zero weights: the same at every input
    torch.testing.assert_close(probs[1:].sum(), torch.tensor(ADDED_CHOICE_PRIOR))
