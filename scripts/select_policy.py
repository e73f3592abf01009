"""Choose a policy among candidates on validation draws, confirm it on fresh ones, against the incumbent.

    python scripts/select_policy.py --incumbent policies/default \\
        base=runs/train/run/checkpoints gamma09=runs/g09/run/checkpoints --every 4000 --out runs/select

Each candidate is ``NAME=PATH``: a policy directory, one checkpoint, or a run's checkpoints
folder (every checkpoint whose step is a multiple of ``--every``, and the last, named
``NAME-STEP``). Every candidate and the incumbent are scored on validation draws
``0 .. --select-draws - 1`` (from ``--select-from`` if given: past the draws the incumbent was
chosen on, where it is flattered) from each ``--start`` (default: the draws' own starts, LR 1e-1 /
batch 16, LR 1e-4 / batch 512); the best mean over the starts is chosen; the chosen one and the
incumbent then run the next ``--confirm-draws`` draws (from ``--confirm-from`` if given: past
draws already looked at), and it replaces the incumbent only if ahead there from every start where
the two differ (:mod:`rlagent.policy.select`). A start ``...@SPEC`` takes its draws from
that spec instead of ``--spec`` (e.g. ``--start own --start own@default-hot-final``: the plain
and the probe-blind hot part of a mixed recipe). Reports are kept under ``--out`` and read
back while they stand, so adding a candidate later costs only its own draws. Writes
``OUT/selection.md`` and ``OUT/selection.json``; prints the verdict.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rlagent.cli import USER_ERRORS, sigterm_interrupts
from rlagent.errors import SpecError
from rlagent.policy.checkpoints import checkpoint_policies
from rlagent.policy.select import DEFAULT_STARTS, select_policy
from rlagent.policy.validate import parse_start


def expand(items: list[str], every: int) -> dict[str, Path]:
    """``NAME=PATH`` arguments -> policy directories by name (checkpoint folders expanded)."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise SpecError("candidate", item, "NAME=PATH (a policy, a checkpoint or a checkpoints folder)")
        path = Path(text)
        if (path / "policy.json").is_file():
            found = {name: path}
        else:
            listed = checkpoint_policies(path, every)
            found = {name: listed[0][1]} if len(listed) == 1 else {f"{name}-{s}": p for s, p in listed}
        clash = sorted(set(found) & set(out))
        if clash:
            raise SpecError("candidate", item, f"a name not given twice (already: {clash})")
        out.update(found)
    return out


def parse_starts(texts: list[str] | None) -> tuple:
    """``--start`` values (``own``, ``LR,BS`` or ``LR,BS,check``, each optionally ``@SPEC``) -> starts."""
    if not texts:
        return DEFAULT_STARTS
    starts = []
    for text in texts:
        start_text, at, spec = text.partition("@")
        if at and not spec:
            raise SpecError("--start", text, "START@SPEC with a spec name or path after '@'")
        start = None if start_text == "own" else parse_start(start_text)
        starts.append({**(start or {}), "spec": spec} if spec else start)
    return tuple(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--incumbent", default="policies/default", help="the policy in use (default: the shipped one)")
    parser.add_argument(
        "--spec", default="default", help="the spec the policies trained on (its sampler gives the draws)"
    )
    parser.add_argument(
        "--every",
        type=int,
        default=0,
        help="from a checkpoints folder, only steps that are multiples of this (and the last)",
    )
    parser.add_argument(
        "--start",
        action="append",
        metavar="own|LR,BS[,check][@SPEC]",
        help=(
            "a start to score from: own, LR,BS or LR,BS,check (checked against the LR probe), each optionally "
            "@SPEC to draw from another spec; repeat; default: own, 0.1,16, 1e-4,512"
        ),
    )
    parser.add_argument("--select-draws", type=int, default=24)
    parser.add_argument(
        "--select-from", type=int, default=0,
        help="first selection draw (default 0); past the draws the incumbent was chosen on",
    )  # fmt: skip
    parser.add_argument("--confirm-draws", type=int, default=96)
    parser.add_argument(
        "--confirm-from",
        type=int,
        default=None,
        help="first confirmation draw (default: the one after the selection draws)",
    )
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--out", required=True, help="folder for the reports, selection.md and selection.json")
    args = parser.parse_args()  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rlagent.policy.validate").setLevel(logging.WARNING)
    try:
        with sigterm_interrupts():
            if args.every < 0 or args.n_workers < 1:
                raise SpecError("--every / --n-workers", (args.every, args.n_workers), ">= 0 and >= 1")
            starts = parse_starts(args.start)
            candidates = expand(args.candidates, args.every)
            out = Path(args.out)
            selection = select_policy(
                candidates, args.incumbent, args.spec, starts=starts, n_select=args.select_draws,
                n_confirm=args.confirm_draws, confirm_from=args.confirm_from, select_from=args.select_from,
                n_workers=args.n_workers, store=out,
            )  # fmt: skip
    except USER_ERRORS as err:
        print(f"select_policy.py: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            f"select_policy.py: interrupted; the finished reports in {args.out} are read back on the next run",
            file=sys.stderr,
        )
        sys.exit(130)
    (out / "selection.md").write_text(selection.to_markdown())
    (out / "selection.json").write_text(json.dumps(selection.to_dict(), indent=1))
    print(selection.to_markdown())


if __name__ == "__main__":
    main()
