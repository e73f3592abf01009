"""Teach a discrete policy to roll back: add a rollback detector to it, fitted to a rollback rule.

    python scripts/distill_policy.py --policy policies/default --spec default-rollback-final \
        --margin 0.1 --draws 96 --n-workers 2 --out runs/distilled/policy

The teacher runs the policy on draws of the spec's sampler (a seed stream of their own) and, on
each epoch whose validation accuracy is more than MARGIN below the run's best so far, also rolls
back to the best epoch and its LR. The student (the policy, acting in ``discrete-rollback``, with
units added that decide the rollback alone) is fitted to it (:mod:`rlagent.policy.distill`): its
LR and batch-size choices stay the policy's. Prints the fit as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rlagent.config import load_spec
from rlagent.errors import RLAgentError
from rlagent.policy.distill import RollbackRule, distill_rollback, distilled_record
from rlagent.policy.file import load_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="a discrete policy directory")
    parser.add_argument("--spec", required=True, help="the spec whose sampler gives the teacher's draws")
    parser.add_argument("--margin", type=float, default=0.1, help="roll back when this far below the best (0-1)")
    parser.add_argument("--draws", type=int, default=96)
    parser.add_argument(
        "--spread", type=int, default=0, help="copies of the teacher's states with the rule's inputs redrawn (0: none)"
    )
    parser.add_argument("--n-workers", type=int, default=1)
    parser.add_argument("--out", required=True, help="the student's policy directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec, rule = load_spec(args.spec), RollbackRule(args.margin)
        fit = distill_rollback(
            args.policy, spec, rule=rule, n_draws=args.draws, n_workers=args.n_workers, spread=args.spread
        )
        record = distilled_record(load_policy(args.policy), spec, args.policy, rule, fit)
        fit.policy.save(args.out, metadata=record)
    except RLAgentError as exc:
        print(f"distill_policy: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record["distilled_from"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
