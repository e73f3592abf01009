"""The LR range test + one-cycle baselines: reset to the run's init, the rules, the schedule, accounting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlagent.bench.methods import METHODS, MethodResult, TrialContext, lr_finder
from rlagent.bench.methods.base import Run
from rlagent.config import load_spec
from rlagent.workloads import make_run

SPEC = load_spec("tiny")
WORKLOAD = dataclasses.replace(SPEC.workload("tiny-mlp"), epochs=2)
E = WORKLOAD.epochs
SOURCES: dict[str, Any] = {}


def _ctx(workdir: Path, seed: int = 0) -> TrialContext:
    return TrialContext(SPEC, WORKLOAD, seed, workdir, sources=SOURCES)


def _comparable(results: list[MethodResult]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in results]


def test_the_range_test_resets_the_run_to_its_seeded_init(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    run = Run(ctx, None)
    shuffle_state = run.trainer.generator.get_state()
    global_state = torch.random.get_rng_state()
    test = lr_finder.range_test(ctx, run, 32)
    # the same weights as the fresh run every other method (e.g. `constant`) trains from
    init = make_run(WORKLOAD, 0, sources=SOURCES).model.state_dict()
    assert all(torch.equal(init[k], v) for k, v in run.trainer.model.state_dict().items())
    assert run.trainer.optimizer.state_dict()["state"] == {} and run.trainer.lr == 1e-3
    assert "initial_lr" not in run.trainer.optimizer.param_groups[0]  # a scheduler may attach now
    assert torch.equal(run.trainer.generator.get_state(), shuffle_state)  # shuffling order untouched
    assert torch.equal(torch.random.get_rng_state(), global_state)
    n = len(run.data.train)
    assert 17 <= len(test.lrs) <= lr_finder.RANGE_TEST_ITERS and len(test.losses) == len(test.lrs)
    assert test.epochs == pytest.approx(len(test.lrs) * 32 / n)
    assert test.lrs[0] == pytest.approx(WORKLOAD.lr_range[0]) and all(np.diff(test.lrs) > 0)  # exponential sweep
    # the rules: torch-lr-finder's steepest descent (skip 10 / 5) and the minimum smoothed loss / 10
    lrs, losses = test.lrs[10:-5], test.losses[10:-5]
    assert test.suggested["steep"] == pytest.approx(lrs[int(np.argmin(np.gradient(losses)))])
    assert test.suggested["min10"] == pytest.approx(test.lrs[int(np.argmin(test.losses))] / 10)
    lo, hi = WORKLOAD.lr_range
    assert test.chosen == {k: min(max(v, lo), hi) for k, v in test.suggested.items()}


def test_one_cycle_follows_torch_onecyclelr_every_minibatch(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    run, bs, max_lr = Run(ctx, None), 32, 0.05
    scheduler = lr_finder.attach_one_cycle(run, max_lr, E, bs)
    used: list[float] = []

    def on_step() -> None:
        used.append(run.trainer.lr)
        scheduler.step()

    run.trainer.on_step = on_step
    for _ in range(E):
        run.step(run.trainer.lr, bs)
    steps = math.ceil(len(run.data.train) / bs)
    param = torch.zeros(1, requires_grad=True)
    reference_opt = torch.optim.Adam([param], lr=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=max_lr, epochs=E, steps_per_epoch=steps)
    expected = []
    for _ in range(E * steps):
        expected.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        reference.step()
    assert used == pytest.approx(expected, rel=1e-12)
    assert [h["lr"] for h in run.history] == pytest.approx([expected[0], expected[steps]])


@pytest.fixture(scope="module")
def lr_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MethodResult]:
    ctx = _ctx(tmp_path_factory.mktemp("lrf"))
    return {r.method: r for r in METHODS["lr-finder"](ctx)}


def test_lr_finder_reports_each_rule_and_the_better_of_both(lr_results: dict[str, MethodResult]) -> None:
    assert list(lr_results) == ["lr-finder-steep", "lr-finder-min10", "lr-finder-best"]
    best = lr_results["lr-finder-best"]
    test_epochs = best.details["range_test"]["epochs"]
    assert 0 < test_epochs < 100
    for method, rule in (("lr-finder-steep", "steep"), ("lr-finder-min10", "min10")):
        r = lr_results[method]
        assert r.method == method and r.details["rule"] == rule
        assert r.epochs == pytest.approx(test_epochs + E)  # the range test counts in each rule's compute
        assert r.details["range_test"] == best.details["range_test"]  # the same test, on the same init
        assert r.details["lr"] == r.details["range_test"]["chosen"][rule]
        assert len(r.details["history"]) == E and r.details["history"][-1]["val_acc"] == r.val_acc
        (run,) = [x for x in best.details["runs"] if x["rule"] == rule]
        assert (run["val_acc"], run["test_acc"]) == (r.val_acc, r.test_acc)
    assert best.epochs == pytest.approx(test_epochs + 2 * E)  # two runs of compute
    vals = [x["val_acc"] for x in best.details["runs"]]
    assert best.val_acc == max(vals)
    chosen = best.details["runs"][vals.index(max(vals))]
    assert best.details["rule"] == chosen["rule"] and best.test_acc == chosen["test_acc"]


def test_a_rules_run_is_the_run_that_rule_alone_makes(lr_results: dict[str, MethodResult], tmp_path: Path) -> None:
    """The second rule's run reuses the first one's range test: the same as testing and training afresh."""
    ctx = _ctx(tmp_path)
    alone = lr_finder._one_cycle_run(ctx, 32, lambda run: lr_finder.range_test(ctx, run, 32).chosen["min10"])
    shared = lr_results["lr-finder-min10"]
    assert (alone.val_acc, alone.test_acc) == (shared.val_acc, shared.test_acc)
    assert alone.history == shared.details["history"]


def test_lr_finder_is_deterministic_under_a_seed(lr_results: dict[str, MethodResult], tmp_path: Path) -> None:
    assert _comparable(METHODS["lr-finder"](_ctx(tmp_path))) == _comparable(list(lr_results.values()))
    other = METHODS["lr-finder"](_ctx(tmp_path, seed=1))[0]
    assert other.details["range_test"]["losses"] != lr_results["lr-finder-steep"].details["range_test"]["losses"]
