"""Baselines: every tuning method of the benchmark, each trained through the one :class:`Trainer`.

A method is a function ``(ctx: TrialContext) -> list[MethodResult]`` registered in
:data:`METHODS`. Every training run it makes is ``make_run(ctx.workload, ctx.seed)``, so for one
seed all methods see the same data split, initial weights and shuffling order, and an epoch costs
the same everywhere. Methods differ only in how they pick the learning rate and batch size:

* ``random`` — 16 static configurations; reported as ``random-1``, ``random-4``, ``random-16``.
* ``tpe`` — an Optuna TPE study of 16 static configurations (``tpe-16``).
* ``hyperband`` — Optuna TPE + Hyperband pruning, trials added until 16 runs' worth of epochs.
* ``pbt`` — Population Based Training with Ray Tune's default exploit/explore rules (``pbt-8``).
* ``constant``, ``cosine``, ``plateau`` — hand schedules; ``schedulefree``, ``prodigy`` —
  learning-rate-free optimisers; ``open-loop`` — a fixed per-epoch schedule replayed;
  ``policy`` — a saved tuning policy, through ``HyperTuneEnv`` (:func:`rlagent.reuse.run_policy`).

Selection always uses final validation accuracy; test accuracy is only reported. A run whose loss
becomes non-finite stops and scores chance accuracy on validation and test.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from rlagent.config import EnvSpec
from rlagent.env import apply_action
from rlagent.errors import RLAgentError
from rlagent.training import Trainer
from rlagent.workloads import Data, Source, WorkloadSpec, make_run

logger = logging.getLogger(__name__)

RANDOM_SIZES = (1, 4, 16)
"""Random search is reported as the best of the first N of its runs, for each N here."""
SEARCH_TRIALS = 16
"""Trials of TPE, and Hyperband's budget in full runs."""
HYPERBAND_REDUCTION = 3
PBT_POPULATION = 8
PBT_INTERVAL = 3
"""Epochs between PBT's exploit/explore steps."""
PBT_QUANTILE = 0.25
PBT_RESAMPLE_P = 0.25
PBT_LR_FACTORS = (0.8, 1.2)
DEFAULT_LR = 1e-3
"""LR of ``constant`` and the start of ``plateau``."""
DEFAULT_BATCH_SIZE = 32
"""Batch size of ``constant``, ``plateau``, ``schedulefree`` and ``prodigy``."""
_BENCH_EXTRA = "pip install 'rlagent[bench]'"

Decide = Callable[[int, Sequence[dict[str, Any]], Trainer], tuple[float, int]]
"""``decide(epoch, history, trainer) -> (lr, batch_size)`` for the 0-based ``epoch`` about to run."""


@dataclass
class MethodResult:
    """What one tuning method achieved on one workload and seed."""

    method: str
    """Reported name, e.g. ``random-16``, ``tpe-16``, ``pbt-8``, ``policy``."""
    workload: str
    seed: int
    val_acc: float
    """Final validation accuracy of the run the method selected (selection uses validation only)."""
    test_acc: float
    """Test accuracy of that run (reported, never used to select)."""
    epochs: int
    """Epochs trained by the method in total: its compute cost."""
    seconds: float
    """Wall time of the method."""
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-able: chosen hyperparameters, per-epoch history of the selected run, trial counts..."""

    def to_dict(self) -> dict[str, Any]:
        """A plain-data copy (JSON-able)."""
        return asdict(self)


@dataclass(frozen=True)
class TrialContext:
    """Everything a method needs for one (method, workload, seed)."""

    spec: EnvSpec
    workload: WorkloadSpec
    """The workload with the spec's episode overrides applied (``spec.workload(name)``)."""
    seed: int
    """Seed of the run (split, init, shuffling) and of the method's own samplers."""
    workdir: Path
    """Private folder of this (method, workload, seed): Optuna journals."""
    device: str = "cpu"
    policy: str | None = None
    """Policy directory (or shipped policy name) for ``policy``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Inputs from other methods' results: see :data:`METHOD_NEEDS`."""
    sources: dict[str, Source] = field(default_factory=dict, compare=False, repr=False)
    """Cache of loaded datasets; pass one dict to many contexts to load each dataset once."""


# ---------------------------------------------------------------------------------------------
# The one run helper: every method trains through _Run (one epoch at a time) or _train (E epochs).


class _Run:
    """The seeded run of ``ctx.workload`` trained one epoch at a time at the (lr, batch size) given.

    Args:
        ctx: The trial; the run is ``make_run(ctx.workload, ctx.seed)``.
        optimizer: Builds the optimiser from the parameters (its own LR is kept); default: the
            workload's optimiser family.
    """

    def __init__(self, ctx: TrialContext, optimizer: Callable[[Iterable[torch.nn.Parameter]], Any] | None = None):
        run = make_run(ctx.workload, ctx.seed, device=ctx.device, sources=ctx.sources)
        self.data: Data = run.data
        if optimizer is None:
            opt: Any = ctx.workload.optimizer
            lr = DEFAULT_LR
        else:
            opt = optimizer(run.model.parameters())
            lr = float(opt.param_groups[0]["lr"])
        self.trainer = Trainer(
            run.model, run.data.train, optimizer=opt, lr=lr, batch_size=DEFAULT_BATCH_SIZE, generator=run.generator
        )
        self.chance = 1.0 / run.data.num_classes
        self.diverged = False
        self.history: list[dict[str, Any]] = []

    def step(self, lr: float, batch_size: int) -> dict[str, Any]:
        """Train one epoch, evaluate on validation and return the epoch's record.

        Once diverged the run no longer trains: each further epoch is recorded at chance accuracy.
        """
        self.trainer.lr, self.trainer.batch_size = float(lr), int(batch_size)
        record: dict[str, Any] = {"epoch": len(self.history) + 1, "lr": float(lr), "batch_size": int(batch_size)}
        if not self.diverged:
            stats = self.trainer.train_epoch()
            val = None if stats.diverged else self.trainer.evaluate(self.data.val)
            self.diverged = val is None or not math.isfinite(val.loss)
        if self.diverged:
            # As good as guessing; losses are left out (None) to keep the record JSON-able.
            record.update(train_loss=None, train_acc=self.chance, val_loss=None, val_acc=self.chance, diverged=True)
        else:
            record.update(
                train_loss=stats.train_loss, train_acc=stats.train_acc, val_loss=val.loss, val_acc=val.acc,
                diverged=False,
            )  # fmt: skip
        self.history.append(record)
        return record

    def test_acc(self) -> float:
        """Accuracy on the test split now (chance if diverged). For reporting only."""
        return self.chance if self.diverged else self.trainer.evaluate(self.data.test).acc


@dataclass
class _Outcome:
    history: list[dict[str, Any]]
    val_acc: float
    test_acc: float
    diverged: bool
    epochs: int
    seconds: float


def _train(
    ctx: TrialContext,
    decide: Decide,
    *,
    optimizer: Callable[[Iterable[torch.nn.Parameter]], Any] | None = None,
    after_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> _Outcome:
    """Train the run for ``ctx.workload.epochs`` epochs, ``decide`` picking (lr, batch size) before each.

    ``after_epoch`` sees each epoch's record and may raise to stop the run (Hyperband pruning).
    A diverged run stops at once but is charged the full budget E: a static configuration
    commits to E epochs, and charging less would make divergent search spaces look cheap.
    """
    start = time.perf_counter()
    run = _Run(ctx, optimizer)
    for epoch in range(ctx.workload.epochs):
        lr, batch_size = decide(epoch, run.history, run.trainer)
        record = run.step(lr, batch_size)
        if after_epoch is not None:
            after_epoch(record)
        if record["diverged"]:
            logger.debug("%s seed %d: diverged in epoch %d at lr %.3g", ctx.workload.name, ctx.seed, epoch + 1, lr)
            break
    return _Outcome(
        history=run.history,
        val_acc=run.history[-1]["val_acc"],
        test_acc=run.test_acc(),
        diverged=run.diverged,
        epochs=ctx.workload.epochs,
        seconds=time.perf_counter() - start,
    )


def _constant(lr: float, batch_size: int) -> Decide:
    return lambda epoch, history, trainer: (lr, batch_size)


# ---------------------------------------------------------------------------------------------
# Search spaces and seeding.


def _rng(ctx: TrialContext, purpose: str) -> np.random.Generator:
    """A generator of this method's own, drawn from ``ctx.seed`` and what it is for."""
    return np.random.default_rng([zlib.crc32(purpose.encode()), ctx.seed % 2**64])


def _n_train(ctx: TrialContext) -> int:
    return len(make_run(ctx.workload, ctx.seed, device="cpu", sources=ctx.sources).data.train)


def batch_sizes(workload: WorkloadSpec, n_train: int) -> list[int]:
    """Powers of two inside the workload's batch-size range, capped at the training-set size."""
    low = workload.batch_size_range[0]
    high = max(low, min(workload.batch_size_range[1], n_train))
    first, last = (low - 1).bit_length(), high.bit_length() - 1
    return [2**e for e in range(first, last + 1)] or [low]


def _sample_lr(rng: np.random.Generator, lr_range: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(math.log(lr_range[0]), math.log(lr_range[1]))))


def _sample_configs(ctx: TrialContext, n: int, sizes: Sequence[int]) -> list[tuple[float, int]]:
    """Random search's configurations: LR log-uniform, batch size uniform over the powers of two.

    The first ``n`` are the same for every ``n`` (PBT's initial population is random search's
    first members), so the methods are compared on paired draws.
    """
    rng = _rng(ctx, "configs")
    out = []
    for _ in range(n):
        lr = _sample_lr(rng, ctx.workload.lr_range)
        out.append((lr, int(sizes[int(rng.integers(len(sizes)))])))
    return out


def _best(values: Sequence[float]) -> int:
    """Index of the highest value; the earliest one on ties."""
    return int(np.argmax(np.asarray(values, dtype=float)))


def _require(module: str, method: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RLAgentError(f"the {method!r} baseline needs {module}: {_BENCH_EXTRA}") from exc


def _extra(ctx: TrialContext, method: str, *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in ctx.extra]
    if missing:
        raise RLAgentError(f"the {method!r} baseline needs ctx.extra{missing} (from {METHOD_NEEDS[method]!r})")
    return [ctx.extra[k] for k in keys]


def _result(ctx: TrialContext, method: str, out: _Outcome, details: dict[str, Any]) -> MethodResult:
    return MethodResult(
        method=method, workload=ctx.workload.name, seed=ctx.seed, val_acc=out.val_acc, test_acc=out.test_acc,
        epochs=out.epochs, seconds=out.seconds, details={**details, "diverged": out.diverged, "history": out.history},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Search methods.


def random_search(ctx: TrialContext) -> list[MethodResult]:
    """16 static configurations of E epochs; reported as the best of the first 1, 4 and 16."""
    sizes = batch_sizes(ctx.workload, _n_train(ctx))
    configs = _sample_configs(ctx, max(RANDOM_SIZES), sizes)
    runs = [_train(ctx, _constant(lr, bs)) for lr, bs in configs]
    trials = [
        {"lr": lr, "batch_size": bs, "val_acc": r.val_acc, "test_acc": r.test_acc, "diverged": r.diverged}
        for (lr, bs), r in zip(configs, runs)
    ]
    results = []
    for n in RANDOM_SIZES:
        i = _best([r.val_acc for r in runs[:n]])
        lr, bs = configs[i]
        out = dataclasses.replace(runs[i], epochs=n * ctx.workload.epochs, seconds=sum(r.seconds for r in runs[:n]))
        details = {"lr": lr, "batch_size": bs, "best_lr": lr, "best_batch_size": bs, "selected": i,
                   "n_trials": n, "trials": trials[:n]}  # fmt: skip
        results.append(_result(ctx, f"random-{n}", out, details))
    logger.info("random %s seed %d: best of 16 val %.3f", ctx.workload.name, ctx.seed, results[-1].val_acc)
    return results


def _study(ctx: TrialContext, kind: str, sizes: Sequence[int], *, sampler: Any, pruner: Any = None) -> Any:
    """The method's Optuna study in a journal file under ``ctx.workdir``, created or continued.

    Trials left RUNNING by an interrupted process are marked FAIL (they cannot be continued).
    """
    optuna = _require("optuna", kind)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    ctx.workdir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(ctx.workdir / f"{kind}.journal")))
    study = optuna.create_study(
        study_name=f"{kind}__{ctx.workload.name}__seed{ctx.seed}", storage=storage, sampler=sampler,
        pruner=pruner, direction="maximize", load_if_exists=True,
    )  # fmt: skip
    setup = {"epochs": ctx.workload.epochs, "lr_range": list(ctx.workload.lr_range), "batch_sizes": list(sizes)}
    previous = study.user_attrs.get("setup")
    if previous is None:
        study.set_user_attr("setup", setup)
    elif previous != setup:
        raise RLAgentError(
            f"{ctx.workdir / f'{kind}.journal'}: the study was made for {previous}, not {setup}; use another workdir"
        )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        logger.warning("%s: trial %d was interrupted; marking it failed", study.study_name, trial.number)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def _suggest(trial: Any, ctx: TrialContext, sizes: Sequence[int]) -> tuple[float, int]:
    lr = trial.suggest_float("lr", *ctx.workload.lr_range, log=True)
    # An ordered index over the powers of two, so TPE models "larger/smaller" batch sizes.
    batch_size = int(sizes[trial.suggest_int("batch_size_index", 0, len(sizes) - 1)])
    trial.set_user_attr("batch_size", batch_size)
    return lr, batch_size


def _record(trial: Any, out: _Outcome) -> None:
    trial.set_user_attr("test_acc", out.test_acc)
    trial.set_user_attr("diverged", out.diverged)
    trial.set_user_attr("history", out.history)


def _study_result(
    ctx: TrialContext, method: str, trials: Sequence[Any], *, epochs: int, seconds: float, details: dict[str, Any]
) -> MethodResult:
    """The best of ``trials`` (complete, in trial order) by final validation accuracy."""
    best = trials[_best([t.value for t in trials])]
    attrs = best.user_attrs
    out = _Outcome(
        history=attrs["history"], val_acc=float(best.value), test_acc=float(attrs["test_acc"]),
        diverged=bool(attrs["diverged"]), epochs=epochs, seconds=seconds,
    )  # fmt: skip
    lr, bs = float(best.params["lr"]), int(attrs["batch_size"])
    return _result(ctx, method, out, {"lr": lr, "batch_size": bs, "selected": best.number, **details})


def _duration(trials: Iterable[Any]) -> float:
    """Seconds spent in ``trials``: a continued study reports the time of all its trials."""
    return sum(t.duration.total_seconds() for t in trials if t.duration is not None)


def tpe(ctx: TrialContext) -> list[MethodResult]:
    """An Optuna TPE study (``TPESampler(seed)``, 10 random start-up trials) of 16 E-epoch runs.

    The study lives in ``ctx.workdir / "tpe.journal"``; calling again continues it and only
    trains the trials still missing.
    """
    optuna = _require("optuna", "tpe")
    optuna_seed = int(_rng(ctx, "tpe").integers(2**31 - 1))
    sizes = batch_sizes(ctx.workload, _n_train(ctx))
    study = _study(ctx, "tpe", sizes, sampler=optuna.samplers.TPESampler(seed=optuna_seed))
    complete = optuna.trial.TrialState.COMPLETE

    def objective(trial: Any) -> float:
        lr, bs = _suggest(trial, ctx, sizes)
        out = _train(ctx, _constant(lr, bs))
        _record(trial, out)
        return out.val_acc

    missing = SEARCH_TRIALS - len(study.get_trials(deepcopy=False, states=(complete,)))
    if missing > 0:
        study.optimize(objective, n_trials=missing)
    trials = sorted(study.get_trials(deepcopy=False, states=(complete,)), key=lambda t: t.number)[:SEARCH_TRIALS]
    details = {"n_trials": len(trials), "sampler": f"TPESampler(seed={optuna_seed})", "study": study.study_name}
    epochs = len(trials) * ctx.workload.epochs
    return [
        _study_result(ctx, f"tpe-{SEARCH_TRIALS}", trials, epochs=epochs, seconds=_duration(trials), details=details)
    ]


def hyperband(ctx: TrialContext) -> list[MethodResult]:
    """Optuna ``TPESampler(seed)`` + ``HyperbandPruner(1, E, 3)``, up to 16·E epochs in all.

    Each trial reports its validation accuracy every epoch and stops when pruned; trials are
    added until the epochs trained reach 16·E (the last may overshoot by less than E). A trial
    that diverges is pruned at that epoch (charged what it trained: stopping early is
    Hyperband's mechanism). The best complete (E-epoch) trial is selected. The study lives in
    ``ctx.workdir / "hyperband.journal"`` and is continued when called again.
    """
    optuna = _require("optuna", "hyperband")
    epochs = ctx.workload.epochs
    optuna_seed = int(_rng(ctx, "hyperband").integers(2**31 - 1))
    sizes = batch_sizes(ctx.workload, _n_train(ctx))
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=HYPERBAND_REDUCTION)
    study = _study(ctx, "hyperband", sizes, sampler=optuna.samplers.TPESampler(seed=optuna_seed), pruner=pruner)
    state = optuna.trial.TrialState

    def objective(trial: Any) -> float:
        lr, bs = _suggest(trial, ctx, sizes)

        def after_epoch(record: dict[str, Any]) -> None:
            trial.report(record["val_acc"], record["epoch"])
            if record["diverged"]:
                trial.set_user_attr("diverged", True)
                raise optuna.TrialPruned()
            if record["epoch"] < epochs and trial.should_prune():
                raise optuna.TrialPruned()

        out = _train(ctx, _constant(lr, bs), after_epoch=after_epoch)
        _record(trial, out)
        return out.val_acc

    def spent() -> int:  # epochs trained by all trials, interrupted ones included
        return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))

    budget = SEARCH_TRIALS * epochs
    # The first trial of a bracket is never pruned, so a complete trial exists after the first.
    while spent() < budget or not study.get_trials(deepcopy=False, states=(state.COMPLETE,)):
        study.optimize(objective, n_trials=1)
    all_trials = study.get_trials(deepcopy=False)
    trials = sorted((t for t in all_trials if t.state == state.COMPLETE), key=lambda t: t.number)
    details = {
        "n_trials": len(all_trials),
        "n_complete": len(trials),
        "n_pruned": sum(t.state == state.PRUNED for t in all_trials),
        "budget": budget,
        "sampler": f"TPESampler(seed={optuna_seed})",
        "pruner": f"HyperbandPruner(min_resource=1, max_resource={epochs}, reduction_factor={HYPERBAND_REDUCTION})",
        "study": study.study_name,
    }
    return [_study_result(ctx, "hyperband", trials, epochs=spent(), seconds=_duration(all_trials), details=details)]


# ---------------------------------------------------------------------------------------------
# Population Based Training (in-process; Ray Tune's default rules).


def _exploit(dst: _Run, src: _Run) -> None:
    """``dst`` takes deep copies of ``src``'s weights and optimiser state, and its history (lineage)."""
    dst.trainer.model.load_state_dict(copy.deepcopy(src.trainer.model.state_dict()))
    # Optimizer.load_state_dict keeps the tensors it is given: deep-copy so no state is shared.
    dst.trainer.optimizer.load_state_dict(copy.deepcopy(src.trainer.optimizer.state_dict()))
    dst.diverged = src.diverged
    dst.history = copy.deepcopy(src.history)


def _explore(
    lr: float, batch_size: int, rng: np.random.Generator, lr_range: tuple[float, float], sizes: Sequence[int]
) -> tuple[float, int]:
    """Ray Tune's PBT explore: resample with p = 0.25, else LR ×0.8 / ×1.2 and batch size to a
    neighbouring power of two. Unlike Ray, the LR is clipped to the range (the benchmark's limits)."""
    if rng.random() < PBT_RESAMPLE_P:
        lr = _sample_lr(rng, lr_range)
    else:
        lr *= float(rng.choice(PBT_LR_FACTORS))
    lr = float(min(max(lr, lr_range[0]), lr_range[1]))
    if rng.random() < PBT_RESAMPLE_P or batch_size not in sizes:
        batch_size = int(sizes[int(rng.integers(len(sizes)))])
    else:
        i = sizes.index(batch_size) + int(rng.choice([-1, 1]))
        batch_size = int(sizes[min(max(i, 0), len(sizes) - 1)])
    return lr, batch_size


def pbt(ctx: TrialContext, *, population: int = PBT_POPULATION, interval: int = PBT_INTERVAL) -> list[MethodResult]:
    """Population Based Training of ``population`` members trained in lockstep, ``population``·E epochs.

    The initial configurations are random search's first ones. Every ``interval`` epochs (not
    after the last) members are ranked by current validation accuracy; each of the bottom 25%
    copies the weights and optimiser state of a random top-25% member and explores from its
    hyperparameters (:func:`_explore`). This is Ray Tune's synchronous PBT with its defaults.
    A diverged member scores chance until it is replaced. The member with the best final
    validation accuracy is selected; its history is its lineage's.
    """
    if population < 2 or interval < 1:
        raise ValueError(f"pbt: got population={population}, interval={interval}; expected >= 2 and >= 1")
    start = time.perf_counter()
    epochs = ctx.workload.epochs
    sizes = batch_sizes(ctx.workload, _n_train(ctx))
    rng = _rng(ctx, "pbt")
    hyper = _sample_configs(ctx, population, sizes)
    initial = [list(c) for c in hyper]
    members = [_Run(ctx) for _ in range(population)]
    quantile = min(math.ceil(population * PBT_QUANTILE), population // 2)
    events: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        scores = [m.step(lr, bs)["val_acc"] for m, (lr, bs) in zip(members, hyper)]
        if epoch % interval or epoch == epochs or quantile == 0:
            continue
        order = sorted(range(population), key=lambda i: scores[i])  # stable: ties keep member order
        bottom, top = order[:quantile], order[-quantile:]
        for i in bottom:
            j = top[int(rng.integers(len(top)))]
            _exploit(members[i], members[j])
            hyper[i] = _explore(*hyper[j], rng, ctx.workload.lr_range, sizes)
            events.append({"epoch": epoch, "member": i, "from": j, "lr": hyper[i][0], "batch_size": hyper[i][1]})
    finals = [m.history[-1]["val_acc"] for m in members]
    best = _best(finals)
    out = _Outcome(
        history=members[best].history, val_acc=finals[best], test_acc=members[best].test_acc(),
        diverged=members[best].diverged, epochs=population * epochs, seconds=time.perf_counter() - start,
    )  # fmt: skip
    details = {"lr": hyper[best][0], "batch_size": hyper[best][1], "selected": best, "population": population,
               "interval": interval, "initial": initial, "final_val_accs": finals, "exploits": events}  # fmt: skip
    return [_result(ctx, f"pbt-{population}", out, details)]


# ---------------------------------------------------------------------------------------------
# Single-run methods.


def _clip(ctx: TrialContext, lr: float, batch_size: float, n_train: int) -> tuple[float, int]:
    wl = ctx.workload
    return apply_action(float(lr), int(round(batch_size)), 1.0, 1.0, wl.lr_range, wl.batch_size_range, n_train)


def constant(ctx: TrialContext) -> list[MethodResult]:
    """Adam's textbook default: LR 1e-3, batch size 32 (clipped to the ranges), all E epochs."""
    lr, bs = _clip(ctx, DEFAULT_LR, DEFAULT_BATCH_SIZE, _n_train(ctx))
    return [_result(ctx, "constant", _train(ctx, _constant(lr, bs)), {"lr": lr, "batch_size": bs})]


def cosine(ctx: TrialContext) -> list[MethodResult]:
    """Cosine decay from random-16's best LR towards 0 over E epochs, at its best batch size.

    Epoch t (0-based) trains at ``best_lr · ½(1 + cos(π t / E))``; like the textbook schedule it
    may go below the LR range. Its cost is E epochs plus the random search it reuses.
    """
    best_lr, best_bs = _extra(ctx, "cosine", "best_lr", "best_batch_size")
    lr0, bs = _clip(ctx, best_lr, best_bs, _n_train(ctx))
    epochs = ctx.workload.epochs

    def decide(epoch: int, history: Sequence[dict[str, Any]], trainer: Trainer) -> tuple[float, int]:
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)), bs

    out = _train(ctx, decide)
    return [_result(ctx, "cosine", out, {"lr": lr0, "batch_size": bs, "uses": "random-16 best LR"})]


def plateau(ctx: TrialContext) -> list[MethodResult]:
    """``ReduceLROnPlateau`` on validation loss (min, factor 0.5, patience 2) from LR 1e-3, batch 32."""
    lr0, bs = _clip(ctx, DEFAULT_LR, DEFAULT_BATCH_SIZE, _n_train(ctx))
    scheduler: list[torch.optim.lr_scheduler.ReduceLROnPlateau] = []

    def decide(epoch: int, history: Sequence[dict[str, Any]], trainer: Trainer) -> tuple[float, int]:
        if not scheduler:
            trainer.lr = lr0
            scheduler.append(
                torch.optim.lr_scheduler.ReduceLROnPlateau(trainer.optimizer, mode="min", factor=0.5, patience=2)
            )
        else:
            scheduler[0].step(history[-1]["val_loss"])
        return trainer.lr, bs

    out = _train(ctx, decide)
    return [_result(ctx, "plateau", out, {"lr": lr0, "batch_size": bs})]


def _optimizer_free(ctx: TrialContext, method: str, module: str, name: str) -> list[MethodResult]:
    """A learning-rate-free optimiser at its defaults, batch size 32, E epochs."""
    cls = getattr(_require(module, method), name)
    _, bs = _clip(ctx, DEFAULT_LR, DEFAULT_BATCH_SIZE, _n_train(ctx))
    out = _train(ctx, lambda epoch, history, trainer: (trainer.lr, bs), optimizer=lambda params: cls(params))
    return [_result(ctx, method, out, {"optimizer": f"{module}.{name}", "batch_size": bs})]


def schedulefree(ctx: TrialContext) -> list[MethodResult]:
    """``schedulefree.AdamWScheduleFree`` at its defaults (LR 0.0025, no warm-up), batch size 32."""
    return _optimizer_free(ctx, "schedulefree", "schedulefree", "AdamWScheduleFree")


def prodigy(ctx: TrialContext) -> list[MethodResult]:
    """``prodigyopt.Prodigy`` at its defaults (LR 1.0), batch size 32."""
    return _optimizer_free(ctx, "prodigy", "prodigyopt", "Prodigy")


def open_loop(ctx: TrialContext) -> list[MethodResult]:
    """Replay ``ctx.extra["schedule"]`` — E pairs (lr, batch size) — without feedback.

    Values are clipped to the ranges and the batch size rounded, as the env does.
    """
    (schedule,) = _extra(ctx, "open-loop", "schedule")
    if len(schedule) != ctx.workload.epochs:
        raise RLAgentError(f"open-loop: the schedule has {len(schedule)} epochs; expected {ctx.workload.epochs}")
    n_train = _n_train(ctx)
    used = [_clip(ctx, lr, bs, n_train) for lr, bs in schedule]
    out = _train(ctx, lambda epoch, history, trainer: used[epoch])
    return [_result(ctx, "open-loop", out, {"schedule": [list(s) for s in used]})]


def policy(ctx: TrialContext) -> list[MethodResult]:
    """One run of the saved policy ``ctx.policy`` through ``HyperTuneEnv`` (:func:`run_policy`).

    Charged E epochs even if the run diverges early, like every other single run.
    """
    if ctx.policy is None:
        raise RLAgentError("the 'policy' baseline needs ctx.policy (a policy directory or shipped name)")
    from rlagent.reuse import run_policy

    name = ctx.workload.name
    in_spec = ctx.spec.workload(name)
    if (in_spec.lr_range, in_spec.batch_size_range) != (ctx.workload.lr_range, ctx.workload.batch_size_range):
        logger.warning("policy: %s runs with the spec's ranges, not ctx.workload's", name)
    start = time.perf_counter()
    run = run_policy(ctx.policy, name, spec=ctx.spec, seed=ctx.seed, epochs=ctx.workload.epochs, device=ctx.device)
    history = run["history"]
    details = {
        "policy": str(ctx.policy),
        "trained_on": run["trained_on"],
        "heldout": run["heldout"],
        "diverged": run["diverged"],
        "schedule": [[h["lr"], h["batch_size"]] for h in history],
        "history": history,
    }
    return [
        MethodResult(
            method="policy", workload=name, seed=ctx.seed, val_acc=float(run["final_val_acc"]),
            test_acc=float(run["test_acc"]), epochs=ctx.workload.epochs, seconds=time.perf_counter() - start,
            details=details,
        )
    ]  # fmt: skip


def mean_schedule(schedules: Sequence[Sequence[Sequence[float]]], epochs: int) -> list[tuple[float, int]]:
    """Per-epoch geometric mean of several (lr, batch size) schedules, e.g. a policy's over seeds.

    A schedule shorter than ``epochs`` (a diverged run) is padded with its last entry. The batch
    size is rounded to an integer; :func:`open_loop` clips both to the ranges.
    """
    if not schedules or any(len(s) == 0 for s in schedules):
        raise RLAgentError("mean_schedule: needs at least one non-empty schedule")
    padded = np.array([[s[min(t, len(s) - 1)] for t in range(epochs)] for s in schedules], dtype=float)
    mean = np.exp(np.log(padded).mean(axis=0))
    return [(float(lr), int(round(bs))) for lr, bs in mean]


METHODS: dict[str, Callable[[TrialContext], list[MethodResult]]] = {
    "random": random_search,
    "tpe": tpe,
    "hyperband": hyperband,
    "pbt": pbt,
    "constant": constant,
    "cosine": cosine,
    "plateau": plateau,
    "schedulefree": schedulefree,
    "prodigy": prodigy,
    "open-loop": open_loop,
    "policy": policy,
}
"""Every method by name; each returns one or more reported results (``random`` returns three)."""

METHOD_NEEDS: dict[str, str] = {"cosine": "random", "open-loop": "policy"}
"""Methods whose ``ctx.extra`` comes from another method's results on the same workload and seed:
``cosine`` needs ``best_lr`` / ``best_batch_size`` (random-16's ``details``), ``open-loop`` needs
``schedule`` (E pairs (lr, batch size), e.g. :func:`mean_schedule` of the policy's ``details["schedule"]``)."""

__all__ = [
    "METHODS",
    "METHOD_NEEDS",
    "MethodResult",
    "TrialContext",
    "batch_sizes",
    "constant",
    "cosine",
    "hyperband",
    "mean_schedule",
    "open_loop",
    "pbt",
    "plateau",
    "policy",
    "prodigy",
    "random_search",
    "schedulefree",
    "tpe",
]
