"""Tests for rlagent.procedural: draws are seeded, fit their caps, honour exclusions, and every family learns."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from rlagent import HyperTuneEnv, SpecError
from rlagent.config import load_spec, spec_from_dict
from rlagent.procedural import (
    ESTIMATE_MARGIN,
    FAMILY_VALUES,
    MAX_EPOCH_SECONDS,
    MODELS_FOR,
    ProceduralSpec,
    family_of,
    sample_task,
)
from rlagent.training import Trainer
from rlagent.workloads import Source, WorkloadSpec, make_run

TINY = "tiny-procedural"


def test_draw_is_deterministic_under_a_seed() -> None:
    for seed in (0, 1, 12345):
        assert sample_task(seed) == sample_task(seed)
    assert len({sample_task(s).workload.family + sample_task(s).workload.description for s in range(20)}) > 10


def test_draws_are_whole_runs_inside_their_ranges() -> None:
    for seed in range(60):
        task = sample_task(seed, lr_range=(1e-4, 0.3), batch_size_range=(16, 512))
        wl = task.workload
        assert wl.name == f"procedural-{seed}"
        assert 8 <= wl.epochs <= 40
        assert 1e-4 <= task.init_lr <= 0.3
        assert task.init_batch_size in (16, 32, 64, 128, 256, 512)
        assert task.est_seconds <= MAX_EPOCH_SECONDS * ESTIMATE_MARGIN
        assert wl.family == "/".join(family_of(wl).values())
        n = wl.dataset_args.get("num_samples", wl.dataset_args.get("n_samples", 1797))
        assert wl.dataset == "digits" or 2000 <= n <= 10000
        if wl.optimizer == "adamw":
            assert 1e-4 <= wl.optimizer_args["weight_decay"] <= 0.1


_EXCLUDE = st.fixed_dictionaries(
    {},
    optional={key: st.lists(st.sampled_from(values), max_size=len(values) - 1, unique=True)
              for key, values in FAMILY_VALUES.items()},
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(exclude=_EXCLUDE, seed=st.integers(0, 2**40))
def test_excluded_families_are_never_drawn(exclude: dict[str, list[str]], seed: int) -> None:
    try:
        sampler = ProceduralSpec(exclude=exclude)
    except SpecError:  # exclusions that leave no dataset/model/norm are refused up front
        return
    try:
        family = family_of(sample_task(seed, sampler).workload)
    except SpecError as error:  # what is left never fits the cost cap (a GRU over MNIST-1D alone)
        assert error.field == "workloads.train" and "max_epoch_seconds" in str(error)
        assert {model for _, model, _ in sampler.combos()} <= {"gru", "lstm"}
        return
    for key, values in exclude.items():
        assert family[key] not in values
    assert sampler.allows(family)


def test_default_spec_draws_only_training_families() -> None:
    spec = load_spec("default")
    for seed in range(100):
        family = family_of(spec.draw(seed).workload)
        assert family["model"] not in ("gru", "lstm") and family["norm"] != "batchnorm"
        assert family["dataset"] != "sequence" and family["optimizer"] != "rmsprop"


@pytest.mark.parametrize(
    ("train", "field", "shown"),
    [
        ({"sampler": "bayesian"}, "workloads.train.sampler", "'bayesian'"),
        ({"exclude": {"colour": ["red"]}}, "workloads.train.exclude.colour", "['red']"),
        ({"exclude": {"model": ["transformer"]}}, "workloads.train.exclude.model", "'transformer'"),
        ({"exclude": {"model": "gru"}}, "workloads.train.exclude.model", "'gru'"),
        ({"exclude": {"dataset": list(FAMILY_VALUES["dataset"])}}, "workloads.train.exclude", "dataset"),
        ({"exclude": {"optimizer": list(FAMILY_VALUES["optimizer"])}}, "workloads.train.exclude.optimizer", "adam"),
        ({"sample_range": [10, 5]}, "workloads.train.sample_range", "(10, 5)"),
        ({"max_epoch_seconds": 0}, "workloads.train.max_epoch_seconds", "0"),
        ({"size": 3}, "workloads.train.size", "3"),
        ({"lr_scale_range": [0, 10]}, "workloads.train.lr_scale_range", "low > 0"),
        ({"lr_scale_range": [2, 1]}, "workloads.train.lr_scale_range", "(2, 1)"),
        ({"lr_scale_range": 5}, "workloads.train.lr_scale_range", "a pair"),
        ({"lr_shift_range": [0, 4]}, "workloads.train.lr_shift_range", "low > 0"),
        ({"lr_shift_range": [4, 0.25]}, "workloads.train.lr_shift_range", "(4, 0.25)"),
        ({"lr_shift_range": [0.25, float("inf")]}, "workloads.train.lr_shift_range", "finite"),
        ({"first": "optimizer"}, "workloads.train.first", "'optimizer'"),
        ({"probe_sees_lr_scale": "no"}, "workloads.train.probe_sees_lr_scale", "true or false"),
        ({"probe_sees_lr_scale": False}, "workloads.train.probe_sees_lr_scale", "lr_scale_range is other than"),
        ({"start_lr_range": [0.1, 0.01]}, "workloads.train.start_lr_range", "(0.1, 0.01)"),
        ({"start_lr_range": [1e-3, 1.0]}, "workloads.train.start_lr_range", "inside the episode's LR range"),
    ],
)
def test_sampler_spec_errors_name_field_value_and_allowed(train: dict[str, Any], field: str, shown: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict({"workloads": {"train": train}})
    assert info.value.field == field and shown in str(info.value)
    assert "expected" in str(info.value)


def test_hidden_lr_scale_is_off_by_default_and_drawn_last_when_on() -> None:
    on = ProceduralSpec(lr_scale_range=(0.1, 10.0))
    scales = []
    for seed in range(40):
        plain, scaled = sample_task(seed), sample_task(seed, on)
        assert plain.workload.lr_scale == 1.0 and "hidden LR" not in plain.workload.description
        assert sample_task(seed, on) == scaled  # seeded
        assert 0.1 <= scaled.workload.lr_scale <= 10.0
        # drawn after everything else: the rest of the draw is the one without it
        assert (
            dataclasses.replace(scaled.workload, lr_scale=1.0, description=plain.workload.description) == plain.workload
        )
        assert (scaled.init_lr, scaled.init_batch_size) == (plain.init_lr, plain.init_batch_size)
        scales.append(scaled.workload.lr_scale)
    assert min(scales) < 0.5 and max(scales) > 2.0  # spread over the range, both sides of 1
    spec = spec_from_dict({"workloads": {"train": {"lr_scale_range": [0.1, 10.0]}}})
    assert spec.workloads.sampler.lr_scale_range == (0.1, 10.0)
    assert spec_from_dict(spec.to_dict()) == spec
    # off, the fields stay out of the plain form: records made before they existed still match
    default = load_spec("default").to_dict()
    assert "lr_scale_range" not in default["workloads"]["train"]
    assert all("lr_scale" not in w for w in default["workloads"]["define"].values())
    assert spec_from_dict(default) == load_spec("default")


def test_a_probe_blind_scale_changes_only_what_the_probe_trains_at() -> None:
    seen = ProceduralSpec(lr_scale_range=(0.25, 4.0))
    blind = ProceduralSpec(lr_scale_range=(0.25, 4.0), probe_sees_lr_scale=False)
    for seed in range(10):
        a, b = sample_task(seed, seen), sample_task(seed, blind)
        assert a.workload.probe_lr_scale is None and b.workload.probe_lr_scale == 1.0
        assert "not seen by the LR probe" in b.workload.description
        assert dataclasses.replace(b.workload, probe_lr_scale=None, description=a.workload.description) == a.workload
    train = {"lr_scale_range": [0.25, 4.0], "probe_sees_lr_scale": False}
    spec = spec_from_dict({"workloads": {"train": train}})
    assert spec.workloads.sampler == blind and spec_from_dict(spec.to_dict()) == spec
    default = load_spec("default").to_dict()
    assert "probe_sees_lr_scale" not in default["workloads"]["train"]
    assert all("probe_lr_scale" not in w for w in default["workloads"]["define"].values())


def test_hidden_lr_shift_is_off_by_default_and_drawn_after_the_scale() -> None:
    hot = ProceduralSpec(lr_scale_range=(1.0, 8.0), probe_sees_lr_scale=False)
    shifting = dataclasses.replace(hot, lr_shift_range=(0.25, 4.0))
    factors, afters = [], []
    for seed in range(40):
        plain, shifted = sample_task(seed, hot), sample_task(seed, shifting)
        assert plain.workload.lr_shift is None and "shift" not in plain.workload.description
        assert sample_task(seed, shifting) == shifted  # seeded
        after, factor = shifted.workload.lr_shift
        assert 2 <= after <= shifted.workload.epochs - 2 and 0.25 <= factor <= 4.0
        assert f"hidden LR shift ×{factor:g} after epoch {after}" in shifted.workload.description
        # the rest of the draw, its hidden scale included, is the one without it
        same = dataclasses.replace(shifted.workload, lr_shift=None, description=plain.workload.description)
        assert same == plain.workload
        assert (shifted.init_lr, shifted.init_batch_size) == (plain.init_lr, plain.init_batch_size)
        factors.append(factor)
        afters.append(after)
    assert min(factors) < 0.5 and max(factors) > 2.0 and len(set(afters)) > 5
    spec = load_spec("default-shift-final")
    assert spec.workloads.sampler.lr_shift_range == (0.25, 16.0)
    assert spec_from_dict(spec.to_dict()) == spec
    # a spec that sets the episode's epochs keeps each shift at its share of the run, inside it
    short = dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=4))
    for seed in range(10):
        (after, factor), epochs = spec.draw(seed).workload.lr_shift, spec.draw(seed).workload.epochs
        assert short.draw(seed).workload.lr_shift == (max(1, min(3, round(after * 4 / epochs))), factor)
    default = load_spec("default-hot-final").to_dict()
    assert "lr_shift_range" not in default["workloads"]["train"]
    assert all("lr_shift" not in w for w in default["workloads"]["define"].values())


def test_a_scale_tail_moves_only_the_scale_of_its_share_of_the_draws() -> None:
    hot = ProceduralSpec(lr_scale_range=(1.0, 8.0), probe_sees_lr_scale=False)
    stuck = dataclasses.replace(hot, lr_scale_tail=(0.25, 16.0, 64.0))
    in_tail = 0
    for seed in range(80):
        plain, drawn = sample_task(seed, hot), sample_task(seed, stuck)
        assert sample_task(seed, stuck) == drawn  # seeded
        scale = drawn.workload.lr_scale
        assert 1.0 <= scale <= 8.0 or 16.0 <= scale <= 64.0
        in_tail += scale >= 16.0
        same = dataclasses.replace(drawn.workload, lr_scale=plain.workload.lr_scale, description="")
        assert same == dataclasses.replace(plain.workload, description="")  # nothing else moves
        assert (drawn.init_lr, drawn.init_batch_size) == (plain.init_lr, plain.init_batch_size)
    assert 10 <= in_tail <= 30  # about a quarter of 80
    spec = load_spec("default-stuck-final")
    assert spec.workloads.sampler.lr_scale_tail == (0.25, 16.0, 64.0) and spec_from_dict(spec.to_dict()) == spec
    assert "lr_scale_tail" not in load_spec("default-hot-final").to_dict()["workloads"]["train"]  # off: left out


def test_a_cold_tail_draws_its_share_below_the_hidden_range() -> None:
    spec = load_spec("default-cold-final")  # a quarter of the draws 0.01-0.1x, the rest as default-hot-final
    assert spec.workloads.sampler.lr_scale_tail == (0.25, 0.01, 0.1) and spec_from_dict(spec.to_dict()) == spec
    hot = load_spec("default-hot-final")
    scales = [spec.draw(seed).workload.lr_scale for seed in range(80)]
    assert all(1.0 <= s <= 8.0 or 0.01 <= s <= 0.1 for s in scales)
    assert 10 <= sum(s <= 0.1 for s in scales) <= 30
    for seed in range(0, 80, 8):  # only the hidden scale differs from default-hot-final's draw
        cold, plain = spec.draw(seed), hot.draw(seed)
        assert dataclasses.replace(cold.workload, lr_scale=1.0, description="") == dataclasses.replace(
            plain.workload, lr_scale=1.0, description=""
        )
        assert (cold.init_lr, cold.init_batch_size) == (plain.init_lr, plain.init_batch_size)


@pytest.mark.parametrize(
    ("train", "shown"),
    [
        ({"lr_scale_range": [1.0, 8.0], "lr_scale_tail": [1.5, 16.0, 64.0]}, "1.5"),
        ({"lr_scale_range": [1.0, 8.0], "lr_scale_tail": [0.25, 64.0, 16.0]}, "64.0"),
        ({"lr_scale_range": [1.0, 8.0], "lr_scale_tail": [0.25, 16.0]}, "16.0"),
        ({"lr_scale_range": [1.0, 8.0], "lr_scale_tail": "lots"}, "lots"),
        ({"lr_scale_tail": [0.25, 16.0, 64.0]}, "0.25"),  # a tail needs a hidden scale to widen
    ],
)
def test_a_bad_scale_tail_is_refused_by_name(train: dict[str, Any], shown: str) -> None:
    with pytest.raises(SpecError, match=rf"workloads\.train\.lr_scale_tail.*{shown}"):
        spec_from_dict({"workloads": {"train": train}})


def test_start_lr_range_moves_only_the_initial_lr() -> None:
    high = ProceduralSpec(start_lr_range=(0.03, 0.3))
    for seed in range(30):
        plain, drawn = sample_task(seed), sample_task(seed, high)
        assert 0.03 <= drawn.init_lr <= 0.3
        assert drawn.workload == plain.workload and drawn.init_batch_size == plain.init_batch_size
        assert sample_task(seed, high) == drawn  # seeded
    spec = spec_from_dict({"workloads": {"train": {"start_lr_range": [0.03, 0.3]}}})
    assert spec.draw(5).init_lr >= 0.03 and spec_from_dict(spec.to_dict()) == spec
    assert "start_lr_range" not in load_spec("default").to_dict()["workloads"]["train"]  # unset stays out
    with pytest.raises(SpecError, match="inside the episode's LR range"):  # checked against the episode's range
        spec_from_dict({"episode": {"lr_range": [1e-4, 0.01]}, "workloads": {"train": {"start_lr_range": [0.03, 0.3]}}})


def test_model_first_gives_each_model_family_an_equal_share() -> None:
    exclude = load_spec("default").workloads.sampler.exclude
    dataset_first, model_first = ProceduralSpec(exclude=exclude), ProceduralSpec(exclude=exclude, first="model")
    n = 300
    by_dataset = [sample_task(seed, dataset_first).workload for seed in range(n)]
    by_model = [sample_task(seed, model_first).workload for seed in range(n)]
    share = {m: sum(w.model == m for w in by_model) / n for m in ("mlp", "cnn1d", "cnn2d")}
    assert all(0.25 < s < 0.42 for s in share.values()), share
    assert sum(w.model == "mlp" for w in by_dataset) / n > 0.55  # MLPs fit every dataset
    for w in by_model:  # the exclusions still hold, and the model fits its dataset
        assert model_first.allows(family_of(w)) and w.model in MODELS_FOR[w.dataset]
    assert sample_task(7, model_first) == sample_task(7, model_first)
    spec = spec_from_dict({"workloads": {"train": {"first": "model"}}})
    assert spec.workloads.sampler.first == "model" and spec_from_dict(spec.to_dict()) == spec
    assert "first" not in load_spec("default").to_dict()["workloads"]["train"]  # the default stays out


def test_env_steps_a_scaled_draw_at_the_hidden_lr_and_reports_the_visible_one() -> None:
    spec = spec_from_dict({"workloads": {"train": {"lr_scale_range": [0.1, 10.0]}}})
    env = HyperTuneEnv(spec)
    env.reset(seed=3, options={"lr": 1e-3})
    scale, lr0 = env.workload.lr_scale, env.hparams.lr
    assert scale != 1.0 and 2 * lr0 < env.workload.lr_range[1]
    _, _, _, _, info = env.step(np.array([3, 1]))  # LR x2
    assert info["lr"] == pytest.approx(2 * lr0)
    assert env.trainer.lr == pytest.approx(info["lr"])
    assert env.trainer.step_lr == pytest.approx(info["lr"] * scale)


def test_plain_lists_and_named_heldout_still_work() -> None:
    spec = spec_from_dict({"workloads": {"train": ["digits-mlp"], "heldout": ["mnist1d-gru"]}})
    assert spec.workloads.sampler is None and spec.workloads.train_names == ("digits-mlp",)
    with pytest.raises(SpecError, match="workloads.train"):
        spec.draw(0)
    proc = load_spec(TINY)
    assert proc.workloads.train_names == () and proc.workloads.sampler is not None
    assert spec_from_dict(proc.to_dict()) == proc


def test_env_on_a_procedural_spec_passes_check_env() -> None:
    env = HyperTuneEnv(TINY)
    check_env(env, skip_render_check=True)
    _, info = env.reset(seed=5)
    task = env.env_spec.draw(5)
    assert info["workload"] == "procedural-5" and env.workload == task.workload
    assert env.workload.epochs == 2  # the spec's episode.epochs overrides the draw's budget
    assert info["lr"] == pytest.approx(task.init_lr) and not info["heldout"]
    _, info = env.reset(seed=1, options={"workload": "tiny-wide", "lr": 1e-2})
    assert info["workload"] == "tiny-wide" and info["heldout"] and info["lr"] == 1e-2
    names = {env.reset(seed=s)[1]["workload"] for s in range(3)}
    assert names == {"procedural-0", "procedural-1", "procedural-2"}


# Every family trains above chance in a few epochs: one small workload per value of each dimension.
_SEQ = {"n_samples": 1500, "length": 24, "n_classes": 3, "motif_length": 5, "amplitude": 3.0}
_FAMILY_CASES = {
    "dataset=mnist1d": ("mnist1d", {"num_samples": 2000}, "cnn1d", {}, "adam", {}),
    "dataset=synthetic": ("synthetic", {"n_samples": 1000, "standardize": True}, "mlp", {"hidden": [64]}, "adam", {}),
    "dataset=digits": ("digits", {"standardize": True}, "mlp", {"hidden": [64]}, "adam", {}),
    "dataset=sequence": ("sequence", _SEQ, "cnn1d", {"channels": 16, "depth": 2, "pooling": "max"}, "adam", {}),
    "model=mlp+layernorm+residual": (
        "digits", {}, "mlp", {"hidden": [64, 64], "norm": "layernorm", "residual": True, "activation": "gelu"},
        "adam", {},
    ),
    "model=mlp+batchnorm+dropout": (
        "digits", {}, "mlp", {"hidden": [64], "norm": "batchnorm", "dropout": 0.2, "activation": "tanh"}, "adam", {},
    ),
    "model=cnn1d+batchnorm": ("sequence", _SEQ, "cnn1d", {"channels": 16, "norm": "batchnorm"}, "adam", {}),
    "model=cnn2d+batchnorm": ("digits", {}, "cnn2d", {"channels": [8], "norm": "batchnorm"}, "adam", {}),
    "model=gru": ("sequence", _SEQ, "gru", {"hidden": 24}, "adam", {}),
    "model=lstm": ("sequence", _SEQ, "lstm", {"hidden": 24}, "adam", {}),
    "optimizer=adamw": ("digits", {}, "mlp", {"hidden": [64], "activation": "elu"}, "adamw", {"weight_decay": 0.01}),
    "optimizer=sgd-nesterov": ("digits", {}, "mlp", {"hidden": [64], "activation": "silu"}, "sgd", {"nesterov": True}),
    "optimizer=rmsprop": ("digits", {}, "mlp", {"hidden": [64]}, "rmsprop", {}),
}  # fmt: skip
_LR = {"adam": 1e-2, "adamw": 1e-2, "rmsprop": 3e-3, "sgd": 5e-2}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.slow) if "gru" in c or "lstm" in c or "mnist1d" in c else c
        for c in _FAMILY_CASES
    ],
)
def test_every_family_trains_above_chance(case: str) -> None:
    dataset, dargs, model, margs, optimizer, oargs = _FAMILY_CASES[case]
    wl = WorkloadSpec(case, dataset, model, dargs, margs, optimizer=optimizer, optimizer_args=oargs)
    run = make_run(wl, 0, sources={})
    trainer = Trainer(
        run.model, run.data.train, optimizer=optimizer, optimizer_args=oargs, lr=_LR[optimizer],
        batch_size=32, generator=run.generator,
    )  # fmt: skip
    for _ in range(4):
        assert not trainer.train_epoch().diverged
    acc, chance = trainer.evaluate(run.data.val).acc, 1.0 / run.data.num_classes
    assert acc > chance + 0.15, f"{case}: val acc {acc:.3f} after 4 epochs; chance {chance:.3f}"


def test_drawn_workloads_build_and_step() -> None:
    sources: dict[str, Source] = {}
    spec = load_spec(TINY)
    for seed in range(6):
        wl = spec.draw(seed).workload
        run = make_run(wl, seed, sources=sources)
        out = run.model(run.data.val.x[:4])
        assert out.shape == (4, run.data.num_classes) and torch.isfinite(out).all()
        assert math.isclose(float(run.data.train.x.mean()), 0.0, abs_tol=0.5)  # inputs standardised
