"""The saved tuning policy as a benchmark method: runs through ``HyperTuneEnv``.

* ``policy`` — one run at the task's seed, from the start the policy was trained from: the spec's
  initial LR, or the LR probe's for a policy trained from probe starts
  (:func:`rlagent.policy.controller.trained_start`).
* ``policy-probe`` — the same run started at the LR a short range test on a copy of it points to
  (``lr="probe"``, :mod:`rlagent.probe`) instead of the spec's initial LR.

A run that starts from the probe is charged E epochs plus the probe's minibatches (as a fraction of
an epoch of the training split).
* ``policy-best-4`` — four runs, the best by validation accuracy (4·E epochs), against random
  best-of-4 and PBT-8 at comparable compute. The runs share the task's data split and differ in
  their initial weights and shuffling order: run 0 is ``policy``'s own run, run r >= 1 the env's
  ``replica`` r of the seed (:func:`rlagent.workloads.run_seeds`). The policy acts
  deterministically, so nothing else differs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rlagent.bench.methods.base import MethodResult, TrialContext, best_index
from rlagent.errors import RLAgentError
from rlagent.hparams import epoch_lr
from rlagent.policy.reuse import run_policy

logger = logging.getLogger(__name__)

POLICY_BEST_K = 4
"""Runs of ``policy-best-4``."""


def _runs(ctx: TrialContext, method: str, k: int, *, lr: str | None = None) -> list[dict[str, Any]]:
    """``k`` runs of the saved policy on ``ctx``'s task: replicas 0..k-1 of its seed (``lr``:
    :func:`run_policy`'s, e.g. ``"probe"``)."""
    if ctx.policy is None:
        raise RLAgentError(f"the {method!r} baseline needs ctx.policy (a policy directory or shipped name)")
    name = ctx.workload.name
    in_spec = ctx.spec.workload(name)
    if (in_spec.lr_range, in_spec.batch_size_range) != (ctx.workload.lr_range, ctx.workload.batch_size_range):
        logger.warning("%s: %s runs with the spec's ranges, not ctx.workload's", method, name)
    return [
        run_policy(
            ctx.policy,
            name,
            spec=ctx.spec,
            seed=ctx.seed,
            epochs=ctx.workload.epochs,
            device=ctx.device,
            replica=r,
            lr=lr,
        )
        for r in range(k)
    ]


def _details(ctx: TrialContext, run: dict[str, Any]) -> dict[str, Any]:
    history = run["history"]
    return {
        "policy": str(ctx.policy),
        "trained_on": run["trained_on"],
        "heldout": run["heldout"],
        "diverged": run["diverged"],
        "schedule": [[epoch_lr(h), h["batch_size"]] for h in history],  # what each epoch trained at
        "history": history,
        "probe_lr": run["probe_lr"],
        "probe_epochs": run["probe_epochs"],
    }


def _charged(ctx: TrialContext, run: dict[str, Any]) -> float:
    """Epochs one run is charged: E, plus the LR probe's samples where it started from one."""
    return ctx.workload.epochs + run["probe_epochs"]


def policy(ctx: TrialContext) -> list[MethodResult]:
    """One run of the saved policy ``ctx.policy`` through ``HyperTuneEnv`` (:func:`run_policy`),
    from the start it was trained from.

    Charged E epochs (plus the probe's, for a probe start) even if the run diverges early, like
    every other single run.
    """
    start = time.perf_counter()
    (run,) = _runs(ctx, "policy", 1)
    return [
        MethodResult(
            method="policy", workload=ctx.workload.name, seed=ctx.seed, val_acc=float(run["final_val_acc"]),
            test_acc=float(run["test_acc"]), epochs=_charged(ctx, run), seconds=time.perf_counter() - start,
            details=_details(ctx, run),
        )
    ]  # fmt: skip


def policy_probe(ctx: TrialContext) -> list[MethodResult]:
    """One run of the saved policy from the LR probe's start (:func:`run_policy` with ``lr="probe"``).

    The run is ``policy``'s (same split, weights and shuffling; the probe trains a copy), only
    its first LR differs. Charged E epochs plus the probe's minibatches as a fraction of an epoch.
    """
    start = time.perf_counter()
    (run,) = _runs(ctx, "policy-probe", 1, lr="probe")
    return [
        MethodResult(
            method="policy-probe", workload=ctx.workload.name, seed=ctx.seed, val_acc=float(run["final_val_acc"]),
            test_acc=float(run["test_acc"]), epochs=_charged(ctx, run), seconds=time.perf_counter() - start,
            details=_details(ctx, run),
        )
    ]  # fmt: skip


def policy_best(ctx: TrialContext, *, k: int = POLICY_BEST_K) -> list[MethodResult]:
    """``k`` runs of the saved policy (other init and shuffling, same split); the best final
    validation accuracy is selected (the earliest on ties). Charged k·E epochs, plus each run's
    probe for a policy trained from probe starts."""
    if k < 1:
        raise RLAgentError(f"policy-best: got k={k}; expected an integer >= 1")
    method = f"policy-best-{k}"
    start = time.perf_counter()
    runs = _runs(ctx, method, k)
    i = best_index([float(r["final_val_acc"]) for r in runs])
    details = {
        **_details(ctx, runs[i]),
        "selected": i,
        "replicas": [
            {
                "replica": r["replica"],
                "val_acc": float(r["final_val_acc"]),
                "test_acc": float(r["test_acc"]),
                "diverged": r["diverged"],
            }
            for r in runs
        ],  # fmt: skip
    }
    return [
        MethodResult(
            method=method, workload=ctx.workload.name, seed=ctx.seed, val_acc=float(runs[i]["final_val_acc"]),
            test_acc=float(runs[i]["test_acc"]), epochs=sum(_charged(ctx, r) for r in runs),
            seconds=time.perf_counter() - start,
            details=details,
        )
    ]  # fmt: skip


def policy_best_4(ctx: TrialContext) -> list[MethodResult]:
    """:func:`policy_best` with k = 4, reported as ``policy-best-4``."""
    return policy_best(ctx, k=POLICY_BEST_K)
