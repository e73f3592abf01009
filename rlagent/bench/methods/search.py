"""Search over static configurations: random search, Optuna TPE and Optuna Hyperband."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from rlagent.bench.methods.base import (
    HYPERBAND_REDUCTION,
    RANDOM_SIZES,
    SEARCH_TRIALS,
    MethodResult,
    Outcome,
    TrialContext,
    best_index,
    constant_schedule,
    make_result,
    method_rng,
    require,
    sample_configs,
    train_run,
    workload_hparams,
)
from rlagent.errors import RLAgentError

logger = logging.getLogger(__name__)


def random_search(ctx: TrialContext) -> list[MethodResult]:
    """16 static configurations of E epochs; reported as the best of the first 1, 4 and 16."""
    configs = sample_configs(ctx, max(RANDOM_SIZES), workload_hparams(ctx))
    runs = [train_run(ctx, constant_schedule(lr, bs)) for lr, bs in configs]
    trials = [
        {"lr": lr, "batch_size": bs, "val_acc": r.val_acc, "test_acc": r.test_acc, "diverged": r.diverged}
        for (lr, bs), r in zip(configs, runs)
    ]
    results = []
    for n in RANDOM_SIZES:
        i = best_index([r.val_acc for r in runs[:n]])
        lr, bs = configs[i]
        out = dataclasses.replace(runs[i], epochs=n * ctx.workload.epochs, seconds=sum(r.seconds for r in runs[:n]))
        details = {"lr": lr, "batch_size": bs, "best_lr": lr, "best_batch_size": bs, "selected": i,
                   "n_trials": n, "trials": trials[:n]}  # fmt: skip
        results.append(make_result(ctx, f"random-{n}", out, details))
    logger.info("random %s seed %d: best of 16 val %.3f", ctx.workload.name, ctx.seed, results[-1].val_acc)
    return results


def _study(ctx: TrialContext, kind: str, sizes: Sequence[int], *, sampler: Any, pruner: Any = None) -> Any:
    """The method's Optuna study in a journal file under ``ctx.workdir``, created or continued.

    Trials left RUNNING by an interrupted process are marked FAIL (they cannot be continued).
    """
    optuna = require("optuna", kind)
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


def _record(trial: Any, out: Outcome) -> None:
    trial.set_user_attr("test_acc", out.test_acc)
    trial.set_user_attr("diverged", out.diverged)
    trial.set_user_attr("history", out.history)


def _study_result(
    ctx: TrialContext, method: str, trials: Sequence[Any], *, epochs: int, seconds: float, details: dict[str, Any]
) -> MethodResult:
    """The best of ``trials`` (complete, in trial order) by final validation accuracy."""
    best = trials[best_index([t.value for t in trials])]
    attrs = best.user_attrs
    out = Outcome(
        history=attrs["history"], val_acc=float(best.value), test_acc=float(attrs["test_acc"]),
        diverged=bool(attrs["diverged"]), epochs=epochs, seconds=seconds,
    )  # fmt: skip
    lr, bs = float(best.params["lr"]), int(attrs["batch_size"])
    return make_result(ctx, method, out, {"lr": lr, "batch_size": bs, "selected": best.number, **details})


def _duration(trials: Iterable[Any]) -> float:
    """Seconds spent in ``trials``: a continued study reports the time of all its trials."""
    return sum(t.duration.total_seconds() for t in trials if t.duration is not None)


def tpe(ctx: TrialContext) -> list[MethodResult]:
    """An Optuna TPE study (``TPESampler(seed)``, 10 random start-up trials) of 16 E-epoch runs.

    The study lives in ``ctx.workdir / "tpe.journal"``; calling again continues it and only
    trains the trials still missing.
    """
    optuna = require("optuna", "tpe")
    optuna_seed = int(method_rng(ctx, "tpe").integers(2**31 - 1))
    sizes = workload_hparams(ctx).batch_sizes()
    study = _study(ctx, "tpe", sizes, sampler=optuna.samplers.TPESampler(seed=optuna_seed))
    complete = optuna.trial.TrialState.COMPLETE

    def objective(trial: Any) -> float:
        lr, bs = _suggest(trial, ctx, sizes)
        out = train_run(ctx, constant_schedule(lr, bs))
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
    optuna = require("optuna", "hyperband")
    epochs = ctx.workload.epochs
    optuna_seed = int(method_rng(ctx, "hyperband").integers(2**31 - 1))
    sizes = workload_hparams(ctx).batch_sizes()
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

        out = train_run(ctx, constant_schedule(lr, bs), after_epoch=after_epoch)
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
