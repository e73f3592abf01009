"""Average the weights of a run's last checkpoints into one policy (a candidate for select_policy.py).

    python scripts/average_policy.py runs/train/run/checkpoints --from 16000 --every 2000 --out runs/avg/policy

Takes the checkpoints of one run from step ``--from`` on whose step is a multiple of ``--every``
(and the last), and saves the element-wise mean of their weights, with the newest checkpoint's
observation normaliser (:func:`rlagent.policy.average.average_policies`). Whether the average
is better than the run's own checkpoints is for ``scripts/select_policy.py`` to find out on
validation draws.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rlagent.cli import USER_ERRORS
from rlagent.policy.average import average_policies
from rlagent.policy.checkpoints import checkpoint_policies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", help="a run's checkpoints folder")
    parser.add_argument("--from", dest="first", type=int, default=0, help="first env step to include")
    parser.add_argument("--every", type=int, default=0, help="only steps that are multiples of this (and the last)")
    parser.add_argument("--out", required=True, help="the policy directory to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.every < 0 or args.first < 0:
            raise ValueError(f"--from and --every must be >= 0; got {args.first}, {args.every}")
        chosen = checkpoint_policies(args.checkpoints, args.every, args.first, evenly=True)
        out = average_policies([p for _, p in chosen], args.out)
    except USER_ERRORS as err:
        print(f"average_policy.py: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"averaged steps {', '.join(str(s) for s, _ in chosen)} into {out}")


if __name__ == "__main__":
    main()
