"""Training settings are checked before the first env step; resume survives damage and refuses other specs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rlagent.cli import main
from rlagent.config import load_spec
from rlagent.env import HyperTuneEnv
from rlagent.errors import RLAgentError, SpecError
from rlagent.policy.checkpoints import find_checkpoint
from rlagent.policy.preflight import check_training
from rlagent.policy.train import PPOSettings, TrainConfig, train_policy
from tests.conftest import TINY_ROLLBACK

TINY_PPO = PPOSettings(n_steps=16, batch_size=16, net_arch=(8,))


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        spec="tiny", timesteps=32, n_envs=1, devices="cpu", out=tmp_path / "pol", run_dir=tmp_path / "run",
        checkpoint_every=16, progress=False, ppo=TINY_PPO,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _in_process() -> DummyVecEnv:
    return DummyVecEnv([lambda: Monitor(HyperTuneEnv("tiny"))])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run with checkpoints at 16 and 32 steps."""
    tmp = tmp_path_factory.mktemp("run")
    train_policy(_config(tmp), venv=_in_process())
    return tmp


# ------------------------------------------------------------------------ 2. up front


def test_cli_refuses_a_ten_layer_network_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    start = time.perf_counter()
    code = main(["train", "--spec", "tiny", "--out", str(tmp_path / "p"), "--net-arch", *["8"] * 9])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "ppo.net_arch" in err and "Traceback" not in err
    assert time.perf_counter() - start < 5.0 and not (tmp_path / "p").exists()


def test_allow_listed_but_oversized_network_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, ppo=PPOSettings(net_arch=(4096,) * 8))
    with pytest.raises(SpecError, match=r"ppo.net_arch.*at most 2,000,000"):
        check_training(config)


def test_out_naming_an_existing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pol").write_text("not a policy")
    with pytest.raises(SpecError, match="out: .* not an existing file"):
        train_policy(_config(tmp_path), venv=_in_process())
    assert not (tmp_path / "run" / "training_log.csv").exists()


def test_unwritable_out_or_run_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError, match="out: .*not an existing file"):
        check_training(_config(tmp_path, out=tmp_path / "file" / "pol"))
    with pytest.raises(SpecError, match="run_dir: .*writable folder"):  # even root cannot write here
        check_training(_config(tmp_path, run_dir=Path("/proc/rlagent-no-such-folder/run")))
    with pytest.raises(SpecError, match="run_dir: .*not an existing file"):
        check_training(_config(tmp_path, run_dir=tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_out_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SpecError, match="out: .*writable folder"):
        check_training(_config(tmp_path, out=locked / "pol"))


def test_missing_devices_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SpecError, match="devices: got 'bogus'"):
        check_training(_config(tmp_path, devices="bogus"))
    code = main(["train", "--spec", "tiny", "--out", str(tmp_path / "p"), "--devices", "cuda:99"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cuda:99" in err


# ----------------------------------------------------------------------------- 4. resume


def test_corrupt_optimizer_falls_back_to_the_newest_intact_checkpoint(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(run / "run" / "checkpoints", checkpoints)
    newest = sorted(checkpoints.glob("step-*"))[-1]
    (newest / "optimizer.safetensors").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        ckpt = find_checkpoint(checkpoints)
    assert ckpt.path == sorted(checkpoints.glob("step-*"))[-2]
    assert newest.name in caplog.text and "optimizer.safetensors" in caplog.text
    result = train_policy(
        _config(tmp_path, timesteps=48, resume=checkpoints, run_dir=tmp_path / "r2"), venv=_in_process()
    )
    assert result.timesteps == 48
    with pytest.raises(RLAgentError, match="optimizer.safetensors is unreadable"):
        find_checkpoint(newest)  # a checkpoint named directly is never silently replaced


def test_resume_with_another_spec_is_refused_naming_both(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(_tiny_toml().replace('name = "tiny"', 'name = "other"'))
    assert load_spec(other).name == "other"
    config = _config(tmp_path, spec=other, resume=run / "run" / "checkpoints")
    with pytest.raises(RLAgentError, match="trained with spec 'tiny' but this run uses spec 'other'"):
        check_training(config)
    allowed = check_training(_config(tmp_path, spec=other, resume=run / "run" / "checkpoints", allow_spec_change=True))
    assert allowed.checkpoint is not None and allowed.checkpoint.spec_name == "tiny"


def test_a_record_that_spells_a_default_out_resumes_and_a_real_change_is_still_refused(
    run: Path, tmp_path: Path
) -> None:
    """Resume compares specs as read back: a checkpoint written while a field at its default was
    recorded (here the reward's ``reversal_cost`` and the episode's envelope, off) is the same spec;
    a changed value under the same name is not."""
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(run / "run" / "checkpoints", ckpts)
    for state_file in ckpts.glob("step-*/state.json"):
        state = json.loads(state_file.read_text())
        state["spec"]["reward"]["reversal_cost"] = 0.0
        state["spec"]["episode"].update(schedule="constant", schedule_floor=0.01)
        state_file.write_text(json.dumps(state))
    assert check_training(_config(tmp_path, resume=ckpts)).checkpoint is not None
    for state_file in ckpts.glob("step-*/state.json"):
        state = json.loads(state_file.read_text())
        state["spec"]["episode"]["epochs"] += 1
        state_file.write_text(json.dumps(state))
    with pytest.raises(RLAgentError, match="spec 'tiny' but this run uses spec 'tiny' \\(same name, other contents\\)"):
        check_training(_config(tmp_path, resume=ckpts))


def test_a_policy_to_start_from_must_fit_the_run(run: Path, tmp_path: Path) -> None:
    policy = run / "pol"
    assert check_training(_config(tmp_path, init_from=policy)).init is not None
    rollback, wide = tmp_path / "rollback.toml", tmp_path / "wide.toml"
    rollback.write_text(TINY_ROLLBACK)
    wide.write_text(
        TINY_ROLLBACK.replace("tiny-rollback", "tiny-wide-actions").replace('"discrete-rollback"', '"discrete-wide"')
    )
    assert check_training(_config(tmp_path, spec=rollback, init_from=policy)).init is not None  # its head is widened
    refusals = {
        r"has net_arch \{'pi': \[8\], 'vf': \[8\]\} with tanh, this run \{'pi': \[16\]": dict(
            ppo=PPOSettings(net_arch=(16,))
        ),
        "sees 1 stacked observations, this run frame_stack = 2; start from it with --frame-stack 1": dict(
            ppo=PPOSettings(net_arch=(8,), frame_stack=2)
        ),
        "trained with observation normalisation, this run normalize_obs = False": dict(
            ppo=PPOSettings(net_arch=(8,), normalize_obs=False)
        ),
        "policy not found": dict(init_from=tmp_path / "nowhere"),
        "acts discrete, spec 'tiny-wide-actions' asks for episode.action = 'discrete-wide'": dict(spec=wide),
    }
    for message, change in refusals.items():
        kw = {"init_from": policy, **change}
        with pytest.raises(RLAgentError, match="init_from: .*" + message):
            check_training(_config(tmp_path, **kw))


def test_cli_start_from_a_missing_policy_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p"
    code = main(["train", "--spec", "tiny", "--out", str(out), "--init-from", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "init_from" in err and "Traceback" not in err
    assert not out.exists()


def test_stale_temporary_checkpoint_folders_are_removed(run: Path, tmp_path: Path) -> None:
    stale = tmp_path / "run" / "checkpoints" / ".step-000000016.tmp-abcd"
    (stale / "policy").mkdir(parents=True)
    keep = tmp_path / "run" / "checkpoints" / "notes"
    keep.mkdir()
    check_training(_config(tmp_path))
    assert not stale.exists() and keep.exists()


def _tiny_toml() -> str:
    from rlagent.config import resolve_spec_path

    return resolve_spec_path("tiny").read_text()


def test_a_discrete_checkpoint_does_not_resume_as_a_rollback_run(run: Path, tmp_path: Path) -> None:
    rollback = tmp_path / "rollback.toml"
    rollback.write_text(TINY_ROLLBACK)
    config = _config(tmp_path, spec=rollback, resume=run / "run" / "checkpoints", allow_spec_change=True)
    with pytest.raises(RLAgentError, match="resume: .*acts discrete, spec 'tiny-rollback' asks for episode.action"):
        check_training(config)
