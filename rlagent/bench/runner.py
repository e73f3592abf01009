"""Benchmark a tuning policy against the baselines, with equal-compute accounting and honest reporting.

For each workload (default: the spec's held-out ones) and each seed, every method of
:mod:`rlagent.bench.methods.base` runs once; a *task* is one ``(method, workload, seed)`` and may report
several results (``random`` reports best-of-1, -4 and -16). Seeds pair across methods: a seed
fixes the data split, the initial weights and the shuffling order of every run (``make_run``).

* Compute: each method reports the epochs it trained in total (and wall seconds); the table and
  the plots show test accuracy against epochs spent.
* Selection uses validation accuracy only; test accuracy is only reported.
* The table says so whenever the policy is benchmarked on a workload it was trained on (†).
* Each task writes its results atomically to ``RESULTS/trials/METHOD__WORKLOAD__seedS.json``; a
  re-run skips tasks whose file is present and was made with the same settings, so an
  interrupted benchmark resumes where it stopped.
* Dependent tasks wait for their inputs: ``cosine`` for ``random`` of the same workload and seed
  (it uses its best LR and batch size), ``open-loop`` for ``policy`` on every seed of the
  workload (it replays the policy's geometric-mean schedule).
* Tasks run in parallel in worker processes started with ``forkserver``/``spawn`` (never
  ``fork``), one :class:`~rlagent.pool.devices.WorkerSlot` (device + torch threads) per process; or,
  with ``backend="ray"``, as Ray tasks (:mod:`rlagent.bench.methods.ray_tune`), which also makes Ray Tune's
  PBT and ASHA available as baselines. Only the executor differs: scheduling, trial files,
  resume and dependencies are the same code.

The rows, statistics and markdown table are made by :mod:`rlagent.bench.report`, the plots by
:mod:`rlagent.bench.plots`; this module runs the tasks and writes the results out.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rlagent._io import json_default, write_json_atomic
from rlagent.bench.executors import Job, Task, TrialError, make_executor, read_trial, run_job
from rlagent.bench.methods import METHOD_NEEDS, METHOD_RUNS, METHODS, RAY_METHODS, MethodResult
from rlagent.bench.plots import write_plots

# The statistics and the table are in rlagent.bench.report; all of its names stay importable from here.
from rlagent.bench.report import (
    METHOD_ORDER,  # noqa: F401 - re-exported
    POLICY_METHODS,
    SCORE_DEFINITION,
    AggregateRow,
    BenchRow,
    aggregate,
    aggregate_by_family,
    ci95,  # noqa: F401 - re-exported
    markdown_table,
    policy_schedule,
    summarize,
)
from rlagent.config import EnvSpec, load_spec
from rlagent.errors import RLAgentError, SpecError, is_int
from rlagent.policy.controller import policy_path, resolve_policy
from rlagent.pool import BACKENDS
from rlagent.pool.ray import import_ray
from rlagent.workloads import load_source, source_key, split_data

__all__ = [
    "AggregateRow",
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "TrialError",
    "aggregate",
    "markdown_table",
    "policy_schedule",
    "run_benchmark",
    "summarize",
]

logger = logging.getLogger(__name__)

_ALL_SEEDS = frozenset({"open-loop"})
"""Dependent tasks that need their input on every seed of the workload (else: the same seed)."""


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark: which workloads, seeds and methods, and where results go."""

    spec: str | Path | EnvSpec = "default"
    """Spec file, shipped spec name or :class:`EnvSpec`; defines workloads, ranges and epochs."""
    policy: str | Path = "default"
    """Policy directory or shipped policy name (needed by the ``policy`` and ``open-loop`` methods)."""
    workloads: Sequence[str] | None = None
    """Workloads to benchmark on; None: the spec's held-out workloads."""
    seeds: int | Sequence[int] = 5
    """A count S (seeds 0..S-1) or a list of seeds; seed s gives every method the same run."""
    methods: Sequence[str] | None = None
    """Method tasks of :data:`rlagent.bench.methods.base.METHODS` (e.g. ``random``, ``policy``) and, with the
    ray backend, of :data:`rlagent.bench.methods.ray_tune.RAY_METHODS` (``ray-pbt``, ``ray-asha``); None: all
    of the backend. The inputs of dependent methods are added (``cosine`` needs ``random``,
    ``open-loop`` ``policy``)."""
    epochs: int | None = None
    """Epoch budget of one training run; None: the spec's."""
    results_dir: str | Path | None = None
    """Output folder; None: ``results/bench__{spec name}__{policy name}``."""
    n_workers: int | None = None
    """Tasks run in parallel; None: one per CUDA device, else one per CPU core (at most one per task),
    of this machine or, with the ray backend, of the Ray cluster."""
    devices: str | Sequence[str] = "auto"
    """``auto``, or devices such as ``cuda:0,cuda:1`` / ``cpu`` assigned to workers round-robin."""
    progress: bool = True
    """Show a progress bar over tasks."""
    backend: str = "local"
    """``local``: worker processes on this machine; ``ray``: Ray tasks (needs ``rlagent[ray]``)."""
    address: str | None = None
    """Ray cluster to connect to (``auto``, ``HOST:PORT``), with the ray backend; None starts a
    local one (stopped at the end). Ignored if Ray is already initialised."""

    def __post_init__(self) -> None:
        if not isinstance(self.spec, (str, Path, EnvSpec)):
            raise SpecError("spec", self.spec, "a spec file, a shipped spec name or an EnvSpec")
        if not isinstance(self.policy, (str, Path)):
            raise SpecError("policy", self.policy, "a policy directory or a shipped policy name")
        if self.workloads is not None:
            if isinstance(self.workloads, str) or not all(isinstance(w, str) for w in self.workloads):
                raise SpecError("workloads", self.workloads, "a list of workload names")
            if not self.workloads:
                raise SpecError("workloads", list(self.workloads), "at least one workload (or None)")
            object.__setattr__(self, "workloads", tuple(dict.fromkeys(self.workloads)))
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, (int, list, tuple)):
            raise SpecError("seeds", self.seeds, "a count >= 1 or a list of distinct integers >= 0")
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise SpecError("seeds", self.seeds, "a count >= 1 or a list of distinct integers >= 0")
        else:
            ok = all(is_int(s) and s >= 0 for s in self.seeds)
            if not self.seeds or not ok or len(set(self.seeds)) != len(self.seeds):
                raise SpecError("seeds", self.seeds, "a count >= 1 or a list of distinct integers >= 0")
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.backend not in BACKENDS:
            raise SpecError("backend", self.backend, f"one of {list(BACKENDS)}")
        if self.address is not None and (self.backend != "ray" or not isinstance(self.address, str)):
            raise SpecError("address", self.address, "None, or a Ray cluster address with backend 'ray'")
        if self.methods is not None:
            known = sorted({**METHODS, **RAY_METHODS})
            if isinstance(self.methods, str) or not self.methods:
                raise SpecError("methods", self.methods, f"a non-empty list of {known}")
            for m in self.methods:
                if m in RAY_METHODS and self.backend != "ray":
                    raise SpecError("methods", m, "a local method (Ray Tune baselines need backend 'ray')")
                if m not in METHODS and m not in RAY_METHODS:
                    raise SpecError("methods", m, f"one of {known}")
            object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)):
            raise SpecError("epochs", self.epochs, "an integer >= 1 or None")
        if self.epochs is not None and self.epochs < 1:
            raise SpecError("epochs", self.epochs, "an integer >= 1 or None")
        if self.n_workers is not None and (
            isinstance(self.n_workers, bool) or not isinstance(self.n_workers, int) or self.n_workers < 1
        ):
            raise SpecError("n_workers", self.n_workers, "an integer >= 1 or None")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds, as a tuple."""
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(self.seeds)

    def task_methods(self) -> tuple[str, ...]:
        """The method tasks to run: the chosen ones plus the inputs of dependent ones."""
        if self.methods is not None:
            chosen = list(self.methods)
        else:
            chosen = [*METHODS, *(RAY_METHODS if self.backend == "ray" else ())]
        for m in list(chosen):
            need = METHOD_NEEDS.get(m)
            while need is not None and need not in chosen:
                chosen.insert(chosen.index(m), need)
                need = METHOD_NEEDS.get(need)
        return tuple(chosen)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class BenchReport:
    """What a benchmark produced."""

    rows: list[BenchRow]
    aggregate: list[AggregateRow]
    table: str
    """The markdown table (also in ``paths["table"]``)."""
    results: list[MethodResult]
    results_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    """``table``, ``csv``, ``json`` and one entry per plot."""
    trials_run: int = 0
    """Tasks trained in this call."""
    trials_reused: int = 0
    """Tasks whose finished trial file was reused."""
    trained_on: tuple[str, ...] = ()
    """Benchmarked workloads the policy was trained on (marked in the table)."""

    @property
    def plots(self) -> list[Path]:
        """The PNG files written."""
        return [p for p in self.paths.values() if p.suffix == ".png"]


def _chance(spec: EnvSpec, workloads: Sequence[str]) -> dict[str, float]:
    sources: dict[str, Any] = {}
    out = {}
    for name in workloads:
        wl = spec.workload(name)
        key = source_key(wl)
        if key not in sources:
            sources[key] = load_source(wl)
        out[name] = 1.0 / split_data(sources[key], wl, seed=0).num_classes
    return out


def _fingerprint(job_fields: Mapping[str, Any]) -> str:
    text = json.dumps(job_fields, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_trial(path: Path, fingerprint: str) -> list[MethodResult] | None:
    rows = read_trial(path, fingerprint)
    return None if rows is None else [MethodResult(**r) for r in rows]


def _extra_for(
    task: Task, done: Mapping[Task, list[MethodResult]], seeds: Sequence[int], spec: EnvSpec
) -> dict[str, Any]:
    """Inputs of a dependent task, from the results of the tasks it needs."""
    need = METHOD_NEEDS.get(task.method)
    if need is None:
        return {}
    if task.method == "open-loop":
        runs = [r for s in seeds for r in done[Task(need, task.workload, s)] if r.method == "policy"]
        schedule = policy_schedule(runs, spec.workload(task.workload).epochs)
        return {"schedule": schedule, "schedule_seeds": list(seeds)}
    inputs = done[Task(need, task.workload, task.seed)]
    if task.method == "cosine":
        chosen = max(inputs, key=lambda r: r.epochs)  # random search with the largest budget
        return {
            "best_lr": chosen.details["best_lr"],
            "best_batch_size": chosen.details["best_batch_size"],
            "from_method": chosen.method,
        }
    return {"inputs": [dataclasses.asdict(r) for r in inputs]}


def longest_first(tasks: Sequence[Task], spec: EnvSpec) -> list[Task]:
    """Tasks ordered by the epochs they spend, most first (stable), so short ones fill the end.

    Greedy longest-first scheduling keeps a pool's idle tail short: with the tasks in the
    order they are listed, the quick benchmark ended on one worker running the GRU's 16-run
    random search while the other had nothing left to do.
    """
    return sorted(tasks, key=lambda t: -METHOD_RUNS.get(t.method, 1.0) * spec.workload(t.workload).epochs)


def _inputs_ready(task: Task, done: Mapping[Task, Any], seeds: Sequence[int]) -> bool:
    need = METHOD_NEEDS.get(task.method)
    if need is None:
        return True
    if task.method in _ALL_SEEDS:
        return all(Task(need, task.workload, s) in done for s in seeds)
    return Task(need, task.workload, task.seed) in done


def run_benchmark(config: BenchConfig) -> BenchReport:
    """Run (or resume) a benchmark and write its table, raw results and plots.

    Args:
        config: What to benchmark and where to write.

    Returns:
        The summary rows, the markdown table, all results and the paths written.

    Raises:
        SpecError: A workload is unknown.
        RLAgentError: The ray backend without Ray installed, or a Ray cluster that cannot be reached.
        TrialError: A task failed in its worker (with the worker's traceback); finished tasks
            are kept and a re-run resumes from them.
    """
    spec = config.spec if isinstance(config.spec, EnvSpec) else load_spec(config.spec)
    if config.epochs is not None:
        spec = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=config.epochs))
    workloads = tuple(config.workloads) if config.workloads is not None else spec.workloads.heldout
    if not workloads:
        raise SpecError("workloads", None, f"workload names (spec {spec.name!r} holds none out)")
    for w in workloads:
        spec.workloads.get(w)  # raises SpecError naming the workload
    methods = config.task_methods()
    seeds = config.seed_list
    if config.backend == "ray":
        import_ray()  # says which extra to install, before any work

    policy_dir: str | None = None
    policy_sha: str | None = None
    trained_on: tuple[str, ...] = ()
    policy_name = Path(str(config.policy)).name
    if any(m in POLICY_METHODS for m in methods):
        saved = resolve_policy(config.policy)  # validates the files (and their weights' hash)
        policy_dir = str(policy_path(config.policy).resolve())
        policy_sha = saved.metadata.get("sha256")
        trained_on = tuple(w for w in workloads if w in saved.metadata.get("training", {}).get("trained_on", []))
        if trained_on:
            logger.warning("the policy was trained on %s: those results are marked as not held out", trained_on)

    results_dir = Path(config.results_dir or Path("results") / f"bench__{spec.name}__{policy_name}")
    trials_dir = results_dir / "trials"
    spec_dict = spec.to_dict()
    tasks = [Task(m, w, s) for w in workloads for m in methods for s in seeds]
    done: dict[Task, list[MethodResult]] = {}
    todo = longest_first(tasks, spec)
    running: dict[cf.Future[list[dict[str, Any]]], Task] = {}
    reused = ran = 0

    with contextlib.ExitStack() as stack:
        bar = None
        if config.progress:
            bar = stack.enter_context(tqdm(total=len(tasks), unit="task", desc="benchmark", dynamic_ncols=True))
        executor: cf.Executor | None = None
        while todo or running:
            while ready := [t for t in todo if _inputs_ready(t, done, seeds)]:
                task = ready[0]
                todo.remove(task)
                extra = _extra_for(task, done, seeds, spec)
                uses_policy = task.method in POLICY_METHODS
                fingerprint = _fingerprint(
                    {"task": dataclasses.asdict(task), "spec": spec_dict, "extra": extra,
                     "policy": policy_sha if uses_policy else None}
                )  # fmt: skip
                trial_file = trials_dir / f"{task.name}.json"
                previous = _load_trial(trial_file, fingerprint)
                if previous is not None:
                    done[task] = previous
                    reused += 1
                    if bar is not None:
                        bar.update(1)
                    continue
                if executor is None:
                    executor = stack.enter_context(
                        make_executor(
                            config.backend,
                            config.n_workers,
                            config.devices,
                            config.address,
                            n_tasks=len(todo) + 1 + len(running),
                        )  # fmt: skip
                    )
                job = Job(  # absolute paths: a Ray worker need not share our working directory
                    task, spec, policy_dir if uses_policy else None, extra, fingerprint, trial_file.absolute(),
                    (results_dir / "work" / task.name).absolute(),
                )  # fmt: skip
                running[executor.submit(run_job, job)] = task
            if not running:
                if todo:  # cannot happen: every dependency is a task of this run
                    raise RLAgentError(f"benchmark: tasks {[t.name for t in todo]} wait for inputs that never come")
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    rows = future.result()
                except Exception as exc:
                    if running:
                        logger.warning("waiting for %d running tasks to finish (their results are kept)", len(running))
                    assert executor is not None
                    executor.shutdown(wait=True, cancel_futures=True)
                    if isinstance(exc, TrialError):
                        raise
                    # e.g. BrokenProcessPool: the worker died without a Python traceback
                    raise TrialError(task.name, "a worker process", f"{type(exc).__name__}: {exc}") from exc
                done[task] = [MethodResult(**r) for r in rows]
                ran += 1
                if bar is not None:
                    bar.set_postfix_str(task.name, refresh=False)
                    bar.update(1)

    results = [r for t in tasks for r in done[t]]
    return _write_outputs(config, spec, results, results_dir, workloads, seeds, trained_on, ran, reused)


def _write_outputs(
    config: BenchConfig,
    spec: EnvSpec,
    results: list[MethodResult],
    results_dir: Path,
    workloads: Sequence[str],
    seeds: Sequence[int],
    trained_on: tuple[str, ...],
    ran: int,
    reused: int,
) -> BenchReport:
    chance = _chance(spec, workloads)
    rows = summarize(results, chance=chance, trained_on=trained_on)
    title = (
        f"Benchmark of spec '{spec.name}', policy '{config.policy}': test accuracy over {len(seeds)} "
        f"seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"
    )
    families = {w: spec.workload(w).family for w in workloads}
    table = markdown_table(rows, title=title, families=families)
    paths = {
        "table": results_dir / "table.md",
        "csv": results_dir / "results.csv",
        "json": results_dir / "results.json",
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    paths["table"].write_text(table)
    marked = {r.workload for r in rows if r.trained_on}
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["workload", "method", "seed", "val_acc", "test_acc", "epochs", "seconds", "trained_on"])
        for r in results:
            flag = r.method in POLICY_METHODS and r.workload in marked
            writer.writerow([r.workload, r.method, r.seed, r.val_acc, r.test_acc, r.epochs, r.seconds, int(flag)])
    config_json = {
        "spec": spec.name, "policy": str(config.policy), "workloads": list(workloads), "seeds": list(seeds),
        "methods": list(config.task_methods()), "epochs": config.epochs, "backend": config.backend,
        "trained_on": list(trained_on), "score": SCORE_DEFINITION, "chance": chance,
    }  # fmt: skip
    write_json_atomic(
        paths["json"],
        {
            "config": config_json,
            "rows": [dataclasses.asdict(r) for r in rows],
            "aggregate": [dataclasses.asdict(a) for a in aggregate(rows)],
            "by_family": [dataclasses.asdict(f) for f in aggregate_by_family(rows, families)],
            "results": [dataclasses.asdict(r) for r in results],
        },
    )
    paths.update(write_plots(rows, results, results_dir / "plots"))
    return BenchReport(
        rows=rows, aggregate=aggregate(rows), table=table, results=results, results_dir=results_dir,
        paths=paths, trials_run=ran, trials_reused=reused, trained_on=tuple(sorted(marked)),
    )  # fmt: skip
