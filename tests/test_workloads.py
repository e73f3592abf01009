"""Tests for rlagent.workloads: built-ins learn, splits and inits are seeded, user workloads plug in."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rlagent import BUILTIN_WORKLOADS, HyperTuneEnv, SpecError, WorkloadSpec
from rlagent.training import Trainer
from rlagent.workloads import (
    Source,
    Split,
    build_model,
    describe,
    load_source,
    run_seeds,
    split_data,
)

USER = "tests._user_workload"


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    """Built-in data, loaded once per module (MNIST-1D generation takes ~1.5 s)."""
    out: dict[str, Source] = {}
    for wl in BUILTIN_WORKLOADS.values():
        if wl.dataset not in out:
            out[wl.dataset] = load_source(wl)
    return out


def _user_spec(dataset: str = f"{USER}:make_data", model: str = f"{USER}:make_model", **kw: Any) -> dict[str, Any]:
    """An env spec dict with one user-defined workload."""
    table = {"dataset": dataset, "model": model, "model_args": {"hidden": 16}, "epochs": 3, **kw}
    return {
        "workloads": {"train": ["user"], "define": {"user": table}},
        "episode": {"init_batch_size": 16, "init_lr": 1e-2},
    }


@pytest.mark.parametrize("name", sorted(BUILTIN_WORKLOADS))
def test_builtin_workload_learns_above_chance(name: str, sources: dict[str, Source]) -> None:
    wl = BUILTIN_WORKLOADS[name]
    data = split_data(sources[wl.dataset], wl, seed=0)
    model = build_model(wl, data.input_shape, data.num_classes, seed=0)
    trainer = Trainer(
        model, data.train, optimizer=wl.optimizer, lr=3e-3, batch_size=32, generator=torch.Generator().manual_seed(0)
    )
    chance = 1.0 / data.num_classes
    before = trainer.evaluate(data.val).acc
    for _ in range(3):
        stats = trainer.train_epoch()
        assert not stats.diverged
    after = trainer.evaluate(data.val).acc
    assert after > chance + 0.1, f"{name}: val acc {after:.3f} after 3 epochs; chance {chance:.3f}"
    assert after > before


@pytest.mark.parametrize("name", sorted(BUILTIN_WORKLOADS))
def test_builtin_workload_shapes(name: str, sources: dict[str, Source]) -> None:
    wl = BUILTIN_WORKLOADS[name]
    info = describe(wl, sources[wl.dataset])
    assert info["name"] == name and info["train"] > 0 and info["val"] > 0 and info["test"] > 0
    assert info["classes"] in (4, 10) and info["params"] > 0
    data = split_data(sources[wl.dataset], wl, seed=0)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.long
    out = build_model(wl, data.input_shape, data.num_classes, seed=0)(data.val.x[:5])
    assert out.shape == (5, data.num_classes)


def test_split_is_seeded_disjoint_and_complete(sources: dict[str, Source]) -> None:
    wl = BUILTIN_WORKLOADS["digits-mlp"]
    source = sources[wl.dataset]
    a, b, c = (split_data(source, wl, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert len(a.val) == round(len(source.pool) * wl.val_fraction)
    assert len(a.train) + len(a.val) == len(source.pool)
    assert torch.equal(a.test.x, source.test.x)  # the test split never moves
    numbered = Source(Split(torch.arange(100.0).unsqueeze(1), torch.arange(100) % 3), source.test)
    d = split_data(numbered, wl, seed=0)
    train_ids, val_ids = set(d.train.x.flatten().tolist()), set(d.val.x.flatten().tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 100


def test_model_init_is_seeded_and_leaves_global_rng_alone() -> None:
    wl = BUILTIN_WORKLOADS["mnist1d-cnn"]
    state = torch.random.get_rng_state()
    m1, m2, m3 = (build_model(wl, (40,), 10, seed=s) for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), state)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert not all(torch.equal(p1, p3) for p1, p3 in zip(m1.parameters(), m3.parameters()))


def test_run_seeds_are_independent_and_deterministic() -> None:
    assert run_seeds(0) == run_seeds(0)
    assert len(set(run_seeds(0))) == 3
    assert run_seeds(0) != run_seeds(1)


def test_mnist1d_restores_global_rngs() -> None:
    np_before, py_before = np.random.get_state(), random.getstate()  # noqa: NPY002
    wl = dataclasses.replace(BUILTIN_WORKLOADS["mnist1d-mlp"], dataset_args={"num_samples": 400})
    source = load_source(wl)
    assert source.pool.x.shape[1:] == (40,)
    np_after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(np_after[1], np_before[1]) and np_after[2] == np_before[2]
    assert random.getstate() == py_before


def test_replaced_workload_is_validated_again() -> None:
    wl = dataclasses.replace(BUILTIN_WORKLOADS["digits-mlp"], epochs=3)
    assert wl.epochs == 3 and BUILTIN_WORKLOADS["digits-mlp"].epochs == 15
    with pytest.raises(SpecError, match=r"epochs: got 0"):
        dataclasses.replace(wl, epochs=0)
    for bad in (0, -1.0, float("inf"), True, "2"):
        with pytest.raises(SpecError, match=r"lr_scale: got .*expected a finite number > 0"):
            dataclasses.replace(wl, lr_scale=bad)
    for bad in (3, (0, 2.0), (2, 0), (2.5, 2.0), (2, float("nan")), (1, 2, 3), (True, 2.0)):
        with pytest.raises(SpecError, match=r"lr_shift: got .*expected a pair \[epoch >= 1, factor > 0\]"):
            dataclasses.replace(wl, lr_shift=bad)
    assert dataclasses.replace(wl, lr_shift=[3, 2]).lr_shift == (3, 2.0)  # TOML's list, normalised


# ---------------------------------------------------------------------------------------------
# User-defined workloads


def test_user_workload_with_fixed_splits() -> None:
    wl = WorkloadSpec("user", f"{USER}:make_data", f"{USER}:make_model", model_args={"hidden": 4})
    source = load_source(wl)
    assert source.pool is None and source.fixed is not None
    data = split_data(source, wl, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (120, 40, 40)
    assert data.num_classes == 3 and data.input_shape == (6,)
    assert torch.equal(split_data(source, wl, seed=1).train.x, data.train.x)  # fixed splits ignore the seed
    model = build_model(wl, data.input_shape, data.num_classes, seed=0)
    assert model[1].out_features == 4


def test_user_workload_with_dataset_pool() -> None:
    wl = WorkloadSpec("user", f"{USER}:make_pool", "mlp", model_args={"hidden": [8]})
    source = load_source(wl)
    assert source.pool is not None and len(source.pool) == 160
    data = split_data(source, wl, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (128, 32, 40)


@pytest.mark.parametrize("dataset", [f"{USER}:make_data", f"{USER}:make_pool"])
def test_user_workload_runs_an_episode(dataset: str) -> None:
    env = HyperTuneEnv(_user_spec(dataset))
    obs, info = env.reset(seed=0)
    assert info["workload"] == "user"
    terminated, rewards = False, []
    while not terminated:
        obs, reward, terminated, _, info = env.step(np.array([2, 1]))
        assert env.observation_space.contains(obs)
        rewards.append(reward)
    assert len(rewards) == 3 and not info["diverged"]
    assert info["val_acc"] > 0.5  # well-separated blobs, chance 1/3


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"dataset": "nope.mod:fn"}, "dataset"),
        ({"dataset": f"{USER}:missing"}, "dataset"),
        ({"dataset": f"{USER}:NOT_CALLABLE"}, "dataset"),
        ({"dataset": f"{USER}:"}, "dataset"),
        ({"model": "nope.mod:fn"}, "model"),
        ({"model": f"{USER}:missing"}, "model"),
    ],
)
def test_bad_factory_reference_is_a_spec_error(table: dict[str, str], field: str) -> None:
    env = HyperTuneEnv(_user_spec(**table))
    with pytest.raises(SpecError) as caught:
        env.reset(seed=0)
    assert caught.value.field == f"workload 'user'.{field}"
    assert repr(table[field]) in str(caught.value)


@pytest.mark.parametrize(("table", "field"), [({"dataset": "nope"}, "dataset"), ({"model": "nope"}, "model")])
def test_unknown_builtin_name_is_a_spec_error(table: dict[str, str], field: str) -> None:
    with pytest.raises(SpecError, match=rf"{field}: got 'nope'; expected one of"):
        HyperTuneEnv(_user_spec(**table))


def test_model_factory_must_return_a_module() -> None:
    wl = WorkloadSpec("user", f"{USER}:make_data", f"{USER}:not_a_module")
    with pytest.raises(TypeError, match="not nn.Module"):
        build_model(wl, (6,), 3, seed=0)


def test_user_model_factory_gets_shape_classes_and_args() -> None:
    wl = WorkloadSpec("user", "synthetic", f"{USER}:make_model", model_args={"hidden": 5})
    model = build_model(wl, (20,), 4, seed=0)
    assert isinstance(model, nn.Module)
    assert model(torch.zeros(2, 20)).shape == (2, 4)
