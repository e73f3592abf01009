"""Score a training run's checkpoints on validation draws: how a policy changes as PPO trains.

    python scripts/validate_checkpoints.py runs/train/run/checkpoints --every 4000 --out runs/ckpt_val
    python scripts/validate_checkpoints.py runs/train/run/checkpoints --every 4000 --start 0.1,16 --out runs/ckpt_val

Runs :func:`rlagent.policy.validate.validate_policy` on the policy inside every checkpoint whose
step is a multiple of ``--every`` (and on the last one), on the same draws of the spec's
procedural sampler, never on the held-out suite. ``--start LR,BS`` starts every draw there
instead of at the draw's own start. Each result is stored as ``OUT/step-NNNNNNNNN[__start-LR-BS].json``
and read back on the next call while it still stands for that checkpoint's policy and draws;
the table goes to ``OUT/checkpoints[__start-LR-BS].md``.

Checkpoints a few thousand steps apart can differ by several points, so where a run happens to
stop matters; this is how to see it. Picking the best checkpoint on these draws and then
reporting its score on the same draws overstates it: confirm on other draws (``--draws`` more
than the ones chosen on, and compare only the new ones) before relying on a choice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rlagent.cli import USER_ERRORS, sigterm_interrupts
from rlagent.config import load_spec
from rlagent.policy.checkpoints import checkpoint_policies
from rlagent.policy.validate import parse_start, start_suffix, validate_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", help="a run's checkpoints folder (or one checkpoint)")
    parser.add_argument("--spec", default="default", help="the spec the run trained on (its sampler gives the draws)")
    parser.add_argument("--every", type=int, default=0, help="only steps that are multiples of this (and the last)")
    parser.add_argument("--draws", type=int, default=24)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--start", default=None, metavar="LR,BS", help="validate from this LR and batch size")
    parser.add_argument("--out", required=True, help="folder for the per-checkpoint results and the table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.every < 0 or args.draws < 1 or args.n_workers < 1:
        parser.error(f"--every >= 0, --draws >= 1, --n-workers >= 1; got {args.every}, {args.draws}, {args.n_workers}")
    try:
        with sigterm_interrupts():
            start = parse_start(args.start) if args.start else None
            spec = load_spec(args.spec)
            chosen = checkpoint_policies(args.checkpoints, args.every)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            suffix = start_suffix(start)
            rows = []
            for step, path in chosen:
                report = validate_policy(
                    path, spec, n_draws=args.draws, n_workers=args.n_workers, start=start,
                    store=out / f"{path.parent.name}{suffix}.json",
                )  # fmt: skip
                rows.append({"step": step, **report.summary()})
                print(json.dumps(rows[-1]), flush=True)
    except USER_ERRORS as err:
        print(f"validate_checkpoints.py: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            f"validate_checkpoints.py: interrupted; the finished results in {args.out} are read back on the next run",
            file=sys.stderr,
        )
        sys.exit(130)
    where = f", all from LR {start['lr']:g} / batch {start['batch_size']}" if start else ""
    lines = [
        f"Checkpoints of `{args.checkpoints}` on {args.draws} validation draws of `{spec.name}`{where}.",
        "",
        "| env steps | mean final val acc | gain over the constant start | win rate | diverged |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['step']:,} | {r['mean_val_acc']:.4f} | {r['mean_gain_over_constant']:+.4f} | {r['win_rate']:.3f} "
            f"| {r['diverged']} |"
            for r in rows
        ),
    ]
    (out / f"checkpoints{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
