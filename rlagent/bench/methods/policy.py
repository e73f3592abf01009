"""The saved tuning policy as a benchmark method: one run through ``HyperTuneEnv``."""

from __future__ import annotations

import logging
import time

from rlagent.bench.methods.base import MethodResult, TrialContext
from rlagent.errors import RLAgentError
from rlagent.policy.reuse import run_policy

logger = logging.getLogger(__name__)


def policy(ctx: TrialContext) -> list[MethodResult]:
    """One run of the saved policy ``ctx.policy`` through ``HyperTuneEnv`` (:func:`run_policy`).

    Charged E epochs even if the run diverges early, like every other single run.
    """
    if ctx.policy is None:
        raise RLAgentError("the 'policy' baseline needs ctx.policy (a policy directory or shipped name)")
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
