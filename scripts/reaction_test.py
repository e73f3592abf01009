"""Does a policy react to the run? The twin test on validation draws with a hidden mid-run LR shift.

    python scripts/reaction_test.py policies/default --draws 24 --out-dir runs/react
    python scripts/reaction_test.py policies/default candidate=runs/x/policy --spec default-shift-final --draws 24

Runs :func:`rlagent.policy.reaction.reaction_test` for each policy: on every validation draw of
the spec (it must shift the hidden LR scale mid-run: ``lr_shift_range``) the policy runs
closed-loop, then its actions on the draw's twin without the shift are replayed on the shifted
draw. The mean difference is what reacting to the shift earned (0 for a policy that ignores the
run), also split by draws that turn hotter and colder. One JSON summary per policy is printed;
``--out-dir`` keeps the per-draw results as ``NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rlagent.cli import USER_ERRORS, add_draw_arguments, check_draw_arguments, sigterm_interrupts
from rlagent.config import load_spec
from rlagent.policy.reaction import reaction_test
from rlagent.policy.validate import parse_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="+", help="policy directories, optionally NAME=DIR")
    parser.add_argument("--spec", default="default-shift-final", help="a spec with a mid-run shift")
    add_draw_arguments(parser)
    parser.add_argument("--start", default=None, metavar="LR,BS[,check]", help="every run from this start")
    parser.add_argument("--out-dir", default=None, help="folder for NAME.json, the per-draw results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    check_draw_arguments(parser, args, min_draws=1)
    named = [p.split("=", 1) if "=" in p else [Path(p).name, p] for p in args.policies]
    try:
        with sigterm_interrupts():
            start = parse_start(args.start) if args.start else None
            spec = load_spec(args.spec)
            out = Path(args.out_dir) if args.out_dir else None
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
            for name, path in named:
                report = reaction_test(
                    path, spec, n_draws=args.draws, first_draw=args.first_draw, n_workers=args.n_workers, start=start
                )
                if out is not None:
                    report.save(out / f"{name}.json")
                print(json.dumps({"policy": name, **report.summary()}), flush=True)
    except USER_ERRORS as err:
        print(f"reaction_test.py: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("reaction_test.py: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
