"""A saved tuning policy as a controller for your own training loop, and what its file says.

:class:`Controller` is the policy alone: it turns your loop's per-epoch metrics into the next
epoch's LR and batch size with the same features (:class:`rlagent.features.RunTracker`) and action
decoding as the environment it was trained in. :func:`resolve_policy`, :func:`trained_start`,
:func:`trained_envelope` and :func:`action_kind` read a policy by path or shipped name and the
start, LR envelope and action set it was trained with; :func:`policy_episode` puts the last two
into a spec's episode. :mod:`rlagent.policy.reuse` builds on them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlagent.config import ACTIONS, EpisodeSpec, data_dir
from rlagent.env import action_kind_of, action_space, decode_action, rolls_back
from rlagent.errors import PolicyFileError, RLAgentError, SpecError
from rlagent.features import RunTracker
from rlagent.hparams import Envelope, HParams
from rlagent.policy._args import check_optimizer, check_split
from rlagent.policy.file import SavedPolicy, load_policy
from rlagent.probe import Probe, checked_start, start_from_probe
from rlagent.rollback import resume_hparams, rollback_due
from rlagent.training import Trainer
from rlagent.workloads import DEFAULT_BATCH_SIZE_RANGE, DEFAULT_LR_RANGE

logger = logging.getLogger(__name__)


def policy_path(policy: str | Path) -> Path:
    """The directory of a policy: ``policy`` itself, or the shipped policy of that name.

    Raises:
        RLAgentError: If it is neither (the message lists the shipped policies).
    """
    if not isinstance(policy, (str, os.PathLike)):
        raise SpecError("policy", policy, "a SavedPolicy, a policy directory or a shipped policy's name")
    p = Path(policy)
    if p.exists():
        return p
    shipped = data_dir("policies") / str(policy)
    if p.parent == Path(".") and shipped.is_dir():
        return shipped
    names = sorted(d.name for d in data_dir("policies").iterdir() if (d / "policy.json").is_file())
    raise RLAgentError(f"policy: {policy!s} is neither a policy directory nor a shipped policy {names}")


def resolve_policy(policy: SavedPolicy | str | Path) -> SavedPolicy:
    """A loaded policy, from a path or the name of a shipped policy (``"default"``)."""
    saved = policy if isinstance(policy, SavedPolicy) else load_policy(policy_path(policy))
    action_kind(saved)  # refuses an action space rlagent has no kind for
    return saved


def action_kind(policy: SavedPolicy) -> str:
    """The ``episode.action`` kind the policy acts in (``discrete``, ``discrete-wide``,
    ``discrete-rollback``, ``discrete-coupled`` or ``continuous``), from its action space.

    Raises:
        PolicyFileError: If no kind has the policy's action space.
    """
    kind = action_kind_of(policy.action_space)
    if kind is None:
        raise PolicyFileError(
            f"policy acts in {policy.action_space}; rlagent's actions are "
            + ", ".join(f"{action_space(k)} ({k})" for k in ACTIONS)
        )
    return kind


def trained_start(policy: SavedPolicy | Mapping[str, Any]) -> str | None:
    """``"probe"`` if the policy's spec starts runs at the LR probe's LR (``episode.init_lr =
    "probe"``: every named workload, and the ``probe_fraction`` share of procedural draws), else
    None. A policy trained so runs from the probe unless given an LR.

    ``policy``: a loaded policy, or its ``policy.json`` as read (for a policy this version may not load).
    """
    return "probe" if _trained_episode(policy).get("init_lr") == "probe" else None


def trained_envelope(policy: SavedPolicy | Mapping[str, Any], epochs: int) -> Envelope | None:
    """The LR envelope the policy was trained under (``episode.schedule``), for a run of ``epochs``
    epochs: every epoch trains at the LR it chose times the envelope's value. None for a policy
    trained without one (``constant``, or a file from before the option).

    ``policy``: a loaded policy, or its ``policy.json`` as read.
    """
    schedule, floor = _trained_schedule(policy)
    if schedule == "constant":
        return None
    try:
        return Envelope(schedule, int(epochs), floor)
    except ValueError as exc:
        raise PolicyFileError(f"training.spec.episode: {exc}") from None


def policy_episode(policy: SavedPolicy, episode: EpisodeSpec) -> EpisodeSpec:
    """``episode`` with the policy's action kind and the LR envelope it was trained under: a policy
    acts in the env it was trained in, whatever spec it runs on."""
    schedule, floor = _trained_schedule(policy)
    return dataclasses.replace(episode, action=action_kind(policy), schedule=schedule, schedule_floor=floor)


def _trained_schedule(policy: SavedPolicy | Mapping[str, Any]) -> tuple[str, float]:
    """``(episode.schedule, episode.schedule_floor)`` of the policy's training spec; a record leaves
    them out at their defaults (:meth:`rlagent.config.EnvSpec.to_dict`)."""
    episode = _trained_episode(policy)
    return episode.get("schedule", EpisodeSpec.schedule), float(
        episode.get("schedule_floor", EpisodeSpec.schedule_floor)
    )


def _trained_episode(policy: SavedPolicy | Mapping[str, Any]) -> dict[str, Any]:
    """The ``episode`` table of the spec the policy was trained on (empty if not recorded)."""
    metadata = policy.metadata if isinstance(policy, SavedPolicy) else policy
    return (metadata.get("training") or {}).get("spec", {}).get("episode", {})


def _trained_ranges(policy: SavedPolicy) -> tuple[tuple[float, float], tuple[int, int]]:
    episode = _trained_episode(policy)
    lr = tuple(episode.get("lr_range") or DEFAULT_LR_RANGE)
    bs = tuple(episode.get("batch_size_range") or DEFAULT_BATCH_SIZE_RANGE)
    return (float(lr[0]), float(lr[1])), (int(bs[0]), int(bs[1]))


class Controller:
    """A saved policy that picks the next epoch's LR and batch size from your loop's metrics.

    Call :meth:`start` once with the untrained model's validation metrics, then train each epoch
    with ``controller.lr`` / ``controller.batch_size`` and report its metrics with
    :meth:`observe`, which returns the LR and batch size for the next epoch::

        ctl = Controller("default", num_classes=10, epochs=15)
        ctl.probe_model(model, (x_train, y_train))  # the default policy starts from the LR probe
        lr, bs = ctl.start(val_loss=2.30, val_acc=0.10)
        for epoch in range(15):
            ...  # one epoch at lr, bs
            lr, bs = ctl.observe(train_loss=..., train_acc=..., val_loss=..., val_acc=...)

    A ``discrete-rollback`` policy may also ask to roll the run back to its best epoch so far:
    when :attr:`rollback` is True, load the weights and optimiser state you kept after epoch
    ``ctl.tracker.best_epoch`` (the best validation accuracy so far; 0: the untrained model)
    before the next epoch. The LR returned is then already the one that epoch trained at, moved
    by the policy's factor. :class:`rlagent.rollback.BestWeights` keeps them for a
    :class:`~rlagent.training.Trainer`; :func:`rlagent.train_with_policy` does all of it.

    A policy trained under an LR envelope (``episode.schedule = "cosine"``; :attr:`envelope`) chooses
    an LR that the envelope then scales epoch by epoch; the LR returned is the one to train at.

    Args:
        policy: A :class:`SavedPolicy`, a policy directory, or a shipped policy's name.
        num_classes: Number of classes of the task.
        epochs: Epoch budget of the run (the policy sees progress through it).
        lr: Learning rate before the policy's first change (default 1e-3). A policy trained from LR
            probe starts expects :meth:`probe` before :meth:`start` when no LR is given.
        batch_size: Batch size before the policy's first change.
        lr_range: Range the LR is kept in; default: the range the policy was trained with.
        batch_size_range: Range the batch size is kept in; default: the policy's.
        n_train: Training-set size (batch sizes are capped at it).
        deterministic: Take the policy's most likely action (else sample).
    """

    def __init__(
        self,
        policy: SavedPolicy | str | Path = "default",
        *,
        num_classes: int,
        epochs: int,
        lr: float | None = None,
        batch_size: int = 32,
        lr_range: tuple[float, float] | None = None,
        batch_size_range: tuple[int, int] | None = None,
        n_train: int | None = None,
        deterministic: bool = True,
    ) -> None:
        if epochs < 1:
            raise SpecError("epochs", epochs, "an integer >= 1")
        if num_classes < 2:
            raise SpecError("num_classes", num_classes, "an integer >= 2")
        self.policy = resolve_policy(policy)
        self.kind = action_kind(self.policy)
        trained_lr, trained_bs = _trained_ranges(self.policy)
        lr_range = tuple(lr_range) if lr_range else trained_lr
        batch_size_range = tuple(batch_size_range) if batch_size_range else trained_bs
        self.deterministic = deterministic
        self._actor = self.policy.actor(deterministic=deterministic)
        self.tracker = RunTracker(
            num_classes=num_classes, lr_range=lr_range, batch_size_range=batch_size_range, epochs=epochs
        )
        self.envelope = trained_envelope(self.policy, epochs)
        """The LR envelope the policy was trained under (None: none): :attr:`lr` is the LR it chose
        (``hparams.lr``, what it sees and moves) times the envelope's value for the next epoch."""
        self._expects_probe = lr is None and trained_start(self.policy) == "probe"
        lr = 1e-3 if lr is None else lr
        self.hparams = HParams(lr, batch_size, lr_range, batch_size_range, n_train or batch_size_range[1]).clipped()
        self.history: list[dict[str, float]] = []
        self.probe_result: Probe | None = None
        """What :meth:`probe` measured, if it ran."""
        self.start_replaced: bool | None = None
        """Whether :meth:`probe` with ``check`` replaced the first LR (None: no check ran)."""
        self.rollback = False
        """Whether the policy's last action asks to roll the run back to its best epoch before the
        next one (only a ``discrete-rollback`` policy asks)."""

    def probe(self, trainer: Trainer, *, seed: int = 0, check: bool = False) -> float:
        """Set the first LR from a short LR range test on a copy of ``trainer``'s run.

        The run itself is untouched (:func:`rlagent.probe.probe_lr`); ``trainer.lr`` is set to
        the probe's minimum-loss LR ÷ 10, kept in the range. With ``check``, the first LR is
        kept unless it is above the probe's minimum-loss LR (:func:`rlagent.probe.checked_start`;
        :attr:`start_replaced` says whether it was). Call it before :meth:`start`.

        Returns:
            The new LR.

        Raises:
            RuntimeError: If the run has started.
        """
        if self.tracker.epoch > 0 or self.history:
            raise RuntimeError("Controller.probe: call it before the first epoch")
        if check:
            self.probe_result, self.hparams, self.start_replaced = checked_start(trainer, self.hparams, seed=seed)
        else:
            self.probe_result, self.hparams = start_from_probe(trainer, self.hparams, seed=seed)
        return self.lr

    def probe_model(
        self,
        model: nn.Module,
        train_data: Any,
        *,
        optimizer: str | torch.optim.Optimizer = "adam",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        check: bool = False,
    ) -> float:
        """:meth:`probe` for your own loop: the range test runs on a copy of ``model`` trained on
        ``train_data`` (``(x, y)`` tensors or arrays, or a ``TensorDataset``) with ``optimizer``
        (``"adam"``, ``"sgd"`` or an optimiser over ``model``'s parameters) at :attr:`batch_size`.
        ``model`` is untouched; an optimiser given is set to the new LR. ``check``: as :meth:`probe`.

        Returns:
            The new LR.
        """
        if not isinstance(model, nn.Module):
            raise SpecError("model", type(model).__name__, "a torch nn.Module")
        check_optimizer(optimizer, loss_fn)
        device = next(iter(model.parameters()), torch.empty(0)).device
        train = check_split(train_data, "train_data", device)
        trainer = Trainer(
            model, train, optimizer=optimizer, lr=self.lr, batch_size=min(self.batch_size, len(train)),
            generator=torch.Generator().manual_seed(seed), loss_fn=loss_fn,
        )  # fmt: skip
        return self.probe(trainer, seed=seed, check=check)

    @property
    def lr(self) -> float:
        """Learning rate to train the next epoch at: the policy's choice, times its envelope's value
        for that epoch if it was trained under one (:attr:`envelope`)."""
        return self.hparams.lr * (self.envelope(self.tracker.epoch) if self.envelope else 1.0)

    @property
    def batch_size(self) -> int:
        """Batch size for the next epoch."""
        return self.hparams.batch_size

    @property
    def lr_range(self) -> tuple[float, float]:
        return self.hparams.lr_range

    @property
    def batch_size_range(self) -> tuple[int, int]:
        return self.hparams.batch_size_range

    def act(self, obs: np.ndarray) -> tuple[float, int]:
        """The policy's next (LR, batch size) from an observation of the run (by :attr:`tracker`)."""
        self._actor.deterministic = self.deterministic
        action = self._actor(obs)
        lr_f, bs_f = decode_action(action, self.kind)
        self.rollback = rollback_due(rolls_back(action, self.kind), self.tracker)
        self.hparams = resume_hparams(self.hparams, self.tracker, lr_f, bs_f, self.rollback)
        return self.lr, self.batch_size

    def start(self, *, val_loss: float, val_acc: float) -> tuple[float, int]:
        """Metrics of the untrained model; returns (LR, batch size) for the first epoch."""
        if self._expects_probe and self.probe_result is None:
            logger.warning(
                "Controller: this policy was trained from LR-probe starts; call probe(trainer) before start(), "
                "or pass lr=, to start where it expects (starting at lr=%g)",
                self.lr,
            )
        obs = self.tracker.start(val_loss=val_loss, val_acc=val_acc, lr=self.hparams.lr, batch_size=self.batch_size)
        return self.act(obs)

    def observe(
        self,
        *,
        train_loss: float,
        train_acc: float,
        val_loss: float,
        val_acc: float,
        loss_noise: float = 0.0,
        noise: tuple[float, float, float, float] | None = None,
    ) -> tuple[float, int]:
        """Metrics of the epoch just trained; returns (LR, batch size) for the next one."""
        self.history.append(
            {"epoch": self.tracker.epoch + 1, "lr": self.lr, "batch_size": self.batch_size,
             "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
        )  # fmt: skip
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise RLAgentError(
                f"epoch {self.tracker.epoch + 1}: the loss is not finite (train {train_loss}, val {val_loss})"
            )
        obs = self.tracker.update(
            train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
            lr=self.hparams.lr, batch_size=self.batch_size, loss_noise=loss_noise, noise=noise,
        )  # fmt: skip
        return self.act(obs)


__all__ = [
    "Controller", "action_kind", "policy_episode", "policy_path", "resolve_policy", "trained_envelope", "trained_start",
]  # fmt: skip
