"""``rlagent`` command line: parse, call the package, print. Errors end as one readable line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from rlagent.errors import RLAgentError

console = Console(width=None if sys.stdout.isatty() else 160)


def _cmd_workloads(args: argparse.Namespace) -> None:
    from rlagent.config import load_spec
    from rlagent.workloads import describe, load_source

    spec = load_spec(args.spec)
    names = list(dict.fromkeys([*spec.workloads.train, *spec.workloads.heldout, *args.extra]))
    rows = []
    for name in names:
        wl = spec.workload(name)
        row = describe(wl, load_source(wl))
        row["role"] = "train" if name in spec.workloads.train else "held-out" if name in spec.workloads.heldout else "-"
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"workloads of spec '{spec.name}'")
    for col in ("name", "role", "train", "val", "test", "input", "classes", "params", "opt", "epochs", "description"):
        table.add_column(
            col, justify="right" if col in ("train", "val", "test", "classes", "params", "epochs") else "left"
        )
    for r in rows:
        table.add_row(
            r["name"], r["role"], str(r["train"]), str(r["val"]), str(r["test"]), "x".join(map(str, r["input_shape"])),
            str(r["classes"]), f"{r['params']:,}", r["optimizer"], str(r["epochs"]), r["description"],
        )  # fmt: skip
    console.print(table)


def _cmd_rollout(args: argparse.Namespace) -> None:
    import gymnasium as gym

    from rlagent import ENV_ID

    env = gym.make(ENV_ID, spec=args.spec, device=args.device, num_threads=args.threads)
    options = {"workload": args.workload} if args.workload else None
    obs, info = env.reset(seed=args.seed, options=options)
    env.action_space.seed(args.seed)
    table = Table(title=f"random-policy rollout on {info['workload']} (seed {args.seed})")
    for col in ("epoch", "lr", "batch", "train loss", "val acc", "reward", "sec"):
        table.add_column(col, justify="right")
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += float(reward)
        done = terminated or truncated
        table.add_row(
            str(info["epoch"]), f"{info['lr']:.2e}", str(info["batch_size"]), f"{info['train_loss']:.3f}",
            f"{info['val_acc']:.3f}", f"{reward:.3f}", f"{info['epoch_time']:.2f}",
        )  # fmt: skip
    env.close()
    console.print(table)
    console.print(f"return {total:.3f}; final test accuracy {info['test_acc']:.3f}; diverged {info['diverged']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlagent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("workloads", help="list the workloads of a spec with sizes and parameter counts")
    p.add_argument("--spec", default="default", help="spec file or shipped spec name (default: default)")
    p.add_argument("--extra", nargs="*", default=[], help="more workload names to describe")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_workloads)

    p = sub.add_parser("rollout", help="run one episode with random actions")
    p.add_argument("--spec", default="default")
    p.add_argument("--workload", default=None, help="workload to run (default: drawn from the spec)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_cmd_rollout)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except (RLAgentError, ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"rlagent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlagent {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
