"""Everything about a training run that can be checked before its first env step.

:func:`check_training` is called by ``train_policy`` (and by the CLI before it builds a Ray
pool): the network is allow-listed and small enough to be saved, the output and run folders are
writable, ``--out`` is not an existing file, the devices exist, a checkpoint to resume from is
intact and was trained with the same spec and network, and a policy to start from
(``init_from``) is intact and has the run's network. Each failure is one
:class:`~rlagent.errors.RLAgentError` (usually a :class:`~rlagent.errors.SpecError`) naming the
setting, its value and what is allowed -- raised before any epoch is trained.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlagent.config import EnvSpec, load_spec, spec_from_dict
from rlagent.env import ROLLBACK, action_kind_of, action_space
from rlagent.errors import PolicyFileError, RLAgentError, SpecError
from rlagent.features import FEATURE_NAMES
from rlagent.policy._checks import _check_architecture
from rlagent.policy._integrity import check_param_count, expected_shapes
from rlagent.policy.checkpoints import Checkpoint, clean_stale, find_checkpoint
from rlagent.policy.file import JSON_NAME, SavedPolicy, load_policy
from rlagent.pool.devices import plan_workers

logger = logging.getLogger(__name__)


@dataclass
class Preflight:
    """What :func:`check_training` resolved: the spec, seed, folders and checkpoint to use."""

    spec: EnvSpec
    seed: int
    out: Path
    run_dir: Path
    checkpoint: Checkpoint | None
    init: SavedPolicy | None = None
    """The saved policy whose weights start the run (``init_from``), or None."""


def check_net_arch(net_arch: Any, activation: str, action: str, lstm_hidden_size: int = 0) -> None:
    """Refuse a PPO network the policy file format would refuse when saving it."""
    arch = {"pi": list(net_arch), "vf": list(net_arch)} if isinstance(net_arch, (list, tuple)) else net_arch
    try:
        _check_architecture({"policy": "MlpPolicy", "net_arch": arch, "activation": activation})
        shapes = expected_shapes(len(FEATURE_NAMES), action_space(action), arch, lstm_hidden_size)
        check_param_count(shapes)
    except PolicyFileError as exc:
        raise SpecError("ppo.net_arch", net_arch, str(exc).removeprefix("architecture not allow-listed: ")) from None


def check_writable_dir(path: Path, field: str) -> None:
    """Create ``path`` if needed and prove it writable by making (and removing) a folder in it."""
    if path.exists() and not path.is_dir():
        raise SpecError(field, str(path), "a folder to write into, not an existing file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".rlagent-write-check-", dir=path))
    except OSError as exc:
        raise SpecError(field, str(path), f"a writable folder ({exc.strerror or exc})") from None


def check_output(out: Path) -> None:
    """``out`` must be a new path, an empty folder or a policy directory, in a writable folder."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SpecError("out", str(out), "a policy directory to write, not an existing file")
    if out.is_dir() and any(out.iterdir()) and not (out / JSON_NAME).is_file():
        raise SpecError(
            "out", str(out), "a new path, an empty folder or a policy directory (this folder holds other files)"
        )
    check_writable_dir(out.parent, "out")


def check_devices(n_envs: int | None, devices: Any) -> None:
    """The devices must exist on this machine."""
    try:
        plan_workers(n_envs, devices)
    except ValueError as exc:
        raise SpecError("devices", devices, str(exc)) from None


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _same_spec(recorded: Any, spec: EnvSpec) -> bool:
    """Whether a checkpoint's spec record is ``spec``: equal as read back, so a record written
    before a field's default was left out (or kept) still matches; equal as data if it no longer
    reads."""
    current = _plain(spec.to_dict())
    if recorded == current:
        return True
    try:
        return _plain(spec_from_dict(recorded).to_dict()) == current
    except RLAgentError:
        return False


def check_resume(ckpt: Checkpoint, spec: EnvSpec, ppo: Any, *, allow_spec_change: bool) -> None:
    """Refuse to resume a checkpoint of another spec (unless allowed) or another network."""
    if ckpt.spec is not None:
        same = _same_spec(ckpt.spec, spec)
    else:  # written before checkpoints recorded their spec: compare the names
        same = ckpt.spec_name in (spec.name, str(spec.name))
    if not same:
        detail = " (same name, other contents)" if ckpt.spec_name == spec.name else ""
        message = (
            f"resume: {ckpt.path} was trained with spec {ckpt.spec_name!r} but this run uses spec {spec.name!r}{detail}"
        )
        if not allow_spec_change:
            raise RLAgentError(f"{message}; resume with the same spec, or pass --allow-spec-change to record both")
        logger.warning("%s; continuing (allow_spec_change)", message)
    check_same_network(ckpt.policy, f"resume: {ckpt.path}", spec, ppo)


def check_same_network(saved: SavedPolicy, label: str, spec: EnvSpec, ppo: Any) -> None:
    """Refuse a saved policy whose network, history, actions or observation normalisation differ
    from this run's (``ppo``: its ``PPOSettings``); errors start with ``label``."""
    net_arch, activation, frame_stack = ppo.net_arch, ppo.activation, ppo.frame_stack
    option = "resume" if label.startswith("resume") else "start from it"
    arch = saved.metadata["architecture"]
    want = {"pi": list(net_arch), "vf": list(net_arch)}
    if arch["net_arch"] != want or arch["activation"] != activation:
        raise RLAgentError(
            f"{label} has net_arch {arch['net_arch']} with {arch['activation']}, this run {want} with {activation}"
        )
    if saved.frame_stack != frame_stack:
        raise RLAgentError(
            f"{label} sees {saved.frame_stack} stacked observations, this run frame_stack = {frame_stack}; "
            f"{option} with --frame-stack {saved.frame_stack}"
        )
    lstm = arch.get("lstm_hidden_size", 0)
    if lstm != ppo.lstm_hidden_size:
        raise RLAgentError(
            f"{label} has an LSTM of {lstm} units (0: none), this run lstm_hidden_size = "
            f"{ppo.lstm_hidden_size}; {option} with --lstm {lstm}"
        )
    kind = action_kind_of(saved.action_space)
    widens = option != "resume" and (kind, spec.episode.action) == ("discrete", ROLLBACK)  # see widen_action_head
    if kind != spec.episode.action and not widens:
        raise RLAgentError(f"{label} acts {kind}, spec {spec.name!r} asks for episode.action = {spec.episode.action!r}")
    if (saved.normalizer is not None) != ppo.normalize_obs:
        raise RLAgentError(
            f"{label} was trained {'with' if saved.normalizer is not None else 'without'} observation "
            f"normalisation, this run normalize_obs = {ppo.normalize_obs}"
        )


def check_init(config: Any, spec: EnvSpec) -> SavedPolicy:
    """The saved policy ``config.init_from`` names, checked to fit this run's network."""
    try:
        saved = load_policy(config.init_from)
    except PolicyFileError as exc:
        raise RLAgentError(f"init_from: {exc}") from None
    check_same_network(saved, f"init_from: {config.init_from}", spec, config.ppo)
    return saved


def check_training(config: Any, *, check_devices_: bool = True) -> Preflight:
    """Check a ``TrainConfig`` before anything is trained; see the module docstring.

    Args:
        config: The run's :class:`~rlagent.policy.train.TrainConfig`.
        check_devices_: Check ``config.devices`` on this machine (False when the envs run
            elsewhere, e.g. on a Ray cluster).

    Returns:
        The resolved spec, seed, output and run folders, and the checkpoint to resume from.
    """
    spec = config.spec if isinstance(config.spec, EnvSpec) else load_spec(config.spec)
    seed = spec.seed if config.seed is None else config.seed
    out = Path(config.out)
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / f"{spec.name}__{out.name}__{seed}"
    check_net_arch(config.ppo.net_arch, config.ppo.activation, spec.episode.action, config.ppo.lstm_hidden_size)
    if check_devices_:
        check_devices(config.n_envs, config.devices)
    check_output(out)
    check_writable_dir(run_dir, "run_dir")
    if config.tensorboard:
        check_writable_dir(Path(config.tensorboard), "tensorboard")
    clean_stale(run_dir / "checkpoints")
    ckpt = None
    if config.resume:
        clean_stale(Path(config.resume))
        ckpt = find_checkpoint(config.resume)
        check_resume(ckpt, spec, config.ppo, allow_spec_change=config.allow_spec_change)
    init = check_init(config, spec) if config.init_from else None
    return Preflight(spec, seed, out, run_dir, ckpt, init)
