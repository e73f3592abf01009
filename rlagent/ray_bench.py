"""The benchmark on Ray: ``rlagent bench --backend ray``, and Ray Tune's PBT and ASHA as baselines.

With ``BenchConfig(backend="ray")`` the benchmark of :mod:`rlagent.benchmark` runs unchanged —
same tasks, trial files, resume and dependencies — except that each task runs as a Ray task
(:class:`RayTaskExecutor`) instead of in a local worker process. Two more baselines then become
available, real ``ray.tune.Tuner`` runs whose trials train through the same
:class:`~rlagent.baselines._Run` (one :class:`~rlagent.training.Trainer` epoch per report) as
every other method, on the same seeded data split, initial weights and shuffling order:

* ``ray-pbt`` — ``PopulationBasedTraining`` (Ray's defaults: bottom 25% copy a top-25% trial's
  weights and optimiser state, LR resampled with p = 0.25 or ×0.8 / ×1.2, batch size to a
  neighbouring power of two) every 3 epochs over a population of 8, reported as ``ray-pbt-8``;
  population·E epochs, like the in-process ``pbt``.
* ``ray-asha`` — ``ASHAScheduler(max_t=E, grace_period=1, reduction_factor=3)``; trials start
  until the epochs trained reach 16·E (Optuna ``hyperband``'s budget), then all stop.

Both start from random search's configurations (the first ones are ``random``'s), select the
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

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import io
import json
import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlagent.baselines import (
    PBT_INTERVAL,
    PBT_POPULATION,
    SEARCH_TRIALS,
    MethodResult,
    TrialContext,
    _best,
    _clip,
    _n_train,
    _Outcome,
    _result,
    _rng,
    _Run,
    _sample_configs,
    batch_sizes,
)
from rlagent.devices import WorkerSlot
from rlagent.errors import RLAgentError

if TYPE_CHECKING:
    from rlagent.benchmark import _Job

__all__ = ["RAY_METHODS", "RayTaskExecutor", "make_ray_executor", "ray_asha", "ray_pbt"]

logger = logging.getLogger(__name__)

ASHA_REDUCTION = 3
ASHA_BUDGET_RUNS = SEARCH_TRIALS
"""ASHA's budget in full E-epoch runs (the same as Optuna Hyperband's)."""
_STATE_FILE = "state.pt"  # model, optimiser and shuffling-generator state (tensors only)
_RUN_FILE = "run.json"  # the run's history (its lineage, after PBT exploits)
_CHATTY_TRIAL_LOGGERS = ("ray.train", "ray.tune")


# ---------------------------------------------------------------------------------------------
# Tasks as Ray tasks


def _run_in_slot(fn: Callable[[_Job], list[dict[str, Any]]], job: _Job, slot: WorkerSlot, cuda: bool) -> Any:
    """Body of a benchmark Ray task: use the slot as a local worker process would, run the job."""
    from rlagent.benchmark import _use_slot

    _use_slot(slot, cuda=cuda)
    return fn(job)


class RayTaskExecutor(cf.Executor):
    """Runs benchmark jobs as Ray tasks, at most one per slot at a time.

    A submitted job waits in this executor until a slot is free, then runs as a Ray task that
    reserves ``num_cpus`` = the slot's threads and, for a CUDA slot, ``num_gpus=1`` (Ray then
    shows the task only its GPU, as ``cuda:0``). The task of a Ray Tune baseline reserves nothing
    itself: it only drives Ray Tune, whose trials reserve the slot's resources each (a reserving
    driver could wait forever for its own trials). Futures are ``concurrent.futures`` ones, so the
    benchmark waits on them as on a process pool's. A failed task's future raises the
    :class:`~rlagent.benchmark.TrialError` of the worker (with its traceback); a worker that dies
    gives a ``TrialError`` naming Ray's error. ``shutdown(cancel_futures=True)`` cancels the
    jobs still waiting and waits for the running ones, as a process pool does.

    Ray must be initialised (:func:`make_ray_executor` does that).

    Args:
        slots: Where tasks run: device and threads of each concurrent task.
        shutdown_ray: Call ``ray.shutdown()`` at shutdown (this executor started Ray).
        poll_seconds: How often the dispatcher thread looks for new jobs while tasks run.
    """

    def __init__(self, slots: Sequence[WorkerSlot], *, shutdown_ray: bool = False, poll_seconds: float = 0.2):
        from rlagent.ray_pool import _import_ray

        if not slots:
            raise ValueError("RayTaskExecutor needs at least one slot")
        self._ray = _import_ray()
        if not self._ray.is_initialized():
            raise RLAgentError("RayTaskExecutor needs a running Ray: call ray.init() first, or use make_ray_executor()")
        self.slots = tuple(slots)
        self.shutdown_ray = shutdown_ray
        self._poll = poll_seconds
        # max_retries=0: a task whose worker dies is reported as failed, not run again.
        self._remote = self._ray.remote(max_retries=0)(_run_in_slot)
        self._free = list(range(len(self.slots)))
        self._queue: collections.deque[tuple[cf.Future[Any], Callable[..., Any], _Job]] = collections.deque()
        self._running: dict[Any, tuple[cf.Future[Any], _Job, int]] = {}
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._dispatch, name="rlagent-ray-tasks", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn(job)`` (``_run_job``) as a Ray task once a slot is free; returns its future."""
        if len(args) != 1 or kwargs:
            raise TypeError("RayTaskExecutor.submit(fn, job) takes exactly one job")
        future: cf.Future[Any] = cf.Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot submit after shutdown")
            self._queue.append((future, fn, args[0]))
            self._lock.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; cancel waiting ones if asked; wait for running ones if ``wait``."""
        with self._lock:
            self._closing = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._lock.notify()
        if wait:
            self._thread.join()
            if self.shutdown_ray and self._ray.is_initialized():
                self._ray.shutdown()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and not issubclass(exc_type, Exception):  # Ctrl-C: do not wait
            self.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                refs = list(self._running)
            for ref in refs:
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
        self.shutdown(wait=True)
        return False

    # ------------------------------------------------------------------------ dispatcher thread

    def _dispatch(self) -> None:
        """Start waiting jobs on free slots; resolve futures as tasks finish; end when closed and idle."""
        try:
            while True:
                with self._lock:
                    self._start_waiting()
                    if not self._running:
                        if self._closing and not self._queue:
                            return
                        self._lock.wait()
                        continue
                    refs = list(self._running)
                done, _ = self._ray.wait(refs, num_returns=1, timeout=self._poll)
                for ref in done:
                    with self._lock:
                        future, job, i = self._running.pop(ref)
                        self._free.append(i)
                    self._resolve(future, job, ref, self.slots[i])
        except BaseException as exc:  # e.g. Ray shut down under us: no future may wait forever
            with self._lock:
                self._closing = True
                waiting = [f for f, _, _ in self._running.values()] + [f for f, _, _ in self._queue]
                self._running.clear()
                self._queue.clear()
            for future in waiting:
                if not future.done():
                    future.set_exception(RLAgentError(f"the Ray task dispatcher stopped: {type(exc).__name__}: {exc}"))

    def _start_waiting(self) -> None:
        """Start waiting jobs while slots are free (called with the lock held)."""
        from rlagent.ray_pool import _actor_slot

        while self._free and self._queue:
            future, fn, job = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            i = self._free.pop(0)
            slot = self.slots[i]
            if job.task.method in RAY_METHODS:  # it only drives Ray Tune; the trials reserve the slot
                resources = {"num_cpus": 0, "num_gpus": 0}
            else:
                resources = {"num_cpus": slot.num_threads, "num_gpus": int(slot.cuda_index is not None)}
            try:
                ref = self._remote.options(**resources).remote(fn, job, _actor_slot(slot), resources["num_gpus"] > 0)
            except Exception as exc:  # noqa: BLE001 - e.g. a job that cannot be pickled
                from rlagent.benchmark import TrialError

                self._free.append(i)
                future.set_exception(
                    TrialError(job.task.name, "Ray (submitting the task)", f"{type(exc).__name__}: {exc}")
                )
                continue
            self._running[ref] = (future, job, i)

    def _resolve(self, future: cf.Future[Any], job: _Job, ref: Any, slot: WorkerSlot) -> None:
        from rlagent.benchmark import TrialError

        ray = self._ray
        try:
            rows = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TrialError):  # the worker's own report, with its traceback
                future.set_exception(TrialError(cause.task, cause.device, cause.remote_traceback))
            else:
                future.set_exception(TrialError(job.task.name, f"a Ray worker ({slot.device})", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a dead worker or node, a cancelled task: reported
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            future.set_exception(
                TrialError(job.task.name, f"a Ray worker ({slot.device})", f"{type(exc).__name__}: {first}")
            )
        else:
            future.set_result(rows)


def make_ray_executor(
    n_workers: int | None = None,
    devices: str | Sequence[str] = "auto",
    address: str | None = None,
    *,
    n_tasks: int | None = None,
) -> RayTaskExecutor:
    """Connect to Ray (or start a local cluster) and plan one slot per concurrent task on it.

    Slots are planned as for local worker processes (``plan_workers``), with the cluster's CPU
    and GPU totals in place of this machine's; a task's threads are capped at one node's CPUs.

    Args:
        n_workers: Concurrent tasks; None: one per cluster GPU, else one per cluster CPU (at
            most ``n_tasks``, their threads shared out over the CPUs).
        devices: ``auto`` or a device list, as for the local backend; ``cuda:K`` only asks for a
            GPU: Ray picks which.
        address: Ray cluster (``"auto"``, ``"HOST:6379"``); None starts a local one sized to
            this machine, without the dashboard. Ignored if Ray is already initialised.
        n_tasks: Tasks to run, if known.

    Returns:
        The executor; its shutdown stops Ray again if this call started it.

    Raises:
        RLAgentError: If Ray is not installed or the cluster cannot be reached.
    """
    from rlagent.ray_pool import _connect, _import_ray, plan_ray_slots

    ray = _import_ray()
    started = _connect(ray, address)
    try:
        slots, cpus, gpus = plan_ray_slots(ray, n_workers, devices, n_tasks=n_tasks)
        logger.info(
            "benchmark on Ray (%d CPUs, %d GPUs): %s",
            max(1, cpus),
            gpus,
            [f"{s.device}x{s.num_threads}" for s in slots],
        )
        return RayTaskExecutor(slots, shutdown_ray=started)
    except BaseException:
        if started:
            ray.shutdown()
        raise


# ---------------------------------------------------------------------------------------------
# Ray Tune baselines: the trainable


def _save_state(run: _Run, folder: Path) -> None:
    """The run's training state as tensors (``torch.load(weights_only=True)`` reads it) and JSON."""
    state = {
        "model": run.trainer.model.state_dict(),
        "optimizer": run.trainer.optimizer.state_dict(),
        "generator": run.trainer.generator.get_state(),
    }
    torch.save(state, folder / _STATE_FILE)
    (folder / _RUN_FILE).write_text(json.dumps({"history": run.history, "diverged": run.diverged}))


def _load_state(run: _Run, folder: Path, device: str) -> None:
    state = torch.load(folder / _STATE_FILE, map_location=device, weights_only=True)  # our own files
    run.trainer.model.load_state_dict(state["model"])
    run.trainer.optimizer.load_state_dict(state["optimizer"])
    run.trainer.generator.set_state(state["generator"].cpu())
    saved = json.loads((folder / _RUN_FILE).read_text())
    run.history, run.diverged = saved["history"], saved["diverged"]


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
    run = _Run(ctx)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _load_state(run, Path(folder), ctx.device)
    lr, batch_size = _clip(ctx, config["lr"], config["batch_size"], len(run.data.train))
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
) -> tuple[list[_Trial], float, Path]:
    """Run a Tuner of ``len(configs)`` trials starting at ``configs``; their last reports, seconds, folder.

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
    points = [{"lr": lr, "batch_size": bs} for lr, bs in configs]  # every trial starts at one of these
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"lr": tune.loguniform(*ctx.workload.lr_range), "batch_size": tune.choice(list(sizes))},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=len(points), scheduler=scheduler, reuse_actors=True,
            search_alg=BasicVariantGenerator(points_to_evaluate=points),
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), stop=stop, verbose=0),
    )  # fmt: skip
    start = time.perf_counter()
    with _seeded_globals(int(_rng(ctx, name).integers(2**31 - 1))), _quiet_tune():
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
    selected = complete[_best([trials[i].val_acc for i in complete])]
    best = trials[selected]
    history = best.history or []
    out = _Outcome(
        history=history, val_acc=best.val_acc, test_acc=float(best.test_acc), diverged=bool(history and history[-1]["diverged"]),
        epochs=sum(t.iterations for t in trials), seconds=seconds,
    )  # fmt: skip
    details = {
        "lr": best.lr, "batch_size": best.batch_size, "selected": selected, "n_trials": len(trials),
        "n_complete": len(complete), **details,
    }  # fmt: skip
    return _result(ctx, method, out, details)


# ---------------------------------------------------------------------------------------------
# Ray Tune baselines


def _clip_lr(config: dict[str, Any], *, lr_range: tuple[float, float]) -> dict[str, Any]:
    """PBT's ``custom_explore_fn``: keep the perturbed LR in the benchmark's range, as ``pbt`` does."""
    return {**config, "lr": float(min(max(config["lr"], lr_range[0]), lr_range[1]))}


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
    sizes = batch_sizes(ctx.workload, _n_train(ctx))
    configs = _sample_configs(ctx, population, sizes)
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=interval, synch=True,
        hyperparam_mutations={"lr": tune.loguniform(*ctx.workload.lr_range), "batch_size": list(sizes)},
        custom_explore_fn=functools.partial(_clip_lr, lr_range=ctx.workload.lr_range),
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
    sizes = batch_sizes(ctx.workload, _n_train(ctx))
    configs = _sample_configs(ctx, budget, sizes)  # every trial trains >= 1 epoch: enough to spend the budget
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


RAY_METHODS: dict[str, Callable[[TrialContext], list[MethodResult]]] = {"ray-pbt": ray_pbt, "ray-asha": ray_asha}
"""Ray Tune baselines by task name, available with the benchmark's ray backend only (their
tasks must run where Ray is initialised). ``ray-pbt`` reports ``ray-pbt-8`` (its population)."""
