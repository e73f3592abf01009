"""How much does the LR probe's start rule matter? A policy from probe starts at several divisors.

    python scripts/start_ablation.py policies/default --spec default --spec default-hot-final \
        --divisor 3 10 30 100 --draws 24 --out-dir runs/start

A policy trained from LR-probe starts begins each run at the probe's minimum-loss LR ÷ 10 (the
practitioner's rule, :mod:`rlagent.probe`). On the validation draws of each ``--spec`` (never the
held-out suite) this runs the policy, and the start held constant, from the probe's LR ÷ each
``--divisor`` (the env's reset option ``probe_divisor``). Per spec and divisor it prints the mean
final validation accuracy of the policy and of the constant start, and, paired by draw, their
differences from the reference divisor (``--reference``, default 10) ± one standard error, and the
share of the policy's LR moves that its next move went back on (dithering). A markdown table is
printed; ``--out-dir`` keeps one validation report per spec and divisor and reads back any that
still stand (:func:`rlagent.policy.validate.validate_policy`'s ``store``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rlagent.cli import USER_ERRORS, add_draw_arguments, check_draw_arguments, sigterm_interrupts
from rlagent.config import load_spec
from rlagent.policy.select import paired
from rlagent.policy.validate import validate_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="a policy directory trained from LR-probe starts")
    parser.add_argument("--spec", action="append", help="a spec to draw from (repeatable; default: default)")
    parser.add_argument("--divisor", type=float, nargs="+", default=[3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--reference", type=float, default=10.0, help="the divisor the others are paired with")
    add_draw_arguments(parser)
    parser.add_argument("--out-dir", default=None, help="folder for the validation reports")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    check_draw_arguments(parser, args, min_draws=2)
    divisors = sorted({args.reference, *args.divisor})
    last = args.first_draw + args.draws - 1
    print(
        "| spec | divisor | policy | Δ policy | constant start | Δ constant | policy's LR moves reversed |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    try:
        with sigterm_interrupts():
            out = Path(args.out_dir) if args.out_dir else None
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
            for spec_name in args.spec or ["default"]:
                spec = load_spec(spec_name)
                reports = {}
                name = f"{spec.name}__draws-{args.first_draw}-{last}__div{{:g}}.json"
                for divisor in divisors:
                    store = None if out is None else out / name.format(divisor)
                    reports[divisor] = validate_policy(
                        args.policy, spec, n_draws=args.draws, first_draw=args.first_draw, n_workers=args.n_workers,
                        start={"lr": "probe", "probe_divisor": divisor}, store=store,
                    )  # fmt: skip
                reference = reports[args.reference]
                for divisor, report in reports.items():
                    cells = []
                    for key in ("val_acc", "constant_val_acc"):
                        pair = paired(f"÷{divisor:g}", report, reference, key=key)
                        delta = f"{100 * pair.difference:+.1f} ± {100 * pair.stderr:.1f}"
                        delta = "—" if divisor == args.reference else delta
                        cells += [f"{pair.candidate:.3f}", delta]
                    cells.append(f"{report.reversal_share:.0%}")
                    print(f"| {spec.name} | {divisor:g} | " + " | ".join(cells) + " |", flush=True)
    except USER_ERRORS as err:
        print(f"start_ablation.py: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
