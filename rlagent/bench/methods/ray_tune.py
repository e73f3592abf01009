"""Ray Tune's PBT, PB2 and ASHA as baselines (``ray-pbt``, ``ray-pb2``, ``ray-asha``; with ``--backend ray``).

All are real ``ray.tune.Tuner`` runs whose trials train through the same
:class:`~rlagent.bench.methods.base.Run` (one :func:`~rlagent.training.run_epoch` per report) as
every other method, on the same seeded data split, initial weights and shuffling order:

* ``ray-pbt`` — ``PopulationBasedTraining`` (Ray's defaults: bottom 25% copy a top-25% trial's
  weights and optimiser state, LR resampled with p = 0.25 or ×0.8 / ×1.2, batch size to a
  neighbouring power of two) every 3 epochs over a population of 8, reported as ``ray-pbt-8``;
  population·E epochs, like the in-process ``pbt``.
* ``ray-pb2`` — ``PB2`` (Parker-Holder et al. 2020): PBT whose explore step picks the new
  hyperparameters with a GP bandit (scikit-learn's GP) instead of random perturbation, over
  log10(LR) and log2(batch size) within the ranges; same population, interval and budget as
  ``ray-pbt``, reported as ``ray-pb2-8``.
* ``ray-asha`` — ``ASHAScheduler(max_t=E, grace_period=1, reduction_factor=3)``; trials start
  until the epochs trained reach 16·E (Optuna ``hyperband``'s budget), then all stop.

All start from random search's configurations (the first ones are ``random``'s), select the
trial with the best final validation accuracy among those that trained all E epochs, and report
its test accuracy, which the trainable measures after its last epoch and which never takes part in
selection. Ray Tune's schedulers draw from the global ``random`` and NumPy generators; these
are seeded from the task's seed while the Tuner runs (and restored after), but which trial
reports first depends on timing, so a Ray Tune result may differ slightly from run to run.
Ray is an optional extra (``pip install 'rlagent[ray]'``), imported only when used.
On a cluster of several machines the results folder must be on a filesystem every node sees:
tasks write their trial files, and Ray Tune its experiments, there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlagent.bench.methods.base import (
    PBT_INTERVAL,
    PBT_POPULATION,
    SEARCH_TRIALS,
    MethodResult,
    Outcome,
    Run,
    TrialContext,
    best_index,
    make_result,
    method_rng,
    sample_configs,
    workload_hparams,
)
from rlagent.errors import RLAgentError
from rlagent.hparams import HParams

__all__ = ["RAY_METHODS", "ray_asha", "ray_pb2", "ray_pbt"]

logger = logging.getLogger(__name__)

ASHA_REDUCTION = 3
ASHA_BUDGET_RUNS = SEARCH_TRIALS
"""ASHA's budget in full E-epoch runs (the same as Optuna Hyperband's)."""
_STATE_FILE = "state.pt"  # model, optimiser and shuffling-generator state (tensors only)
_RUN_FILE = "run.json"  # the run's history (its lineage, after PBT exploits)
_CHATTY_TRIAL_LOGGERS = ("ray.train", "ray.tune")


# ---------------------------------------------------------------------------------------------
# Ray Tune baselines: the trainable


def _save_state(run: Run, folder: Path) -> None:
    """The run's training state as tensors (``torch.load(weights_only=True)`` reads it) and JSON."""
    state = {
        "model": run.trainer.model.state_dict(),
        "optimizer": run.trainer.optimizer.state_dict(),
        "generator": run.trainer.generator.get_state(),
    }
    torch.save(state, folder / _STATE_FILE)
    (folder / _RUN_FILE).write_text(json.dumps({"history": run.history, "diverged": run.diverged}))


def _load_state(run: Run, folder: Path, device: str) -> None:
    state = torch.load(folder / _STATE_FILE, map_location=device, weights_only=True)  # our own files
    run.trainer.model.load_state_dict(state["model"])
    run.trainer.optimizer.load_state_dict(state["optimizer"])
    run.trainer.generator.set_state(state["generator"].cpu())
    saved = json.loads((folder / _RUN_FILE).read_text())
    run.history, run.diverged = saved["history"], saved["diverged"]
    run.trainer.set_epochs_trained(len(run.history))  # a hidden mid-run LR shift stays where it was


def _trainable(
    config: dict[str, Any], *, ctx: TrialContext, threads: int, checkpoint_every: int, stop_diverged: bool
) -> None:
    """One Ray Tune trial: the seeded run of ``ctx`` at ``config``'s LR and batch size, one report per epoch.

    Resumes from ``tune.get_checkpoint()`` when Tune restores the trial (PBT: a pause, or another
    trial's state to exploit). Reports ``val_acc`` each epoch, with a checkpoint every
    ``checkpoint_every`` epochs (0: never); the last report adds ``test_acc`` (reporting only)
    and the run's history. With ``stop_diverged`` a diverged run ends at once.
    """
    from ray import tune

    for name in _CHATTY_TRIAL_LOGGERS:  # INFO lines for every checkpoint and restore
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    run = Run(ctx)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _load_state(run, Path(folder), ctx.device)
    if "log10_lr" in config:  # PB2's continuous search space; batch sizes stay powers of two
        lr, batch_size = 10.0 ** config["log10_lr"], 2 ** round(config["log2_batch_size"])
    else:
        lr, batch_size = config["lr"], config["batch_size"]
    hp = run.hparams.with_values(lr, batch_size)
    lr, batch_size = hp.lr, hp.batch_size
    epochs = ctx.workload.epochs
    while len(run.history) < epochs:
        record = run.step(lr, batch_size)
        metrics = {
            "val_acc": record["val_acc"], "epoch": record["epoch"], "lr": lr, "batch_size": batch_size,
            "diverged": record["diverged"],
        }  # fmt: skip
        if record["epoch"] == epochs or (record["diverged"] and stop_diverged):
            # JSON text: Tune's loggers would try to plot a list of records.
            tune.report({**metrics, "test_acc": run.test_acc(), "history": json.dumps(run.history)})
            return
        if checkpoint_every and record["epoch"] % checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                _save_state(run, Path(folder))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        else:
            tune.report(metrics)


# ---------------------------------------------------------------------------------------------
# Ray Tune baselines: running a Tuner


@contextlib.contextmanager
def _seeded_globals(seed: int) -> Iterator[None]:
    """Seed the global ``random`` and NumPy generators, which Ray Tune's schedulers draw from
    (they take no generator), and restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Silence what Ray Tune prints at ``verbose=0`` all the same (the experiment's header, INFO
    logs, and a warning for every trial that the budget left unstarted); its warnings stay."""
    loggers = {
        "ray.tune": logging.WARNING,
        "ray.tune.analysis.experiment_analysis": logging.ERROR,  # "Failed to fetch metrics" of unstarted trials
        "ray.tune.logger": logging.ERROR,  # "Remote file not found" when PBT restores a trial whose storage is local
    }
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _budget_stopper(budget: int) -> Any:
    """A ``tune.Stopper`` that stops the whole experiment once its trials have trained ``budget`` epochs."""
    from ray import tune

    class EpochBudget(tune.Stopper):
        def __init__(self) -> None:
            self.epochs: dict[str, int] = {}

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result.get("training_iteration", 0)))
            return False

        def stop_all(self) -> bool:
            return sum(self.epochs.values()) >= budget

    return EpochBudget()


@dataclasses.dataclass
class _Trial:
    """The last report of one Tune trial."""

    lr: float
    batch_size: int
    epochs: int
    """Epochs in its run (for a PBT trial, its lineage's)."""
    iterations: int
    """Tune's ``training_iteration``: the epochs this trial trained."""
    val_acc: float
    test_acc: float | None
    history: list[dict[str, Any]] | None


def _fit(
    ctx: TrialContext,
    name: str,
    configs: Sequence[tuple[float, int]],
    sizes: Sequence[int],
    *,
    scheduler: Any,
    stop: Any,
    checkpoint_every: int,
    stop_diverged: bool,
    log_space: bool = False,
) -> tuple[list[_Trial], float, Path]:
    """Run a Tuner of ``len(configs)`` trials starting at ``configs``; their last reports, seconds, folder.

    ``log_space``: the trials' configs hold ``log10_lr`` and ``log2_batch_size`` (continuous, for
    PB2's GP) instead of ``lr`` and ``batch_size``.

    The experiment lives in ``ctx.workdir / name`` and starts afresh (an interrupted one is
    removed: a restored PBT run is not the experiment it would have been).
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    threads = torch.get_num_threads()  # the slot's, set by the benchmark task that runs us
    storage = ctx.workdir.absolute()
    shutil.rmtree(storage / name, ignore_errors=True)
    trainable = tune.with_parameters(
        _trainable, ctx=ctx, threads=threads, checkpoint_every=checkpoint_every, stop_diverged=stop_diverged
    )  # ctx carries the loaded dataset (ctx.sources): trials do not load it again
    resources = {"cpu": threads, "gpu": int(ctx.device.startswith("cuda"))}
    if log_space:
        points = [{"log10_lr": math.log10(lr), "log2_batch_size": math.log2(bs)} for lr, bs in configs]
        space = {k: tune.uniform(*v) for k, v in _log_bounds(ctx, sizes).items()}
    else:
        points = [{"lr": lr, "batch_size": bs} for lr, bs in configs]
        space = {"lr": tune.loguniform(*ctx.workload.lr_range), "batch_size": tune.choice(list(sizes))}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,  # every trial starts at one of `points`
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=len(points), scheduler=scheduler, reuse_actors=True,
            search_alg=BasicVariantGenerator(points_to_evaluate=points),
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), stop=stop, verbose=0),
    )  # fmt: skip
    start = time.perf_counter()
    with _seeded_globals(int(method_rng(ctx, name).integers(2**31 - 1))), _quiet_tune():
        grid = tuner.fit()
    seconds = time.perf_counter() - start
    if grid.errors:
        raise RLAgentError(f"{name}: {len(grid.errors)} Ray Tune trials failed; the first:\n{grid.errors[0]}")
    trials = []
    for result in grid:
        m = result.metrics or {}
        if "val_acc" not in m:
            continue  # never started (the budget ran out first)
        trials.append(
            _Trial(
                lr=float(m["lr"]), batch_size=int(m["batch_size"]), epochs=int(m["epoch"]),
                iterations=int(m["training_iteration"]), val_acc=float(m["val_acc"]),
                test_acc=float(m["test_acc"]) if "test_acc" in m else None,
                history=json.loads(m["history"]) if "history" in m else None,
            )
        )  # fmt: skip
    return trials, seconds, storage / name


def _select(
    ctx: TrialContext, method: str, trials: Sequence[_Trial], seconds: float, details: dict[str, Any]
) -> MethodResult:
    """The trial with the best final validation accuracy among those that trained all E epochs."""
    complete = [i for i, t in enumerate(trials) if t.epochs == ctx.workload.epochs and t.test_acc is not None]
    if not complete:
        raise RLAgentError(f"{method}: no Ray Tune trial trained all {ctx.workload.epochs} epochs")
    selected = complete[best_index([trials[i].val_acc for i in complete])]
    best = trials[selected]
    history = best.history or []
    out = Outcome(
        history=history, val_acc=best.val_acc, test_acc=float(best.test_acc), diverged=bool(history and history[-1]["diverged"]),
        epochs=sum(t.iterations for t in trials), seconds=seconds,
    )  # fmt: skip
    details = {
        "lr": best.lr, "batch_size": best.batch_size, "selected": selected, "n_trials": len(trials),
        "n_complete": len(complete), **details,
    }  # fmt: skip
    return make_result(ctx, method, out, details)


# ---------------------------------------------------------------------------------------------
# Ray Tune baselines


def _clip_lr(config: dict[str, Any], *, hparams: HParams) -> dict[str, Any]:
    """PBT's ``custom_explore_fn``: keep the perturbed LR in the benchmark's range, as ``pbt`` does."""
    return {**config, "lr": hparams.with_values(config["lr"], hparams.batch_size).lr}


def ray_pbt(ctx: TrialContext, *, population: int = PBT_POPULATION, interval: int = PBT_INTERVAL) -> list[MethodResult]:
    """Ray Tune's ``PopulationBasedTraining`` of ``population`` trials, population·E epochs.

    The initial configurations are random search's first ones (those of ``pbt`` too). Every
    ``interval`` epochs (``synch=True``: once every trial has got there, so a population larger
    than the cluster's free slots is ranked as a whole) the bottom 25% take a top-25% trial's
    checkpoint — weights, optimiser state and shuffling state — and explore from its
    hyperparameters: LR resampled log-uniformly with p = 0.25 or ×0.8 / ×1.2 (clipped to the
    range), batch size to a neighbouring power of two (or resampled). Trials stop at E epochs, so
    no perturbation follows the last. Reported as ``ray-pbt-{population}``; the selected trial's
    history is its lineage's.
    """
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    if population < 2 or interval < 1:
        raise ValueError(f"ray_pbt: got population={population}, interval={interval}; expected >= 2 and >= 1")
    epochs = ctx.workload.epochs
    hparams = workload_hparams(ctx)
    sizes = hparams.batch_sizes()
    configs = sample_configs(ctx, population, hparams)
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=interval, synch=True,
        hyperparam_mutations={"lr": tune.loguniform(*ctx.workload.lr_range), "batch_size": list(sizes)},
        custom_explore_fn=functools.partial(_clip_lr, hparams=hparams),
    )  # fmt: skip
    method = f"ray-pbt-{population}"
    trials, seconds, folder = _fit(
        ctx, method, configs, sizes, scheduler=scheduler, stop={"training_iteration": epochs},
        checkpoint_every=interval, stop_diverged=False,
    )  # fmt: skip
    details = {
        "population": population, "interval": interval, "initial": [list(c) for c in configs],
        "final": [[t.lr, t.batch_size] for t in trials], "final_val_accs": [t.val_acc for t in trials],
        "scheduler": f"PopulationBasedTraining(perturbation_interval={interval}, synch=True)", "experiment": str(folder),
    }  # fmt: skip
    return [_select(ctx, method, trials, seconds, details)]


def _log_bounds(ctx: TrialContext, sizes: Sequence[int]) -> dict[str, list[float]]:
    low, high = ctx.workload.lr_range
    return {
        "log10_lr": [math.log10(low), math.log10(high)],
        "log2_batch_size": [math.log2(sizes[0]), math.log2(sizes[-1])],
    }


def ray_pb2(ctx: TrialContext, *, population: int = PBT_POPULATION, interval: int = PBT_INTERVAL) -> list[MethodResult]:
    """Ray Tune's ``PB2`` of ``population`` trials, population·E epochs: ``ray-pbt`` with a GP-bandit explore.

    As ``ray-pbt`` (the same initial configurations, ``synch=True``, bottom 25% take a top-25%
    trial's checkpoint every ``interval`` epochs), but the exploited trial's new hyperparameters
    are chosen by PB2's GP-UCB bandit over log10(LR) and log2(batch size) within the ranges
    (the trial rounds the exponent, so batch sizes stay powers of two). Needs scikit-learn.
    Reported as ``ray-pb2-{population}``.
    """
    from ray.tune.schedulers.pb2 import PB2

    if population < 2 or interval < 1:
        raise ValueError(f"ray_pb2: got population={population}, interval={interval}; expected >= 2 and >= 1")
    epochs = ctx.workload.epochs
    hparams = workload_hparams(ctx)
    sizes = hparams.batch_sizes()
    configs = sample_configs(ctx, population, hparams)
    bounds = _log_bounds(ctx, sizes)
    scheduler = PB2(
        time_attr="training_iteration", perturbation_interval=interval, synch=True, hyperparam_bounds=bounds
    )
    method = f"ray-pb2-{population}"
    trials, seconds, folder = _fit(
        ctx, method, configs, sizes, scheduler=scheduler, stop={"training_iteration": epochs},
        checkpoint_every=interval, stop_diverged=False, log_space=True,
    )  # fmt: skip
    details = {
        "population": population, "interval": interval, "initial": [list(c) for c in configs], "bounds": bounds,
        "final": [[t.lr, t.batch_size] for t in trials], "final_val_accs": [t.val_acc for t in trials],
        "scheduler": f"PB2(perturbation_interval={interval}, synch=True)", "experiment": str(folder),
    }  # fmt: skip
    return [_select(ctx, method, trials, seconds, details)]


def ray_asha(ctx: TrialContext, *, budget_runs: int = ASHA_BUDGET_RUNS) -> list[MethodResult]:
    """Ray Tune's ``ASHAScheduler(max_t=E, grace_period=1, reduction_factor=3)`` on a budget of ``budget_runs``·E epochs.

    Equal compute: as with Optuna's ``hyperband``, trials (random search's configurations, in
    order) start until the epochs trained by all trials reach ``budget_runs``·E; then every trial
    stops, those running included (the total may exceed the budget by the epochs that running
    trials report meanwhile, at most one each). A trial that diverges ends at once, charged the
    epochs it trained (stopping early is ASHA's mechanism). The best trial among those that
    trained all E epochs is selected.
    """
    from ray.tune.schedulers import ASHAScheduler

    epochs = ctx.workload.epochs
    budget = budget_runs * epochs
    hparams = workload_hparams(ctx)
    sizes = hparams.batch_sizes()
    configs = sample_configs(ctx, budget, hparams)  # every trial trains >= 1 epoch: enough to spend the budget
    scheduler = ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=ASHA_REDUCTION)
    trials, seconds, folder = _fit(
        ctx, "ray-asha", configs, sizes, scheduler=scheduler, stop=_budget_stopper(budget), checkpoint_every=0,
        stop_diverged=True,
    )  # fmt: skip
    details = {
        "budget": budget, "scheduler": f"ASHAScheduler(max_t={epochs}, grace_period=1, reduction_factor={ASHA_REDUCTION})",
        "experiment": str(folder),
    }  # fmt: skip
    return [_select(ctx, "ray-asha", trials, seconds, details)]


RAY_METHODS: dict[str, Callable[[TrialContext], list[MethodResult]]] = {
    "ray-pbt": ray_pbt, "ray-pb2": ray_pb2, "ray-asha": ray_asha,
}  # fmt: skip
"""Ray Tune baselines by task name, available with the benchmark's ray backend only (their
tasks must run where Ray is initialised). ``ray-pbt`` / ``ray-pb2`` report ``ray-pbt-8`` /
``ray-pb2-8`` (their population)."""
