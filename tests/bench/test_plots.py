"""Tests for rlagent.bench.plots: what the accuracy-vs-compute and schedule plots draw."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from rlagent.bench.methods.base import MethodResult
from rlagent.bench.plots import accuracy_figure, method_colours, schedule_figure, write_plots
from rlagent.bench.report import policy_schedule, summarize


def _result(method: str, workload: str, seed: int, test: float, epochs: int = 10, **details) -> MethodResult:
    return MethodResult(
        method, workload, seed, val_acc=test, test_acc=test, epochs=epochs, seconds=1.0, details=details
    )


def _history(steps: list[tuple[float, int]]) -> list[dict]:
    return [{"epoch": i + 1, "lr": lr, "batch_size": bs, "val_acc": 0.5} for i, (lr, bs) in enumerate(steps)]


RESULTS = [
    *[_result("random-16", "w", s, a, epochs=160) for s, a in enumerate([0.8, 0.9])],
    *[_result("constant", "w", s, a) for s, a in enumerate([0.6, 0.6])],
    _result("policy", "w", 0, 0.7, history=_history([(1e-3, 16), (4e-3, 32), (1e-2, 64)])),
    _result("policy", "w", 1, 0.8, history=_history([(1e-3, 32), (1e-3, 32), (1e-3, 32)])),
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _points(ax) -> dict[str, tuple[float, float, float, str]]:
    """label -> (x, y, error-bar half-height, marker) of each errorbar point."""
    out = {}
    for c in ax.containers:
        line, _, (bars,) = c.lines
        (x,), (y,) = line.get_xdata(), line.get_ydata()
        (seg,) = bars.get_segments()
        out[c.get_label()] = (float(x), float(y), float(seg[1][1] - seg[0][1]) / 2, line.get_marker())
    return out


def test_accuracy_plot_draws_each_method_at_its_compute_and_mean_with_ci() -> None:
    rows = summarize(RESULTS, chance={"w": 0.1})
    fig = accuracy_figure(rows)
    (ax,) = fig.axes
    points = _points(ax)
    assert set(points) == {"random-16", "constant", "policy"}
    for r in rows:
        x, y, err, marker = points[r.method]
        assert y == pytest.approx(r.test_acc)
        assert err == pytest.approx(0.0 if math.isnan(r.test_ci95) else r.test_ci95)
        assert marker == ("*" if r.method == "policy" else "o")
    # constant and the policy both spent 10 epochs: dodged symmetrically around 10
    assert points["random-16"][0] == pytest.approx(160)
    assert points["constant"][0] == pytest.approx(10 * math.exp(-0.015))
    assert points["policy"][0] == pytest.approx(10 * math.exp(0.015))
    assert points["random-16"][2] == pytest.approx(rows[0].test_ci95) and rows[0].method == "random-16"
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [10, 160]
    low, high = ax.get_ylim()
    spans = [(y - err, y + err) for _, y, err, _ in points.values()]
    assert low == pytest.approx(max(0.0, min(s for s, _ in spans) - 0.02))
    assert high == pytest.approx(min(1.0, max(s for _, s in spans) + 0.02))
    assert "TRAINED" not in ax.get_title() and ax.get_title().startswith("w: accuracy vs compute")
    colours = method_colours(rows)
    for c in ax.containers:
        assert to_rgba(c.lines[0].get_color()) == to_rgba(colours[c.get_label()])


def test_accuracy_plot_marks_a_policy_trained_on_the_workload() -> None:
    rows = summarize(RESULTS, trained_on=["w"])
    ax = accuracy_figure(rows).axes[0]
    assert set(_points(ax)) == {"random-16", "constant", "policy †"}
    assert "TRAINED on this workload" in ax.get_title()


def test_schedule_plot_draws_each_seed_and_the_open_loop_mean() -> None:
    runs = [r for r in RESULTS if r.method == "policy"]
    fig = schedule_figure(runs, trained=False)
    ax_lr, ax_bs = fig.axes
    *seeds_lr, mean_lr = ax_lr.get_lines()
    *seeds_bs, mean_bs = ax_bs.get_lines()
    assert [line.get_label() for line in seeds_lr] == ["seed 0", "seed 1"]
    for run, lr_line, bs_line in zip(runs, seeds_lr, seeds_bs):
        hist = run.details["history"]
        assert list(lr_line.get_xdata()) == [1, 2, 3]
        assert np.allclose(lr_line.get_ydata(), [h["lr"] for h in hist])
        assert list(bs_line.get_ydata()) == [h["batch_size"] for h in hist]
    schedule = policy_schedule(runs, 3)
    assert mean_lr.get_linestyle() == "--" and mean_lr.get_label() == "geometric mean (open-loop)"
    assert np.allclose(mean_lr.get_ydata(), [lr for lr, _ in schedule])
    assert np.allclose(mean_lr.get_ydata(), [1e-3, math.sqrt(4e-6), math.sqrt(1e-5)])
    assert list(mean_bs.get_ydata()) == [bs for _, bs in schedule] == [23, 32, 45]
    assert ax_lr.get_yscale() == "log" and ax_bs.get_yscale() == "log"
    assert "TRAINED" in schedule_figure(runs, trained=True).axes[0].get_title()


def test_write_plots_saves_one_accuracy_plot_per_workload_and_schedules_where_the_policy_ran(tmp_path: Path) -> None:
    results = [*RESULTS, _result("constant", "other", 0, 0.5)]
    paths = write_plots(summarize(results), results, tmp_path / "plots")
    assert paths == {
        "acc_vs_epochs:w": tmp_path / "plots" / "acc_vs_epochs__w.png",
        "policy_schedule:w": tmp_path / "plots" / "policy_schedule__w.png",
        "acc_vs_epochs:other": tmp_path / "plots" / "acc_vs_epochs__other.png",
    }
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []  # every figure was closed once saved
