"""``rlagent`` command line: parse, call the package, print. Errors end as one readable line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import gymnasium as gym
from rich.console import Console
from rich.table import Table

from rlagent import ENV_ID
from rlagent.bench.runner import BenchConfig, run_benchmark
from rlagent.config import load_spec
from rlagent.errors import RLAgentError
from rlagent.hparams import epoch_lr
from rlagent.policy.reuse import run_policy
from rlagent.policy.train import PPOSettings, TrainConfig, TrainResult, train_policy
from rlagent.pool import BACKENDS, make_pool
from rlagent.workloads import describe, load_source

console = Console(width=None if sys.stdout.isatty() else 160)


def _cmd_workloads(args: argparse.Namespace) -> None:
    spec = load_spec(args.spec)
    if args.sample is not None:
        _print_draws(spec, args)
        return
    names = list(dict.fromkeys([*spec.workloads.train_names, *spec.workloads.heldout, *args.extra]))
    rows = []
    for name in names:
        wl = spec.workload(name)
        row = describe(wl, load_source(wl))
        train = name in spec.workloads.train_names
        row["role"] = "train" if train else "held-out" if name in spec.workloads.heldout else "-"
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    title = f"workloads of spec '{spec.name}'"
    if spec.workloads.sampler is not None:
        title += " (training workloads are drawn: see --sample N)"
    table = Table(title=title)
    cols = ("name", "role", "family", "train", "val", "test", "input", "classes", "params", "opt", "epochs")
    for col in (*cols, "description"):
        table.add_column(
            col, justify="right" if col in ("train", "val", "test", "classes", "params", "epochs") else "left"
        )
    for r in rows:
        table.add_row(
            r["name"], r["role"], r["family"], str(r["train"]), str(r["val"]), str(r["test"]),
            "x".join(map(str, r["input_shape"])), str(r["classes"]), f"{r['params']:,}", r["optimizer"],
            str(r["epochs"]), r["description"],
        )  # fmt: skip
    console.print(table)


def _print_draws(spec, args: argparse.Namespace) -> None:
    import torch

    from rlagent.costs import draw_rows
    from rlagent.errors import SpecError

    if args.sample < 1:
        raise SpecError("--sample", args.sample, "an integer >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the epoch cost is quoted for one core
    try:
        rows = draw_rows(spec, args.sample, args.seed)
    finally:
        torch.set_num_threads(threads)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        title=f"{args.sample} draws of spec '{spec.name}' from seed {args.seed} (epoch seconds: 1 core, batch 32)"
    )
    cols = ("name", "family", "train", "input", "classes", "params", "epochs", "init lr", "init bs", "est s", "epoch s")
    for col in (*cols, "description"):
        table.add_column(col, justify="left" if col in ("name", "family", "input", "description") else "right")
    for r in rows:
        table.add_row(
            r["name"], r["family"], str(r["train"]), "x".join(map(str, r["input_shape"])), str(r["classes"]),
            f"{r['params']:,}", str(r["epochs"]), f"{r['init_lr']:.2e}", str(r["init_batch_size"]),
            f"{r['est_seconds']:.3f}", f"{r['seconds']:.3f}", r["description"],
        )  # fmt: skip
    console.print(table)


def _cmd_rollout(args: argparse.Namespace) -> None:
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
            str(info["epoch"]), f"{epoch_lr(info):.2e}", str(info["batch_size"]), f"{info['train_loss']:.3f}",
            f"{info['val_acc']:.3f}", f"{reward:.3f}", f"{env.unwrapped.epoch_time:.2f}",
        )  # fmt: skip
    env.close()
    console.print(table)
    console.print(f"return {total:.3f}; final test accuracy {info['test_acc']:.3f}; diverged {info['diverged']}")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rlagent train`` (shared with ``scripts/train_policy.py``)."""
    d, c = PPOSettings(), TrainConfig()
    p.add_argument("--spec", default=c.spec, help="spec file or shipped spec name")
    p.add_argument("--timesteps", type=int, default=c.timesteps, help="total env steps (= epochs trained)")
    p.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: one per GPU, else per core)")
    p.add_argument(
        "--population", type=int, default=None,
        help="K envs per worker (process or Ray actor), trained together (batched where it pays); --n-envs workers",
    )  # fmt: skip
    p.add_argument("--devices", default=c.devices, help="auto, or e.g. cuda:0,cuda:1 or cpu")
    p.add_argument("--seed", type=int, default=None, help="default: the spec's seed")
    p.add_argument("--out", default=str(c.out), help="policy directory to write")
    p.add_argument("--run-dir", default=None, help="checkpoints and logs (default runs/SPEC__NAME__SEED)")
    p.add_argument("--resume", default=None, help="checkpoint (or folder of checkpoints) to continue from")
    p.add_argument(
        "--allow-spec-change", action="store_true", help="resume a checkpoint of another spec (both are recorded)"
    )
    p.add_argument(
        "--init-from", default=None, metavar="POLICY",
        help="start from this saved policy's weights (fine-tune it); fresh optimiser and step count",
    )  # fmt: skip
    p.add_argument(
        "--fresh-critic", action="store_true",
        help="with --init-from, start a new value network (for another reward or gamma)",
    )  # fmt: skip
    p.add_argument(
        "--critic-warmup", type=int, default=c.critic_warmup, metavar="STEPS",
        help="with --init-from, train only the value network for the first STEPS env steps",
    )  # fmt: skip
    p.add_argument("--tensorboard", default=None, help="TensorBoard log directory")
    p.add_argument(
        "--checkpoint-every", type=int, default=c.checkpoint_every, help="env steps between checkpoints (0: none)"
    )
    p.add_argument("--max-minutes", type=float, default=None, help="stop and save after this much wall time")
    p.add_argument("--backend", choices=BACKENDS, default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
    p.add_argument("--n-steps", type=int, default=d.n_steps, help="PPO rollout length per env")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="PPO minibatch size")
    p.add_argument("--ppo-epochs", type=int, default=d.n_epochs, help="PPO passes per rollout")
    p.add_argument("--ppo-lr", type=float, default=d.learning_rate, help="PPO Adam learning rate")
    p.add_argument(
        "--ppo-lr-end", type=float, default=d.learning_rate_end,
        help="if given, the PPO learning rate falls linearly from --ppo-lr to this over --timesteps",
    )  # fmt: skip
    p.add_argument("--gamma", type=float, default=d.gamma, help="discount factor")
    p.add_argument("--ent-coef", type=float, default=d.ent_coef, help="entropy bonus")
    p.add_argument("--net-arch", type=int, nargs="+", default=list(d.net_arch), help="hidden layer widths")
    p.add_argument(
        "--frame-stack", type=int, default=d.frame_stack, help="observations of the last K epochs the policy sees"
    )
    p.add_argument(
        "--lstm", type=int, default=d.lstm_hidden_size, metavar="UNITS",
        help="train RecurrentPPO (sb3-contrib) with an LSTM of this many units; 0: plain PPO",
    )  # fmt: skip
    p.add_argument(
        "--draw-group", type=int, default=c.draw_group, metavar="K",
        help="K envs share each draw; advantages relative to the others' at the same epoch (1: off)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_draw_arguments(p: argparse.ArgumentParser, draws: int = 24) -> None:
    """``--draws``, ``--first-draw`` and ``--n-workers`` of the scripts that score validation draws."""
    p.add_argument("--draws", type=int, default=draws)
    p.add_argument("--first-draw", type=int, default=0)
    p.add_argument("--n-workers", type=int, default=2)


def check_draw_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, min_draws: int = 1) -> None:
    """Exit through ``p.error`` (status 2, one line) unless the :func:`add_draw_arguments` are in range."""
    if args.draws < min_draws or args.first_draw < 0 or args.n_workers < 1:
        p.error(
            f"--draws >= {min_draws}, --first-draw >= 0, --n-workers >= 1; "
            f"got {args.draws}, {args.first_draw}, {args.n_workers}"
        )


def run_training(args: argparse.Namespace, command: str) -> TrainResult:
    """Build the config from parsed ``add_train_arguments`` options and train."""
    ppo = PPOSettings(
        n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.ppo_epochs, learning_rate=args.ppo_lr,
        learning_rate_end=args.ppo_lr_end, gamma=args.gamma, ent_coef=args.ent_coef, net_arch=tuple(args.net_arch),
        frame_stack=args.frame_stack, lstm_hidden_size=args.lstm,
    )  # fmt: skip
    config = TrainConfig(
        spec=args.spec, timesteps=args.timesteps, n_envs=args.n_envs, devices=args.devices, seed=args.seed,
        out=args.out, run_dir=args.run_dir, resume=args.resume, tensorboard=args.tensorboard,
        checkpoint_every=args.checkpoint_every, ppo=ppo, progress=not args.no_progress,
        metadata={"command": command}, max_minutes=args.max_minutes, allow_spec_change=args.allow_spec_change,
        population=args.population, init_from=args.init_from, init_critic=not args.fresh_critic,
        critic_warmup=args.critic_warmup, draw_group=args.draw_group,
    )  # fmt: skip
    venv = None
    if args.backend == "ray":
        from rlagent.policy.preflight import check_training

        spec = check_training(config, check_devices_=False).spec  # before starting Ray
        venv = make_pool(
            spec, backend="ray", n_envs=args.n_envs, devices=args.devices, address=args.address,
            population=args.population,
        )  # fmt: skip
    return train_policy(config, venv=venv)


def _cmd_train(args: argparse.Namespace) -> None:
    result = run_training(args, "rlagent " + " ".join(sys.argv[1:]))
    console.print(
        f"saved policy to {result.policy_dir} after {result.timesteps} env steps in {result.wall_seconds:.0f} s "
        f"({result.env_steps_per_second:.1f} steps/s on {len(result.slots) or 'ray'} workers; "
        f"PPO updates {100 * result.update_share:.0f}% of the time); "
        f"mean final val acc of the last episodes {result.mean_final_val_acc:.3f}"
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tuning policy with PPO on a pool of envs")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_run_policy(args: argparse.Namespace) -> None:
    if args.command == "tune":
        print(
            "rlagent tune is deprecated and will be removed in the next release; use rlagent run-policy",
            file=sys.stderr,
        )

    result = run_policy(
        args.policy, args.workload, spec=args.spec, seed=args.seed, epochs=args.epochs,
        device=args.device, num_threads=args.threads, lr=args.lr, batch_size=args.batch_size,
        start_check=not args.no_start_check,
    )  # fmt: skip
    role = (
        "held-out" if result["heldout"] else "TRAINED ON by this policy" if result["trained_on"] else "not in the spec"
    )
    table = Table(title=f"{args.policy} tuning {args.workload} ({role}), seed {args.seed}")
    for col in ("epoch", "lr", "batch", "train loss", "train acc", "val acc"):
        table.add_column(col, justify="right")
    for h in result["history"]:
        table.add_row(
            str(h["epoch"]), f"{epoch_lr(h):.2e}", str(h["batch_size"]), f"{h['train_loss']:.3f}",
            f"{h['train_acc']:.3f}", f"{h['val_acc']:.3f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"final val acc {result['final_val_acc']:.4f}; test acc {result['test_acc']:.4f}"
        + ("; DIVERGED" if result["diverged"] else "")
        + (f"; the probe's minimum-loss LR {result['probe_lr']:.2e}" if result["probe_lr"] is not None else "")
        + (f"; --lr {args.lr:g} is above it: started at the probe's LR" if result["start_replaced"] else "")
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.out}")


def _add_run_policy(sub: argparse._SubParsersAction, name: str = "run-policy", deprecated: bool = False) -> None:
    help_text = "one training run of a workload with a saved policy choosing LR and batch size"
    p = sub.add_parser(name, help="deprecated name of run-policy" if deprecated else help_text)
    p.add_argument("--policy", default="default", help="policy directory or shipped policy name")
    p.add_argument("--workload", required=True, help="workload name (see `rlagent workloads`)")
    p.add_argument("--spec", default="default", help="spec that defines the workload and ranges")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--lr", type=_lr_or_probe, default=None,
        help="first epoch's LR instead of the spec's, or 'probe': a short LR range test on a copy of the run picks it",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None, help="first epoch's batch size instead of the spec's")
    p.add_argument(
        "--no-start-check", action="store_true",
        help="keep a numeric --lr as given (default: one above the LR probe's minimum-loss LR starts at the probe's LR)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="write the run as JSON here")
    p.set_defaults(func=_cmd_run_policy)


def _lr_or_probe(text: str) -> float | str:
    if text == "probe":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a number > 0 or 'probe'") from None


def _cmd_bench(args: argparse.Namespace) -> None:
    seeds = None if args.seeds is None else args.seeds[0] if len(args.seeds) == 1 else args.seeds
    common = dict(
        spec=args.spec, policy=args.policy, workloads=args.workloads, methods=args.methods, epochs=args.epochs,
        results_dir=args.results, n_workers=args.n_workers, devices=args.devices, progress=not args.no_progress,
        backend=args.backend, address=args.address,
    )  # fmt: skip
    if args.quick:
        from rlagent.bench.quick import quick_config

        config = quick_config(seeds=seeds, **common)
    else:
        config = BenchConfig(seeds=5 if seeds is None else seeds, **common)
    report = run_benchmark(config)
    print(report.table)
    print(
        f"{report.trials_run} tasks run, {report.trials_reused} reused; "
        f"wrote {report.paths['table']}, {report.paths['csv'].name}, {report.paths['json'].name} "
        f"and {len(report.plots)} plots in {report.results_dir}"
    )


def _add_bench(sub: argparse._SubParsersAction) -> None:
    c = BenchConfig()
    p = sub.add_parser("bench", help="benchmark a policy against the baselines on held-out workloads")
    p.add_argument("--spec", default=c.spec, help="spec file or shipped spec name")
    p.add_argument("--policy", default=c.policy, help="policy directory or shipped policy name")
    p.add_argument("--workloads", nargs="+", default=None, help="workloads (default: the spec's held-out ones)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="one number N: seeds 0..N-1; several: those seeds (default 5; 2 with --quick)",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help="a representative subset in minutes: 2 held-out workloads, 2 seeds, the key methods "
        "(any of --workloads/--seeds/--methods/--results given replaces its default)",
    )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, help="method tasks (default: all of the backend)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training run (default: the spec's)")
    p.add_argument("--results", default=None, help="results folder (default results/bench__SPEC__POLICY)")
    p.add_argument("--n-workers", type=int, default=None, help="parallel workers (default: one per GPU, else core)")
    p.add_argument("--devices", default=c.devices, help="auto, or e.g. cuda:0,cuda:1 or cpu")
    p.add_argument(
        "--backend", choices=BACKENDS, default=c.backend,
        help="local worker processes, or Ray tasks (adds the ray-pbt and ray-asha methods)",
    )  # fmt: skip
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray; default: a local one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlagent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("workloads", help="list the workloads of a spec with sizes and parameter counts")
    p.add_argument("--spec", default="default", help="spec file or shipped spec name (default: default)")
    p.add_argument("--extra", nargs="*", default=[], help="more workload names to describe")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--sample", type=int, default=None, metavar="N",
        help="instead, print N draws of the spec's procedural sampler with their measured epoch cost",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw (with --sample)")
    p.set_defaults(func=_cmd_workloads)

    p = sub.add_parser("rollout", help="run one episode with random actions")
    p.add_argument("--spec", default="default")
    p.add_argument("--workload", default=None, help="workload to run (default: drawn from the spec)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_cmd_rollout)

    _add_train(sub)
    _add_run_policy(sub)
    _add_run_policy(sub, "tune", deprecated=True)
    _add_bench(sub)
    return parser


USER_ERRORS = (RLAgentError, ValueError, OSError, ImportError)
"""Errors a command reports in one line (bad input, a missing file or extra); anything else is a bug."""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a scheduler's stop) ends the command as Ctrl-C does:
    ``finally`` blocks and context managers run, so worker pools are shut down with it instead of
    left running. The previous handler is restored on leaving. For a command's main thread only;
    library code installs no handlers."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        with sigterm_interrupts():
            args.func(args)
    except USER_ERRORS as exc:
        print(f"rlagent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlagent {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
