"""Train a tuning policy with PPO and draw its training curve.

    python scripts/train_policy.py --spec default --timesteps 100000 --out policies/default

Reads top to bottom: the options of ``rlagent train``, training (``rlagent.policy.train.train_policy``),
the curve PNG beside the saved policy, a JSON summary on stdout. Resume an interrupted run with
``--resume RUN_DIR/checkpoints``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from pathlib import Path

from rlagent.cli import USER_ERRORS, add_train_arguments, run_training, sigterm_interrupts


def plot_curve(log_csv: Path, png: Path, episodes: int = 25, max_lines: int = 6) -> None:
    """Moving mean of the final validation accuracy vs env steps: one line per training workload,
    or one line over all episodes when they come from a sampler (a fresh workload each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in csv.DictReader(log_csv.open()) if r["workload"]]
    names = sorted({r["workload"] for r in rows})
    groups = {n: [r for r in rows if r["workload"] == n] for n in names} if len(names) <= max_lines else {}
    if not groups:
        episodes = max(episodes, 100)
        groups = {f"all episodes ({len(names)} workloads drawn)": rows}
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, sel in groups.items():
        steps = np.array([int(r["timesteps"]) for r in sel])
        acc = np.array([float(r["final_val_acc"]) for r in sel])
        w = max(1, min(episodes, len(acc)))
        ax.plot(steps[w - 1 :], np.convolve(acc, np.ones(w) / w, mode="valid"), label=label)
    ax.set_xlabel("env steps (epochs trained)")
    ax.set_ylabel(f"final val accuracy (mean of {episodes} episodes)")
    ax.set_title("PPO training of the tuning policy (training workloads only)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        with sigterm_interrupts():
            result = run_training(args, "python " + " ".join(sys.argv))
    except USER_ERRORS as exc:
        sys.exit(f"train_policy.py: error: {exc}")
    except KeyboardInterrupt:
        sys.exit("train_policy.py: interrupted; resume from the last checkpoint with --resume RUN_DIR/checkpoints")

    log_csv = result.run_dir / "training_log.csv"
    if log_csv.is_file():
        plot_curve(log_csv, result.policy_dir / "training_curve.png")
    summary = dataclasses.asdict(result)
    summary.update(policy_dir=str(result.policy_dir), run_dir=str(result.run_dir))
    summary["slots"] = [dataclasses.asdict(s) for s in result.slots]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
