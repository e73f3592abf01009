"""Reuse a saved tuning policy: on a workload, on your own model and data, or in your own loop.

Three entry points, all driven by the same features (:class:`rlagent.features.RunTracker`) and the
same action decoding as the environment the policy was trained in:

* :func:`train_with_policy` trains a user's ``nn.Module`` with the policy choosing LR and batch size each epoch;
* :class:`Controller` (:mod:`rlagent.policy.controller`) is the policy alone, for people who keep
  their own training loop;
* :func:`run_policy` runs the policy on a named workload through ``HyperTuneEnv`` itself.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlagent.config import EnvSpec, load_spec
from rlagent.env import ROLLBACK, HyperTuneEnv
from rlagent.errors import SpecError
from rlagent.policy._args import (
    check_device,
    check_hparams,
    check_num_classes,
    check_split,
    model_width,
)
from rlagent.policy.controller import (
    Controller,
    action_kind,
    policy_episode,
    policy_path,
    resolve_policy,
    trained_start,
)
from rlagent.policy.file import SavedPolicy
from rlagent.probe import probe_seed
from rlagent.rollback import BestWeights
from rlagent.training import Trainer, run_epoch


@dataclass
class TuneResult:
    """A finished run: the trained model and what happened each epoch."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per epoch: lr, batch_size, train_loss, train_acc, val_loss, val_acc, seconds; with a
    ``discrete-rollback`` policy also ``rolled_back_to``: the epoch whose weights it started from
    (None: the previous epoch's, as usual); with a policy trained under an LR envelope also
    ``lr_envelope``: the epoch trained at ``lr × lr_envelope`` (``lr`` is the policy's choice)."""
    test_acc: float | None = None
    """Accuracy on ``test_data`` after the last epoch, if it was given (never used to decide)."""
    diverged: bool = False
    probe_lr: float | None = None
    """The minimum-loss LR of the probe that picked or checked the first LR (None: no probe ran)."""
    start_replaced: bool | None = None
    """Whether the start check replaced the ``lr`` given (None: no check ran)."""


def train_with_policy(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    *,
    epochs: int,
    policy: SavedPolicy | str | Path = "default",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    optimizer: str | torch.optim.Optimizer = "adam",
    lr: float | str | None = None,
    batch_size: int = 32,
    lr_range: tuple[float, float] | None = None,
    batch_size_range: tuple[int, int] | None = None,
    num_classes: int | None = None,
    test_data: Any = None,
    seed: int = 0,
    start_check: bool = True,
) -> TuneResult:
    """Train your own classifier with a saved policy choosing the LR and batch size every epoch.

    Args:
        model: Any ``nn.Module`` mapping a batch of inputs to class logits.
        train_data: ``(x, y)`` tensors/arrays or a torch ``Dataset`` of ``(x, y)`` items.
        val_data: Validation data in the same form; drives the policy's decisions.
        epochs: Epoch budget.
        policy: A :class:`SavedPolicy`, a policy directory, or a shipped policy's name. A
            ``discrete-rollback`` policy may load the weights of the best epoch so far back into
            ``model`` (kept as a copy on its device, with the optimiser's state).
        loss_fn: ``loss(logits, labels)`` with mean reduction; cross-entropy by default.
        device: Where to train; default: the model's device.
        optimizer: ``"adam"``, ``"sgd"`` or an optimiser over ``model``'s parameters.
        lr: Learning rate before the policy's first change, or ``"probe"``: a short LR range
            test on a copy of the run picks it (:meth:`Controller.probe`; at most 48 minibatches
            of 32), so no start has to be guessed. Default: ``"probe"`` for a policy trained
            from probe starts (:func:`trained_start`), else 1e-3.
        batch_size: Batch size before the policy's first change.
        lr_range: LR range; default: the range the policy was trained with.
        batch_size_range: Batch-size range; default: the policy's.
        num_classes: Number of classes; default: inferred from the labels (then the largest
            label + 1 must equal the model's output width).
        test_data: Optional data evaluated once at the end, for reporting only.
        seed: Seed of the shuffling order.
        start_check: Check an ``lr`` given as a number with that probe first: one above the probe's
            minimum-loss LR (where the short test's loss already rises) is replaced by the
            probe's start, any other kept (:func:`rlagent.probe.checked_start`). One epoch at
            a start that high can wreck a run before the policy acts.

    Returns:
        The trained model, the per-epoch history and the final test accuracy.

    Raises:
        SpecError: Before any epoch is trained, naming the argument, the value and what is
            allowed: labels that are not class indices below ``num_classes``, an empty split,
            non-finite inputs, a model whose output width is not the number of classes, an
            empty or inverted range, a device this machine lacks, ...
        PolicyFileError: If the policy cannot be loaded.
    """
    policy = resolve_policy(policy)
    if not isinstance(start_check, bool):
        raise SpecError("start_check", start_check, "true or false")
    check = start_check and lr is not None and not isinstance(lr, str)  # an LR the caller chose
    if lr is None:
        lr = trained_start(policy) or 1e-3
    check_hparams(
        epochs=epochs, lr=lr, batch_size=batch_size, lr_range=lr_range, batch_size_range=batch_size_range,
        optimizer=optimizer, loss_fn=loss_fn, seed=seed, model=model,
    )  # fmt: skip
    device = check_device(device, model)
    splits = {"train_data": check_split(train_data, "train_data", device)}
    splits["val_data"] = check_split(val_data, "val_data", device)
    if test_data is not None:
        splits["test_data"] = check_split(test_data, "test_data", device)
    train, val, test = splits["train_data"], splits["val_data"], splits.get("test_data")
    model = model.to(device)
    num_classes = check_num_classes(num_classes, model_width(model, val), splits)
    probe = isinstance(lr, str)
    ctl = Controller(
        policy, num_classes=num_classes, epochs=epochs, lr=1e-3 if probe else lr, batch_size=batch_size,
        lr_range=lr_range, batch_size_range=batch_size_range, n_train=len(train),
    )  # fmt: skip
    trainer = Trainer(
        model, train, optimizer=optimizer, lr=ctl.hparams.lr, batch_size=ctl.batch_size,
        generator=torch.Generator().manual_seed(seed), loss_fn=loss_fn, envelope=ctl.envelope,
    )  # fmt: skip
    if probe or check:
        ctl.probe(trainer, seed=probe_seed(seed), check=check)
    result = TuneResult(
        model=model, probe_lr=ctl.probe_result.lr if ctl.probe_result else None, start_replaced=ctl.start_replaced
    )
    first = trainer.evaluate(val)
    best = BestWeights(trainer) if ctl.kind == ROLLBACK else None
    ctl.start(val_loss=first.loss, val_acc=first.acc)
    for _ in range(epochs):
        extra: dict[str, Any] = {}
        if best is not None:
            extra["rolled_back_to"] = best.restore(trainer) if ctl.rollback else None
        if ctl.envelope is not None:
            extra["lr_envelope"] = ctl.envelope(ctl.tracker.epoch)
        epoch, obs = run_epoch(trainer, val, ctl.tracker, ctl.hparams)
        if best is not None:
            best.update(trainer, ctl.tracker, epoch.diverged)
        result.history.append({**epoch.record(), "seconds": epoch.stats.seconds, **extra})
        if epoch.diverged:
            result.diverged = True
            break
        ctl.act(obs)
    if test is not None:
        result.test_acc = trainer.evaluate(test).acc
    return result


def tune(*args: Any, **kwargs: Any) -> TuneResult:
    """Deprecated name of :func:`train_with_policy` (removed in the next release)."""
    warnings.warn(
        "rlagent.tune is deprecated and will be removed in the next release; use rlagent.train_with_policy",
        DeprecationWarning,
        stacklevel=2,
    )
    return train_with_policy(*args, **kwargs)


def run_policy(
    policy: SavedPolicy | str | Path,
    workload: str,
    *,
    spec: EnvSpec | str | Path = "default",
    seed: int = 0,
    epochs: int | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
    deterministic: bool = True,
    replica: int = 0,
    lr: float | str | None = None,
    batch_size: int | None = None,
    start_check: bool = True,
) -> dict[str, Any]:
    """One training run of ``workload`` with the policy choosing LR and batch size each epoch.

    Runs inside ``HyperTuneEnv``, so the run (data split, init, shuffling) is the one every other
    method gets for the same ``seed``. ``replica`` r >= 1 keeps that data split but draws other
    initial weights and shuffling (the env's ``reset`` option of that name). ``lr`` and
    ``batch_size`` replace the spec's initial values (e.g. to check robustness to a bad start);
    ``lr="probe"`` starts from an LR range test on a copy of the run (:mod:`rlagent.probe`), and
    is the default for a policy trained from probe starts (:func:`trained_start`). With
    ``start_check`` (default) a numeric ``lr`` is checked by that probe first: one above the
    probe's minimum-loss LR is replaced by the probe's start (:func:`rlagent.probe.checked_start`).

    Returns:
        ``{"workload", "seed", "history": [per-epoch info], "final_val_acc", "test_acc", "diverged",
        "heldout", "epochs", "probe_lr", "probe_epochs", "start_replaced"}``: ``probe_lr`` and
        ``probe_epochs`` are None and 0.0 without a probe; ``probe_epochs`` is the probe's samples
        over the training split's size; ``start_replaced`` is None unless a start was checked.
    """
    if not isinstance(start_check, bool):
        raise SpecError("start_check", start_check, "true or false")
    saved = resolve_policy(policy)
    env_spec = load_spec(spec) if not isinstance(spec, EnvSpec) else spec
    episode = policy_episode(saved, env_spec.episode)
    if epochs is not None:
        episode = dataclasses.replace(episode, epochs=epochs)
    env_spec = dataclasses.replace(env_spec, episode=episode)
    env = HyperTuneEnv(env_spec, device=device, num_threads=num_threads, workloads=[workload])
    options: dict[str, Any] = {"workload": workload}
    if replica:
        options["replica"] = replica
    lr = trained_start(saved) if lr is None else lr
    if lr is not None:
        options["lr"] = lr
        if start_check and not isinstance(lr, str):
            options["start_check"] = True
    if batch_size is not None:
        options["batch_size"] = batch_size
    obs, info = env.reset(seed=seed, options=options)
    probe_lr = info.get("probe_lr")
    probe_epochs = info.get("probe_samples", 0) / len(env.data.train)
    start_replaced = info.get("start_replaced")
    act = saved.actor(deterministic=deterministic)
    history, done = [], False
    while not done:
        obs, _, terminated, truncated, info = env.step(act(obs))
        keys = ("epoch", "lr", "batch_size", "train_loss", "train_acc", "val_loss", "val_acc", "diverged")
        extra = {k: info[k] for k in ("rolled_back_to", "lr_envelope") if k in info}
        history.append({**{k: info[k] for k in keys}, "seconds": env.epoch_time, **extra})
        done = terminated or truncated
    env.close()
    return {
        "workload": workload,
        "seed": seed,
        "replica": replica,
        "epochs": len(history),
        "heldout": info["heldout"],
        "trained_on": workload in saved.metadata.get("training", {}).get("trained_on", []),
        "history": history,
        "final_val_acc": info["val_acc"],
        "test_acc": info["test_acc"],
        "diverged": info["diverged"],
        "probe_lr": probe_lr,
        "probe_epochs": probe_epochs,
        "start_replaced": start_replaced,
    }


__all__ = [
    "Controller",
    "TuneResult",
    "action_kind",
    "policy_path",
    "resolve_policy",
    "run_policy",
    "train_with_policy",
    "trained_start",
    "tune",
]
