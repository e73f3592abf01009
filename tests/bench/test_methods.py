"""Every tuning method of the benchmark: names, compute accounting, selection, determinism, resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from rlagent.bench import methods
from rlagent.bench.methods import METHOD_NEEDS, METHODS, MethodResult, TrialContext, base, pbt, schedules, search
from rlagent.config import load_spec
from rlagent.errors import RLAgentError, SpecError
from rlagent.hparams import HParams
from rlagent.policy import reuse as policy_reuse
from rlagent.probe import PROBE_STEPS
from rlagent.training import DIVERGED_LOSS
from rlagent.workloads import make_run, run_seeds

SPEC = load_spec("tiny")
WORKLOAD = dataclasses.replace(SPEC.workload("tiny-mlp"), epochs=2)
E = WORKLOAD.epochs
SOURCES: dict[str, Any] = {}  # the tiny dataset, loaded once for the whole file


def _ctx(workdir: Path, seed: int = 0, **kwargs: Any) -> TrialContext:
    return TrialContext(SPEC, kwargs.pop("workload", WORKLOAD), seed, workdir, sources=SOURCES, **kwargs)


def _comparable(results: list[MethodResult]) -> list[dict[str, Any]]:
    """Results without their wall times (the only field allowed to differ between equal runs)."""
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in results]


def _journal_trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(path)))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.fixture(scope="module")
def random_results(tmp_path_factory: pytest.TempPathFactory) -> list[MethodResult]:
    return METHODS["random"](_ctx(tmp_path_factory.mktemp("random")))


def test_registry() -> None:
    assert set(METHODS) == {"random", "tpe", "hyperband", "pbt", "constant", "cosine", "plateau",
                            "warmup-cosine", "lr-finder",
                            "schedulefree", "prodigy", "open-loop", "policy", "policy-probe", "policy-best-4"}  # fmt: skip
    assert set(methods.QUICK_METHODS) <= set(METHODS)
    assert METHOD_NEEDS == {"cosine": "random", "open-loop": "policy"}


def test_random_reports_best_of_1_4_16_by_validation(random_results: list[MethodResult]) -> None:
    assert [r.method for r in random_results] == ["random-1", "random-4", "random-16"]
    trials = random_results[-1].details["trials"]
    assert len(trials) == 16
    assert all(1e-4 <= t["lr"] <= 0.3 and t["batch_size"] in (8, 16, 32, 64, 128) for t in trials)
    for n, r in zip((1, 4, 16), random_results):
        assert r.epochs == n * E
        assert r.details["n_trials"] == n and r.details["trials"] == trials[:n]
        vals = [t["val_acc"] for t in trials[:n]]
        chosen = trials[r.details["selected"]]
        assert r.val_acc == max(vals) == chosen["val_acc"]
        assert r.test_acc == chosen["test_acc"]  # the selected run's test accuracy, not the best test
        assert (r.details["best_lr"], r.details["best_batch_size"]) == (chosen["lr"], chosen["batch_size"])
        assert len(r.details["history"]) == E and r.details["history"][-1]["val_acc"] == r.val_acc
        json.dumps(r.to_dict())
    assert random_results[0].details["selected"] == 0


def test_random_is_deterministic_under_a_seed(random_results: list[MethodResult], tmp_path: Path) -> None:
    again = METHODS["random"](_ctx(tmp_path))
    assert _comparable(again) == _comparable(random_results)
    other = METHODS["random"](_ctx(tmp_path, seed=1))
    assert other[-1].details["trials"] != random_results[-1].details["trials"]


def test_pbt_accounting_selection_and_determinism(tmp_path: Path) -> None:
    # Interval 1 so the 2-epoch runs exploit and explore once.
    first = pbt.pbt(_ctx(tmp_path), interval=1)
    (r,) = first
    assert r.method == "pbt-8" and r.epochs == 8 * E
    finals = r.details["final_val_accs"]
    assert len(finals) == 8 and r.val_acc == max(finals) and r.details["selected"] == finals.index(max(finals))
    exploits = r.details["exploits"]
    assert len(exploits) == 2 and all(e["epoch"] == 1 for e in exploits)  # bottom 25% of 8, once
    assert all(1e-4 <= e["lr"] <= 0.3 and e["batch_size"] in (8, 16, 32, 64, 128) for e in exploits)
    assert [tuple(c) for c in r.details["initial"]] == [
        (t["lr"], t["batch_size"]) for t in METHODS["random"](_ctx(tmp_path))[-1].details["trials"][:8]
    ]
    assert _comparable(pbt.pbt(_ctx(tmp_path), interval=1)) == _comparable(first)
    assert METHODS["pbt"](_ctx(tmp_path))[0].details["exploits"] == []  # default interval 3 > E


def test_pbt_exploit_copies_weights_and_optimizer_state() -> None:
    ctx = _ctx(Path("unused"))
    src, dst = base.Run(ctx), base.Run(ctx)
    src.step(0.05, 16)
    dst.step(0.001, 64)
    pbt._exploit(dst, src)
    for a, b in zip(dst.trainer.model.state_dict().values(), src.trainer.model.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    s_state, d_state = src.trainer.optimizer.state_dict(), dst.trainer.optimizer.state_dict()
    for k, s in s_state["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(d_state["state"][k][name], s[name])
            assert d_state["state"][k][name].data_ptr() != s[name].data_ptr()
    assert dst.history == src.history  # the lineage of the weights
    before = [p.detach().clone() for p in src.trainer.model.parameters()]
    dst.step(0.05, 16)  # training the copy leaves the donor alone
    assert all(torch.equal(p, q) for p, q in zip(src.trainer.model.parameters(), before))


def test_pbt_explore_perturbs_or_resamples_within_the_ranges() -> None:
    rng = np.random.default_rng(0)
    hparams = HParams(0.01, 32, (1e-4, 0.3), (8, 128))
    sizes = hparams.batch_sizes()
    assert sizes == [8, 16, 32, 64, 128]
    moves = [pbt._explore(0.01, 32, rng, hparams) for _ in range(400)]
    perturbed = {round(lr / 0.01, 6) for lr, _ in moves} & {0.8, 1.2}
    assert perturbed == {0.8, 1.2}
    assert all(1e-4 <= lr <= 0.3 and bs in sizes for lr, bs in moves)
    assert {bs for _, bs in moves} == set(sizes)  # neighbours 16/64 and resamples
    assert sum(bs in (16, 64) for _, bs in moves) > 0.6 * len(moves)
    assert pbt._explore(0.3, 128, np.random.default_rng(1), hparams)[0] <= 0.3


def test_tpe_selects_by_validation_and_resumes_from_its_journal(tmp_path: Path, monkeypatch) -> None:
    ctx = _ctx(tmp_path)
    journal = tmp_path / "tpe.journal"
    # An interrupted study: 5 trials done, one left running by a dead process.
    monkeypatch.setattr(search, "SEARCH_TRIALS", 5)
    METHODS["tpe"](ctx)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    optuna.load_study(study_name=f"tpe__{WORKLOAD.name}__seed0", storage=storage).ask()
    monkeypatch.setattr(search, "SEARCH_TRIALS", 16)

    (r,) = METHODS["tpe"](ctx)
    trials = _journal_trials(journal)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 16 and len(trials) == 17  # 11 new trials; the stale one failed
    assert r.method == "tpe-16" and r.epochs == 16 * E and r.details["n_trials"] == 16
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert r.val_acc == best.value and r.details["selected"] == best.number
    assert r.test_acc == best.user_attrs["test_acc"]
    assert (r.details["lr"], r.details["batch_size"]) == (best.params["lr"], best.user_attrs["batch_size"])

    (again,) = METHODS["tpe"](ctx)  # finished: nothing new is trained
    assert len(_journal_trials(journal)) == 17
    assert _comparable([again]) == _comparable([r])


def test_hyperband_spends_the_equal_compute_budget_and_resumes(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (r,) = METHODS["hyperband"](ctx)
    trials = _journal_trials(tmp_path / "hyperband.journal")
    spent = sum(len(t.intermediate_values) for t in trials)
    assert r.method == "hyperband" and r.epochs == spent
    assert 16 * E <= r.epochs < 16 * E + E
    assert r.details["n_pruned"] > 0 and r.details["n_complete"] + r.details["n_pruned"] == len(trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(len(t.intermediate_values) == E for t in complete)
    assert r.val_acc == max(t.value for t in complete)
    assert r.test_acc == trials[r.details["selected"]].user_attrs["test_acc"]

    (again,) = METHODS["hyperband"](ctx)
    assert len(_journal_trials(tmp_path / "hyperband.journal")) == len(trials)
    assert _comparable([again]) == _comparable([r])


def test_a_journal_of_another_setup_is_refused(tmp_path: Path) -> None:
    METHODS["tpe"](_ctx(tmp_path))
    with pytest.raises(RLAgentError, match="use another workdir"):
        METHODS["tpe"](_ctx(tmp_path, workload=dataclasses.replace(WORKLOAD, epochs=1)))


@pytest.mark.parametrize("method", ["constant", "plateau", "schedulefree", "prodigy"])
def test_single_run_methods(method: str, tmp_path: Path) -> None:
    (r,) = METHODS[method](_ctx(tmp_path))
    assert r.method == method and r.epochs == E and r.workload == "tiny-mlp" and r.seed == 0
    history = r.details["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["val_acc"] == r.val_acc
    assert all(h["batch_size"] == 32 for h in history)
    expected_lr = {"constant": 1e-3, "plateau": 1e-3, "schedulefree": 0.0025, "prodigy": 1.0}[method]
    assert history[0]["lr"] == pytest.approx(expected_lr)
    assert 0.0 <= r.test_acc <= 1.0


def test_cosine_decays_from_random_searchs_best_lr(random_results: list[MethodResult], tmp_path: Path) -> None:
    best = random_results[-1].details
    extra = {"best_lr": best["best_lr"], "best_batch_size": best["best_batch_size"]}
    (r,) = METHODS["cosine"](_ctx(tmp_path, extra=extra))
    assert r.method == "cosine" and r.epochs == E and r.details["uses"] == "random-16 best LR"
    lrs = [h["lr"] for h in r.details["history"]]
    assert lrs == pytest.approx([best["best_lr"] * 0.5 * (1 + math.cos(math.pi * t / E)) for t in range(E)])
    assert {h["batch_size"] for h in r.details["history"]} == {best["best_batch_size"]}
    with pytest.raises(RLAgentError, match="best_lr"):
        METHODS["cosine"](_ctx(tmp_path))


def test_open_loop_replays_the_schedule_exactly(tmp_path: Path) -> None:
    schedule = [(0.02, 8), (0.003, 64)]
    (r,) = METHODS["open-loop"](_ctx(tmp_path, extra={"schedule": schedule}))
    assert [(h["lr"], h["batch_size"]) for h in r.details["history"]] == schedule
    assert r.method == "open-loop" and r.epochs == E
    with pytest.raises(RLAgentError, match="expected 2"):
        METHODS["open-loop"](_ctx(tmp_path, extra={"schedule": schedule[:1]}))
    mean = methods.mean_schedule([[(0.01, 16)], [(0.04, 64), (0.01, 16)]], 2)  # the first padded
    assert [lr for lr, _ in mean] == pytest.approx([0.02, 0.01]) and [bs for _, bs in mean] == [32, 16]


def test_a_diverged_run_scores_chance_and_is_charged_the_full_budget(tmp_path: Path) -> None:
    out = base.train_run(_ctx(tmp_path), lambda epoch, history, trainer: (float("nan"), 16))
    assert out.diverged and len(out.history) == 1 and out.epochs == E
    assert out.val_acc == out.test_acc == pytest.approx(1 / 3)  # three classes
    # the one divergence rule (rlagent.training.run_epoch): losses pinned at DIVERGED_LOSS · log(classes)
    pinned = DIVERGED_LOSS * math.log(3)
    assert out.history[0]["val_loss"] == out.history[0]["train_loss"] == pytest.approx(pinned)
    assert all(math.isfinite(out.history[0][k]) for k in ("train_loss", "val_loss", "train_acc", "val_acc"))


def test_policy_method_runs_the_saved_policy(tiny_policy: Path, tmp_path: Path) -> None:
    (r,) = METHODS["policy"](_ctx(tmp_path, policy=str(tiny_policy)))
    assert r.method == "policy" and r.epochs == E and r.workload == "tiny-mlp"
    assert r.details["trained_on"] is True and len(r.details["history"]) == E
    assert r.details["schedule"] == [[h["lr"], h["batch_size"]] for h in r.details["history"]]
    assert r.val_acc == r.details["history"][-1]["val_acc"]
    with pytest.raises(RLAgentError, match="ctx.policy"):
        METHODS["policy"](_ctx(tmp_path))


def test_policy_probe_is_the_policy_run_from_the_probes_lr_and_pays_for_the_probe(
    tiny_policy: Path, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path, policy=str(tiny_policy))
    (r,) = METHODS["policy-probe"](ctx)
    d = r.details
    n_train = len(make_run(WORKLOAD, 0, sources=SOURCES).data.train)
    assert r.method == "policy-probe" and d["probe_lr"] > 0
    # Charged its minibatches of 32 as epochs of this (tiny) training split.
    assert d["probe_epochs"] * n_train / 32 == pytest.approx(round(d["probe_epochs"] * n_train / 32))
    assert 2 <= round(d["probe_epochs"] * n_train / 32) <= PROBE_STEPS
    assert r.epochs == pytest.approx(E + d["probe_epochs"])
    # The run `policy` makes when started by hand at a tenth of the probe's LR: the probe trained a copy.
    low, high = SPEC.workload("tiny-mlp").lr_range
    start = min(max(d["probe_lr"] / 10, low), high)
    plain = policy_reuse.run_policy(
        str(tiny_policy), "tiny-mlp", spec=SPEC, seed=0, epochs=E, lr=start, start_check=False
    )
    keys = ("lr", "batch_size", "val_acc", "train_loss")
    assert [[h[k] for k in keys] for h in plain["history"]] == [[h[k] for k in keys] for h in d["history"]]
    assert plain["test_acc"] == r.test_acc and plain["probe_lr"] is None
    (again,) = METHODS["policy-probe"](ctx)
    assert (again.test_acc, again.epochs, again.details["schedule"]) == (r.test_acc, r.epochs, d["schedule"])


def test_a_policy_trained_from_probe_starts_is_charged_its_probe_in_policy_and_best_of_4(
    tiny_policy: Path, tmp_path: Path
) -> None:
    saved = policy_reuse.resolve_policy(tiny_policy)
    training = copy.deepcopy(saved.metadata["training"])
    training["spec"]["episode"]["init_lr"] = "probe"
    probed = str(saved.save(tmp_path / "probe-pol", metadata=training))
    (one,) = METHODS["policy"](_ctx(tmp_path, policy=probed))
    (explicit,) = METHODS["policy-probe"](_ctx(tmp_path, policy=str(tiny_policy)))
    assert one.details["probe_lr"] == explicit.details["probe_lr"] is not None
    assert one.epochs == explicit.epochs == pytest.approx(E + one.details["probe_epochs"]) and one.epochs > E
    (best,) = METHODS["policy-best-4"](_ctx(tmp_path, policy=probed))
    assert best.epochs > 4 * E  # every one of the four runs probed first
    (plain,) = METHODS["policy"](_ctx(tmp_path, policy=str(tiny_policy)))
    assert plain.details["probe_lr"] is None and plain.details["probe_epochs"] == 0 and plain.epochs == E


def test_warmup_cosine_warms_up_then_decays_per_minibatch_at_the_default_lr(tmp_path: Path) -> None:
    (r,) = METHODS["warmup-cosine"](_ctx(tmp_path))
    d = r.details
    steps = math.ceil(len(make_run(WORKLOAD, 0, sources=SOURCES).data.train) / 32)
    assert r.method == "warmup-cosine" and r.epochs == E and d["batch_size"] == 32
    assert d["lr"] == 1e-3 and d["total_steps"] == E * steps and d["warmup_steps"] == max(1, round(0.05 * E * steps))
    factor = [schedules.warmup_cosine_factor(t, d["warmup_steps"], d["total_steps"]) for t in range(E * steps)]
    assert [h["lr"] for h in d["history"]] == pytest.approx([1e-3 * factor[e * steps] for e in range(E)])
    assert factor[d["warmup_steps"] - 1] == 1.0 and 0 < factor[-1] < 0.05 and min(factor) > 0
    assert factor == sorted(factor[: d["warmup_steps"]]) + sorted(factor[d["warmup_steps"] :], reverse=True)
    assert _comparable(METHODS["warmup-cosine"](_ctx(tmp_path))) == _comparable([r])


def test_default_lrs_follow_torch_except_sgds_convention() -> None:
    param = [torch.zeros(1, requires_grad=True)]
    got = {c.__name__: schedules.default_lr(c(param)) for c in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.SGD)}  # fmt: skip
    assert got == {"Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 1e-2, "SGD": 0.01}


def test_replicas_keep_the_split_and_redraw_init_and_shuffling() -> None:
    assert run_seeds(3, 0) == run_seeds(3)
    split, init, shuffle = run_seeds(3, 1)
    assert split == run_seeds(3)[0] and init != run_seeds(3)[1] and shuffle != run_seeds(3)[2]
    assert len({run_seeds(3, r)[1] for r in range(4)}) == 4
    a, b = make_run(WORKLOAD, 3, sources=SOURCES), make_run(WORKLOAD, 3, sources=SOURCES, replica=1)
    assert torch.equal(a.data.train.x, b.data.train.x) and torch.equal(a.data.val.y, b.data.val.y)
    assert not torch.equal(next(a.model.parameters()), next(b.model.parameters()))
    with pytest.raises(SpecError, match="replica"):
        run_seeds(3, -1)


def test_policy_best_4_keeps_the_best_of_four_by_validation(tiny_policy: Path, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, policy=str(tiny_policy))
    (r,) = METHODS["policy-best-4"](ctx)
    reps = r.details["replicas"]
    assert r.method == "policy-best-4" and r.epochs == 4 * E
    assert [x["replica"] for x in reps] == [0, 1, 2, 3]
    vals = [x["val_acc"] for x in reps]
    assert r.val_acc == max(vals) and r.details["selected"] == vals.index(max(vals))
    assert r.test_acc == reps[r.details["selected"]]["test_acc"]
    assert r.details["history"][-1]["val_acc"] == r.val_acc
    (single,) = METHODS["policy"](ctx)  # run 0 is the `policy` method's own run
    assert (reps[0]["val_acc"], reps[0]["test_acc"]) == (single.val_acc, single.test_acc)
    assert len({(x["val_acc"], x["test_acc"]) for x in reps}) > 1  # the runs differ
    (again,) = METHODS["policy-best-4"](ctx)
    assert again.details["replicas"] == reps and again.details["schedule"] == r.details["schedule"]
