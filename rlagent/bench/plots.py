"""The benchmark's plots: test accuracy against epochs spent, and the schedules the policy chose.

matplotlib is an optional extra (``pip install 'rlagent[bench]'``), imported when plots are made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlagent._io import optional_import
from rlagent.bench.methods.base import MethodResult
from rlagent.bench.report import POLICY_METHODS, BenchRow, method_key, policy_schedule
from rlagent.hparams import epoch_lr

__all__ = ["accuracy_figure", "method_colours", "schedule_figure", "write_plots"]


def _pyplot() -> Any:
    matplotlib = optional_import("matplotlib", extra="bench", purpose="benchmark plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_plots(rows: Sequence[BenchRow], results: Sequence[MethodResult], folder: Path) -> dict[str, Path]:
    """Per workload: test accuracy vs epochs spent (every method), and the policy's schedules.

    Args:
        rows: Output of :func:`~rlagent.bench.report.summarize`.
        results: The method results behind ``rows`` (the policy's carry its per-epoch history).
        folder: Where the PNG files go (created if missing).

    Returns:
        The path of each plot, keyed ``acc_vs_epochs:WORKLOAD`` or ``policy_schedule:WORKLOAD``.

    Raises:
        RLAgentError: If matplotlib is not installed.
    """
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    colour = method_colours(rows)
    paths: dict[str, Path] = {}
    for workload in dict.fromkeys(r.workload for r in rows):
        path = folder / f"acc_vs_epochs__{_safe(workload)}.png"
        _save(plt, accuracy_figure([r for r in rows if r.workload == workload], colour), path)
        paths[f"acc_vs_epochs:{workload}"] = path
        runs = [r for r in results if r.workload == workload and r.method == "policy" and r.details.get("history")]
        if runs:
            trained = any(r.trained_on for r in rows if r.workload == workload and r.method == "policy")
            path = folder / f"policy_schedule__{_safe(workload)}.png"
            _save(plt, schedule_figure(sorted(runs, key=lambda r: r.seed), trained), path)
            paths[f"policy_schedule:{workload}"] = path
    return paths


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def method_colours(rows: Sequence[BenchRow]) -> dict[str, Any]:
    """One colour per method of ``rows``, the same on every workload's plot."""
    cmap = _pyplot().get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(sorted({r.method for r in rows}, key=method_key))}


def accuracy_figure(rows: Sequence[BenchRow], colour: Mapping[str, Any] | None = None) -> Any:
    """One workload's test accuracy (mean ± 95% CI) against epochs trained per seed, a point per method.

    Methods of equal compute are dodged sideways by a few percent; the policy's rows are stars.

    Args:
        rows: The rows of one workload (:func:`~rlagent.bench.report.summarize`).
        colour: Colour per method (default: :func:`method_colours` of ``rows``).

    Returns:
        The matplotlib figure (one axes).
    """
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    colour = colour or method_colours(rows)
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    lows, highs = [], []
    for r in rows:
        err = 0.0 if math.isnan(r.test_ci95) else r.test_ci95
        same = [q.method for q in rows if q.epochs == r.epochs]  # dodge methods of equal compute
        x = r.epochs * math.exp(0.03 * (same.index(r.method) - (len(same) - 1) / 2))
        marker = "*" if r.method in POLICY_METHODS else "o"
        ax.errorbar(
            x, r.test_acc, yerr=err, fmt=marker, color=colour[r.method], capsize=3,
            markersize=11 if marker == "*" else 6, label=f"{r.method} †" if r.trained_on else r.method,
        )  # fmt: skip
        lows.append(r.test_acc - err)
        highs.append(r.test_acc + err)
    ax.set_ylim(max(0.0, min(lows) - 0.02), min(1.0, max(highs) + 0.02))
    ax.set_xscale("log")
    ticks: list[float] = []
    for epochs in sorted({round(r.epochs) for r in rows}):  # ticks at the budgets the methods used
        if not ticks or epochs > 1.1 * ticks[-1]:  # e.g. Hyperband's 244 sits on random-16's 240
            ticks.append(epochs)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epochs trained per seed (log scale)")
    ax.set_ylabel("test accuracy (mean ± 95% CI over seeds)")
    note = (
        "\nthe policy was TRAINED on this workload (†): not a held-out result"
        if any(r.trained_on for r in rows)
        else ""
    )
    ax.set_title(f"{rows[0].workload}: accuracy vs compute{note}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def schedule_figure(runs: Sequence[MethodResult], trained: bool) -> Any:
    """The LR and batch size the policy chose each epoch, a line per seed, and their geometric mean.

    Args:
        runs: One workload's ``policy`` results, each with its per-epoch ``details["history"]``.
        trained: Whether the policy was trained on this workload (said in the title).

    Returns:
        The matplotlib figure: LR above, batch size below.
    """
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig, (ax_lr, ax_bs) = _pyplot().subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for r in runs:
        hist = r.details["history"]
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
        ax_lr.plot(epochs, [epoch_lr(h) for h in hist], marker=".", alpha=0.8, label=f"seed {r.seed}")
        ax_bs.plot(epochs, [h["batch_size"] for h in hist], marker=".", alpha=0.8, label=f"seed {r.seed}")
    schedule = policy_schedule(runs, max(len(r.details["history"]) for r in runs))
    xs = range(1, len(schedule) + 1)
    ax_lr.plot(xs, [lr for lr, _ in schedule], "k--", lw=1.5, label="geometric mean (open-loop)")
    ax_bs.plot(xs, [bs for _, bs in schedule], "k--", lw=1.5)
    ax_lr.set_yscale("log")
    ax_bs.set_yscale("log", base=2)
    ax_bs.yaxis.set_major_formatter(ScalarFormatter())
    ax_bs.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.set_ylabel("learning rate")
    ax_bs.set_ylabel("batch size")
    ax_bs.set_xlabel("epoch")
    for ax in (ax_lr, ax_bs):
        ax.grid(alpha=0.3, which="both")
    ax_lr.legend(fontsize=7, ncol=3)
    note = "\nthe policy was TRAINED on this workload: not a held-out result" if trained else ""
    ax_lr.set_title(f"{runs[0].workload}: LR and batch size the policy chose, per seed{note}", fontsize=10)
    fig.tight_layout()
    return fig
