"""Train a tuning policy with PPO and draw its training curve.

    python scripts/train_policy.py --spec default --timesteps 100000 --out policies/default

Reads top to bottom: arguments, training (rlagent.agent.train_policy), the curve PNG beside the
saved policy, a JSON summary on stdout. Resume an interrupted run with ``--resume RUN_DIR/checkpoints``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from pathlib import Path

from rlagent.agent import PPOSettings, TrainConfig, train_policy


def plot_curve(log_csv: Path, png: Path, window: int = 100) -> None:
    """Moving average of the final validation accuracy per training workload vs env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(csv.DictReader(log_csv.open()))
    fig, ax = plt.subplots(figsize=(7, 4))
    for workload in sorted({r["workload"] for r in rows if r["workload"]}):
        sel = [r for r in rows if r["workload"] == workload]
        steps = np.array([int(r["timesteps"]) for r in sel])
        acc = np.array([float(r["final_val_acc"]) for r in sel])
        w = max(1, min(window // 4, len(acc)))
        smooth = np.convolve(acc, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, label=workload)
    ax.set_xlabel("env steps (epochs trained)")
    ax.set_ylabel(f"final validation accuracy (moving mean of {window // 4} episodes)")
    ax.set_title("PPO training of the tuning policy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    d = PPOSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="default", help="spec file or shipped spec name")
    p.add_argument("--timesteps", type=int, default=100_000, help="total env steps")
    p.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: one per GPU / CPU core)")
    p.add_argument("--devices", default="auto", help="auto | cpu | cuda:0,cuda:1 ...")
    p.add_argument("--seed", type=int, default=None, help="default: the spec's seed")
    p.add_argument("--out", default="policies/custom", help="policy directory")
    p.add_argument("--run-dir", default=None, help="checkpoints and training log (default runs/...)")
    p.add_argument("--resume", default=None, help="checkpoint or folder of checkpoints")
    p.add_argument("--tensorboard", default=None, help="TensorBoard log directory")
    p.add_argument("--checkpoint-every", type=int, default=5_000)
    p.add_argument("--n-steps", type=int, default=d.n_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--ppo-epochs", type=int, default=d.n_epochs)
    p.add_argument("--ppo-lr", type=float, default=d.learning_rate)
    p.add_argument("--ent-coef", type=float, default=d.ent_coef)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--net-arch", type=int, nargs="+", default=list(d.net_arch))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    ppo = PPOSettings(
        n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.ppo_epochs,
        learning_rate=args.ppo_lr, ent_coef=args.ent_coef, gamma=args.gamma, net_arch=tuple(args.net_arch),
    )  # fmt: skip
    config = TrainConfig(
        spec=args.spec, timesteps=args.timesteps, n_envs=args.n_envs, devices=args.devices, seed=args.seed,
        out=args.out, run_dir=args.run_dir, resume=args.resume, tensorboard=args.tensorboard,
        checkpoint_every=args.checkpoint_every, ppo=ppo, progress=not args.no_progress,
        metadata={"command": "python " + " ".join(sys.argv)},
    )  # fmt: skip
    result = train_policy(config)

    log_csv = result.run_dir / "training_log.csv"
    if log_csv.is_file():
        plot_curve(log_csv, result.policy_dir / "training_curve.png")
    summary = dataclasses.asdict(result)
    summary["policy_dir"], summary["run_dir"] = str(result.policy_dir), str(result.run_dir)
    summary["slots"] = [dataclasses.asdict(s) for s in result.slots]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
