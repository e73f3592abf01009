"""Where benchmark tasks run: worker processes on this machine, or Ray tasks on a Ray cluster.

Both are ``concurrent.futures`` executors of :func:`run_job`, so the runner schedules, resumes
and collects results the same way whatever the backend. A task's exception comes back as a
:class:`TrialError` carrying the worker's traceback. A Ray task whose worker or node is lost
runs again elsewhere (Ray's retries for system failures); a retry whose trial file was already
written returns that file's results instead of training again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlagent._io import write_json_atomic
from rlagent.bench.methods import ALL_METHODS, RAY_METHODS, TrialContext
from rlagent.config import EnvSpec
from rlagent.errors import RLAgentError
from rlagent.pool.devices import WorkerSlot, plan_workers
from rlagent.pool.executor import ProcessExecutor
from rlagent.pool.ray import actor_slot, connect_ray, import_ray, plan_ray_slots

__all__ = ["Job", "RayTaskExecutor", "Task", "TrialError", "make_executor", "read_trial", "run_job"]

logger = logging.getLogger(__name__)

TRIAL_FORMAT = 1
"""Version of the trial files :func:`run_job` writes."""

TASK_RETRIES = 3
"""Times Ray runs a benchmark task again after its worker process or node was lost (never
after the task itself raised)."""


@dataclass(frozen=True)
class Task:
    """One ``(method, workload, seed)`` of a benchmark."""

    method: str
    workload: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}__{self.workload}__seed{self.seed}"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one task (picklable)."""

    task: Task
    spec: EnvSpec
    policy: str | None
    extra: Mapping[str, Any]
    fingerprint: str
    trial_file: Path
    workdir: Path


class TrialError(RuntimeError):
    """A benchmark task failed in its worker; the message carries the worker's traceback."""

    def __init__(self, task: str, device: str, remote_traceback: str) -> None:
        super().__init__(f"benchmark task {task} failed on {device}:\n{remote_traceback}")
        self.task = task
        self.device = device
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (TrialError, (self.task, self.device, self.remote_traceback))


def read_trial(path: Path, fingerprint: str) -> list[dict[str, Any]] | None:
    """The results in a finished trial file made with the same settings, else None.

    A file that is missing gives None silently; an unreadable one or one made with other
    settings (``fingerprint``, format) gives None with a warning: the task runs again.
    """
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("unreadable trial file %s: running the task again", path)
        return None
    if record.get("format") != TRIAL_FORMAT or record.get("fingerprint") != fingerprint:
        logger.warning("trial file %s was made with other settings: running the task again", path)
        return None
    return list(record["results"])


# ---------------------------------------------------------------------------------------------
# The worker side (a local worker process or a Ray task)


@dataclass
class _WorkerState:
    slot: WorkerSlot | None = None
    sources: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Datasets loaded by this worker process, reused across its tasks."""


_WORKER = _WorkerState()  # per worker process: set up once by use_slot


def use_slot(slot: WorkerSlot, *, cuda: bool = True) -> None:
    """Run this process's tasks in ``slot``: apply its threads and (with ``cuda``) its device."""
    _WORKER.slot = slot
    slot.apply(cuda=cuda)
    route_optuna_logs()
    # Pay one-time costs now, so that no task's wall time includes them: imports of sklearn
    # (datasets) and of torch's compiler stack (the first optimiser built imports it).
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


def route_optuna_logs() -> None:
    """Send Optuna's log records through :mod:`logging` instead of its own stderr handler.

    Optuna prints an INFO line per finished trial by default; in a benchmark worker those lines
    would run through the progress bar. Routed, they obey the process's logging configuration
    like rlagent's own records (a worker without handlers shows warnings only). Optuna's logging
    settings are global to the process, so only benchmark workers (processes or Ray tasks
    rlagent runs) call this.
    """
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def _init_worker(slots: Any) -> None:
    """Process-pool initializer: take one slot from the queue and use it."""
    use_slot(slots.get())


def run_job(job: Job) -> list[dict[str, Any]]:
    """Run one task in a worker, write its trial file atomically, return its results as dicts."""
    slot = _WORKER.slot or WorkerSlot("cpu", 1)
    try:
        job.workdir.mkdir(parents=True, exist_ok=True)
        ctx = TrialContext(
            spec=job.spec, workload=job.spec.workload(job.task.workload), seed=job.task.seed,
            workdir=job.workdir, device=slot.device, policy=job.policy, extra=job.extra, sources=_WORKER.sources,
        )  # fmt: skip
        start = time.perf_counter()
        results = [dataclasses.asdict(r) for r in ALL_METHODS[job.task.method](ctx)]
        record = {
            "format": TRIAL_FORMAT,
            "task": dataclasses.asdict(job.task),
            "fingerprint": job.fingerprint,
            "device": slot.device,
            "threads": slot.num_threads,
            # The kernels the CPU ran (e.g. AVX2, AVX512): the same task may end differently on
            # another, most of all a recurrent net near its stability edge; see README.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - start, 3),
            "results": results,
        }
        write_json_atomic(job.trial_file, record)
        return results
    except Exception as exc:
        raise TrialError(job.task.name, slot.device, traceback.format_exc()) from exc


def _run_in_slot(job: Job, slot: WorkerSlot, cuda: bool) -> list[dict[str, Any]]:
    """Body of a benchmark Ray task: use the slot as a local worker process would, run the job.

    Each attempt is logged to ``WORKDIR/attempts.jsonl`` (node id, pid, time). Ray runs a task
    again when its node or worker was lost, possibly after the trial file was written (the
    node died before the result came back): then the file's results are returned, and the
    finished trial is not trained again.
    """
    import ray

    job.workdir.mkdir(parents=True, exist_ok=True)
    attempt = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "time": time.time()}
    with (job.workdir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps(attempt) + "\n")
    finished = read_trial(job.trial_file, job.fingerprint)
    if finished is not None:
        logger.info("task %s was run again but its trial file is finished: returning it", job.task.name)
        return finished
    use_slot(slot, cuda=cuda)
    return run_job(job)


# ---------------------------------------------------------------------------------------------
# Executors


def process_executor(n_workers: int | None, devices: str | Sequence[str], n_tasks: int) -> cf.Executor:
    """A process pool with one worker per slot, each worker taking its slot from a queue."""
    slots = plan_workers(n_workers, devices)
    if n_workers is None and len(slots) > n_tasks:  # no idle workers: give the threads to the busy ones
        slots = plan_workers(n_tasks, devices)
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    for slot in slots:
        queue.put(slot)
    logger.info("benchmark workers: %s", [f"{s.device}x{s.num_threads}" for s in slots])
    return ProcessExecutor(max_workers=len(slots), mp_context=ctx, initializer=_init_worker, initargs=(queue,))


class RayTaskExecutor(cf.Executor):
    """Runs benchmark jobs as Ray tasks; Ray's scheduler decides when and where each one runs.

    Each job becomes a Ray task that reserves ``num_cpus`` = the slot's threads and, for a CUDA
    slot, ``num_gpus=1`` (Ray then shows the task only its GPU, as ``cuda:0``), so the cluster's
    resources bound how many run at once. A Ray Tune baseline's task reserves nothing itself:
    it only drives Ray Tune, whose trials reserve the slot's resources each (a reserving driver
    could wait forever for its own trials). Futures are ``concurrent.futures`` ones (from
    ``ObjectRef.future()``); a failed task's future raises the worker's :class:`TrialError` (with
    its traceback). A task whose worker or node is lost is run again by Ray, on any node that
    has room, up to ``TASK_RETRIES`` times (then its future raises a ``TrialError`` naming Ray's
    error); a task that raised is never retried.

    Args:
        slots: The shapes (device, threads) of the tasks, used round-robin.
        shutdown_ray: Call ``ray.shutdown()`` at shutdown (Ray was started for this executor).
    """

    def __init__(self, slots: Sequence[WorkerSlot], *, shutdown_ray: bool = False) -> None:
        if not slots:
            raise ValueError("RayTaskExecutor needs at least one slot")
        self._ray = import_ray()
        if not self._ray.is_initialized():
            raise RLAgentError("RayTaskExecutor needs a running Ray: call ray.init() first, or use make_executor()")
        self.slots = tuple(slots)
        self.shutdown_ray = shutdown_ray
        # Retried only for system failures (a lost worker or node), never for the task's own error.
        self._remote = self._ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(_run_in_slot)
        self._submitted = 0
        self._refs: dict[Any, cf.Future[Any]] = {}
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``run_job(job)`` as a Ray task; returns its future."""
        if fn is not run_job or len(args) != 1 or kwargs:
            raise TypeError("RayTaskExecutor.submit(run_job, job) takes exactly one job")
        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        job: Job = args[0]
        slot = self.slots[self._submitted % len(self.slots)]
        self._submitted += 1
        if job.task.method in RAY_METHODS:  # it only drives Ray Tune; the trials reserve the slot
            resources = {"num_cpus": 0, "num_gpus": 0}
        else:
            resources = {"num_cpus": slot.num_threads, "num_gpus": int(slot.cuda_index is not None)}
        future: cf.Future[Any] = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            ref = self._remote.options(**resources).remote(job, actor_slot(slot), resources["num_gpus"] > 0)
        except Exception as exc:  # noqa: BLE001 - e.g. a job that cannot be pickled
            future.set_exception(TrialError(job.task.name, "Ray (submitting the task)", f"{type(exc).__name__}: {exc}"))
            return future
        self._refs[ref] = future
        ref.future().add_done_callback(lambda done: self._resolve(future, job, ref, slot, done))
        return future

    def _resolve(self, future: cf.Future[Any], job: Job, ref: Any, slot: WorkerSlot, done: cf.Future[Any]) -> None:
        self._refs.pop(ref, None)
        try:
            rows = done.result()
        except self._ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TrialError):  # the worker's own report, with its traceback
                future.set_exception(TrialError(cause.task, cause.device, cause.remote_traceback))
            else:
                future.set_exception(TrialError(job.task.name, f"a Ray worker ({slot.device})", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - a dead worker or node, a cancelled task: reported
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            future.set_exception(
                TrialError(job.task.name, f"a Ray worker ({slot.device})", f"{type(exc).__name__}: {first}")
            )
        else:
            future.set_result(rows)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; cancel unfinished ones if asked; wait for the rest if ``wait``."""
        self._closed = True
        if cancel_futures:
            for ref in list(self._refs):
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
        if wait:
            cf.wait(list(self._refs.values()))
            if self.shutdown_ray and self._ray.is_initialized():
                self._ray.shutdown()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)  # Ctrl-C: do not wait
        self.shutdown(wait=True, cancel_futures=interrupted)
        return False


def ray_executor(
    n_workers: int | None = None,
    devices: str | Sequence[str] = "auto",
    address: str | None = None,
    *,
    n_tasks: int | None = None,
) -> RayTaskExecutor:
    """Connect to Ray (or start a local cluster) and plan the tasks' shapes on its resources.

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

    Raises:
        RLAgentError: If Ray is not installed or the cluster cannot be reached.
    """
    ray = import_ray()
    started = connect_ray(ray, address)
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


def make_executor(
    backend: str, n_workers: int | None, devices: str | Sequence[str], address: str | None, n_tasks: int
) -> cf.Executor:
    """The executor of a backend: ``local`` worker processes or ``ray`` tasks."""
    if backend == "ray":
        return ray_executor(n_workers, devices, address, n_tasks=n_tasks)
    return process_executor(n_workers, devices, n_tasks)
